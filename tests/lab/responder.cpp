// lab-responder: the "server" of one side (wan or vpn) of the lab. Every answer carries
// the side's name and the peer address the server saw, so a test learns which path a
// flow took and which source address it had:
//   TCP  (default 9000): greeting line, then echo until EOF, then shutdown(SHUT_WR).
//   UDP  (default 9000): each datagram answered with greeting line + the payload.
//   HTTP (default 80):   any request gets 200 text/plain with the greeting line as body.
// Greeting line: "<side> <peer-ip> <peer-port>\n" (IPv4-mapped peers printed as IPv4).
//
// Usage: lab-responder --side NAME [--tcp-port P] [--udp-port P] [--http-port P]
//                      [--pidfile FILE]        (a port of 0 disables that service)
//
// All sockets listen on [::] dual-stack, so every address of the namespace answers.
// One thread, one epoll loop: it handles thousands of concurrent connections without a
// thread per connection. Exits cleanly on SIGTERM/SIGINT. The pid file is written once
// every socket listens.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"

namespace {

using splitd::Fd;

constexpr size_t kMaxHeader = 16 * 1024;  // larger request heads get 431
constexpr size_t kMaxBody = 1024 * 1024;  // larger request bodies get 413
constexpr size_t kIoChunk = 64 * 1024;

struct Options {
  std::string side;
  uint16_t tcp_port = 9000;
  uint16_t udp_port = 9000;
  uint16_t http_port = 80;
  std::string pidfile;
};

[[noreturn]] void fail_errno(const std::string& what, int err) {
  throw std::runtime_error(what + ": " + std::strerror(err));
}

void usage(std::FILE* out) {
  std::fputs(
      "usage: lab-responder --side NAME [--tcp-port P] [--udp-port P] [--http-port P] "
      "[--pidfile FILE]\n  defaults: tcp 9000, udp 9000, http 80; port 0 disables a service\n",
      out);
}

std::optional<uint16_t> parse_port(std::string_view s) {
  unsigned value = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || ptr != s.data() + s.size() || value > 65535) return std::nullopt;
  return static_cast<uint16_t>(value);
}

std::optional<Options> parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      usage(stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "lab-responder: %s needs a value (or is unknown)\n", argv[i]);
      usage(stderr);
      return std::nullopt;
    }
    const std::string_view value = argv[++i];
    if (arg == "--side") {
      o.side = value;
    } else if (arg == "--pidfile") {
      o.pidfile = value;
    } else if (arg == "--tcp-port" || arg == "--udp-port" || arg == "--http-port") {
      const auto port = parse_port(value);
      if (!port) {
        std::fprintf(stderr, "lab-responder: invalid port '%s' for %s\n", argv[i], argv[i - 1]);
        return std::nullopt;
      }
      (arg == "--tcp-port" ? o.tcp_port : arg == "--udp-port" ? o.udp_port : o.http_port) = *port;
    } else {
      std::fprintf(stderr, "lab-responder: unknown argument '%s'\n", argv[i - 1]);
      usage(stderr);
      return std::nullopt;
    }
  }
  // The side name ends up in a one-line greeting: keep it a single printable word.
  const bool side_ok = !o.side.empty() && o.side.size() <= 64 &&
                       std::all_of(o.side.begin(), o.side.end(),
                                   [](unsigned char c) { return std::isgraph(c) != 0; });
  if (!side_ok) {
    std::fputs("lab-responder: --side NAME is required (one printable word)\n", stderr);
    usage(stderr);
    return std::nullopt;
  }
  return o;
}

std::string format_peer_ip(const sockaddr_in6& sa) {
  char text[INET6_ADDRSTRLEN] = {};
  if (IN6_IS_ADDR_V4MAPPED(&sa.sin6_addr)) {
    ::inet_ntop(AF_INET, &sa.sin6_addr.s6_addr[12], text, sizeof text);
  } else {
    ::inet_ntop(AF_INET6, &sa.sin6_addr, text, sizeof text);
  }
  return text;
}

std::string greeting(const std::string& side, const sockaddr_in6& peer) {
  return side + " " + format_peer_ip(peer) + " " + std::to_string(ntohs(peer.sin6_port)) + "\n";
}

void set_int_opt(int fd, int level, int name, int value, const char* label) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) fail_errno(label, errno);
}

Fd bind_any(int type, uint16_t port) {
  Fd fd(::socket(AF_INET6, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) fail_errno("socket", errno);
  // Dual-stack on purpose: IPv4 peers arrive as ::ffff:a.b.c.d on the same socket.
  set_int_opt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 0, "IPV6_V6ONLY");
  set_int_opt(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_addr = in6addr_any;
  sa.sin6_port = htons(port);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) {
    fail_errno(
        std::string("bind [::]:") + std::to_string(port) + (type == SOCK_STREAM ? "/tcp" : "/udp"),
        errno);
  }
  return fd;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// True if the comma-separated header value contains `token` (case-insensitive).
bool has_token(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    const size_t comma = value.find(',');
    if (iequals(trim(value.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return false;
}

enum class Kind { kEcho, kHttp };

// One accepted TCP connection; owned by Server::conns_.
struct Conn {
  Fd fd;
  Kind kind;
  std::string greeting;
  std::string in;   // HTTP: bytes of requests not yet answered
  std::string out;  // bytes not yet accepted by the kernel
  size_t out_off = 0;
  bool peer_eof = false;
  bool close_after_flush = false;
  bool dead = false;
  uint32_t events = 0;  // epoll interest currently registered
};

// The event loop. Owns every socket; single-threaded.
class Server {
 public:
  explicit Server(const Options& o) : opts_(o), buf_(kIoChunk) {}

  void setup() {
    epoll_ = Fd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) fail_errno("sigprocmask", errno);
    signal_ = Fd(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
    if (!signal_) fail_errno("signalfd", errno);
    add(signal_.get(), EPOLLIN);

    if (opts_.tcp_port != 0) {
      tcp_ = bind_any(SOCK_STREAM, opts_.tcp_port);
      if (::listen(tcp_.get(), SOMAXCONN) != 0) fail_errno("listen tcp", errno);
      add(tcp_.get(), EPOLLIN);
    }
    if (opts_.http_port != 0) {
      http_ = bind_any(SOCK_STREAM, opts_.http_port);
      if (::listen(http_.get(), SOMAXCONN) != 0) fail_errno("listen http", errno);
      add(http_.get(), EPOLLIN);
    }
    if (opts_.udp_port != 0) {
      udp_ = bind_any(SOCK_DGRAM, opts_.udp_port);
      // The reply must leave from the address the client sent to (lo carries several),
      // or a connected client socket would drop it: learn it per datagram.
      set_int_opt(udp_.get(), IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
      set_int_opt(udp_.get(), IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
      add(udp_.get(), EPOLLIN);
    }
  }

  int run() {
    std::array<epoll_event, 256> events{};
    for (;;) {
      const int timeout_ms = accept_paused_ ? 100 : -1;
      const int n = ::epoll_wait(epoll_.get(), events.data(), events.size(), timeout_ms);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno("epoll_wait", errno);
      }
      if (accept_paused_ && std::chrono::steady_clock::now() >= resume_accept_at_) {
        resume_accept();
      }
      for (int i = 0; i < n; ++i) {
        const int fd = events[i].data.fd;
        if (fd == signal_.get()) {
          signalfd_siginfo si{};
          [[maybe_unused]] const ssize_t r = ::read(signal_.get(), &si, sizeof si);
          splitd::log::info("side ", opts_.side, ": signal ", si.ssi_signo, ", exiting with ",
                            conns_.size(), " open connections");
          return 0;
        }
        if (fd == tcp_.get()) {
          accept_all(tcp_.get(), Kind::kEcho);
        } else if (fd == http_.get()) {
          accept_all(http_.get(), Kind::kHttp);
        } else if (fd == udp_.get()) {
          serve_udp();
        } else {
          on_conn_event(fd, events[i].events);
        }
      }
    }
  }

 private:
  void add(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) fail_errno("epoll_ctl ADD", errno);
  }

  void modify(int fd, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) fail_errno("epoll_ctl MOD", errno);
  }

  // Out of fds: stop accepting for a moment instead of spinning on a readable listener.
  void pause_accept() {
    if (accept_paused_) return;
    splitd::log::warn("side ", opts_.side, ": out of file descriptors with ", conns_.size(),
                      " connections; pausing accept");
    for (const Fd* l : {&tcp_, &http_}) {
      if (*l) modify(l->get(), 0);
    }
    accept_paused_ = true;
    resume_accept_at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
  }

  void resume_accept() {
    for (const Fd* l : {&tcp_, &http_}) {
      if (*l) modify(l->get(), EPOLLIN);
    }
    accept_paused_ = false;
  }

  void accept_all(int listener, Kind kind) {
    for (;;) {
      sockaddr_in6 peer{};
      socklen_t len = sizeof peer;
      Fd fd(::accept4(listener, reinterpret_cast<sockaddr*>(&peer), &len,
                      SOCK_NONBLOCK | SOCK_CLOEXEC));
      if (!fd) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          pause_accept();
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
          splitd::log::warn("side ", opts_.side, ": accept: ", std::strerror(errno));
        }
        return;
      }
      // Small request/response exchanges should not wait for Nagle.
      const int one = 1;
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto conn = std::make_unique<Conn>();
      conn->kind = kind;
      conn->greeting = greeting(opts_.side, peer);
      const int raw = fd.get();
      conn->fd = std::move(fd);
      conn->events = EPOLLIN;
      add(raw, EPOLLIN);
      Conn& c = *conn;
      conns_.emplace(raw, std::move(conn));
      if (kind == Kind::kEcho) send_data(c, c.greeting);
      settle(c);
    }
  }

  void serve_udp() {
    for (int budget = 0; budget < 1024; ++budget) {
      sockaddr_in6 peer{};
      alignas(cmsghdr) std::array<char, 256> control{};
      iovec iov{buf_.data(), buf_.size()};
      msghdr msg{};
      msg.msg_name = &peer;
      msg.msg_namelen = sizeof peer;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      const ssize_t n = ::recvmsg(udp_.get(), &msg, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          splitd::log::warn("side ", opts_.side, ": udp recvmsg: ", std::strerror(errno));
        }
        return;
      }
      // The local address the datagram was sent to, as an IPv6 (or v4-mapped) address.
      std::optional<in6_addr> local;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
          in6_pktinfo info{};
          std::memcpy(&info, CMSG_DATA(c), sizeof info);
          local = info.ipi6_addr;
        } else if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO && !local) {
          in_pktinfo info{};
          std::memcpy(&info, CMSG_DATA(c), sizeof info);
          in6_addr mapped{};
          mapped.s6_addr[10] = 0xff;
          mapped.s6_addr[11] = 0xff;
          std::memcpy(&mapped.s6_addr[12], &info.ipi_addr, 4);
          local = mapped;
        }
      }
      std::string reply = greeting(opts_.side, peer);
      reply.append(reinterpret_cast<const char*>(buf_.data()), static_cast<size_t>(n));

      iovec out_iov{reply.data(), reply.size()};
      msghdr out{};
      out.msg_name = &peer;
      out.msg_namelen = sizeof peer;
      out.msg_iov = &out_iov;
      out.msg_iovlen = 1;
      alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(in6_pktinfo))> out_control{};
      if (local) {
        out.msg_control = out_control.data();
        out.msg_controllen = out_control.size();
        cmsghdr* c = CMSG_FIRSTHDR(&out);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
        in6_pktinfo info{};
        info.ipi6_addr = *local;  // interface 0: let routing pick the way back
        std::memcpy(CMSG_DATA(c), &info, sizeof info);
      }
      if (::sendmsg(udp_.get(), &out, MSG_DONTWAIT) < 0 && errno != EAGAIN) {
        // Too large a reply (EMSGSIZE) or an unreachable peer: UDP drops it.
        splitd::log::debug("side ", opts_.side, ": udp sendmsg: ", std::strerror(errno));
      }
    }
  }

  void on_conn_event(int fd, uint32_t events) {
    const auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    if ((events & EPOLLOUT) != 0) flush(c);
    if (!c.dead && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) != 0) on_readable(c);
    settle(c);
  }

  void on_readable(Conn& c) {
    // Bounded batch per wakeup keeps one fast sender from starving the others.
    for (int i = 0; i < 16 && !c.dead && !c.peer_eof && c.out.empty(); ++i) {
      const ssize_t n = ::recv(c.fd.get(), buf_.data(), buf_.size(), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;  // reset: normal event
        return;
      }
      if (n == 0) {
        c.peer_eof = true;
        return;
      }
      const std::string_view data(reinterpret_cast<const char*>(buf_.data()),
                                  static_cast<size_t>(n));
      if (c.kind == Kind::kEcho) {
        send_data(c, data);
      } else {
        c.in.append(data);
        serve_http(c);
        if (c.close_after_flush) return;
      }
    }
  }

  // Answers every complete request in c.in (pipelining allowed).
  void serve_http(Conn& c) {
    while (!c.close_after_flush) {
      const size_t head_end = c.in.find("\r\n\r\n");
      if (head_end == std::string::npos) {
        if (c.in.size() > kMaxHeader) http_error(c, "431 Request Header Fields Too Large");
        return;
      }
      if (head_end > kMaxHeader) {
        http_error(c, "431 Request Header Fields Too Large");
        return;
      }
      const std::string_view head(c.in.data(), head_end);
      const size_t line_end = head.find("\r\n");
      const std::string_view request_line = head.substr(0, line_end);
      const size_t sp1 = request_line.find(' ');
      const size_t sp2 = sp1 == std::string_view::npos ? sp1 : request_line.find(' ', sp1 + 1);
      if (sp1 == std::string_view::npos || sp2 == std::string_view::npos || sp1 == 0) {
        http_error(c, "400 Bad Request");
        return;
      }
      const std::string_view method = request_line.substr(0, sp1);
      const std::string_view version = request_line.substr(sp2 + 1);
      if (version != "HTTP/1.1" && version != "HTTP/1.0") {
        http_error(c, "505 HTTP Version Not Supported");
        return;
      }
      bool conn_close = false, conn_keep_alive = false;
      size_t content_length = 0;
      std::string_view headers =
          line_end == std::string_view::npos ? std::string_view() : head.substr(line_end + 2);
      while (!headers.empty()) {
        const size_t eol = headers.find("\r\n");
        const std::string_view line = headers.substr(0, eol);
        headers = eol == std::string_view::npos ? std::string_view() : headers.substr(eol + 2);
        const size_t colon = line.find(':');
        if (colon == std::string_view::npos) {
          http_error(c, "400 Bad Request");
          return;
        }
        const std::string_view name = line.substr(0, colon);
        const std::string_view value = trim(line.substr(colon + 1));
        if (iequals(name, "Connection")) {
          conn_close = conn_close || has_token(value, "close");
          conn_keep_alive = conn_keep_alive || has_token(value, "keep-alive");
        } else if (iequals(name, "Content-Length")) {
          const auto [ptr, ec] =
              std::from_chars(value.data(), value.data() + value.size(), content_length);
          if (ec != std::errc() || ptr != value.data() + value.size()) {
            http_error(c, "400 Bad Request");
            return;
          }
          if (content_length > kMaxBody) {
            http_error(c, "413 Content Too Large");
            return;
          }
        } else if (iequals(name, "Transfer-Encoding")) {
          // Request bodies are not needed by the lab; refuse rather than misparse.
          http_error(c, "501 Not Implemented");
          return;
        }
      }
      const size_t total = head_end + 4 + content_length;
      if (c.in.size() < total) return;  // wait for the (discarded) body
      const bool keep = version == "HTTP/1.1" ? !conn_close : conn_keep_alive && !conn_close;
      const bool head_only = method == "HEAD";
      std::string response =
          "HTTP/1.1 200 OK\r\nServer: lab-responder\r\n"
          "Content-Type: text/plain\r\nContent-Length: " +
          std::to_string(c.greeting.size()) +
          (keep ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\nConnection: close\r\n\r\n");
      if (!head_only) response += c.greeting;
      c.in.erase(0, total);
      send_data(c, response);
      if (!keep) c.close_after_flush = true;
    }
  }

  void http_error(Conn& c, std::string_view status) {
    const std::string body = std::string(status) + "\n";
    std::string response =
        "HTTP/1.1 " + std::string(status) +
        "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
        "\r\nConnection: close\r\n\r\n" + body;
    send_data(c, response);
    c.close_after_flush = true;
    c.in.clear();
  }

  // Sends what the kernel takes now and keeps the rest for EPOLLOUT.
  void send_data(Conn& c, std::string_view data) {
    if (c.dead) return;
    if (c.out.empty()) {
      while (!data.empty()) {
        const ssize_t n = ::send(c.fd.get(), data.data(), data.size(), MSG_NOSIGNAL);
        if (n < 0) {
          if (errno == EINTR) continue;
          if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
          break;
        }
        data.remove_prefix(static_cast<size_t>(n));
      }
    }
    if (!c.dead) c.out.append(data);
  }

  void flush(Conn& c) {
    while (c.out_off < c.out.size()) {
      const ssize_t n =
          ::send(c.fd.get(), c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) c.dead = true;
        return;
      }
      c.out_off += static_cast<size_t>(n);
    }
    c.out.clear();
    c.out_off = 0;
  }

  // After any event: close finished connections, or register the interest that fits.
  // While output is pending we stop reading, which pushes back on a fast sender.
  void settle(Conn& c) {
    const bool pending = c.out_off < c.out.size();
    const bool finished = c.dead || (!pending && (c.peer_eof || c.close_after_flush));
    if (finished) {
      if (!c.dead) ::shutdown(c.fd.get(), SHUT_WR);  // half-close: the peer sees EOF
      const int fd = c.fd.get();
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
      conns_.erase(fd);  // closes the socket; `c` is gone now
      return;
    }
    const uint32_t want = pending ? EPOLLOUT : EPOLLIN;
    if (want != c.events) {
      modify(c.fd.get(), want);
      c.events = want;
    }
  }

  Options opts_;
  std::vector<uint8_t> buf_;
  Fd epoll_, signal_, tcp_, http_, udp_;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
  bool accept_paused_ = false;
  std::chrono::steady_clock::time_point resume_accept_at_{};
};

void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

void write_pidfile(const std::string& path) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "we");
  if (f == nullptr) fail_errno("cannot write pid file " + tmp, errno);
  std::fprintf(f, "%ld\n", static_cast<long>(::getpid()));
  if (std::fclose(f) != 0) fail_errno("cannot write pid file " + tmp, errno);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_errno("cannot rename " + tmp, errno);
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Options> opts = parse_args(argc, argv);
  if (!opts) return 2;
  try {
    raise_fd_limit();
    Server server(*opts);
    server.setup();
    if (!opts->pidfile.empty()) write_pidfile(opts->pidfile);
    splitd::log::info("side ", opts->side, ": tcp ", opts->tcp_port, ", udp ", opts->udp_port,
                      ", http ", opts->http_port, " on [::]");
    const int rc = server.run();
    if (!opts->pidfile.empty()) ::unlink(opts->pidfile.c_str());
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lab-responder: %s\n", e.what());
    return 1;
  }
}
