// build_request()/parse_reply() against the running kernel: proves which side of the id the
// kernel reads as local for TCP and for UDP, and that INET_DIAG_CGROUP_ID is the cgroup
// directory's inode. Needs no root; skips when NETLINK_SOCK_DIAG is unavailable.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "cgroup/hierarchy.hpp"
#include "cgroup/sock_diag.hpp"
#include "common/fd.hpp"

namespace splitd::cgroup {
namespace {

struct Pair {
  Fd client;
  Fd server;  // the accepted socket (TCP) or the peer socket (UDP)
  Fd listener;
  sockaddr_storage client_addr{};
  sockaddr_storage server_addr{};
};

socklen_t len_of(int family) { return family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6); }

sockaddr_storage loopback(int family) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
  }
  return ss;
}

std::optional<Pair> connected(bool tcp, int family) {
  Pair p;
  const int type = (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC;
  Fd server(::socket(family, type, 0));
  if (!server) return std::nullopt;
  p.server_addr = loopback(family);
  socklen_t len = len_of(family);
  if (::bind(server.get(), reinterpret_cast<sockaddr*>(&p.server_addr), len) != 0) return std::nullopt;
  ::getsockname(server.get(), reinterpret_cast<sockaddr*>(&p.server_addr), &len);
  if (tcp && ::listen(server.get(), 4) != 0) return std::nullopt;
  p.client.reset(::socket(family, type, 0));
  if (::connect(p.client.get(), reinterpret_cast<sockaddr*>(&p.server_addr), len_of(family)) != 0) return std::nullopt;
  len = len_of(family);
  ::getsockname(p.client.get(), reinterpret_cast<sockaddr*>(&p.client_addr), &len);
  if (tcp) {
    p.listener = std::move(server);
    p.server.reset(::accept4(p.listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  } else {
    // The peer is connected back too, so both sides are exact 4-tuple matches.
    ::connect(server.get(), reinterpret_cast<sockaddr*>(&p.client_addr), len_of(family));
    p.server = std::move(server);
  }
  return p;
}

void fill(const sockaddr_storage& ss, std::array<std::uint8_t, 16>& addr, std::uint16_t& port) {
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    std::memcpy(addr.data(), &a->sin_addr, 4);
    port = ntohs(a->sin_port);
  } else {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    std::memcpy(addr.data(), &a->sin6_addr, 16);
    port = ntohs(a->sin6_port);
  }
}

Expected<SocketIdentity, DiagError> ask(const SocketQuery& q) {
  Fd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return unexpected(DiagError{DiagErrc::kKernel, errno});
  std::array<std::uint8_t, 128> req{};
  const std::size_t n = build_request(q, 4711, req);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(nl.get(), req.data(), n, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) !=
      static_cast<ssize_t>(n)) {
    return unexpected(DiagError{DiagErrc::kKernel, errno});
  }
  pollfd pfd{nl.get(), POLLIN, 0};
  if (::poll(&pfd, 1, 1000) != 1) return unexpected(DiagError{DiagErrc::kKernel, ETIMEDOUT});
  std::array<std::uint8_t, 8192> buf{};
  const ssize_t got = ::recv(nl.get(), buf.data(), buf.size(), 0);
  if (got < 0) return unexpected(DiagError{DiagErrc::kKernel, errno});
  return parse_reply(std::span<const std::uint8_t>(buf.data(), static_cast<std::size_t>(got)), 4711);
}

std::uint64_t inode_of(int fd) {
  struct stat st {};
  ::fstat(fd, &st);
  return st.st_ino;
}

void check(bool tcp, int family) {
  auto p = connected(tcp, family);
  if (!p) GTEST_SKIP() << "no loopback socket for family " << family;
  SocketQuery q;
  q.tcp = tcp;
  q.family = family;
  fill(p->client_addr, q.local_addr, q.local_port);
  fill(p->server_addr, q.remote_addr, q.remote_port);
  auto r = ask(q);
  if (!r && r.error().code == DiagErrc::kKernel &&
      (r.error().sys_errno == EPROTONOSUPPORT || r.error().sys_errno == EAFNOSUPPORT)) {
    GTEST_SKIP() << "sock_diag unavailable: " << r.error().message();
  }
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->inode, inode_of(p->client.get()));  // the app's socket, not its peer
  EXPECT_EQ(r->uid, ::geteuid());
  if (auto mount = cgroup2_mount()) {
    auto own = own_cgroup();
    ASSERT_TRUE(own);
    EXPECT_EQ(r->cgroup_id, cgroup_id_of(join_mount(*mount, *own)));
  }
  // The same 4-tuple seen from the peer's side finds the peer's socket.
  SocketQuery back = q;
  std::swap(back.local_addr, back.remote_addr);
  std::swap(back.local_port, back.remote_port);
  auto b = ask(back);
  ASSERT_TRUE(b) << b.error().message();
  EXPECT_EQ(b->inode, inode_of(p->server.get()));
  // A 4-tuple nobody has: kNoSocket.
  SocketQuery none = q;
  none.remote_port = static_cast<std::uint16_t>(q.remote_port == 1 ? 2 : 1);
  auto n = ask(none);
  ASSERT_FALSE(n);
  EXPECT_EQ(n.error().code, DiagErrc::kNoSocket) << n.error().message();
}

TEST(SockDiagKernel, TcpV4) { check(true, AF_INET); }
TEST(SockDiagKernel, TcpV6) { check(true, AF_INET6); }
TEST(SockDiagKernel, UdpV4) { check(false, AF_INET); }
TEST(SockDiagKernel, UdpV6) { check(false, AF_INET6); }

}  // namespace
}  // namespace splitd::cgroup
