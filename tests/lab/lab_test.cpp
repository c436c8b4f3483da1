// Tests of the lab itself: the paths it offers (wan via veth, vpn via the TUN relay),
// the responders, DNS, teardown, stale reaping and isolation between labs.
// Every test that needs a lab skips with the reason when it cannot run (not root...).

#include "tests/lab/lab.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/fd.hpp"

extern char** environ;

namespace splitd::lab {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr auto kIoTimeout = 10s;

// ---- small socket helpers (all non-blocking with deadlines: a test never hangs) ----

struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  int family = AF_UNSPEC;
};

Endpoint endpoint(const std::string& ip, uint16_t port) {
  Endpoint e;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&e.addr);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&e.addr);
  if (::inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    e.len = sizeof *v4;
    e.family = AF_INET;
  } else if (::inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    e.len = sizeof *v6;
    e.family = AF_INET6;
  } else {
    throw std::invalid_argument("not an IP address: " + ip);
  }
  return e;
}

[[noreturn]] void fail(const std::string& what, int err = errno) {
  throw std::runtime_error(what + ": " + std::strerror(err));
}

// Waits until fd is ready for `events`; false on timeout.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, static_cast<int>(left.count()));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) fail("poll");
  }
}

uint16_t local_port(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) fail("getsockname");
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                       : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

// A TCP client connection with a read buffer for line-based reads.
struct TcpClient {
  Fd fd;
  std::string buffered;

  static TcpClient connect(const std::string& ip, uint16_t port) {
    const Endpoint e = endpoint(ip, port);
    TcpClient c;
    c.fd = Fd(::socket(e.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!c.fd) fail("socket");
    if (::connect(c.fd.get(), reinterpret_cast<const sockaddr*>(&e.addr), e.len) != 0 &&
        errno != EINPROGRESS) {
      fail("connect " + ip);
    }
    if (!wait_ready(c.fd.get(), POLLOUT, Clock::now() + kIoTimeout)) {
      throw std::runtime_error("connect " + ip + ": timed out");
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(c.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
    if (err != 0) fail("connect " + ip + ":" + std::to_string(port), err);
    return c;
  }

  // Reads one more chunk into `buffered`; false at EOF.
  bool fill(Clock::time_point deadline) {
    char buf[64 * 1024];
    for (;;) {
      const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
      if (n > 0) {
        buffered.append(buf, static_cast<size_t>(n));
        return true;
      }
      if (n == 0) return false;
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) fail("recv");
      if (!wait_ready(fd.get(), POLLIN, deadline)) throw std::runtime_error("recv: timed out");
    }
  }

  std::string read_line() {
    const auto deadline = Clock::now() + kIoTimeout;
    for (;;) {
      const size_t nl = buffered.find('\n');
      if (nl != std::string::npos) {
        std::string line = buffered.substr(0, nl + 1);
        buffered.erase(0, nl + 1);
        return line;
      }
      if (!fill(deadline)) throw std::runtime_error("EOF before end of line: '" + buffered + "'");
    }
  }

  std::string read_to_eof() {
    const auto deadline = Clock::now() + kIoTimeout;
    while (fill(deadline)) {
    }
    return std::exchange(buffered, {});
  }

  void write_all(std::string_view data) {
    const auto deadline = Clock::now() + kIoTimeout;
    while (!data.empty()) {
      const ssize_t n = ::send(fd.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n > 0) {
        data.remove_prefix(static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) fail("send");
      if (!wait_ready(fd.get(), POLLOUT, deadline)) throw std::runtime_error("send: timed out");
    }
  }

  void shutdown_write() {
    if (::shutdown(fd.get(), SHUT_WR) != 0) fail("shutdown");
  }
};

// Sends `payload` over a connected UDP socket and returns the reply (retries: UDP).
std::string udp_exchange(const std::string& ip, uint16_t port, const std::string& payload,
                         uint16_t* local = nullptr) {
  const Endpoint e = endpoint(ip, port);
  Fd fd(::socket(e.family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) fail("socket");
  // Connected: the kernel drops replies from any other source address, so a reply
  // proves the responder answered from the address we sent to.
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&e.addr), e.len) != 0) {
    fail("connect udp " + ip);
  }
  if (local != nullptr) *local = local_port(fd.get());
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (::send(fd.get(), payload.data(), payload.size(), 0) < 0) fail("send udp");
    if (!wait_ready(fd.get(), POLLIN, Clock::now() + 2s)) continue;
    std::string reply(70000, '\0');
    const ssize_t n = ::recv(fd.get(), reply.data(), reply.size(), 0);
    if (n < 0) fail("recv udp from " + ip);
    reply.resize(static_cast<size_t>(n));
    return reply;
  }
  throw std::runtime_error("no UDP reply from " + ip);
}

// "wan 198.18.1.2 41234\n" -> "wan 198.18.1.2" (the port varies).
std::string side_and_ip(const std::string& greeting) {
  std::istringstream in(greeting);
  std::string side, ip, port;
  in >> side >> ip >> port;
  if (port.empty() || !std::all_of(port.begin(), port.end(),
                                   [](unsigned char c) { return std::isdigit(c) != 0; })) {
    return "malformed greeting: '" + greeting + "'";
  }
  return side + " " + ip;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string curl(const Lab& lab, const std::string& url) {
  const CmdResult r = lab.exec("host", "curl -sS --noproxy '*' --max-time 5 -g '" + url + "'");
  EXPECT_EQ(r.exit_code, 0) << url << ": " << r.err;
  return r.out;
}

std::string dig(const Lab& lab, const std::string& server, const std::string& name,
                const std::string& type) {
  const CmdResult r =
      lab.exec("host", "dig +short +time=2 +tries=2 @" + server + " " + name + " " + type);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return trimmed(r.out);
}

bool ns_exists(const std::string& name) { return fs::exists("/run/netns/" + name); }

bool pid_alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return false;
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z' &&
         stat[paren + 2] != 'X';
}

// Checks that nothing of lab `id` is left: namespaces, state dir, processes.
void expect_lab_gone(const std::string& id, const std::vector<pid_t>& recorded) {
  for (const char* role : {"host", "wan", "vpn"}) {
    EXPECT_FALSE(ns_exists("sdlab-" + id + "-" + role)) << role;
  }
  const CmdResult list = run_command({"ip", "netns", "list"});
  EXPECT_EQ(list.out.find("sdlab-" + id), std::string::npos) << list.out;
  EXPECT_FALSE(fs::exists("/run/splitd-lab/" + id));
  for (const pid_t pid : recorded) EXPECT_FALSE(pid_alive(pid)) << "pid " << pid;
  EXPECT_TRUE(live_pids_mentioning(id).empty());
}

// Starts argv in its own process group, output discarded; returns its pid.
pid_t spawn(const std::vector<std::string>& argv) {
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, cargv[0], &actions, &attr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) fail("posix_spawnp " + argv[0], rc);
  return pid;
}

// waitpid with a deadline; the exit code (128+N for signal N), or nullopt on timeout.
std::optional<int> wait_exit(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  int status = 0;
  while (Clock::now() < deadline) {
    const pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(5ms);
  }
  return std::nullopt;
}

// Removes a lab started with lab.sh directly, if a test fails before doing it itself.
struct DownGuard {
  std::string id;
  ~DownGuard() {
    if (!id.empty()) run_command({"bash", lab_script(), "down", id});
  }
};

std::string parse_var(const std::string& out, const std::string& key) {
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + "=", 0) == 0) return line.substr(key.size() + 1);
  }
  return "";
}

std::string bin_dir() {
  std::string dir = tun_relay_path();
  return dir.substr(0, dir.rfind('/'));
}

// ---- paths ---------------------------------------------------------------------------

TEST(LabTest, HttpTakesWanThenVpnDefaultRouteThenWanAgain) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  const std::string v4 = std::string("http://") + kServerA4 + "/";
  const std::string v6 = std::string("http://[") + kServerA6 + "]/";
  EXPECT_EQ(side_and_ip(curl(*lab, v4)), std::string("wan ") + kHostPhys4);
  EXPECT_EQ(side_and_ip(curl(*lab, v6)), std::string("wan ") + kHostPhys6);

  lab->set_vpn_default_route(true);
  lab->set_vpn_default_route(true);  // idempotent
  // Through the TUN relay, from the tunnel's source address: v4 and v6 both work.
  EXPECT_EQ(side_and_ip(curl(*lab, v4)), std::string("vpn ") + kHostTun4);
  EXPECT_EQ(side_and_ip(curl(*lab, v6)), std::string("vpn ") + kHostTun6);
  EXPECT_EQ(side_and_ip(curl(*lab, std::string("http://") + kServerB4 + "/")),
            std::string("vpn ") + kHostTun4);

  lab->set_vpn_default_route(false);
  lab->set_vpn_default_route(false);  // idempotent
  EXPECT_EQ(side_and_ip(curl(*lab, v4)), std::string("wan ") + kHostPhys4);
  EXPECT_EQ(side_and_ip(curl(*lab, v6)), std::string("wan ") + kHostPhys6);
}

TEST(LabTest, VpnDefaultRouteCanBeOnFromTheStart) {
  LabOptions opts;
  opts.vpn_default_route = true;
  auto lab = SPLITD_LAB_OR_SKIP(opts);
  EXPECT_EQ(side_and_ip(curl(*lab, std::string("http://") + kServerA4 + "/")),
            std::string("vpn ") + kHostTun4);
  EXPECT_EQ(side_and_ip(curl(*lab, std::string("http://[") + kServerB6 + "]/")),
            std::string("vpn ") + kHostTun6);
}

TEST(LabTest, WanDoesNotRouteTheVpnAddress) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  // A packet from the tunnel address that leaves via phys0 must die in wan, as at a
  // real ISP; and the vpn side has no route back to the phys0 network.
  const CmdResult r =
      lab->exec("host", std::string("curl -sS --max-time 1 --interface ") + kHostTun4 +
                            " --noproxy '*' " + "http://" + kWanGw4 + "/");
  EXPECT_NE(r.exit_code, 0) << r.out;
  const CmdResult wan_route = lab->exec("wan", std::string("ip route get ") + kHostTun4);
  EXPECT_NE(wan_route.exit_code, 0) << wan_route.out;
  const CmdResult vpn_route = lab->exec("vpn", std::string("ip route get ") + kHostPhys4);
  EXPECT_NE(vpn_route.exit_code, 0) << vpn_route.out;
}

// ---- responders ------------------------------------------------------------------------

void expect_tcp_greeting_and_echo(const Lab& lab, const std::string& side,
                                  const std::string& host_v4, const std::string& host_v6) {
  lab.in_ns("host", [&] {
    for (const auto& [server, client] :
         {std::pair{std::string(kServerA4), host_v4}, std::pair{std::string(kServerB4), host_v4},
          std::pair{std::string(kServerA6), host_v6}, std::pair{std::string(kServerB6), host_v6}}) {
      SCOPED_TRACE(server);
      TcpClient c = TcpClient::connect(server, kTcpPort);
      EXPECT_EQ(c.read_line(),
                side + " " + client + " " + std::to_string(local_port(c.fd.get())) + "\n");
      c.write_all("hello ");
      c.write_all("lab\n");
      c.shutdown_write();  // half-close: the echo must still come back, then EOF
      EXPECT_EQ(c.read_to_eof(), "hello lab\n");
    }
  });
}

TEST(LabTest, TcpResponderGreetsAndEchoesOnBothPaths) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  expect_tcp_greeting_and_echo(*lab, "wan", kHostPhys4, kHostPhys6);
  lab->set_vpn_default_route(true);
  expect_tcp_greeting_and_echo(*lab, "vpn", kHostTun4, kHostTun6);
}

TEST(LabTest, MebibyteEchoRoundTripThroughTheTunnel) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  lab->set_vpn_default_route(true);
  std::string payload(1 << 20, '\0');
  std::mt19937 rng(42);
  for (char& ch : payload) ch = static_cast<char>(rng());
  lab->in_ns("host", [&] {
    for (const char* server : {kServerA4, kServerA6}) {
      SCOPED_TRACE(server);
      TcpClient c = TcpClient::connect(server, kTcpPort);
      EXPECT_EQ(side_and_ip(c.read_line()),
                std::string("vpn ") + (std::string(server) == kServerA4 ? kHostTun4 : kHostTun6));
      // Write and read at once: the echo pushes back once buffers fill.
      size_t sent = 0;
      std::string received;
      bool eof = false;
      const auto deadline = Clock::now() + 30s;
      while (!eof) {
        ASSERT_LT(Clock::now(), deadline) << "sent " << sent << ", received " << received.size();
        pollfd p{c.fd.get(), static_cast<short>(POLLIN | (sent < payload.size() ? POLLOUT : 0)), 0};
        ASSERT_GE(::poll(&p, 1, 1000), 0);
        if ((p.revents & POLLOUT) != 0 && sent < payload.size()) {
          const ssize_t n =
              ::send(c.fd.get(), payload.data() + sent,
                     std::min<size_t>(payload.size() - sent, 64 * 1024), MSG_NOSIGNAL);
          ASSERT_TRUE(n > 0 || errno == EAGAIN) << std::strerror(errno);
          if (n > 0) sent += static_cast<size_t>(n);
          if (sent == payload.size()) c.shutdown_write();
        }
        if ((p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
          char buf[64 * 1024];
          const ssize_t n = ::recv(c.fd.get(), buf, sizeof buf, 0);
          if (n == 0)
            eof = true;
          else if (n > 0)
            received.append(buf, static_cast<size_t>(n));
          else
            ASSERT_EQ(errno, EAGAIN) << std::strerror(errno);
        }
      }
      EXPECT_EQ(sent, payload.size());
      EXPECT_EQ(received.size(), payload.size());
      EXPECT_TRUE(received == payload) << "echoed bytes differ";
    }
  });
}

TEST(LabTest, TcpResponderHoldsAThousandConcurrentConnections) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  constexpr int kConnections = 1000;
  rlimit rl{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur < kConnections + 200) {
    rl.rlim_cur = std::min<rlim_t>(rl.rlim_max, kConnections + 200);
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur < kConnections + 200) GTEST_SKIP() << "RLIMIT_NOFILE too low: " << rl.rlim_cur;
  lab->in_ns("host", [&] {
    std::vector<TcpClient> clients;
    clients.reserve(kConnections);
    for (int i = 0; i < kConnections; ++i)
      clients.push_back(TcpClient::connect(kServerA4, kTcpPort));
    // All open at once; now each one must still be served.
    for (TcpClient& c : clients) {
      ASSERT_EQ(side_and_ip(c.read_line()), std::string("wan ") + kHostPhys4);
    }
    for (int i = 0; i < kConnections; ++i) {
      clients[i].write_all("n" + std::to_string(i) + "\n");
      clients[i].shutdown_write();
    }
    for (int i = 0; i < kConnections; ++i) {
      ASSERT_EQ(clients[i].read_to_eof(), "n" + std::to_string(i) + "\n");
    }
  });
}

TEST(LabTest, UdpResponderRepliesWithSidePeerAndPayload) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  auto check = [&](const std::string& side, const std::string& host_v4,
                   const std::string& host_v6) {
    lab->in_ns("host", [&] {
      for (const auto& [server, client] :
           {std::pair{std::string(kServerA4), host_v4}, std::pair{std::string(kServerB4), host_v4},
            std::pair{std::string(kServerA6), host_v6},
            std::pair{std::string(kServerB6), host_v6}}) {
        SCOPED_TRACE(server);
        uint16_t port = 0;
        const std::string reply = udp_exchange(server, kUdpPort, "ping\n\x01payload", &port);
        EXPECT_EQ(reply, side + " " + client + " " + std::to_string(port) + "\nping\n\x01payload");
      }
    });
  };
  check("wan", kHostPhys4, kHostPhys6);
  lab->set_vpn_default_route(true);
  check("vpn", kHostTun4, kHostTun6);
}

TEST(LabTest, HttpResponderKeepsAliveAndHonoursConnectionClose) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  lab->in_ns("host", [&] {
    TcpClient c = TcpClient::connect(kServerA4, kHttpPort);
    const std::string greeting =
        std::string("wan ") + kHostPhys4 + " " + std::to_string(local_port(c.fd.get())) + "\n";
    // Two pipelined keep-alive requests, then one asking to close.
    c.write_all("GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n");
    c.write_all("GET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    const std::string all = c.read_to_eof();  // EOF proves Connection: close was honoured
    const std::string one =
        "HTTP/1.1 200 OK\r\nServer: lab-responder\r\nContent-Type: text/plain\r\n"
        "Content-Length: " +
        std::to_string(greeting.size());
    EXPECT_EQ(all, one + "\r\nConnection: keep-alive\r\n\r\n" + greeting + one +
                       "\r\nConnection: keep-alive\r\n\r\n" + greeting + one +
                       "\r\nConnection: close\r\n\r\n" + greeting);
  });
  // curl reuses the connection for a second URL.
  const CmdResult r = lab->exec(
      "host",
      std::string(
          "curl -sS --noproxy '*' --max-time 5 -o /dev/null -o /dev/null -w '%{num_connects} ' ") +
          "http://" + kServerA4 + "/ http://" + kServerA4 + "/b");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "1 0 ");
  // Garbage gets 400 and a closed connection, and the responder keeps serving.
  lab->in_ns("host", [&] {
    TcpClient c = TcpClient::connect(kServerA6, kHttpPort);
    c.write_all("\x01\x02 nonsense\r\n\r\n");
    EXPECT_EQ(c.read_to_eof().rfind("HTTP/1.1 400 Bad Request\r\n", 0), 0u);
  });
  EXPECT_EQ(side_and_ip(curl(*lab, std::string("http://") + kServerA4 + "/")),
            std::string("wan ") + kHostPhys4);
}

// ---- DNS -------------------------------------------------------------------------------

TEST(LabTest, DnsAnswerDependsOnThePathTaken) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  for (const char* server : {kDns4, kDns6}) {
    SCOPED_TRACE(server);
    EXPECT_EQ(dig(*lab, server, kWhoamiName, "A"), kServerA4);
    EXPECT_EQ(dig(*lab, server, kWhoamiName, "AAAA"), kServerA6);
    EXPECT_EQ(dig(*lab, server, kSideName, "TXT"), "\"wan\"");
  }
  // Names the lab does not own are never forwarded anywhere.
  const CmdResult other = lab->exec("host", std::string("dig +time=2 +tries=1 @") + kDns4 +
                                                " example.com A | grep -o 'status: [A-Z]*'");
  EXPECT_TRUE(other.out == "status: REFUSED\n" || other.out == "status: NXDOMAIN\n") << other.out;
  const CmdResult unknown = lab->exec("host", std::string("dig +time=2 +tries=1 @") + kDns4 +
                                                  " nothing.lab.test A | grep -o 'status: [A-Z]*'");
  EXPECT_EQ(unknown.out, "status: NXDOMAIN\n");

  lab->set_vpn_default_route(true);
  for (const char* server : {kDns4, kDns6}) {
    SCOPED_TRACE(server);
    EXPECT_EQ(dig(*lab, server, kWhoamiName, "A"), kServerB4);
    EXPECT_EQ(dig(*lab, server, kWhoamiName, "AAAA"), kServerB6);
    EXPECT_EQ(dig(*lab, server, kSideName, "TXT"), "\"vpn\"");
  }
}

// ---- lifecycle ---------------------------------------------------------------------------

TEST(LabTest, StopLeavesNothingBehind) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  const std::string id = lab->id();
  const std::vector<pid_t> pids = lab->processes();
  // relay, two responders, two dnsmasq
  EXPECT_GE(pids.size(), 5u);
  for (const pid_t pid : pids) EXPECT_TRUE(pid_alive(pid)) << pid;
  EXPECT_TRUE(ns_exists(lab->host_ns()) && ns_exists(lab->wan_ns()) && ns_exists(lab->vpn_ns()));
  EXPECT_TRUE(fs::exists(lab->state_dir()));

  lab->stop();
  expect_lab_gone(id, pids);
  lab->stop();  // idempotent
  const CmdResult again = run_command({"bash", lab_script(), "down", id});
  EXPECT_EQ(again.exit_code, 0) << again.err;
}

TEST(LabTest, StaleLabOfADeadOwnerIsReapedByTheNextStart) {
  if (const std::string why = unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  const pid_t owner = spawn({"sleep", "600"});
  const CmdResult up = run_command(
      {"bash", lab_script(), "up", "--owner", std::to_string(owner), "--bin-dir", bin_dir()}, 60s);
  DownGuard guard{parse_var(up.out, "LAB_ID")};
  ASSERT_EQ(up.exit_code, 0) << up.err;
  const std::string stale_id = guard.id;
  ASSERT_FALSE(stale_id.empty()) << up.out;
  std::vector<pid_t> stale_pids = live_pids_mentioning(stale_id);
  for (const char* role : {"host", "wan", "vpn"}) {
    const CmdResult r = run_command({"ip", "netns", "pids", "sdlab-" + stale_id + "-" + role});
    std::istringstream in(r.out);
    for (long pid; in >> pid;) stale_pids.push_back(static_cast<pid_t>(pid));
  }
  EXPECT_GE(stale_pids.size(), 5u);

  // The owner dies without cleaning up (as a crashed test would).
  ::kill(owner, SIGKILL);
  ASSERT_TRUE(wait_exit(owner, 5s).has_value());

  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{});
  expect_lab_gone(stale_id, stale_pids);
  EXPECT_EQ(side_and_ip(curl(*lab, std::string("http://") + kServerA4 + "/")),
            std::string("wan ") + kHostPhys4);
  const CmdResult list = run_command({"bash", lab_script(), "list"});
  EXPECT_NE(list.out.find(lab->id() + " owner=" + std::to_string(::getpid()) + " live"),
            std::string::npos)
      << list.out;
}

TEST(LabTest, InterruptedUpRemovesTheHalfBuiltLab) {
  if (const std::string why = unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  std::set<std::string> before;
  if (fs::exists("/run/splitd-lab")) {
    for (const auto& e : fs::directory_iterator("/run/splitd-lab"))
      before.insert(e.path().filename().string());
  }
  const pid_t up = spawn(
      {"bash", lab_script(), "up", "--owner", std::to_string(::getpid()), "--bin-dir", bin_dir()});
  // Wait until it is half-built (namespaces exist, servers starting), then interrupt.
  std::string id;
  const auto deadline = Clock::now() + 20s;
  while (id.empty() && Clock::now() < deadline) {
    if (fs::exists("/run/splitd-lab")) {
      for (const auto& e : fs::directory_iterator("/run/splitd-lab")) {
        const std::string name = e.path().filename().string();
        // Ours: new, and owned by this process (other test processes may build labs now).
        std::ifstream owner(e.path() / "owner");
        long owner_pid = 0;
        if (!before.count(name) && owner >> owner_pid && owner_pid == ::getpid() &&
            fs::exists(e.path() / "responder-wan.log")) {
          id = name;
        }
      }
    }
    if (id.empty()) std::this_thread::sleep_for(1ms);
  }
  ASSERT_FALSE(id.empty()) << "lab.sh up never got half-way";
  ::kill(up, SIGTERM);
  const std::optional<int> rc = wait_exit(up, 30s);
  ASSERT_TRUE(rc.has_value()) << "lab.sh up did not exit after SIGTERM";
  DownGuard guard{*rc == 0 ? id : ""};
  if (*rc == 0) GTEST_SKIP() << "lab.sh up finished before SIGTERM arrived; nothing to test";
  // 143 = 128 + SIGTERM from the trap's `exit 143`. bash 5.2.15 (Debian 12) fails to parse
  // any trap action when the signal lands while it expands a $(...) (it reports "trap:
  // line 2: unexpected EOF while looking for matching `)'" and exits with 2); the EXIT trap
  // still removes the lab, which is what this test is about (reproduced with a SIGTERM at
  // random points of `up`: about 1 in 100).
  EXPECT_TRUE(*rc == 143 || *rc == 2) << "exit code " << *rc;
  expect_lab_gone(id, {});
}

TEST(LabTest, TwoLabsAtOnceDoNotCollide) {
  auto a = SPLITD_LAB_OR_SKIP(LabOptions{});
  auto b = SPLITD_LAB_OR_SKIP(LabOptions{});
  EXPECT_NE(a->id(), b->id());
  EXPECT_NE(a->host_ns(), b->host_ns());
  b->set_vpn_default_route(true);
  EXPECT_EQ(side_and_ip(curl(*a, std::string("http://") + kServerA4 + "/")),
            std::string("wan ") + kHostPhys4);
  EXPECT_EQ(side_and_ip(curl(*b, std::string("http://") + kServerA4 + "/")),
            std::string("vpn ") + kHostTun4);
  EXPECT_EQ(dig(*a, kDns6, kSideName, "TXT"), "\"wan\"");
  EXPECT_EQ(dig(*b, kDns6, kSideName, "TXT"), "\"vpn\"");
  const std::string a_id = a->id();
  a->stop();
  // Stopping one leaves the other intact.
  EXPECT_FALSE(ns_exists(a->host_ns()));
  EXPECT_EQ(side_and_ip(curl(*b, std::string("http://[") + kServerA6 + "]/")),
            std::string("vpn ") + kHostTun6);
  EXPECT_TRUE(live_pids_mentioning(a_id).empty());
}

// ---- helper programs (these need no root) -------------------------------------------------

TEST(LabHelpers, RelayRejectsBadArguments) {
  CmdResult r = run_command({tun_relay_path(), "--bogus"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown argument '--bogus'"), std::string::npos) << r.err;
  r = run_command({tun_relay_path(), "--netns-a", "x"});
  EXPECT_EQ(r.exit_code, 2);
  r = run_command({tun_relay_path(), "--netns-a", "/nonexistent/ns", "--name-a", "tun0",
                   "--netns-b", "/nonexistent/ns2", "--name-b", "tun0"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("cannot open network namespace /nonexistent/ns"), std::string::npos)
      << r.err;
  r = run_command({tun_relay_path(), "--netns-a", "a", "--name-a", "much-too-long-name",
                   "--netns-b", "b", "--name-b", "tun0"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("invalid interface name"), std::string::npos) << r.err;
  for (const char* bad : {"abc", "5000", "-1", "", "5ms"}) {
    r = run_command({tun_relay_path(), "--netns-a", "a", "--name-a", "tun0", "--netns-b", "b",
                     "--name-b", "tun0", "--delay-ms", bad});
    EXPECT_EQ(r.exit_code, 2) << bad;
    EXPECT_NE(r.err.find("invalid --delay-ms"), std::string::npos) << bad << ": " << r.err;
  }
  r = run_command({tun_relay_path(), "--netns-a", "a", "--name-a", "tun0", "--netns-b", "b",
                   "--name-b", "tun0", "--delay-ms"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST(LabHelpers, ResponderRejectsBadArguments) {
  CmdResult r = run_command({responder_path()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--side NAME is required"), std::string::npos) << r.err;
  r = run_command({responder_path(), "--side", "wan", "--tcp-port", "70000"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("invalid port '70000'"), std::string::npos) << r.err;
  r = run_command({responder_path(), "--side", "two words"});
  EXPECT_EQ(r.exit_code, 2);
  r = run_command({responder_path(), "--side", "wan", "--tcp-port"});
  EXPECT_EQ(r.exit_code, 2);
}

TEST(LabHelpers, LabScriptRejectsBadIds) {
  for (const char* bad : {"", "xyz", "DEADBEEF", "deadbeef0", "../etc"}) {
    const CmdResult r = run_command({"bash", lab_script(), "down", bad});
    EXPECT_NE(r.exit_code, 0) << bad;
  }
  const CmdResult r = run_command({"bash", lab_script(), "frobnicate"});
  EXPECT_NE(r.exit_code, 0);
}

// The real VPN clients: each installs its own routes (OpenVPN a host route to its server
// via wan and 0/1 + 128/1; wg-quick its fwmark rules, table 51820 and its nft table),
// carries IPv4 and IPv6, goes down and comes back as a new tun0, and leaves nothing behind.
class LabVpn : public ::testing::TestWithParam<Vpn> {};

TEST_P(LabVpn, RealClientCarriesBothFamiliesGoesDownAndComesBack) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{.vpn = GetParam()});
  EXPECT_EQ(lab->vpn(), GetParam());
  const std::string v4 = std::string("http://") + kServerA4 + "/";
  const std::string v6 = std::string("http://[") + kServerA6 + "]/";
  EXPECT_EQ(side_and_ip(curl(*lab, v4)), std::string("vpn ") + kHostTun4);
  EXPECT_EQ(side_and_ip(curl(*lab, v6)), std::string("vpn ") + kHostTun6);
  if (GetParam() == Vpn::kOpenVpn) {
    const std::string routes = lab->exec("host", "ip -4 route").out;
    EXPECT_NE(routes.find(std::string(kVpnServer4) + " via " + kWanGw4 + " dev phys0"), std::string::npos)
        << routes;
    EXPECT_NE(routes.find("0.0.0.0/1 via"), std::string::npos) << routes;
  } else {
    EXPECT_NE(lab->exec("host", "ip rule").out.find("not from all fwmark 0xca6c lookup 51820"),
              std::string::npos);
    const std::string nft = lab->exec("host", "nft list ruleset").out;
    EXPECT_NE(nft.find("table ip wg-quick-tun0"), std::string::npos) << nft;
    EXPECT_NE(nft.find("table ip6 wg-quick-tun0"), std::string::npos) << nft;
  }
  const int ifindex_before = std::stoi(lab->exec("host", "cat /sys/class/net/tun0/ifindex").out);
  lab->set_vpn_up(false);
  EXPECT_NE(lab->exec("host", "ip link show tun0").exit_code, 0) << "tun0 must be gone";
  // Without the VPN's routes the system's default (phys0) carries everything.
  EXPECT_EQ(side_and_ip(curl(*lab, v4)), std::string("wan ") + kHostPhys4);
  EXPECT_EQ(lab->exec("host", "nft list ruleset").out.find("wg-quick"), std::string::npos);
  EXPECT_THROW(lab->set_vpn_up(false), std::runtime_error) << "down twice: tun0 is already gone";
  lab->set_vpn_up(true);
  EXPECT_EQ(side_and_ip(curl(*lab, v4)), std::string("vpn ") + kHostTun4);
  EXPECT_EQ(side_and_ip(curl(*lab, v6)), std::string("vpn ") + kHostTun6);
  EXPECT_NE(std::stoi(lab->exec("host", "cat /sys/class/net/tun0/ifindex").out), ifindex_before);
  EXPECT_THROW(lab->set_vpn_up(true), std::runtime_error) << "already up";
}

TEST_P(LabVpn, StopLeavesNothingBehind) {
  auto lab = SPLITD_LAB_OR_SKIP(LabOptions{.vpn = GetParam()});
  const std::string id = lab->id();
  const std::vector<pid_t> pids = lab->processes();
  // two responders, two dnsmasq, the VPN server and client
  EXPECT_GE(pids.size(), 6u);
  lab->stop();
  expect_lab_gone(id, pids);
  for (const char* daemon : {"openvpn", "wireguard-go"}) {
    const CmdResult r = run_command({"pgrep", "-f", std::string(daemon) + ".*tun0"});
    for (std::istringstream in(r.out); !in.eof();) {
      long pid = 0;
      if (in >> pid) {
        // Another lab's (a parallel test) is fine; one of ours would be in a deleted namespace.
        EXPECT_FALSE(std::find(pids.begin(), pids.end(), pid) != pids.end()) << daemon << " " << pid;
      }
    }
  }
}

TEST(LabHelpers, VpnOptionsAreChecked) {
  if (const std::string why = unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--vpn", "ipsec"}, {"--vpn", "openvpn", "--vpn-default-route"},
        {"--vpn", "wireguard", "--tunnel", "veth"}}) {
    std::vector<std::string> argv = {"bash", lab_script(), "up"};
    argv.insert(argv.end(), args.begin(), args.end());
    const CmdResult r = run_command(argv);
    EXPECT_NE(r.exit_code, 0) << args[1];
    EXPECT_NE(r.err.find("lab.sh: up:"), std::string::npos) << r.err;
  }
  const CmdResult relay = run_command({"bash", lab_script(), "vpn", "0badbeef", "up"});
  EXPECT_NE(relay.exit_code, 0);
}

INSTANTIATE_TEST_SUITE_P(RealClients, LabVpn, ::testing::Values(Vpn::kOpenVpn, Vpn::kWireGuard),
                         [](const ::testing::TestParamInfo<Vpn>& info) {
                           return info.param == Vpn::kOpenVpn ? std::string("OpenVpn")
                                                              : std::string("WireGuard");
                         });

}  // namespace
}  // namespace splitd::lab
