// lab-load (bench/lab_load) end to end on loopback: `lab-load serve` as a child process
// and every client mode against it, plus the command-line errors. Unprivileged; uses
// 127.0.0.1 and, where the machine has it, ::1.

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace splitd::bench {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

struct RunResult {
  int exit_code = -1;  // -signal if killed by a signal
  bool timed_out = false;
  std::string out;
  std::string err;
};

// One lab-load child with its stdout and stderr on pipes. The destructor kills and reaps
// it if it is still running, so no child outlives a failing test.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&fa, err[1], STDERR_FILENO);
    std::vector<std::string> all = {LAB_LOAD_PATH};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, LAB_LOAD_PATH, &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
    if (rc != 0) {
      pid_ = -1;
      throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
  }

  pid_t pid() const { return pid_; }
  void signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  bool running() {
    if (pid_ <= 0) return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == 0) return true;
    pid_ = -1;
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    return false;
  }

  // Collects the output until the child exits; kills it after `timeout`.
  RunResult finish(std::chrono::milliseconds timeout) {
    RunResult r;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (out_fd_ >= 0 || err_fd_ >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) {
        r.timed_out = true;
        signal(SIGKILL);
        break;
      }
      pollfd p[2] = {{out_fd_, POLLIN, 0}, {err_fd_, POLLIN, 0}};
      if (::poll(p, 2, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
      read_some(out_fd_, p[0].revents, r.out);
      read_some(err_fd_, p[1].revents, r.err);
    }
    if (r.timed_out) {
      // Drain what is left after the kill.
      for (int* fd : {&out_fd_, &err_fd_}) {
        while (*fd >= 0) read_some(*fd, POLLIN, fd == &out_fd_ ? r.out : r.err);
      }
    }
    if (pid_ > 0) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    }
    r.exit_code = exit_code_;
    return r;
  }

 private:
  static void read_some(int& fd, short revents, std::string& into) {
    if (fd < 0 || (revents & (POLLIN | POLLHUP | POLLERR)) == 0) return;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      into.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      ::close(fd);
      fd = -1;
    }
  }

  pid_t pid_ = -1;
  int out_fd_ = -1;
  int err_fd_ = -1;
  int exit_code_ = -1;
};

RunResult run(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 20s) {
  Child c(args);
  return c.finish(timeout);
}

// The one JSON object a mode prints: exactly one newline-terminated line.
json parse_output(const RunResult& r) {
  EXPECT_FALSE(r.out.empty()) << "stderr: " << r.err;
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << r.out;
  return json::parse(r.out);
}

bool loopback_available(int family) {
  const int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_storage ss{};
  socklen_t len = 0;
  if (family == AF_INET6) {
    auto& a = reinterpret_cast<sockaddr_in6&>(ss);
    a.sin6_family = AF_INET6;
    a.sin6_addr = in6addr_loopback;
    len = sizeof a;
  } else {
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    len = sizeof a;
  }
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0;
  ::close(fd);
  return ok;
}

// A port that is free for TCP and UDP on the loopback address of `family` right now.
uint16_t free_port(int family = AF_INET) {
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int tcp = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int udp = ::socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (family == AF_INET6) {
      auto& a = reinterpret_cast<sockaddr_in6&>(ss);
      a.sin6_family = AF_INET6;
      a.sin6_addr = in6addr_loopback;
      len = sizeof a;
    } else {
      auto& a = reinterpret_cast<sockaddr_in&>(ss);
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      len = sizeof a;
    }
    uint16_t port = 0;
    if (::bind(tcp, reinterpret_cast<sockaddr*>(&ss), len) == 0 &&
        ::getsockname(tcp, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
      port = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6&>(ss).sin6_port
                                      : reinterpret_cast<sockaddr_in&>(ss).sin_port);
      if (::bind(udp, reinterpret_cast<sockaddr*>(&ss), len) != 0) port = 0;
    }
    ::close(tcp);
    ::close(udp);
    if (port != 0) return port;
  }
  throw std::runtime_error("no free port");
}

std::string address(int family, uint16_t port) {
  return (family == AF_INET6 ? "[::1]:" : "127.0.0.1:") + std::to_string(port);
}

// A private directory for pid and ready files, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "lab_load_test.XXXXXX").string();
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp");
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `lab-load serve` on loopback, ready once its pid file exists.
class Server {
 public:
  explicit Server(bool http, int family = AF_INET)
      : port_(free_port(family)),
        target_(address(family, port_)),
        child_(args(http, dir_.file("serve.pid"), target_)) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!std::filesystem::exists(dir_.file("serve.pid"))) {
      if (!child_.running() || std::chrono::steady_clock::now() > deadline) {
        const RunResult r = child_.finish(1s);
        throw std::runtime_error("lab-load serve did not start: " + r.err);
      }
      std::this_thread::sleep_for(10ms);
    }
  }

  const std::string& target() const { return target_; }
  uint16_t port() const { return port_; }
  // SIGTERM; returns what it printed.
  RunResult stop() {
    child_.signal(SIGTERM);
    return child_.finish(5s);
  }

 private:
  static std::vector<std::string> args(bool http, const std::string& pidfile,
                                       const std::string& target) {
    std::vector<std::string> a = {"serve", "--listen", target, "--pidfile", pidfile};
    if (http) a.push_back("--http");
    return a;
  }

  TempDir dir_;
  uint16_t port_;
  std::string target_;
  Child child_;
};

void expect_latency(const json& lat) {
  ASSERT_TRUE(lat.is_object()) << lat;
  EXPECT_GT(lat["p50"].get<double>(), 0.0);
  EXPECT_LE(lat["p50"].get<double>(), lat["p90"].get<double>());
  EXPECT_LE(lat["p90"].get<double>(), lat["p99"].get<double>());
  EXPECT_LE(lat["p99"].get<double>(), lat["p999"].get<double>());
  EXPECT_LE(lat["p999"].get<double>(), lat["max"].get<double>());
}

void expect_clean_http(const RunResult& r, uint64_t concurrency) {
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = parse_output(r);
  EXPECT_EQ(j["mode"], "http");
  EXPECT_EQ(j["concurrency"], concurrency);
  EXPECT_GT(j["connections"].get<uint64_t>(), 0u);
  EXPECT_GT(j["rate_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["duration_s"].get<double>(), 0.4);
  EXPECT_EQ(j["errors"], 0) << j;
  for (const char* kind : {"connect_refused", "connect_timeout", "reset", "timeout", "bad_status",
                           "short_body", "other"}) {
    EXPECT_EQ(j["error_kinds"][kind], 0) << kind;
  }
  EXPECT_EQ(j["stalls"], 0);
  expect_latency(j["latency_us"]);
}

TEST(LabLoad, HttpAgainstServeHttp) {
  Server server(/*http=*/true);
  expect_clean_http(run({"http", "--target", server.target(), "--concurrency", "8", "--duration",
                         "0.5", "--warmup", "0.2", "--host", "lab.test", "--path", "/x"}),
                    8);
  expect_clean_http(run({"http", "--target", server.target(), "--concurrency", "8", "--threads",
                         "2", "--duration", "0.5", "--warmup", "0"}),
                    8);
  const RunResult s = server.stop();
  EXPECT_EQ(s.exit_code, 0) << s.err;
  EXPECT_GT(parse_output(s)["connections"].get<uint64_t>(), 0u);
}

TEST(LabLoad, HttpCountsRefusedConnections) {
  const RunResult r = run({"http", "--target", address(AF_INET, free_port()), "--concurrency", "2",
                           "--duration", "0.3", "--warmup", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = parse_output(r);
  EXPECT_EQ(j["connections"], 0);
  EXPECT_GT(j["errors"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["error_kinds"]["connect_refused"], j["errors"]);
}

TEST(LabLoad, HttpAgainstAnEchoServerIsAnError) {
  // The echo of the request is no HTTP response.
  Server server(/*http=*/false);
  const RunResult r = run({"http", "--target", server.target(), "--concurrency", "2", "--duration",
                           "0.3", "--warmup", "0", "--timeout-ms", "200"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = parse_output(r);
  EXPECT_EQ(j["connections"], 0);
  EXPECT_GT(j["error_kinds"]["other"].get<uint64_t>(), 0u) << j;
  EXPECT_NE(r.err.find("malformed status line"), std::string::npos) << r.err;
}

TEST(LabLoad, RrEcho) {
  Server server(/*http=*/false);
  for (const char* size : {"64", "200000"}) {
    const RunResult r = run({"rr", "--target", server.target(), "--size", size, "--duration", "0.5",
                             "--warmup", "0.1"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const json j = parse_output(r);
    EXPECT_EQ(j["mode"], "rr");
    EXPECT_EQ(j["size"], std::stoull(size));
    EXPECT_GT(j["round_trips"].get<uint64_t>(), 0u);
    EXPECT_GT(j["rate_per_s"].get<double>(), 0.0);
    expect_latency(j["latency_us"]);
  }
}

// A server like the lab responder: a greeting line, then echo. Serves connections one
// after another until destroyed.
class GreetingServer {
 public:
  GreetingServer() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(fd_, 8) != 0 ||
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      throw std::runtime_error("greeting server");
    }
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~GreetingServer() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  std::string target() const { return address(AF_INET, port_); }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      const char greeting[] = "wan 127.0.0.1 4242\n";
      ::send(c, greeting, sizeof greeting - 1, MSG_NOSIGNAL);
      char buf[4096];
      for (;;) {
        pollfd q{c, POLLIN, 0};
        if (::poll(&q, 1, 50) == 0) {
          if (stop_) break;
          continue;
        }
        const ssize_t n = ::recv(c, buf, sizeof buf, 0);
        if (n <= 0 || ::send(c, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) break;
      }
      ::close(c);
    }
  }

  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(LabLoad, RrSkipsTheGreetingLine) {
  GreetingServer server;
  const RunResult ok =
      run({"rr", "--target", server.target(), "--skip-line", "--duration", "0.3", "--warmup", "0"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_GT(parse_output(ok)["round_trips"].get<uint64_t>(), 0u);

  // Without --skip-line the greeting shows up in the echo: a runtime failure that says so.
  const RunResult bad = run({"rr", "--target", server.target(), "--duration", "0.3"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(bad.out.empty()) << bad.out;
  EXPECT_NE(bad.err.find("--skip-line"), std::string::npos) << bad.err;
}

TEST(LabLoad, IdleHoldsConnectionsUntilSigterm) {
  Server server(/*http=*/false);
  TempDir dir;
  const std::string ready = dir.file("ready.json");
  Child idle({"idle", "--target", server.target(), "--count", "200", "--parallel", "64",
              "--ready-file", ready});
  std::optional<std::string> content;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!(content = read_file(ready)) && idle.running() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(content.has_value()) << "no ready file";
  const json j = json::parse(*content);
  EXPECT_EQ(j["mode"], "idle");
  EXPECT_EQ(j["requested"], 200);
  EXPECT_EQ(j["connected"], 200);
  EXPECT_EQ(j["failed"], 0);
  EXPECT_GE(j["seconds_to_ready"].get<double>(), 0.0);
  EXPECT_FALSE(std::filesystem::exists(ready + ".tmp"));

  // Still holding: it exits on SIGTERM only.
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(idle.running());
  idle.signal(SIGTERM);
  const RunResult r = idle.finish(5s);
  EXPECT_FALSE(r.timed_out);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parse_output(r), j);

  const RunResult s = server.stop();
  EXPECT_EQ(s.exit_code, 0) << s.err;
  EXPECT_EQ(parse_output(s)["connections"], 200);
}

TEST(LabLoad, IdleHoldEndsByItself) {
  Server server(/*http=*/false);
  const RunResult r =
      run({"idle", "--target", server.target(), "--count", "10", "--hold", "0.2"}, 5s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(parse_output(r)["connected"], 10);
}

TEST(LabLoad, IdleCountsFailedConnections) {
  const RunResult r =
      run({"idle", "--target", address(AF_INET, free_port()), "--count", "5", "--hold", "0"}, 5s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = parse_output(r);
  EXPECT_EQ(j["connected"], 0);
  EXPECT_EQ(j["failed"], 5);
}

TEST(LabLoad, IdleRefusesACountAboveTheFdLimit) {
  const RunResult r = run({"idle", "--target", "127.0.0.1:9", "--count", "10000000"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty());
  EXPECT_NE(r.err.find("RLIMIT_NOFILE"), std::string::npos) << r.err;
}

void expect_udp(const RunResult& r) {
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json j = parse_output(r);
  EXPECT_EQ(j["mode"], "udp");
  EXPECT_EQ(j["size"], 1000);
  EXPECT_EQ(j["window"], 32);
  EXPECT_GT(j["received"].get<uint64_t>(), 0u);
  EXPECT_EQ(j["sent"].get<uint64_t>(), j["received"].get<uint64_t>() + j["lost"].get<uint64_t>());
  EXPECT_LT(j["loss_pct"].get<double>(), 5.0) << j;
  EXPECT_GT(j["datagrams_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["mbit_per_s"].get<double>(), 0.0);
}

TEST(LabLoad, UdpEcho) {
  Server server(/*http=*/false);
  expect_udp(run({"udp", "--target", server.target(), "--size", "1000", "--window", "32",
                  "--duration", "0.5", "--warmup", "0.1"}));
}

TEST(LabLoad, EveryClientModeOverIpv6) {
  if (!loopback_available(AF_INET6)) GTEST_SKIP() << "no IPv6 loopback (::1) here";
  Server http(/*http=*/true, AF_INET6);
  expect_clean_http(run({"http", "--target", http.target(), "--concurrency", "4", "--duration",
                         "0.5", "--warmup", "0.1"}),
                    4);
  Server echo(/*http=*/false, AF_INET6);
  const RunResult rr = run({"rr", "--target", echo.target(), "--duration", "0.3", "--warmup", "0"});
  ASSERT_EQ(rr.exit_code, 0) << rr.err;
  EXPECT_GT(parse_output(rr)["round_trips"].get<uint64_t>(), 0u);
  expect_udp(run({"udp", "--target", echo.target(), "--size", "1000", "--window", "32",
                  "--duration", "0.5", "--warmup", "0.1"}));
  const RunResult idle = run({"idle", "--target", echo.target(), "--count", "20", "--hold", "0"});
  ASSERT_EQ(idle.exit_code, 0) << idle.err;
  EXPECT_EQ(parse_output(idle)["connected"], 20);
}

TEST(LabLoad, ServeFailsOnABusyPort) {
  const int busy = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ASSERT_EQ(::bind(busy, reinterpret_cast<sockaddr*>(&a), len), 0);
  ASSERT_EQ(::listen(busy, 1), 0);
  ASSERT_EQ(::getsockname(busy, reinterpret_cast<sockaddr*>(&a), &len), 0);
  const RunResult r = run({"serve", "--listen", address(AF_INET, ntohs(a.sin_port))}, 5s);
  ::close(busy);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(r.out.empty());
  EXPECT_NE(r.err.find("bind"), std::string::npos) << r.err;
}

TEST(LabLoad, BadArgumentsExitWithStatus2) {
  const std::vector<std::vector<std::string>> cases = {
      {},
      {"frobnicate"},
      {"serve"},
      {"serve", "--listen", "127.0.0.1:0"},
      {"serve", "--listen", "localhost:80"},
      {"http"},
      {"http", "--target", "127.0.0.1"},
      {"http", "--target", "::1:80"},
      {"http", "--target", "127.0.0.1:80", "--concurrency", "0"},
      {"http", "--target", "127.0.0.1:80", "--duration", "abc"},
      {"http", "--target", "127.0.0.1:80", "--duration", "-1"},
      {"http", "--target", "127.0.0.1:80", "--path", "no-slash"},
      {"http", "--target", "127.0.0.1:80", "--frobnicate"},
      {"http", "--target", "127.0.0.1:80", "--bind-dev", "a-name-that-is-too-long"},
      {"http", "--target", "127.0.0.1:80", "--concurrency", "2", "--threads", "3"},
      {"rr", "--target", "127.0.0.1:80", "--size"},
      {"rr", "--target", "127.0.0.1:80", "--size", "0"},
      {"idle", "--target", "127.0.0.1:80"},
      {"idle", "--target", "127.0.0.1:80", "--count", "-5"},
      {"udp", "--target", "127.0.0.1:80", "--size", "4"},
      {"udp", "--target", "127.0.0.1:80", "--window", "0"},
  };
  for (const auto& args : cases) {
    std::string line;
    for (const auto& a : args) line += a + " ";
    const RunResult r = run(args, 5s);
    EXPECT_EQ(r.exit_code, 2) << line << "\n" << r.err;
    EXPECT_TRUE(r.out.empty()) << line;
    EXPECT_NE(r.err.find("lab-load"), std::string::npos) << line << "\n" << r.err;
  }
}

}  // namespace
}  // namespace splitd::bench
