// The TCP split path end to end: real splitd in the lab's host namespace, real clients,
// and wan/vpn servers that say which way each flow went.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "tests/e2e/splitd_process.hpp"
#include "tests/e2e/tcp_client.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;


// Checks that nothing of splitd's remains in host: no table, no policy rule.
void expect_no_footprint(const lab::Lab& lab) {
  EXPECT_EQ(lab.exec(lab.host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
  EXPECT_EQ(lab.exec(lab.host_ns(), "ip rule").out.find("fwmark"), std::string::npos);
  EXPECT_EQ(lab.exec(lab.host_ns(), "ip -6 rule").out.find("fwmark"), std::string::npos);
  EXPECT_EQ(lab.exec(lab.host_ns(), "ip route show table 1501").out, "");
  EXPECT_EQ(lab.exec(lab.host_ns(), "ip -6 route show table 1501").out, "");
}

// Log lines other than the per-session ones of ordinary flows, for failure messages.
std::string interesting_lines(const std::string& log) {
  std::string out;
  std::size_t pos = 0;
  while (pos < log.size()) {
    const std::size_t end = std::min(log.find('\n', pos), log.size());
    const std::string line = log.substr(pos, end - pos);
    if (line.find("(closed)") == std::string::npos) out += line + "\n";
    pos = end + 1;
  }
  return out;
}

// A listening TCP socket on addr:port (host byte order) in the calling thread's
// namespace; invalid (errno set) on failure.
Fd listen_tcp4(std::uint32_t addr, std::uint16_t port) {
  Fd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  const int one = 1;
  ::setsockopt(l.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(addr);
  if (::bind(l.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l.get(), 4) != 0) return Fd();
  return l;
}

// Accepts one connection, giving up after `timeout` (a test that failed elsewhere must
// not leave this thread blocked in accept forever).
Fd accept_within(int listener, std::chrono::milliseconds timeout = 5s) {
  pollfd p{listener, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return Fd();
  return Fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
}

void raise_fd_limit() {
  rlimit lim{65536, 65536};
  setrlimit(RLIMIT_NOFILE, &lim);
}

TEST(TcpSplit, ExcludeModeRoutesByIp) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  // Baseline: with the VPN's default route everything goes through the tunnel.
  ASSERT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn 198.18.2.2 "));
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 ")) << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://[2001:db8::10]/"), "wan 2001:db8:ff:1::2 "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://[2001:db8:1::10]/"), "vpn 2001:db8:ff:2::2 "));
  EXPECT_EQ(splitd->terminate(), 0);
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn 198.18.2.2 "));
  const std::string log = splitd->log();
  EXPECT_NE(log.find("direct via phys0 rule 'ip 203.0.113.0/24'"), std::string::npos) << log;
  EXPECT_NE(log.find("tunnel via tun0 rule 'default'"), std::string::npos) << log;
}

TEST(TcpSplit, IncludeModeRoutesByIp) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("include", {"198.51.100.0/24", "2001:db8:1::/64"}));
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 ")) << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://[2001:db8::10]/"), "wan 2001:db8:ff:1::2 "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://[2001:db8:1::10]/"), "vpn 2001:db8:ff:2::2 "));
  EXPECT_EQ(splitd->terminate(), 0);
  const std::string log = splitd->log();
  EXPECT_NE(log.find("tunnel via tun0 rule 'ip 198.51.100.0/24'"), std::string::npos) << log;
  EXPECT_NE(log.find("tunnel via tun0 rule 'ip 2001:db8:1::/64'"), std::string::npos) << log;
  EXPECT_NE(log.find("direct via phys0 rule 'default'"), std::string::npos) << log;
}

// Deterministic data: block i of 64 KiB comes from a generator seeded with i.
void fill_block(std::vector<std::uint64_t>& block, std::uint64_t index) {
  std::uint64_t x = 0x9e3779b97f4a7c15ull ^ (index * 0xbf58476d1ce4e5b9ull) ^ 1;
  for (auto& w : block) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    w = x;
  }
}

struct BulkResult {
  std::uint64_t sent = 0, received = 0, mismatches = 0;
  double seconds = 0;
};

// Sends `total` bytes through the echo responder and checks every echoed byte.
BulkResult bulk_echo(const std::string& ip, std::size_t total) {
  BulkResult res;
  auto c = tcp_connect(ip, lab::kTcpPort);
  if (!c.fd) {
    ADD_FAILURE() << "connect " << ip << ": " << std::strerror(c.error);
    return res;
  }
  const std::string greeting = read_line(c.fd.get());
  EXPECT_FALSE(greeting.empty());
  constexpr std::size_t kBlock = 65536;
  const auto start = Clock::now();
  std::thread sender([&] {
    std::vector<std::uint64_t> block(kBlock / 8);
    for (std::uint64_t i = 0; res.sent < total; ++i) {
      fill_block(block, i);
      const std::size_t n = std::min<std::size_t>(kBlock, total - res.sent);
      if (!send_all(c.fd.get(), block.data(), n)) break;
      res.sent += n;
    }
    ::shutdown(c.fd.get(), SHUT_WR);
  });
  std::vector<std::uint64_t> expected(kBlock / 8);
  std::vector<char> buf(kBlock);
  std::uint64_t filled_for = ~0ull;
  for (;;) {
    const long n = recv_some(c.fd.get(), buf.data(), buf.size(), 10s);
    if (n <= 0) break;
    for (long k = 0; k < n; ++k) {
      const std::uint64_t pos = res.received + static_cast<std::uint64_t>(k);
      const std::uint64_t blk = pos / kBlock;
      if (blk != filled_for) {
        fill_block(expected, blk);
        filled_for = blk;
      }
      if (buf[static_cast<std::size_t>(k)] != reinterpret_cast<const char*>(expected.data())[pos % kBlock]) {
        res.mismatches++;
      }
    }
    res.received += static_cast<std::uint64_t>(n);
  }
  sender.join();
  res.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return res;
}

TEST(TcpSplit, BulkTransferBothWaysIntact) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  struct Case { const char* ip; std::size_t bytes; const char* path; };
  for (const Case c : {Case{"203.0.113.10", 256u << 20, "direct"}, Case{"2001:db8::10", 64u << 20, "direct v6"},
                       Case{"198.51.100.10", 32u << 20, "tunnel"}}) {
    BulkResult r;
    lab->in_ns(lab->host_ns(), [&] { r = bulk_echo(c.ip, c.bytes); });
    EXPECT_EQ(r.sent, c.bytes) << c.path;
    EXPECT_EQ(r.received, c.bytes) << c.path;
    EXPECT_EQ(r.mismatches, 0u) << c.path;
    std::printf("bulk %s: %zu MiB each way in %.2f s (%.0f MiB/s each way)\n", c.path, c.bytes >> 20,
                r.seconds, static_cast<double>(c.bytes >> 20) / r.seconds);
  }
  EXPECT_EQ(splitd->terminate(), 0);
}

struct RateResult {
  int failures = 0;
  double per_second = 0;
  std::chrono::microseconds worst{0};
};

RateResult connection_rate(const std::string& ip, int count) {
  RateResult r;
  const auto start = Clock::now();
  for (int i = 0; i < count; ++i) {
    const auto t0 = Clock::now();
    auto c = tcp_connect(ip, lab::kTcpPort, 2s);
    if (!c.fd || read_line(c.fd.get(), 2s).empty()) r.failures++;
    r.worst = std::max(r.worst, std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0));
  }
  r.per_second = count / std::chrono::duration<double>(Clock::now() - start).count();
  return r;
}

// Figures for people, measured side by side in one run: the same transfers over the
// direct path (no proxy; the VPN route off) and through splitd (bypassed to phys0).
// Timing is printed, not asserted (bench/ owns speed goals); integrity is asserted.
TEST(TcpSplit, FiguresNextToTheDirectPath) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{false});
  constexpr std::size_t kBytes = 256u << 20;
  constexpr int kConns = 3000;
  BulkResult direct_bulk, splitd_bulk;
  RateResult direct_rate, splitd_rate;
  lab->in_ns(lab->host_ns(), [&] {
    direct_bulk = bulk_echo("203.0.113.10", kBytes);
    direct_rate = connection_rate("203.0.113.10", kConns);
  });
  lab->set_vpn_default_route(true);
  auto splitd = SplitdProcess::start(*lab, "[split]\nmode = \"exclude\"\nips = [\"203.0.113.0/24\"]\n[dns]\nenabled = false\n");
  lab->in_ns(lab->host_ns(), [&] {
    splitd_bulk = bulk_echo("203.0.113.10", kBytes);
    splitd_rate = connection_rate("203.0.113.10", kConns);
  });
  EXPECT_EQ(splitd->terminate(), 0);
  for (const BulkResult* b : {&direct_bulk, &splitd_bulk}) {
    EXPECT_EQ(b->received, kBytes);
    EXPECT_EQ(b->mismatches, 0u);
  }
  EXPECT_EQ(direct_rate.failures + splitd_rate.failures, 0);
  const double d_mibs = (kBytes >> 20) / direct_bulk.seconds, s_mibs = (kBytes >> 20) / splitd_bulk.seconds;
  std::printf("\n%-34s %12s %12s %8s\n", "lab, TCP over phys0", "direct", "splitd", "ratio");
  std::printf("%-34s %12.0f %12.0f %8.2f\n", "echo 256 MiB each way, MiB/s", d_mibs, s_mibs, s_mibs / d_mibs);
  std::printf("%-34s %12.0f %12.0f %8.2f\n", "sequential connections/s", direct_rate.per_second,
              splitd_rate.per_second, splitd_rate.per_second / direct_rate.per_second);
  std::printf("%-34s %12lld %12lld\n", "slowest connection, us", static_cast<long long>(direct_rate.worst.count()),
              static_cast<long long>(splitd_rate.worst.count()));
}

TEST(TcpSplit, HalfCloseKeepsTheOtherDirection) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  for (const char* ip : {"203.0.113.10", "198.51.100.10", "2001:db8::10"}) {
    lab->in_ns(lab->host_ns(), [&] {
      auto c = tcp_connect(ip, lab::kTcpPort);
      ASSERT_TRUE(c.fd) << ip << ": " << std::strerror(c.error);
      EXPECT_FALSE(read_line(c.fd.get()).empty());
      ASSERT_TRUE(send_all(c.fd.get(), "first half\n"));
      ASSERT_EQ(::shutdown(c.fd.get(), SHUT_WR), 0);
      // Our side is closed for writing; the server's echo and its FIN still arrive.
      int err = 0;
      EXPECT_EQ(read_to_eof(c.fd.get(), &err), "first half\n") << ip;
      EXPECT_EQ(err, 0) << ip;
    });
  }
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, ServerResetReachesClient) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  // A server in wan that resets every connection after reading one line.
  std::atomic<bool> listening{false};
  std::thread server([&] {
    lab->in_ns(lab->wan_ns(), [&] {
      Fd l = listen_tcp4(0xcb00710a, 9100);  // 203.0.113.10
      listening = true;
      ASSERT_TRUE(l) << std::strerror(errno);
      Fd s = accept_within(l.get());
      read_line(s.get());
      const linger lg{1, 0};
      ::setsockopt(s.get(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    });
  });
  while (!listening) std::this_thread::sleep_for(1ms);
  lab->in_ns(lab->host_ns(), [&] {
    auto c = tcp_connect("203.0.113.10", 9100);
    ASSERT_TRUE(c.fd);
    ASSERT_TRUE(send_all(c.fd.get(), "reset me\n"));
    int err = 0;
    read_to_eof(c.fd.get(), &err);
    EXPECT_EQ(err, -ECONNRESET) << "the server's reset must reach the client as a reset";
  });
  server.join();
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, ClosedPortFailsFastUnreachableWithinConnectTimeout) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers, "connect_timeout = \"1s\""));
  lab->in_ns(lab->host_ns(), [&] {
    // Closed port: the server's RST becomes a reset for the client at once.
    auto start = Clock::now();
    auto c = tcp_connect("203.0.113.10", 9999);
    int err = 0;
    if (c.fd) read_to_eof(c.fd.get(), &err, 3s);
    else err = -c.error;
    auto took = Clock::now() - start;
    EXPECT_EQ(err, -ECONNRESET);
    EXPECT_LT(took, 1s);
    std::printf("closed port: reset after %lld ms\n",
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
    // Nobody answers at 203.0.113.99 (wan drops it): reset after connect_timeout.
    start = Clock::now();
    c = tcp_connect("203.0.113.99", 80);
    err = 0;
    if (c.fd) read_to_eof(c.fd.get(), &err, 5s);
    else err = -c.error;
    took = Clock::now() - start;
    EXPECT_EQ(err, -ECONNRESET);
    EXPECT_GE(took, 900ms);
    EXPECT_LT(took, 2s);
    std::printf("unreachable: reset after %lld ms (connect_timeout 1s)\n",
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
  });
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, ThousandConcurrentConnections) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  raise_fd_limit();
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  constexpr int kConns = 1000;
  int ok = 0;
  lab->in_ns(lab->host_ns(), [&] {
    std::vector<Fd> conns;
    for (int i = 0; i < kConns; ++i) {
      // Half direct, half through the tunnel.
      auto c = tcp_connect(i % 2 ? "203.0.113.10" : "198.51.100.10", lab::kTcpPort, 10s);
      ASSERT_TRUE(c.fd) << "connection " << i << ": " << std::strerror(c.error);
      conns.push_back(std::move(c.fd));
    }
    // All 1000 are open at once; now each must complete an exchange.
    for (int i = 0; i < kConns; ++i) {
      const int fd = conns[static_cast<std::size_t>(i)].get();
      const auto t0 = Clock::now();
      if (read_line(fd, 10s).empty()) {
        ADD_FAILURE() << "connection " << i << ": no greeting after "
                      << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count() << " ms";
        continue;
      }
      const std::string msg = "ping " + std::to_string(i) + "\n";
      if (!send_all(fd, msg)) continue;
      if (read_line(fd, 10s) == msg) ok++;
      else ADD_FAILURE() << "connection " << i << ": no echo";
    }
  });
  EXPECT_EQ(ok, kConns) << interesting_lines(splitd->log());
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, FiveThousandShortConnectionsWithoutStall) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  int failures = 0;
  std::chrono::microseconds worst{0};
  const auto start = Clock::now();
  lab->in_ns(lab->host_ns(), [&] {
    for (int i = 0; i < 5000; ++i) {
      const auto t0 = Clock::now();
      auto c = tcp_connect("203.0.113.10", lab::kTcpPort, 2s);
      if (!c.fd || read_line(c.fd.get(), 2s).empty()) failures++;
      worst = std::max(worst, std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0));
    }
  });
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("5000 short connections: %.2f s (%.0f/s), slowest %lld us\n", secs, 5000 / secs,
              static_cast<long long>(worst.count()));
  EXPECT_EQ(failures, 0);
  EXPECT_LT(worst, 200ms);
  EXPECT_EQ(splitd->terminate(), 0);
}

// The server closes first, so splitd's accepted socket of a flow ends in TIME_WAIT. A
// client that reuses its port for the same server (any busy client does, sooner or later)
// must reach the listener at once: its SYN once went to the TIME_WAIT socket, which
// answered with a stale ACK, and the client got through only after a reset and a SYN
// retransmission. The client's own TCP_INFO counts such retransmissions.
TEST(TcpSplit, AClientReusingItsPortIsNotSentToTheOldFlowsTimeWait) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  constexpr int kRounds = 20;
  constexpr std::uint16_t kPort = 45678;
  int answered = 0, retransmitted = 0, client_retries = 0;
  lab->in_ns(lab->host_ns(), [&] {
    for (int i = 0; i < kRounds; ++i) {
      // The client's own bind or connect may be refused for a moment while its previous
      // socket on this port is still being torn down (seen once in 20 rounds on a loaded
      // CI machine; splitd never saw the round): that is the client's kernel, not
      // splitd, so the round is tried again, at most 5 times.
      if (client_retries >= 5) break;
      Fd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      const int one = 1;
      ::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      sockaddr_in src{};
      src.sin_family = AF_INET;
      src.sin_port = htons(kPort);
      sockaddr_in dst{};
      dst.sin_family = AF_INET;
      dst.sin_port = htons(80);
      ::inet_pton(AF_INET, "203.0.113.10", &dst.sin_addr);
      if (::bind(s.get(), reinterpret_cast<sockaddr*>(&src), sizeof src) != 0 ||
          ::connect(s.get(), reinterpret_cast<sockaddr*>(&dst), sizeof dst) != 0 ||
          !send_all(s.get(), "GET / HTTP/1.0\r\n\r\n")) {
        ++client_retries;
        --i;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      client_retries = 0;
      if (read_to_eof(s.get()).find("wan 198.18.1.2 ") != std::string::npos) answered++;
      tcp_info ti{};
      socklen_t len = sizeof ti;
      if (::getsockopt(s.get(), IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_total_retrans > 0) {
        retransmitted++;
      }
    }
  });
  EXPECT_EQ(answered, kRounds) << splitd->log();
  EXPECT_EQ(retransmitted, 0);
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, InboundConnectionsStillWork) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  std::atomic<bool> listening{false};
  std::thread server([&] {
    lab->in_ns(lab->host_ns(), [&] {
      Fd l = listen_tcp4(INADDR_ANY, 8080);
      listening = true;
      ASSERT_TRUE(l) << std::strerror(errno);
      Fd s = accept_within(l.get());
      send_all(s.get(), "hello from host\n");
    });
  });
  while (!listening) std::this_thread::sleep_for(1ms);
  lab->in_ns(lab->wan_ns(), [&] {
    auto c = tcp_connect(lab::kHostPhys4, 8080);
    ASSERT_TRUE(c.fd) << std::strerror(c.error);
    EXPECT_EQ(read_line(c.fd.get()), "hello from host\n");
  });
  server.join();
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, KillSwitchBlocksTunnelFlowsWithoutLeaking) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  // Count, in wan, every packet for the tunnel-only destination.
  ASSERT_EQ(lab->exec(lab->wan_ns(),
                      "nft add table inet leak && "
                      "nft add chain inet leak pre '{ type filter hook prerouting priority -300; }' && "
                      "nft add rule inet leak pre ip daddr 198.51.100.10 counter && "
                      "nft add rule inet leak pre ip6 daddr 2001:db8:1::10 counter")
                .exit_code, 0);
  auto splitd = SplitdProcess::start(
      *lab, lab_config("exclude", kExcludeWanServers, "", "on_tunnel_down = \"block\""));
  // The tunnel goes away: its routes vanish and the kernel's default is phys0 again.
  ASSERT_EQ(lab->exec(lab->host_ns(), "ip link set tun0 down").exit_code, 0);
  ASSERT_TRUE(splitd->wait_for_log("tunnel none")) << splitd->log();
  lab->in_ns(lab->host_ns(), [&] {
    for (const char* ip : {"198.51.100.10", "2001:db8:1::10", "198.51.100.10", "2001:db8:1::10"}) {
      auto c = tcp_connect(ip, lab::kTcpPort);
      int err = -c.error;
      std::string got;
      if (c.fd) got = read_to_eof(c.fd.get(), &err, 2s);
      EXPECT_EQ(got, "") << "a tunnel-routed flow got through with the tunnel down";
      EXPECT_EQ(err, -ECONNRESET) << ip << ": refused flows get a reset, not a hang";
    }
    // Bypassed flows keep working.
    auto ok = tcp_connect("203.0.113.10", lab::kTcpPort);
    ASSERT_TRUE(ok.fd);
    EXPECT_EQ(read_line(ok.fd.get()).rfind("wan ", 0), 0u);
  });
  const std::string counter = lab->exec(lab->wan_ns(), "nft list table inet leak").out;
  EXPECT_NE(counter.find("ip daddr 198.51.100.10 counter packets 0 bytes 0"), std::string::npos) << counter;
  EXPECT_NE(counter.find("ip6 daddr 2001:db8:1::10 counter packets 0 bytes 0"), std::string::npos) << counter;
  EXPECT_NE(splitd->log().find("kill switch: tunnel down"), std::string::npos);
  EXPECT_EQ(splitd->terminate(), 0);
  // Control: without splitd the same flow leaks to wan, so the counter does count.
  lab->in_ns(lab->host_ns(), [&] { tcp_connect("198.51.100.10", lab::kTcpPort, 1s); });
  EXPECT_EQ(lab->exec(lab->wan_ns(), "nft list table inet leak")
                .out.find("ip daddr 198.51.100.10 counter packets 0 bytes 0"),
            std::string::npos);
}

// A VPN client's kill switch (as wg-quick, Mullvad or IVPN install one): an output
// filter that drops whatever does not leave through the tunnel or loopback. splitd's
// bypassed flows pass when it allows splitd's bypass mark, as README.md tells users.
TEST(TcpSplit, CoexistsWithAVpnKillSwitch) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string kill_switch =
      "nft add table inet vpnks && "
      "nft add chain inet vpnks out '{ type filter hook output priority 0; policy drop; }' && "
      "nft add rule inet vpnks out oifname { lo, tun0 } accept && "
      "nft add rule inet vpnks out ip daddr 198.18.1.0/24 accept && "
      "nft add rule inet vpnks out ip6 daddr 2001:db8:ff:1::/64 accept";
  ASSERT_EQ(lab->exec(lab->host_ns(), kill_switch).exit_code, 0);
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  // Without an allowance the kill switch drops the bypassed flow; the tunnel still works.
  EXPECT_FALSE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 "));
  // With the documented allowance (accept splitd's bypass mark), bypassed flows go out.
  ASSERT_EQ(lab->exec(lab->host_ns(), "nft insert rule inet vpnks out meta mark 0x5d2 accept").exit_code, 0);
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 ")) << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "http://[2001:db8::10]/"), "wan 2001:db8:ff:1::2 "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 "));
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, IdleTimeoutAndMaxSessions) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(
      *lab, lab_config("exclude", kExcludeWanServers, "idle_timeout = \"500ms\"\nmax_sessions = 3"));
  lab->in_ns(lab->host_ns(), [&] {
    std::vector<Fd> held;
    Clock::time_point last_exchange;
    for (int i = 0; i < 3; ++i) {
      auto c = tcp_connect("203.0.113.10", lab::kTcpPort);
      ASSERT_TRUE(c.fd);
      ASSERT_FALSE(read_line(c.fd.get()).empty());
      if (i == 0) last_exchange = Clock::now();
      held.push_back(std::move(c.fd));
    }
    // A fourth flow is over max_sessions: refused with a reset, not left hanging.
    auto over = tcp_connect("203.0.113.10", lab::kTcpPort);
    int err = -over.error;  // the reset may already be reported by connect's SO_ERROR
    if (over.fd) read_to_eof(over.fd.get(), &err, 2s);
    EXPECT_EQ(err, -ECONNRESET);
    // The held flows go idle and are closed after 500 ms.
    std::string rest = read_to_eof(held[0].get(), &err, 3s);
    const auto took = Clock::now() - last_exchange;
    EXPECT_EQ(rest, "");
    EXPECT_GE(took, 450ms);  // idle_timeout 500 ms, counted from the greeting
    EXPECT_LT(took, 2s);
  });
  EXPECT_NE(splitd->log().find("max_sessions (3) reached"), std::string::npos);
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, SessionListWhileRunning) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  lab->in_ns(lab->host_ns(), [&] {
    auto c = tcp_connect("198.51.100.10", lab::kTcpPort);
    ASSERT_TRUE(c.fd);
    ASSERT_FALSE(read_line(c.fd.get()).empty());
    ASSERT_TRUE(send_all(c.fd.get(), "0123456789\n"));
    ASSERT_EQ(read_line(c.fd.get()), "0123456789\n");
    splitd->signal(SIGUSR1);
    ASSERT_TRUE(splitd->wait_for_log("-> 198.51.100.10:9000 tunnel via tun0 rule 'default' sent 11B/"))
        << splitd->log();
  });
  EXPECT_NE(splitd->log().find("sessions: 1 active"), std::string::npos) << splitd->log();
  EXPECT_EQ(splitd->terminate(), 0);
}

// TCP urgent data stops splice(2) at its mark; the proxy must neither spin nor stall.
TEST(TcpSplit, UrgentDataDoesNotStallTheFlow) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  lab->in_ns(lab->host_ns(), [&] {
    auto c = tcp_connect("203.0.113.10", lab::kTcpPort);
    ASSERT_TRUE(c.fd);
    ASSERT_FALSE(read_line(c.fd.get()).empty());
    ASSERT_TRUE(send_all(c.fd.get(), "ab"));
    ASSERT_EQ(::send(c.fd.get(), "!", 1, MSG_OOB), 1);
    ASSERT_TRUE(send_all(c.fd.get(), "cd\n"));
    // The urgent byte is forwarded in the stream and the flow goes on.
    EXPECT_EQ(read_line(c.fd.get(), 3s), "ab!cd\n");
    ASSERT_TRUE(send_all(c.fd.get(), "more\n"));
    EXPECT_EQ(read_line(c.fd.get(), 3s), "more\n");
  });
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(TcpSplit, StopResetsLiveFlows) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  lab->in_ns(lab->host_ns(), [&] {
    auto c = tcp_connect("198.51.100.10", lab::kTcpPort);
    ASSERT_TRUE(c.fd);
    ASSERT_FALSE(read_line(c.fd.get()).empty());
    EXPECT_EQ(splitd->terminate(), 0);
    // The app learns its connection failed; a clean EOF would look like a complete reply.
    int err = 0;
    read_to_eof(c.fd.get(), &err, 2s);
    EXPECT_EQ(err, -ECONNRESET);
  });
  expect_no_footprint(*lab);
}

TEST(TcpSplit, OneInstancePerNamespace) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto first = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  try {
    auto second = SplitdProcess::start(*lab, lab_config("exclude", {}), "second");
    ADD_FAILURE() << "a second splitd started in the same namespace";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("another splitd is already running"), std::string::npos) << e.what();
  }
  // The first one is unaffected.
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  EXPECT_EQ(first->terminate(), 0);
}

TEST(TcpSplit, RestoresPolicyRoutingWhenRemoved) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  const auto deleted = Clock::now();
  ASSERT_EQ(lab->exec(lab->host_ns(), "ip rule del fwmark 0x5d1").exit_code, 0);
  // splitd hears of rule changes on rtnetlink: it does not wait for its periodic check.
  ASSERT_TRUE(splitd->wait_for_log("policy routing changed by", 8s)) << splitd->log();
  ASSERT_TRUE(splitd->wait_for_log("firewall: restored", 2s)) << splitd->log();
  EXPECT_LT(Clock::now() - deleted, 1s);
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(lab->exec(lab->host_ns(), "ip rule | grep -c fwmark").out, "1\n");
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  EXPECT_EQ(splitd->terminate(), 0);
}

// SIGHUP while a long transfer runs: the transfer completes intact on its original
// route, and a new flow follows the new rule.
TEST(TcpSplit, ReloadKeepsRunningFlowsAndAppliesToNewOnes) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", {}));
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn 198.18.2.2 "));
  BulkResult bulk;
  std::thread transfer([&] { lab->in_ns(lab->host_ns(), [&] { bulk = bulk_echo("203.0.113.10", 64u << 20); }); });
  std::this_thread::sleep_for(100ms);
  {
    std::ofstream(lab->state_dir() + "/splitd.toml") << lab_config("exclude", kExcludeWanServers);
  }
  splitd->signal(SIGHUP);
  ASSERT_TRUE(splitd->wait_for_log("reload: rules applied")) << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  transfer.join();
  EXPECT_EQ(bulk.received, 64u << 20);
  EXPECT_EQ(bulk.mismatches, 0u);
  // A broken file keeps the running rules.
  {
    std::ofstream(lab->state_dir() + "/splitd.toml") << "[split]\nmode = \"sideways\"\n";
  }
  splitd->signal(SIGHUP);
  ASSERT_TRUE(splitd->wait_for_log("keeping the running config")) << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  EXPECT_EQ(splitd->terminate(), 0);
}

// SIGHUP with a changed [firewall] section replaces the footprint at once: a network
// added to never_intercept stops being intercepted (it follows the system's routes).
TEST(TcpSplit, ReloadAppliesFirewallChanges) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("include", {}));
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));  // direct by default
  {
    std::ofstream(lab->state_dir() + "/splitd.toml")
        << lab_config("include", {}, "", "never_intercept = [\"127.0.0.0/8\", \"::1/128\", \"203.0.113.0/24\"]");
  }
  splitd->signal(SIGHUP);
  ASSERT_TRUE(splitd->wait_for_log("reload: firewall footprint replaced")) << splitd->log();
  // Not intercepted any more: the VPN's routes take it.
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn 198.18.2.2 "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "wan 198.18.1.2 "));  // still split
  EXPECT_NE(lab->exec(lab->host_ns(), "nft list set inet splitd never4").out.find("203.0.113.0/24"),
            std::string::npos);
  EXPECT_EQ(splitd->terminate(), 0);
  expect_no_footprint(*lab);
}

TEST(TcpSplit, NothingRemainsAfterStopOrCrash) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string cfg = lab_config("exclude", kExcludeWanServers);
  auto splitd = SplitdProcess::start(*lab, cfg);
  EXPECT_NE(lab->exec(lab->host_ns(), "nft list tables").out.find("inet splitd"), std::string::npos);
  const auto t0 = Clock::now();
  EXPECT_EQ(splitd->terminate(), 0);
  EXPECT_LT(Clock::now() - t0, 2s);
  expect_no_footprint(*lab);

  // A crash leaves the footprint; the next start cleans it up and works; SIGTERM removes all.
  splitd = SplitdProcess::start(*lab, cfg);
  splitd->kill_hard();
  EXPECT_NE(lab->exec(lab->host_ns(), "nft list tables").out.find("inet splitd"), std::string::npos);
  splitd = SplitdProcess::start(*lab, cfg);
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  EXPECT_EQ(lab->exec(lab->host_ns(), "ip rule | grep -c fwmark").out, "1\n");
  EXPECT_EQ(splitd->terminate(), 0);
  expect_no_footprint(*lab);
}

TEST(TcpSplit, RestoresItsTableWhenRemoved) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  // Not owned, so that another program can delete it (an owned one refuses: self_heal_test).
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers, "", "table_owner = false"));
  ASSERT_EQ(lab->exec(lab->host_ns(), "nft delete table inet splitd").exit_code, 0);
  ASSERT_TRUE(splitd->wait_for_log("restoring it", 2s)) << splitd->log();
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  EXPECT_EQ(splitd->terminate(), 0);
}

}  // namespace
}  // namespace splitd::e2e
