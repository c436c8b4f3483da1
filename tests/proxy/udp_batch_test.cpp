// The UDP relay's system-call seam (proxy/udp_batch.hpp) on loopback sockets, no root:
// batches read in one call, runs coalesced into one GSO send with their datagram
// boundaries kept, the fallback of a socket that refuses GSO, and GRO super-datagrams
// forwarded whole or split.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "proxy/udp_batch.hpp"

namespace splitd::proxy {
namespace {

#ifndef UDP_GRO
constexpr int UDP_GRO = 104;
#endif

struct Udp {
  Fd fd;
  sockaddr_storage addr{};
  socklen_t len = sizeof(sockaddr_in);
};

// A socket bound to 127.0.0.1 on a port the kernel picks.
Udp bound_socket() {
  Udp u;
  u.fd = Fd(::socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(u.fd.valid());
  auto& a = reinterpret_cast<sockaddr_in&>(u.addr);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::bind(u.fd.get(), reinterpret_cast<sockaddr*>(&u.addr), sizeof a), 0);
  socklen_t len = sizeof u.addr;
  ::getsockname(u.fd.get(), reinterpret_cast<sockaddr*>(&u.addr), &len);
  const int big = 4 << 20;
  ::setsockopt(u.fd.get(), SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  return u;
}

std::vector<std::uint8_t> payload(std::size_t size, std::uint8_t tag) {
  std::vector<std::uint8_t> v(size);
  for (std::size_t i = 0; i < size; ++i) v[i] = static_cast<std::uint8_t>(tag + i * 7);
  return v;
}

// Every datagram waiting on `fd` (plain recv: one datagram each, boundaries as sent).
std::vector<std::vector<std::uint8_t>> drain(int fd) {
  std::vector<std::vector<std::uint8_t>> out;
  pollfd p{fd, POLLIN, 0};
  ::poll(&p, 1, 200);  // loopback delivers at once; a margin for a loaded machine
  std::vector<std::uint8_t> buf(70000);
  for (;;) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) break;
    out.emplace_back(buf.begin(), buf.begin() + n);
  }
  return out;
}

TEST(SendBatch, ARunOfEqualDatagramsIsOneGsoSendWithItsBoundariesKept) {
  Udp tx = bound_socket(), rx = bound_socket();
  std::vector<std::vector<std::uint8_t>> sent;
  for (int i = 0; i < 20; ++i) sent.push_back(payload(1200, static_cast<std::uint8_t>(i)));
  sent.push_back(payload(300, 99));  // the last of a run may be shorter
  SendBatch b;
  bool gso = true;
  for (const auto& p : sent) b.queue(tx.fd.get(), rx.addr, rx.len, p, 0, &gso);
  b.flush();
  EXPECT_EQ(b.stats().calls, 1u);
  EXPECT_EQ(b.stats().gso_sends, 1u);
  EXPECT_EQ(b.stats().datagrams, 21u);
  EXPECT_TRUE(gso);
  EXPECT_EQ(drain(rx.fd.get()), sent);
}

TEST(SendBatch, ABiggerDatagramOrAnotherDestinationEndsTheRun) {
  Udp tx = bound_socket(), a = bound_socket(), c = bound_socket();
  const auto small = payload(500, 1), big = payload(800, 2);
  SendBatch b;
  bool gso = true;
  b.queue(tx.fd.get(), a.addr, a.len, small, 0, &gso);
  b.queue(tx.fd.get(), a.addr, a.len, small, 0, &gso);
  b.queue(tx.fd.get(), a.addr, a.len, big, 0, &gso);    // bigger: a run of its own
  b.queue(tx.fd.get(), a.addr, a.len, big, 0, &gso);
  b.queue(tx.fd.get(), c.addr, c.len, big, 0, &gso);    // another destination
  b.flush();
  EXPECT_EQ(b.stats().gso_sends, 2u);
  EXPECT_EQ(b.stats().datagrams, 5u);
  const auto got_a = drain(a.fd.get());
  ASSERT_EQ(got_a.size(), 4u);
  EXPECT_EQ(got_a[0], small);
  EXPECT_EQ(got_a[1], small);
  EXPECT_EQ(got_a[2], big);
  EXPECT_EQ(got_a[3], big);
  const auto got_c = drain(c.fd.get());
  ASSERT_EQ(got_c.size(), 1u);
  EXPECT_EQ(got_c[0], big);
}

TEST(SendBatch, WithoutGsoARunOfOneSocketIsOneSendmmsg) {
  Udp tx = bound_socket(), a = bound_socket(), c = bound_socket();
  SendBatch b;
  std::vector<std::vector<std::uint8_t>> ps;
  for (int i = 0; i < 10; ++i) ps.push_back(payload(100 + static_cast<std::size_t>(i), static_cast<std::uint8_t>(i)));
  for (int i = 0; i < 10; ++i) b.queue(tx.fd.get(), i % 2 ? a.addr : c.addr, a.len, ps[static_cast<std::size_t>(i)], 0, nullptr);
  b.flush();
  EXPECT_EQ(b.stats().calls, 1u);  // ten datagrams, two destinations, one sendmmsg
  EXPECT_EQ(b.stats().gso_sends, 0u);
  EXPECT_EQ(b.stats().datagrams, 10u);
  EXPECT_EQ(drain(a.fd.get()).size(), 5u);
  EXPECT_EQ(drain(c.fd.get()).size(), 5u);
}

TEST(SendBatch, ASocketThatRefusesGsoIsFlaggedAndServedOneByOne) {
  Udp tx = bound_socket(), rx = bound_socket();
  // No UDP checksum on transmit: the kernel refuses GSO on such a socket (EINVAL), as it
  // does on a route without checksum offload (EIO).
  const int one = 1;
  ASSERT_EQ(::setsockopt(tx.fd.get(), SOL_SOCKET, SO_NO_CHECK, &one, sizeof one), 0);
  std::vector<std::vector<std::uint8_t>> sent;
  for (int i = 0; i < 8; ++i) sent.push_back(payload(1000, static_cast<std::uint8_t>(i)));
  SendBatch b;
  bool gso = true;
  for (const auto& p : sent) b.queue(tx.fd.get(), rx.addr, rx.len, p, 0, &gso);
  b.flush();
  EXPECT_FALSE(gso);
  EXPECT_EQ(b.stats().gso_sends, 0u);
  EXPECT_EQ(b.stats().datagrams, 8u);
  EXPECT_EQ(drain(rx.fd.get()), sent);
  // From now on no GSO attempt: one sendmmsg.
  const auto calls = b.stats().calls;
  for (const auto& p : sent) b.queue(tx.fd.get(), rx.addr, rx.len, p, 0, &gso);
  b.flush();
  EXPECT_EQ(b.stats().calls, calls + 1);
  EXPECT_EQ(drain(rx.fd.get()), sent);
}

TEST(SendBatch, QueueingBeyondTheCapacityFlushes) {
  Udp tx = bound_socket(), rx = bound_socket();
  SendBatch b(4);
  const auto p = payload(64, 5);
  for (int i = 0; i < 9; ++i) b.queue(tx.fd.get(), rx.addr, rx.len, p, 0, nullptr);
  EXPECT_FALSE(b.empty());
  b.flush();
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(b.stats().datagrams, 9u);
  EXPECT_EQ(drain(rx.fd.get()).size(), 9u);
}

TEST(RecvBatch, ReadsWhatIsQueuedInOneCallWithEachSource) {
  Udp tx1 = bound_socket(), tx2 = bound_socket(), rx = bound_socket();
  RecvBatch r(8);
  EXPECT_EQ(r.read(rx.fd.get(), false), 0);  // nothing yet: 0, not an error
  for (int i = 0; i < 5; ++i) {
    const auto p = payload(10 + static_cast<std::size_t>(i), static_cast<std::uint8_t>(i));
    const Udp& tx = i % 2 ? tx2 : tx1;
    ASSERT_EQ(::sendto(tx.fd.get(), p.data(), p.size(), 0, reinterpret_cast<const sockaddr*>(&rx.addr), rx.len),
              static_cast<ssize_t>(p.size()));
  }
  ASSERT_EQ(r.read(rx.fd.get(), false), 5);
  for (int i = 0; i < 5; ++i) {
    const Datagram& d = r[static_cast<std::size_t>(i)];
    const auto p = payload(10 + static_cast<std::size_t>(i), static_cast<std::uint8_t>(i));
    EXPECT_EQ(std::vector<std::uint8_t>(d.data.begin(), d.data.end()), p);
    const Udp& tx = i % 2 ? tx2 : tx1;
    EXPECT_EQ(std::memcmp(d.from, &tx.addr, sizeof(sockaddr_in)), 0) << i;
    EXPECT_EQ(d.segment, 0u);
    EXPECT_EQ(d.original_destination, nullptr);  // not asked for on this socket
  }
  EXPECT_EQ(r.read(rx.fd.get(), false), 0);
}

TEST(RecvBatch, TheOriginalDestinationComesWithEachDatagram) {
  Udp tx = bound_socket(), rx = bound_socket();
  const int one = 1;
  ASSERT_EQ(::setsockopt(rx.fd.get(), SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof one), 0);
  const auto p = payload(33, 3);
  ASSERT_GT(::sendto(tx.fd.get(), p.data(), p.size(), 0, reinterpret_cast<const sockaddr*>(&rx.addr), rx.len), 0);
  RecvBatch r(4);
  ASSERT_EQ(r.read(rx.fd.get(), true), 1);
  ASSERT_NE(r[0].original_destination, nullptr);
  const auto& dst = reinterpret_cast<const sockaddr_in&>(*r[0].original_destination);
  const auto& want = reinterpret_cast<const sockaddr_in&>(rx.addr);
  EXPECT_EQ(dst.sin_addr.s_addr, want.sin_addr.s_addr);
  EXPECT_EQ(dst.sin_port, want.sin_port);
  // A socket without the option: datagrams lacking a destination are dropped when it is needed.
  Udp plain = bound_socket();
  ASSERT_GT(::sendto(tx.fd.get(), p.data(), p.size(), 0, reinterpret_cast<const sockaddr*>(&plain.addr), plain.len), 0);
  pollfd pf{plain.fd.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pf, 1, 1000), 1);
  EXPECT_EQ(r.read(plain.fd.get(), true), 0);
}

// A GSO send to a socket with UDP_GRO arrives as one super-datagram with its segment size
// (how a QUIC app's GSO run reaches splitd's listener over lo); forwarded with that size
// it reaches a plain socket as the original datagrams, with or without GSO on the way out.
TEST(RecvBatch, AGroSuperDatagramIsForwardedWithItsDatagramsIntact) {
  Udp app = bound_socket(), relay = bound_socket(), peer1 = bound_socket(), peer2 = bound_socket();
  const int one = 1;
  if (::setsockopt(relay.fd.get(), SOL_UDP, UDP_GRO, &one, sizeof one) != 0) {
    GTEST_SKIP() << "UDP_GRO not supported by this kernel: " << std::strerror(errno);
  }
  std::vector<std::vector<std::uint8_t>> sent;
  for (int i = 0; i < 6; ++i) sent.push_back(payload(1000, static_cast<std::uint8_t>(10 + i)));
  sent.push_back(payload(123, 77));
  {
    SendBatch b;
    bool gso = true;
    for (const auto& p : sent) b.queue(app.fd.get(), relay.addr, relay.len, p, 0, &gso);
    b.flush();
    ASSERT_EQ(b.stats().gso_sends, 1u);
  }
  pollfd pf{relay.fd.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&pf, 1, 1000), 1);
  RecvBatch r(4);
  ASSERT_EQ(r.read(relay.fd.get(), false), 1);
  EXPECT_EQ(r[0].segment, 1000u);
  EXPECT_EQ(r[0].data.size(), 6u * 1000u + 123u);

  SendBatch out;
  bool gso = true;
  out.queue(relay.fd.get(), peer1.addr, peer1.len, r[0].data, r[0].segment, &gso);  // one GSO send
  out.set_gso(false);
  out.flush();
  out.set_gso(true);
  EXPECT_EQ(drain(peer1.fd.get()), sent);  // split by us, one datagram per segment
  out.queue(relay.fd.get(), peer2.addr, peer2.len, r[0].data, r[0].segment, &gso);
  out.flush();
  EXPECT_GE(out.stats().gso_sends, 1u);
  EXPECT_EQ(drain(peer2.fd.get()), sent);  // segmented by the kernel
}

}  // namespace
}  // namespace splitd::proxy
