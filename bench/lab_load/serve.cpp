// lab-load serve: TCP echo (or a one-shot HTTP 200) and UDP echo on every --listen
// address, in one single-threaded level-triggered epoll loop. A UDP download request
// (download_wire.hpp) is not echoed: it starts a stream of numbered datagrams to the
// asking address, sent from the same loop between its other work.

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "download_wire.hpp"
#include "modes.hpp"

namespace splitd::bench {
namespace {

constexpr int kBacklog = 4096;
constexpr size_t kIoChunk = 64 * 1024;
constexpr unsigned kUdpBatch = 32;
constexpr size_t kUdpMax = 65536;
constexpr int kUdpBuffer = 4 * 1024 * 1024;
// Downloads at once (a request beyond that is ignored, and said so on stderr), and the
// sessions remembered so that a request the client repeated does not start a second one.
constexpr size_t kMaxDownloads = 16;
constexpr size_t kRecentSessions = 64;
// Per loop iteration and download: at most this many sendmmsg batches, so the other
// sockets are served in between.
constexpr int kDownloadBatchesPerStep = 8;
// A send error that is neither a full buffer nor ENOBUFS, this many times in a row, ends
// the download (the receiver is gone for good).
constexpr std::uint64_t kMaxDownloadErrors = 1000;
// When the end marker goes out, after the download's end: several times, as UDP may lose
// one (the data before it has just filled every queue on the way).
constexpr std::array<Nanos, 5> kEndMarkerAt = {0, 10'000'000, 50'000'000, 100'000'000,
                                               200'000'000};
constexpr std::string_view kHttpResponse =
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

// epoll_event.data.u64 = tag << 32 | fd.
enum class Tag : std::uint64_t { kConn = 0, kListener = 1, kUdp = 2 };

std::uint64_t event_data(Tag tag, int fd) {
  return static_cast<std::uint64_t>(tag) << 32 | static_cast<std::uint32_t>(fd);
}

enum class ConnState : std::uint8_t {
  kClosed,
  kEcho,         // echoing; `pending` holds what the kernel did not take yet
  kHttpHead,     // reading the request head
  kHttpRespond,  // the response is partly sent; pending_off is the offset in it
  kHttpDrain,    // response sent and write side shut: read until the client closes
};

// One accepted connection, stored in Server::conns_ at the index of its fd.
struct Conn {
  Fd fd;
  ConnState state = ConnState::kClosed;
  std::uint8_t head_match = 0;  // how much of "\r\n\r\n" the bytes so far end with
  bool writing = false;         // wants EPOLLOUT (and not EPOLLIN) while output is pending
  bool registered = false;      // in the epoll set (an HTTP request served at once never is)
  std::uint32_t pending_off = 0;
  std::uint32_t pending_len = 0;
  std::unique_ptr<char[]> pending;  // kIoChunk bytes, allocated on the first short write
};

struct UdpSocket {
  Fd fd;
  int family = AF_INET;
  bool wildcard = false;  // bound to 0.0.0.0 / ::: replies need the destination as source
  bool want_out = false;  // EPOLLOUT registered: a download waits for buffer space
};

// One download being sent: numbered datagrams from the socket the request came in on to
// the address it came from, until `end`; then the end marker (kEndMarkerAt).
struct Download {
  int fd = -1;
  sockaddr_storage peer{};
  socklen_t peer_len = 0;
  // The reply's source for a wildcard socket (IP_PKTINFO / IPV6_PKTINFO), else empty.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo))]{};
  size_t control_len = 0;
  download::Request req;
  std::string peer_text;
  Nanos start = 0;
  Nanos end = 0;
  std::uint64_t sent = 0;
  std::uint64_t errors = 0;
  std::uint64_t consecutive_errors = 0;
  std::uint64_t enobufs = 0;
  std::uint64_t full = 0;  // times the socket buffer was full (EAGAIN)
  unsigned markers = 0;
  bool blocked = false;  // waiting for EPOLLOUT on fd
  std::unique_ptr<char[]> buf;  // kUdpBatch datagrams of req.size; only the header changes
};

std::string sockaddr_text(const sockaddr_storage& ss, socklen_t len) {
  char host[NI_MAXHOST];
  char port[NI_MAXSERV];
  if (::getnameinfo(reinterpret_cast<const sockaddr*>(&ss), len, host, sizeof host, port,
                    sizeof port, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return "?";
  }
  return ss.ss_family == AF_INET6 ? "[" + std::string(host) + "]:" + port
                                  : std::string(host) + ":" + port;
}

// The server: owns the epoll instance, the listeners and every connection.
// Single-threaded.
class Server {
 public:
  Server(std::vector<Endpoint> listen, bool http) : listen_(std::move(listen)), http_(http) {}

  void setup() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);
    for (const Endpoint& ep : listen_) {
      Fd tcp(::socket(ep.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!tcp) fail_errno("socket", errno);
      set_int_option(tcp.get(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
      // [::]:P and 0.0.0.0:P may both be given: keep the families apart.
      if (ep.family() == AF_INET6)
        set_int_option(tcp.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
      // Accepted sockets inherit it on Linux: no setsockopt per connection.
      set_int_option(tcp.get(), IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
      // HTTP: accept only once the request is there, so it can be read right away.
      if (http_) set_int_option(tcp.get(), IPPROTO_TCP, TCP_DEFER_ACCEPT, 1, "TCP_DEFER_ACCEPT");
      if (::bind(tcp.get(), ep.sa(), ep.len) != 0) fail_errno("bind tcp " + ep.text, errno);
      if (::listen(tcp.get(), kBacklog) != 0) fail_errno("listen " + ep.text, errno);
      add(tcp.get(), EPOLLIN, Tag::kListener);
      listeners_.push_back(std::move(tcp));

      UdpSocket udp;
      udp.fd.reset(::socket(ep.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
      if (!udp.fd) fail_errno("socket", errno);
      udp.family = ep.family();
      udp.wildcard = ep.wildcard;
      if (ep.family() == AF_INET6) {
        set_int_option(udp.fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
      }
      if (udp.wildcard) {
        if (ep.family() == AF_INET6) {
          set_int_option(udp.fd.get(), IPPROTO_IPV6, IPV6_RECVPKTINFO, 1, "IPV6_RECVPKTINFO");
        } else {
          set_int_option(udp.fd.get(), IPPROTO_IP, IP_PKTINFO, 1, "IP_PKTINFO");
        }
      }
      // A client's window of datagrams arrives as one burst.
      set_buffer_sizes(udp.fd.get(), kUdpBuffer);
      if (::bind(udp.fd.get(), ep.sa(), ep.len) != 0) fail_errno("bind udp " + ep.text, errno);
      add(udp.fd.get(), EPOLLIN, Tag::kUdp);
      udp_.push_back(std::move(udp));
    }
    io_ = std::make_unique_for_overwrite<char[]>(kIoChunk);
    udp_buf_ = std::make_unique_for_overwrite<char[]>(kUdpBatch * kUdpMax);
  }

  void run() {
    std::array<epoll_event, 256> events{};
    while (!stop_requested()) {
      int timeout_ms = accept_paused_ ? 100 : -1;
      if (!downloads_.empty()) {
        const int t = download_timeout_ms(now_ns());
        if (timeout_ms < 0 || t < timeout_ms) timeout_ms = t;
      }
      const int n = ::epoll_pwait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                  timeout_ms, &stop_wait_mask());
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno("epoll_wait", errno);
      }
      if (accept_paused_ && now_ns() >= resume_accept_at_) set_accepting(true);
      for (int i = 0; i < n; ++i) {
        const auto tag = static_cast<Tag>(events[i].data.u64 >> 32);
        const int fd = static_cast<int>(events[i].data.u64 & 0xffffffffu);
        switch (tag) {
          case Tag::kListener:
            accept_all(fd);
            break;
          case Tag::kUdp:
            if ((events[i].events & EPOLLOUT) != 0) unblock_downloads(fd);
            if ((events[i].events & (EPOLLIN | EPOLLERR)) != 0) serve_udp(fd);
            break;
          case Tag::kConn:
            on_conn_event(fd, events[i].events);
            break;
        }
      }
      if (!downloads_.empty()) send_downloads(now_ns());
    }
  }

  std::uint64_t accepted() const { return accepted_; }
  std::uint64_t downloads() const { return downloads_total_; }

 private:
  void add(int fd, std::uint32_t events, Tag tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = event_data(tag, fd);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) fail_errno("epoll_ctl ADD", errno);
  }

  void modify(int fd, std::uint32_t events, Tag tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = event_data(tag, fd);
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) fail_errno("epoll_ctl MOD", errno);
  }

  // Out of fds: stop accepting for a moment rather than spin on a readable listener.
  void set_accepting(bool on) {
    for (const Fd& l : listeners_)
      modify(l.get(), on ? std::uint32_t{EPOLLIN} : 0u, Tag::kListener);
    accept_paused_ = !on;
    if (!on) resume_accept_at_ = now_ns() + 100'000'000;
  }

  void accept_all(int listener) {
    // Bounded so that a flood of connects cannot starve the established ones.
    for (int i = 0; i < 256; ++i) {
      const int fd = ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
          if (!accept_paused_) {
            std::fprintf(stderr, "lab-load serve: accept: %s with %llu connections; pausing\n",
                         std::strerror(errno), static_cast<unsigned long long>(open_));
            set_accepting(false);
          }
        } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
          std::fprintf(stderr, "lab-load serve: accept: %s\n", std::strerror(errno));
        }
        return;
      }
      ++accepted_;
      ++open_;
      if (static_cast<size_t>(fd) >= conns_.size()) {
        conns_.resize(std::max<size_t>(static_cast<size_t>(fd) + 1, conns_.size() * 2));
      }
      Conn& c = conns_[static_cast<size_t>(fd)];
      c.fd.reset(fd);
      c.state = http_ ? ConnState::kHttpHead : ConnState::kEcho;
      c.head_match = 0;
      c.writing = false;
      c.registered = false;
      c.pending_off = c.pending_len = 0;  // the buffer itself is kept for the next owner
      // With TCP_DEFER_ACCEPT the request is normally here already: answer and close
      // without ever adding the socket to the epoll set.
      if (http_) on_readable(c);
      if (c.state != ConnState::kClosed) {
        add(fd, c.writing ? EPOLLOUT : EPOLLIN, Tag::kConn);
        c.registered = true;
      }
    }
  }

  void close_conn(Conn& c) {
    c.fd.reset();  // close() also drops it from the epoll set
    c.state = ConnState::kClosed;
    --open_;
  }

  void want_output(Conn& c, bool on) {
    if (c.writing == on) return;
    if (c.registered) modify(c.fd.get(), on ? EPOLLOUT : EPOLLIN, Tag::kConn);
    c.writing = on;
  }

  void on_conn_event(int fd, std::uint32_t events) {
    if (static_cast<size_t>(fd) >= conns_.size()) return;
    Conn& c = conns_[static_cast<size_t>(fd)];
    if (c.state == ConnState::kClosed) return;
    if (c.writing) {
      // Only EPOLLOUT is registered; EPOLLERR/EPOLLHUP surface as a failing send.
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) != 0) on_writable(c);
    } else {
      on_readable(c);
    }
  }

  void on_readable(Conn& c) {
    for (int i = 0; i < 16; ++i) {
      const ssize_t n = ::recv(c.fd.get(), io_.get(), kIoChunk, 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) close_conn(c);  // a reset is normal
        return;
      }
      if (n == 0) {
        close_conn(c);  // nothing is pending while we read: the echo is complete
        return;
      }
      const auto len = static_cast<size_t>(n);
      switch (c.state) {
        case ConnState::kEcho:
          if (!echo(c, len)) return;
          break;
        case ConnState::kHttpHead:
          if (scan_head(c, len)) {
            // Closing with unread input would send a RST instead of our response; close
            // at once only when the head was the last byte received.
            respond(c, /*may_close=*/static_cast<size_t>(head_end_) == len && len < kIoChunk);
            return;
          }
          break;
        case ConnState::kHttpDrain:
          break;  // discard
        default:
          return;
      }
      // A short read emptied the socket: level-triggered epoll reports any more.
      if (len < kIoChunk) return;
    }
  }

  // Sends io_[0, len) back; keeps what the kernel refuses and stops reading until it is out.
  bool echo(Conn& c, size_t len) {
    size_t off = 0;
    while (off < len) {
      const ssize_t w = ::send(c.fd.get(), io_.get() + off, len - off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        close_conn(c);
        return false;
      }
      off += static_cast<size_t>(w);
    }
    if (off == len) return true;
    if (!c.pending) c.pending = std::make_unique_for_overwrite<char[]>(kIoChunk);
    std::memcpy(c.pending.get(), io_.get() + off, len - off);
    c.pending_off = 0;
    c.pending_len = static_cast<std::uint32_t>(len - off);
    want_output(c, true);
    return false;
  }

  // True once the bytes so far end a request head; head_end_ is then the offset in io_
  // just past it.
  bool scan_head(Conn& c, size_t len) {
    static constexpr char kEnd[4] = {'\r', '\n', '\r', '\n'};
    for (size_t i = 0; i < len; ++i) {
      const char b = io_[i];
      if (b == kEnd[c.head_match]) {
        if (++c.head_match == 4) {
          head_end_ = static_cast<std::int64_t>(i + 1);
          return true;
        }
      } else {
        c.head_match = b == '\r' ? 1 : 0;
      }
    }
    return false;
  }

  void respond(Conn& c, bool may_close) {
    c.pending_off = 0;
    c.state = ConnState::kHttpRespond;
    if (!send_response(c)) return;
    if (may_close) {
      close_conn(c);
    } else {
      linger(c);
    }
  }

  // Sends the rest of the response; true once all of it is out.
  bool send_response(Conn& c) {
    while (c.pending_off < kHttpResponse.size()) {
      const ssize_t w = ::send(c.fd.get(), kHttpResponse.data() + c.pending_off,
                               kHttpResponse.size() - c.pending_off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          want_output(c, true);
        } else {
          close_conn(c);
        }
        return false;
      }
      c.pending_off += static_cast<std::uint32_t>(w);
    }
    return true;
  }

  // Lingering close: half-close and read until the client closes, so that our close
  // never meets unread input (which would reset the connection and could lose the
  // response).
  void linger(Conn& c) {
    ::shutdown(c.fd.get(), SHUT_WR);
    c.state = ConnState::kHttpDrain;
    want_output(c, false);
  }

  void on_writable(Conn& c) {
    if (c.state == ConnState::kHttpRespond) {
      if (send_response(c)) linger(c);
      return;
    }
    while (c.pending_off < c.pending_len) {
      const ssize_t w = ::send(c.fd.get(), c.pending.get() + c.pending_off,
                               c.pending_len - c.pending_off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) close_conn(c);
        return;
      }
      c.pending_off += static_cast<std::uint32_t>(w);
    }
    c.pending_off = c.pending_len = 0;
    want_output(c, false);
  }

  void serve_udp(int fd) {
    const auto it = std::find_if(udp_.begin(), udp_.end(),
                                 [&](const UdpSocket& u) { return u.fd.get() == fd; });
    if (it == udp_.end()) return;
    const UdpSocket& u = *it;
    struct Slot {
      sockaddr_storage peer;
      alignas(
          cmsghdr) char control[CMSG_SPACE(sizeof(in6_pktinfo)) + CMSG_SPACE(sizeof(in_pktinfo))];
      iovec iov;
    };
    std::array<Slot, kUdpBatch> slots;  // uninitialised on purpose: set below per use
    std::array<mmsghdr, kUdpBatch> msgs{};
    for (int round = 0; round < 8; ++round) {
      for (unsigned i = 0; i < kUdpBatch; ++i) {
        slots[i].iov = {udp_buf_.get() + i * kUdpMax, kUdpMax};
        msghdr& h = msgs[i].msg_hdr;
        h = msghdr{};
        h.msg_name = &slots[i].peer;
        h.msg_namelen = sizeof slots[i].peer;
        h.msg_iov = &slots[i].iov;
        h.msg_iovlen = 1;
        if (u.wildcard) {
          h.msg_control = slots[i].control;
          h.msg_controllen = sizeof slots[i].control;
        }
      }
      const int n = ::recvmmsg(fd, msgs.data(), kUdpBatch, MSG_DONTWAIT, nullptr);
      if (n <= 0) {
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          std::fprintf(stderr, "lab-load serve: udp recvmmsg: %s\n", std::strerror(errno));
        }
        return;
      }
      // Echo all but the download requests (the kept headers still point at their own
      // slot's buffers, so moving them down is enough).
      int echo = 0;
      for (int i = 0; i < n; ++i) {
        slots[i].iov.iov_len = msgs[i].msg_len;
        if (u.wildcard) source_from_destination(msgs[i].msg_hdr, u.family);
        if (download::is_request(udp_buf_.get() + static_cast<size_t>(i) * kUdpMax,
                                 msgs[i].msg_len)) {
          start_download(u, msgs[i].msg_hdr,
                         udp_buf_.get() + static_cast<size_t>(i) * kUdpMax);
          continue;
        }
        if (echo != i) msgs[echo] = msgs[i];
        ++echo;
      }
      int sent = 0;
      while (sent < echo) {
        const int w =
            ::sendmmsg(fd, msgs.data() + sent, static_cast<unsigned>(echo - sent), MSG_DONTWAIT);
        if (w < 0) {
          if (errno == EINTR) continue;
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;  // UDP: drop the rest
          ++sent;  // this one failed (unreachable sender, too big): skip it
          continue;
        }
        sent += w;
      }
      if (static_cast<unsigned>(n) < kUdpBatch) return;
    }
  }

  UdpSocket* udp_socket(int fd) {
    const auto it = std::find_if(udp_.begin(), udp_.end(),
                                 [&](const UdpSocket& u) { return u.fd.get() == fd; });
    return it == udp_.end() ? nullptr : &*it;
  }

  void set_udp_out(UdpSocket& u, bool on) {
    if (u.want_out == on) return;
    modify(u.fd.get(), on ? std::uint32_t{EPOLLIN | EPOLLOUT} : std::uint32_t{EPOLLIN}, Tag::kUdp);
    u.want_out = on;
  }

  // `h` is the request as received (its source already turned into the reply's, for a
  // wildcard socket), `data` its payload.
  void start_download(const UdpSocket& u, const msghdr& h, const char* data) {
    const auto req = download::decode_request(data, download::kRequestSize);
    if (!req) {
      std::fputs("lab-load serve: a download request out of range ignored\n", stderr);
      return;
    }
    if (std::find(recent_.begin(), recent_.end(), req->session) != recent_.end()) return;
    recent_[recent_next_++ % kRecentSessions] = req->session;
    Download d;
    d.fd = u.fd.get();
    std::memcpy(&d.peer, h.msg_name, h.msg_namelen);
    d.peer_len = h.msg_namelen;
    d.peer_text = sockaddr_text(d.peer, d.peer_len);
    if (downloads_.size() >= kMaxDownloads) {
      std::fprintf(stderr, "lab-load serve: download to %s refused: %zu already running\n",
                   d.peer_text.c_str(), downloads_.size());
      return;
    }
    if (h.msg_control != nullptr && h.msg_controllen <= sizeof d.control) {
      std::memcpy(d.control, h.msg_control, h.msg_controllen);
      d.control_len = h.msg_controllen;
    }
    d.req = *req;
    d.start = now_ns();
    d.end = d.start + static_cast<Nanos>(req->duration_ms) * 1'000'000;
    // Written once: every datagram is the same but for its first 16 bytes.
    d.buf = std::make_unique<char[]>(kUdpBatch * req->size);
    std::memset(d.buf.get(), 'd', kUdpBatch * req->size);
    const std::string rate = req->rate == 0 ? std::string("as fast as the socket takes them")
                                            : std::to_string(req->rate) + "/s";
    std::fprintf(stderr, "lab-load serve: download to %s: %u-byte datagrams for %u ms, %s\n",
                 d.peer_text.c_str(), req->size, req->duration_ms, rate.c_str());
    downloads_.push_back(std::move(d));
    ++downloads_total_;
  }

  void unblock_downloads(int fd) {
    for (Download& d : downloads_) {
      if (d.fd == fd) d.blocked = false;
    }
    if (UdpSocket* u = udp_socket(fd)) set_udp_out(*u, false);
  }

  // The epoll timeout that wakes the loop for the next datagram or end marker due.
  int download_timeout_ms(Nanos now) const {
    Nanos next = now + 1'000'000'000;
    for (const Download& d : downloads_) {
      Nanos due = 0;
      if (now < d.end) {
        if (d.blocked) continue;  // EPOLLOUT wakes it
        due = d.req.rate == 0 ? now
                              : d.start + static_cast<Nanos>(static_cast<double>(d.sent + 1) *
                                                              1e9 / static_cast<double>(d.req.rate));
        due = std::min(due, d.end);
      } else {
        due = d.end + kEndMarkerAt[std::min<size_t>(d.markers, kEndMarkerAt.size() - 1)];
      }
      next = std::min(next, due);
    }
    if (next <= now) return 0;
    return static_cast<int>((next - now + 999'999) / 1'000'000);
  }

  void send_downloads(Nanos now) {
    for (Download& d : downloads_) {
      if (now < d.end) {
        send_data(d, now);
      } else if (d.markers < kEndMarkerAt.size() && now >= d.end + kEndMarkerAt[d.markers]) {
        send_end_marker(d);
        if (++d.markers == kEndMarkerAt.size()) {
          std::fprintf(stderr,
                       "lab-load serve: download to %s done: %llu datagrams sent in %.3f s "
                       "(%llu times the buffer was full, %llu ENOBUFS, %llu errors)\n",
                       d.peer_text.c_str(), static_cast<unsigned long long>(d.sent),
                       ns_to_seconds(d.end - d.start), static_cast<unsigned long long>(d.full),
                       static_cast<unsigned long long>(d.enobufs),
                       static_cast<unsigned long long>(d.errors));
        }
      }
    }
    std::erase_if(downloads_, [](const Download& d) { return d.markers == kEndMarkerAt.size(); });
  }

  void send_data(Download& d, Nanos now) {
    if (d.blocked) return;
    std::uint64_t budget = static_cast<std::uint64_t>(kDownloadBatchesPerStep) * kUdpBatch;
    if (d.req.rate != 0) {
      const auto due = static_cast<std::uint64_t>(static_cast<double>(now - d.start) *
                                                  static_cast<double>(d.req.rate) / 1e9) +
                       1;
      budget = std::min(budget, due > d.sent ? due - d.sent : 0);
    }
    std::array<iovec, kUdpBatch> iov;
    std::array<mmsghdr, kUdpBatch> msgs{};
    const size_t size = d.req.size;
    while (budget > 0) {
      const auto k = static_cast<unsigned>(std::min<std::uint64_t>(budget, kUdpBatch));
      for (unsigned j = 0; j < k; ++j) {
        char* p = d.buf.get() + j * size;
        download::put64(p, d.req.session);
        download::put64(p + 8, d.sent + j);
        iov[j] = {p, size};
        msghdr& h = msgs[j].msg_hdr;
        h = msghdr{};
        h.msg_name = &d.peer;
        h.msg_namelen = d.peer_len;
        h.msg_iov = &iov[j];
        h.msg_iovlen = 1;
        if (d.control_len > 0) {
          h.msg_control = d.control;
          h.msg_controllen = d.control_len;
        }
      }
      const int w = ::sendmmsg(d.fd, msgs.data(), k, MSG_DONTWAIT);
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          ++d.full;
          d.blocked = true;
          if (UdpSocket* u = udp_socket(d.fd)) set_udp_out(*u, true);
          return;
        }
        if (errno == ENOBUFS) {  // a full queue below the socket: try again next step
          ++d.enobufs;
          return;
        }
        ++d.errors;
        if (++d.consecutive_errors >= kMaxDownloadErrors) {
          std::fprintf(stderr, "lab-load serve: download to %s: sendmmsg: %s; ending it\n",
                       d.peer_text.c_str(), std::strerror(errno));
          d.end = now;
        }
        return;
      }
      d.consecutive_errors = 0;
      d.sent += static_cast<unsigned>(w);
      budget -= static_cast<unsigned>(w);
      if (static_cast<unsigned>(w) < k) return;  // the rest next step
    }
  }

  void send_end_marker(const Download& d) {
    char out[download::kEndSize];
    download::put64(out, d.req.session);
    download::put64(out + 8, download::kEndSeq);
    download::put64(out + 16, d.sent);
    iovec iov{out, sizeof out};
    msghdr h{};
    h.msg_name = const_cast<sockaddr_storage*>(&d.peer);
    h.msg_namelen = d.peer_len;
    h.msg_iov = &iov;
    h.msg_iovlen = 1;
    if (d.control_len > 0) {
      h.msg_control = const_cast<char*>(d.control);
      h.msg_controllen = d.control_len;
    }
    ::sendmsg(d.fd, &h, MSG_DONTWAIT);  // best effort: it is sent several times
  }

  // Turns the received packet-info (the address the datagram was sent to) into the
  // packet-info of the reply (the address to send from), in place.
  static void source_from_destination(msghdr& h, int family) {
    in6_pktinfo info6{};
    in_pktinfo info4{};
    bool found = false;
    for (cmsghdr* c = CMSG_FIRSTHDR(&h); c != nullptr; c = CMSG_NXTHDR(&h, c)) {
      if (family == AF_INET6 && c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO) {
        std::memcpy(&info6, CMSG_DATA(c), sizeof info6);
        found = true;
      } else if (family == AF_INET && c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO) {
        std::memcpy(&info4, CMSG_DATA(c), sizeof info4);
        found = true;
      }
    }
    if (!found) {
      h.msg_control = nullptr;
      h.msg_controllen = 0;
      return;
    }
    h.msg_controllen = family == AF_INET6 ? CMSG_SPACE(sizeof info6) : CMSG_SPACE(sizeof info4);
    cmsghdr* c = CMSG_FIRSTHDR(&h);
    if (family == AF_INET6) {
      c->cmsg_level = IPPROTO_IPV6;
      c->cmsg_type = IPV6_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof info6);
      info6.ipi6_ifindex = 0;  // let routing pick the way back
      std::memcpy(CMSG_DATA(c), &info6, sizeof info6);
    } else {
      c->cmsg_level = IPPROTO_IP;
      c->cmsg_type = IP_PKTINFO;
      c->cmsg_len = CMSG_LEN(sizeof info4);
      in_pktinfo out{};
      out.ipi_spec_dst = info4.ipi_addr;
      std::memcpy(CMSG_DATA(c), &out, sizeof out);
    }
  }

  std::vector<Endpoint> listen_;
  bool http_;
  Fd epoll_;
  std::vector<Fd> listeners_;
  std::vector<UdpSocket> udp_;
  std::vector<Conn> conns_;
  std::unique_ptr<char[]> io_;
  std::unique_ptr<char[]> udp_buf_;
  std::int64_t head_end_ = 0;
  std::uint64_t accepted_ = 0;
  std::uint64_t open_ = 0;
  std::vector<Download> downloads_;
  std::array<std::uint64_t, kRecentSessions> recent_{};
  size_t recent_next_ = 0;
  std::uint64_t downloads_total_ = 0;
  bool accept_paused_ = false;
  Nanos resume_accept_at_ = 0;
};

}  // namespace

int run_serve(int argc, char** argv) {
  const Args args("serve", argc, argv, {{"--listen"}, {"--pidfile"}, {"--http", false}});
  std::vector<Endpoint> listen;
  for (const std::string_view text : args.all("--listen")) {
    listen.push_back(parse_endpoint(text, "serve: --listen"));
  }
  if (listen.empty()) throw UsageError("serve: --listen IP:PORT is required");
  const std::string pidfile(args.value("--pidfile"));

  raise_nofile_limit();
  install_stop_signals(/*block=*/true);
  Server server(std::move(listen), args.has("--http"));
  server.setup();
  if (!pidfile.empty()) write_file_atomically(pidfile, std::to_string(::getpid()) + "\n");
  server.run();
  if (!pidfile.empty()) ::unlink(pidfile.c_str());
  print_json(Json()
                 .field("mode", "serve")
                 .field("connections", server.accepted())
                 .field("downloads", server.downloads()));
  return 0;
}

}  // namespace splitd::bench
