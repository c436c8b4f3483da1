#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <future>
#include <optional>
#include <string>
#include <thread>

#include <boost/beast/http.hpp>

#include "api/server.hpp"
#include "common/fd.hpp"
#include "tests/api/fake_backend.hpp"

namespace splitd::api::testing {

namespace http = boost::beast::http;
using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;

// A blocking test client on a raw fd: every call is bounded by a timeout (poll), so a
// server that hangs fails the test instead of hanging it.
class RawClient {
 public:
  static RawClient unix_socket(const std::string& path) {
    RawClient c;
    c.fd_ = Fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    if (::connect(c.fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) c.fd_.reset();
    return c;
  }
  static RawClient tcp(std::uint16_t port) {
    RawClient c;
    c.fd_ = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(c.fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) c.fd_.reset();
    return c;
  }

  bool connected() const { return fd_.valid(); }
  int fd() const { return fd_.get(); }
  void close() { fd_.reset(); }

  bool send(std::string_view data, Ms timeout = 2000ms) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (!data.empty()) {
      if (!wait(POLLOUT, end)) return false;
      const ssize_t n = ::send(fd_.get(), data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // Bytes as they come; "" on EOF, error or timeout (`eof` tells which).
  std::string read_some(Ms timeout, bool* eof = nullptr) {
    if (eof) *eof = false;
    if (!wait(POLLIN, std::chrono::steady_clock::now() + timeout)) return {};
    char buf[16384];
    const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n <= 0) {
      if (eof) *eof = true;
      return {};
    }
    return std::string(buf, static_cast<std::size_t>(n));
  }

  // One response; nullopt when the server closed or the time ran out first.
  std::optional<http::response<http::string_body>> read_response(Ms timeout = 3000ms) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    http::response_parser<http::string_body> p;
    p.eager(true);
    p.body_limit(64 * 1024 * 1024);
    for (;;) {
      if (!pending_.empty()) {
        boost::beast::error_code ec;
        const std::size_t n = p.put(boost::asio::buffer(pending_), ec);
        pending_.erase(0, n);
        if (ec && ec != http::error::need_more) return std::nullopt;
        if (p.is_done()) return p.release();
        if (n > 0 && !pending_.empty() && !ec) continue;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now >= end) return std::nullopt;
      bool eof = false;
      std::string more = read_some(std::chrono::duration_cast<Ms>(end - now), &eof);
      if (more.empty()) {
        if (eof) {
          boost::beast::error_code ec;
          p.put_eof(ec);
          if (!ec && p.is_done()) return p.release();
        }
        return std::nullopt;
      }
      pending_ += more;
    }
  }

  // Reads until `needle` has arrived (kept in `received`), EOF or timeout.
  bool read_until(const std::string& needle, std::string& received, Ms timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    received += pending_;
    pending_.clear();
    while (received.find(needle) == std::string::npos) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= end) return false;
      bool eof = false;
      std::string more = read_some(std::chrono::duration_cast<Ms>(end - now), &eof);
      if (more.empty()) return false;
      received += more;
    }
    return true;
  }

  // True when the server closes the connection within `timeout` (data is discarded).
  bool closed_within(Ms timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= end) return false;
      bool eof = false;
      std::string more = read_some(std::chrono::duration_cast<Ms>(end - now), &eof);
      if (eof) return true;
      if (more.empty()) return false;
    }
  }

 private:
  bool wait(short events, std::chrono::steady_clock::time_point end) {
    if (!fd_) return false;
    for (;;) {
      const auto left = std::chrono::duration_cast<Ms>(end - std::chrono::steady_clock::now()).count();
      if (left < 0) return false;
      pollfd p{fd_.get(), events, 0};
      const int rc = ::poll(&p, 1, static_cast<int>(left));
      if (rc > 0) return true;
      if (rc == 0) return false;
      if (errno != EINTR) return false;
    }
  }

  Fd fd_;
  std::string pending_;
};

inline std::string get(const std::string& target, const std::string& extra_headers = "") {
  return "GET " + target + " HTTP/1.1\r\nHost: splitd\r\n" + extra_headers + "\r\n";
}

// A Server on its own io_context thread, on a unix socket in a fresh temp directory.
class ServerHarness {
 public:
  explicit ServerHarness(ServerOptions opts = {}, bool ready = true) {
    char tmpl[] = "/tmp/splitd-api-XXXXXX";
    dir = ::mkdtemp(tmpl);
    if (opts.unix_path.empty()) opts.unix_path = dir + "/run/api.sock";
    if (opts.token_file.empty()) opts.token_file = dir + "/etc/api.token";
    options = opts;
    server = std::make_unique<Server>(ioc, backend, opts);
    ready_ = ready;
  }
  ~ServerHarness() { stop(); std::filesystem::remove_all(dir); }

  Expected<void, std::string> start() {
    auto r = server->start();
    if (!r) return r;
    server->set_ready(ready_);
    thread_ = std::thread([this] { ioc.run(); });
    return r;
  }
  // Runs f on the server's thread and waits for it.
  template <typename F>
  auto on_server(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto fut = task.get_future();
    boost::asio::post(ioc, [&task] { task(); });
    return fut.get();
  }
  void stop() {
    if (thread_.joinable()) {
      on_server([this] { server->stop(); return 0; });
      work_.reset();
      thread_.join();
    }
    server.reset();
  }
  std::size_t connections() { return on_server([this] { return server->connections(); }); }

  RawClient client() { return RawClient::unix_socket(options.unix_path); }

  std::string dir;
  ServerOptions options;
  FakeBackend backend;
  net::asio::io_context ioc;
  std::unique_ptr<Server> server;

 private:
  bool ready_ = true;
  std::optional<net::asio::executor_work_guard<net::asio::io_context::executor_type>> work_{ioc.get_executor()};
  std::thread thread_;
};

}  // namespace splitd::api::testing
