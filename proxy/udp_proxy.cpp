#include "proxy/udp_proxy.hpp"

#include <malloc.h>
#include <netinet/in.h>
#include <sodium.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/asio.hpp"

namespace splitd::proxy {

using net::asio::ip::udp;
using net::awaitable;
using net::error_code;
namespace asio = net::asio;

namespace {

// The largest UDP payload (IPv6 jumbograms aside); IPv4 allows 65,507 of it.
constexpr std::size_t kMaxDatagram = 65535;
// Datagrams read from one socket before others get their turn.
constexpr int kReadBudget = 64;
// Listener receive buffer: bursts of new flows queue here while the worker is busy.
constexpr int kListenerBuffer = 8 << 20;
// Reply sockets also take the clients' datagrams to their peer: room for a burst.
constexpr int kReplyBuffer = 1 << 20;
// After sweeps that freed this many entries, give the memory back to the OS.
constexpr std::size_t kTrimAfter = 1024;

std::string errno_text(int err) { return std::strerror(err); }

// Serialises endpoints for the keyed hash: family, 16 address bytes, port.
struct KeyBytes {
  std::array<std::uint8_t, 64> b{};
  std::size_t n = 0;
  void put(const Endpoint& ep) {
    b[n++] = static_cast<std::uint8_t>(ep.address.family());
    const auto bytes = ep.address.bytes();
    std::memcpy(&b[n], bytes.data(), bytes.size());
    n += 16;
    b[n++] = static_cast<std::uint8_t>(ep.port >> 8);
    b[n++] = static_cast<std::uint8_t>(ep.port);
  }
  std::span<const std::uint8_t> view() const { return {b.data(), n}; }
};

struct FlowKey {
  Endpoint client, destination;
  friend bool operator==(const FlowKey&, const FlowKey&) = default;
};

// Mappings are per client endpoint and route; the interface index stands for the name
// (a route's interface is identified by both; the index is what the kernel uses).
struct MappingKey {
  Endpoint client;
  decider::RouteKind kind = decider::RouteKind::kBlock;
  std::uint32_t ifindex = 0;
  friend bool operator==(const MappingKey&, const MappingKey&) = default;
};

struct Hasher {
  KeyedHash h;
  std::size_t operator()(const Endpoint& e) const {
    KeyBytes k;
    k.put(e);
    return h(k.view());
  }
  std::size_t operator()(const FlowKey& f) const {
    KeyBytes k;
    k.put(f.client);
    k.put(f.destination);
    return h(k.view());
  }
  std::size_t operator()(const MappingKey& m) const {
    KeyBytes k;
    k.put(m.client);
    k.b[k.n++] = static_cast<std::uint8_t>(m.kind);
    std::memcpy(&k.b[k.n], &m.ifindex, sizeof m.ifindex);
    k.n += sizeof m.ifindex;
    return h(k.view());
  }
};

bool set_int(int fd, int level, int name, int value) {
  return ::setsockopt(fd, level, name, &value, sizeof value) == 0;
}

}  // namespace

KeyedHash::KeyedHash() {
  static_assert(crypto_shorthash_KEYBYTES == 16);
  if (sodium_init() < 0) throw std::runtime_error("libsodium: sodium_init failed");
  randombytes_buf(key_.data(), key_.size());
}

std::size_t KeyedHash::operator()(std::span<const std::uint8_t> bytes) const {
  std::array<unsigned char, crypto_shorthash_BYTES> out;
  crypto_shorthash(out.data(), bytes.data(), bytes.size(), key_.data());
  std::size_t v;
  std::memcpy(&v, out.data(), sizeof v);
  return v;
}

class UdpProxy::Worker {
 public:
  explicit Worker(UdpProxy& proxy)
      : proxy_(proxy),
        opts_(proxy.options_),
        buf_(new char[kMaxDatagram]),
        flows_(64, hasher_),
        mappings_(64, hasher_),
        replies_(64, hasher_),
        counters_(proxy.sessions_.register_worker()) {}

  ~Worker() { owner_->detach(); }

  Expected<void, std::string> listen() {
    const auto add = [this](const Endpoint& ep) -> Expected<void, std::string> {
      auto s = std::make_shared<Socket>(ctx_);
      const bool v6 = ep.address.is_v6();
      error_code ec;
      s->socket.open(v6 ? udp::v6() : udp::v4(), ec);
      if (ec == asio::error::address_family_not_supported && v6) {
        log::warn("udp proxy: IPv6 is disabled on this host (", ec.message(), "); IPv4 only");
        return {};
      }
      if (ec) return unexpected("socket for " + ep.to_string() + ": " + ec.message());
      const int fd = s->socket.native_handle();
      set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      if (v6) set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
      if (!set_int(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1)) {
        return unexpected(std::string("transparent UDP listener: ") + errno_text(errno) +
                          (errno == EPERM ? " (splitd needs CAP_NET_ADMIN: run it as root or grant the capability)" : ""));
      }
      if (!set_int(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_RECVORIGDSTADDR : IP_RECVORIGDSTADDR, 1)) {
        return unexpected(std::string("UDP listener: RECVORIGDSTADDR: ") + errno_text(errno));
      }
      if (!set_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, kListenerBuffer)) {
        set_int(fd, SOL_SOCKET, SO_RCVBUF, kListenerBuffer);
      }
      sockaddr_storage ss;
      const socklen_t len = sockaddr_of(ep, ss);
      if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
        const int err = errno;
        return unexpected("bind UDP " + ep.to_string() + ": " + errno_text(err) +
                          (err == EADDRINUSE ? " (is another splitd running? change proxy.port)" : ""));
      }
      s->socket.non_blocking(true, ec);
      listeners_.push_back(std::move(s));
      return {};
    };
    if (auto r = add({*IpAddress::parse("127.0.0.1"), opts_.port}); !r) return r;
    if (opts_.ipv6) {
      if (auto r = add({*IpAddress::parse("::1"), opts_.port}); !r) return r;
    }
    Fd ep(::epoll_create1(EPOLL_CLOEXEC));
    if (!ep) return unexpected("epoll_create1: " + errno_text(errno));
    error_code ec;
    epoll_desc_.assign(ep.get(), ec);
    if (ec) return unexpected("epoll descriptor: " + ec.message());
    ep.release();  // epoll_desc_ owns it
    return {};
  }

  void start() {
    // Sessions hold owner_; a kill reaches ctx_ until stop() detaches it, and a kill that
    // races the detach either finishes its post first or finds it detached. The flow is
    // looked up on the worker thread when the kill runs.
    owner_ = std::make_shared<SessionOwner>([this](std::uint64_t id) {
      asio::post(ctx_, [this, id] { kill(id); });
    });
    for (auto& l : listeners_) asio::co_spawn(ctx_, listener_reader(l), asio::detached);
    asio::co_spawn(ctx_, epoll_loop(), asio::detached);
    asio::co_spawn(ctx_, sweeper(), asio::detached);
    thread_ = std::thread([this] { ctx_.run(); });
  }

  // Called from the controlling thread.
  void stop(std::chrono::steady_clock::time_point deadline) {
    owner_->detach();
    asio::post(ctx_, [this] {
      stopping_ = true;
      sweep_timer_.cancel();
      for (auto& l : listeners_) close(*l);
      listeners_.clear();
      while (!flow_lru_.empty()) evict_flow(*flow_lru_.back(), "shutdown");
      while (!mapping_lru_.empty()) evict_mapping(*mapping_lru_.back());
      while (!reply_lru_.empty()) evict_reply(*reply_lru_.back());
      bury();
      error_code ec;
      epoll_desc_.close(ec);
    });
    while (!ctx_.stopped() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ctx_.stop();
    if (thread_.joinable()) thread_.join();
  }

 private:
  // A listener with its reader coroutine; the coroutine holds a reference until it sees
  // `closed` or its wait is aborted.
  struct Socket {
    explicit Socket(asio::io_context& ctx) : socket(ctx) {}
    udp::socket socket;
    bool closed = false;
  };

  struct Mapping;

  struct Flow {
    FlowKey key;
    std::shared_ptr<Session> session;
    Mapping* mapping = nullptr;  // null: blocked
    std::int64_t last = 0;
    std::list<Flow*>::iterator lru;
  };

  // A mapping's socket or a reply socket: registered with the worker's own epoll, which
  // Asio waits on as one descriptor. Asio keeps the state of every socket it ever
  // registered in a pool it never frees, and a coroutine per socket costs a frame: after
  // a burst of 10k mappings, RSS would stay up.
  struct Polled {
    Fd fd;
    bool closed = false;
    bool upstream = false;  // a mapping's socket, else a reply socket
  };

  struct Mapping : Polled {
    MappingKey key;
    decider::Route route;
    std::size_t flows = 0;
    std::int64_t last = 0;
    std::list<Mapping*>::iterator lru;
  };

  struct Reply : Polled {
    Endpoint peer;
    std::int64_t last = 0;
    std::list<Reply*>::iterator lru;
  };

  static void close(Socket& s) {
    s.closed = true;
    error_code ec;
    s.socket.close(ec);
  }
  static void close(Polled& p) {
    p.closed = true;
    p.fd.reset();  // also leaves the epoll set
  }

  bool watch(Polled& p) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.ptr = &p;
    return ::epoll_ctl(epoll_desc_.native_handle(), EPOLL_CTL_ADD, p.fd.get(), &ev) == 0;
  }

  awaitable<void> listener_reader(std::shared_ptr<Socket> s) {
    for (;;) {
      error_code ec;
      co_await s->socket.async_wait(udp::socket::wait_read, asio::redirect_error(net::use_awaitable, ec));
      if (ec || s->closed) co_return;
      read_client(s->socket.native_handle(), s->closed);
    }
  }

  // Level-triggered: a socket whose read budget ran out is reported again. Objects evicted
  // while a batch is handled are buried after it, so later events never see freed memory.
  awaitable<void> epoll_loop() {
    for (;;) {
      error_code ec;
      co_await epoll_desc_.async_wait(asio::posix::stream_descriptor::wait_read,
                                      asio::redirect_error(net::use_awaitable, ec));
      if (ec || stopping_) co_return;
      handle_events();
    }
  }

  void handle_events() {
    const int n = ::epoll_wait(epoll_desc_.native_handle(), events_.data(), static_cast<int>(events_.size()), 0);
    for (int i = 0; i < n; ++i) {
      auto* p = static_cast<Polled*>(events_[static_cast<std::size_t>(i)].data.ptr);
      if (p->closed) continue;
      if (p->upstream) {
        read_upstream(static_cast<Mapping&>(*p));
      } else {
        read_client(p->fd.get(), p->closed);
      }
    }
    bury();
  }

  void bury() {
    dead_mappings_.clear();
    dead_replies_.clear();
  }

  template <typename T>
  static void touch(std::list<T*>& lru, T& item, std::int64_t now) {
    item.last = now;
    if (item.lru != lru.begin()) lru.splice(lru.begin(), lru, item.lru);
  }

  // Reads datagrams of apps: from a listener (first datagram of a flow, via TPROXY) or
  // from a reply socket (later datagrams to that peer). The original destination comes
  // with each datagram.
  void read_client(int fd, const bool& closed) {
    for (int i = 0; i < kReadBudget && !closed; ++i) {
      sockaddr_storage from{};
      alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(sockaddr_in6)) + 64> control;
      iovec iov{buf_.get(), kMaxDatagram};
      msghdr msg{};
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNREFUSED) {
          log::debug("udp: client side recvmsg: ", errno_text(errno));
        }
        break;
      }
      if (msg.msg_flags & MSG_TRUNC) continue;  // cannot happen below 64 KiB; drop
      std::optional<Endpoint> dst;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) ||
            (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR)) {
          sockaddr_storage orig{};
          std::memcpy(&orig, CMSG_DATA(c),
                      std::min<std::size_t>(c->cmsg_len - CMSG_LEN(0), sizeof orig));
          dst = endpoint_of(orig);
        }
      }
      if (!dst) continue;
      from_client(endpoint_of(from), *dst, static_cast<std::size_t>(n));
    }
  }

  // Reads what peers send to a mapping: any peer, not only those the client contacted.
  void read_upstream(Mapping& mapping) {
    Mapping* const m = &mapping;
    for (int i = 0; i < kReadBudget && !m->closed; ++i) {
      sockaddr_storage from{};
      iovec iov{buf_.get(), kMaxDatagram};
      msghdr msg{};
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      const ssize_t n = ::recvmsg(m->fd.get(), &msg, MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR) continue;
        // An ICMP error of one peer (port unreachable, ...) says nothing about the
        // others: the mapping stays.
        if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
          log::debug("udp: upstream recvmsg on ", m->key.client.to_string(), "'s mapping: ",
                     errno_text(errno));
        }
        break;
      }
      if (msg.msg_flags & MSG_TRUNC) continue;
      from_peer(*m, endpoint_of(from), static_cast<std::size_t>(n));
    }
  }

  void from_client(const Endpoint& client, const Endpoint& dst, std::size_t n) {
    const std::int64_t now = steady_ms();
    Flow* f = find_flow({client, dst});
    if (!f) f = new_flow(client, dst, now, n);
    if (!f) return;
    touch(flow_lru_, *f, now);
    f->session->add_sent(n, 1);
    f->session->last_activity_ms.store(now, std::memory_order_relaxed);
    if (!f->mapping) return;  // blocked
    Mapping& m = *f->mapping;
    touch(mapping_lru_, m, now);
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of(dst, ss);
    if (::sendto(m.fd.get(), buf_.get(), n, MSG_DONTWAIT,
                 reinterpret_cast<sockaddr*>(&ss), len) < 0 &&
        errno != EAGAIN && errno != EWOULDBLOCK) {
      // UDP may drop; say why once in a while for whoever debugs a flow.
      log::debug("udp #", f->session->id, " ", dst.to_string(), " via ", m.route.interface,
                 ": sendto: ", errno_text(errno));
    }
  }

  void from_peer(Mapping& m, const Endpoint& peer, std::size_t n) {
    const std::int64_t now = steady_ms();
    const Endpoint& client = m.key.client;
    Flow* f = find_flow({client, peer});
    if (!f) {
      // A peer the client never contacted (full cone): the flow takes the mapping's
      // route, so the client's answers leave through the address the peer knows.
      SessionSpec spec;
      spec.protocol = decider::Protocol::kUdp;
      spec.client = client;
      spec.destination = peer;
      spec.route = m.route;
      f = add_flow(std::move(spec), &m, now);
      if (!f) return;
    }
    touch(flow_lru_, *f, now);
    touch(mapping_lru_, m, now);
    f->session->add_received(n, 1);
    f->session->last_activity_ms.store(now, std::memory_order_relaxed);
    Reply* r = reply_socket(peer, now);
    if (!r) return;
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of(client, ss);
    if (::sendto(r->fd.get(), buf_.get(), n, MSG_DONTWAIT,
                 reinterpret_cast<sockaddr*>(&ss), len) < 0 &&
        errno != EAGAIN && errno != EWOULDBLOCK) {
      log::debug("udp #", f->session->id, " reply from ", peer.to_string(), " to ",
                 client.to_string(), ": sendto: ", errno_text(errno));
    }
  }

  Flow* find_flow(const FlowKey& k) {
    auto it = flows_.find(k);
    return it == flows_.end() ? nullptr : it->second.get();
  }

  Flow* new_flow(const Endpoint& client, const Endpoint& dst, std::int64_t now, std::size_t n) {
    if (stopping_) return nullptr;
    SessionSpec spec = proxy_.classifier_.classify(
        {decider::Protocol::kUdp, client, dst, {reinterpret_cast<const std::uint8_t*>(buf_.get()), n}});
    const decider::Route& route = spec.route;
    Mapping* m = nullptr;
    if (route.kind != decider::RouteKind::kBlock) {
      if (flows_.size() >= opts_.max_sessions) return refuse(client, dst);
      m = mapping_for(client, route, now);
      if (!m) return nullptr;
    }
    return add_flow(std::move(spec), m, now);
  }

  Flow* refuse(const Endpoint& client, const Endpoint& dst) {
    counters_.add(decider::Protocol::kUdp, WorkerCounters::kRefused);
    const std::int64_t now = steady_ms();
    if (now - last_refused_log_ >= 1000) {  // one line per second at most
      last_refused_log_ = now;
      log::warn("udp ", client.to_string(), " -> ", dst.to_string(), ": dropped, max_sessions (",
                opts_.max_sessions, ") reached");
    }
    return nullptr;
  }

  Flow* add_flow(SessionSpec spec, Mapping* m, std::int64_t now) {
    if (flows_.size() >= opts_.max_sessions) return refuse(spec.client, spec.destination);
    auto f = std::make_unique<Flow>();
    f->key = {spec.client, spec.destination};
    f->mapping = m;
    f->last = now;
    f->session = proxy_.sessions_.add(std::move(spec), counters_, owner_);
    if (m) ++m->flows;
    flow_lru_.push_front(f.get());
    f->lru = flow_lru_.begin();
    Flow* raw = f.get();
    flows_.emplace(raw->key, std::move(f));
    proxy_.flows_.store(flows_.size(), std::memory_order_relaxed);
    return raw;
  }

  // Kills are rare (an operator's request): a walk over the flows beats an index that
  // every flow would pay for in memory.
  void kill(std::uint64_t id) {
    for (Flow* f : flow_lru_) {
      if (f->session->id == id) {
        evict_flow(*f, "killed");
        return;
      }
    }
  }

  void evict_flow(Flow& f, const char* how) {
    Session& s = *f.session;
    if (log::enabled(log::Level::kDebug)) {
      log::debug("udp #", s.id, " ", s.client.to_string(), " -> ", s.destination.to_string(), " ",
                 decider::to_string(s.route.kind),
                 s.route.interface.empty() ? "" : " via " + s.route.interface, " rule '", s.route.rule,
                 "' sent ", s.packets_sent.load(), "/", s.bytes_sent.load(), "B received ",
                 s.packets_received.load(), "/", s.bytes_received.load(), "B (", how, ")");
    }
    proxy_.sessions_.remove(s);
    if (f.mapping) --f.mapping->flows;
    flow_lru_.erase(f.lru);
    const FlowKey key = f.key;
    flows_.erase(key);  // destroys f
    proxy_.flows_.store(flows_.size(), std::memory_order_relaxed);
  }

  Mapping* mapping_for(const Endpoint& client, const decider::Route& route, std::int64_t now) {
    const MappingKey key{client, route.kind, route.ifindex};
    if (auto it = mappings_.find(key); it != mappings_.end()) return it->second.get();
    auto m = std::make_unique<Mapping>();
    m->upstream = true;
    m->key = key;
    m->route = route;
    m->last = now;
    if (auto r = open_upstream(*m); !r) {
      counters_.failure(decider::Protocol::kUdp, FailReason::kSocket);
      log::debug("udp ", client.to_string(), " via ", route.interface, ": ", r.error());
      return nullptr;
    }
    mapping_lru_.push_front(m.get());
    m->lru = mapping_lru_.begin();
    Mapping* raw = m.get();
    mappings_.emplace(key, std::move(m));
    proxy_.mappings_.store(mappings_.size(), std::memory_order_relaxed);
    return raw;
  }

  // SO_MARK so our datagrams are never intercepted again; SO_BINDTODEVICE plus a bind to
  // the interface's address (port 0: the kernel picks one free for that address and
  // device, clear of apps' sockets) so no other policy routing can move the mapping.
  // Unconnected: replies of every peer arrive here.
  Expected<void, std::string> open_upstream(Mapping& m) {
    const decider::Route& route = m.route;
    if (!route.source) return unexpected("interface " + route.interface + " has no address for this family");
    const bool v6 = route.source->is_v6();
    m.fd = Fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!m.fd) return unexpected("socket: " + errno_text(errno));
    const int fd = m.fd.get();
    if (v6) set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    if (!set_int(fd, SOL_SOCKET, SO_MARK, static_cast<int>(opts_.bypass_mark))) {
      return unexpected("SO_MARK: " + errno_text(errno));
    }
    if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, route.interface.c_str(),
                     static_cast<socklen_t>(route.interface.size())) != 0) {
      return unexpected("bind to device " + route.interface + ": " + errno_text(errno));
    }
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of({*route.source, 0}, ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      return unexpected("bind " + route.source->to_string() + ": " + errno_text(errno));
    }
    if (!watch(m)) return unexpected("epoll: " + errno_text(errno));
    return {};
  }

  void evict_mapping(Mapping& m) {
    close(m);
    mapping_lru_.erase(m.lru);
    const MappingKey key = m.key;
    auto it = mappings_.find(key);
    dead_mappings_.push_back(std::move(it->second));
    mappings_.erase(it);
    proxy_.mappings_.store(mappings_.size(), std::memory_order_relaxed);
  }

  // The transparent socket bound to `peer`, from which replies reach clients with the
  // peer's address as source. Bypass mark: the reply is not intercepted again.
  Reply* reply_socket(const Endpoint& peer, std::int64_t now) {
    if (auto it = replies_.find(peer); it != replies_.end()) {
      touch(reply_lru_, *it->second, now);
      return it->second.get();
    }
    if (stopping_) return nullptr;
    while (replies_.size() >= std::max<std::size_t>(1, opts_.reply_sockets)) {
      evict_reply(*reply_lru_.back());
    }
    auto r = std::make_unique<Reply>();
    r->peer = peer;
    r->last = now;
    const bool v6 = peer.address.is_v6();
    r->fd = Fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    const auto fail = [&](const char* what) {
      log::debug("udp: reply socket for ", peer.to_string(), ": ", what, ": ", errno_text(errno));
      return nullptr;
    };
    if (!r->fd) return fail("socket");
    const int fd = r->fd.get();
    if (v6) set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    if (!set_int(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1)) {
      return fail("transparent");
    }
    // It also receives the clients' next datagrams to the peer: tell their destination.
    set_int(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_RECVORIGDSTADDR : IP_RECVORIGDSTADDR, 1);
    set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    if (!set_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, kReplyBuffer)) set_int(fd, SOL_SOCKET, SO_RCVBUF, kReplyBuffer);
    if (!set_int(fd, SOL_SOCKET, SO_MARK, static_cast<int>(opts_.bypass_mark))) return fail("SO_MARK");
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of(peer, ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return fail("bind");
    if (!watch(*r)) return fail("epoll");
    reply_lru_.push_front(r.get());
    r->lru = reply_lru_.begin();
    Reply* raw = r.get();
    replies_.emplace(peer, std::move(r));
    return raw;
  }

  void evict_reply(Reply& r) {
    close(r);
    reply_lru_.erase(r.lru);
    auto it = replies_.find(r.peer);
    dead_replies_.push_back(std::move(it->second));
    replies_.erase(it);
  }

  // Closes what has been idle for idle_timeout: flows, then mappings without flows, then
  // reply sockets. Each list is ordered by last use, so a sweep only looks at the expired.
  awaitable<void> sweeper() {
    const auto idle = opts_.idle_timeout;
    const auto every = std::clamp(idle / 4, std::chrono::milliseconds(100), std::chrono::milliseconds(5000));
    for (;;) {
      sweep_timer_.expires_after(every);
      error_code ec;
      co_await sweep_timer_.async_wait(asio::redirect_error(net::use_awaitable, ec));
      if (ec || stopping_) co_return;
      const std::int64_t expired = steady_ms() - idle.count();
      std::size_t freed = 0;
      while (!flow_lru_.empty() && flow_lru_.back()->last <= expired) {
        evict_flow(*flow_lru_.back(), "idle");
        ++freed;
      }
      // A mapping is touched with every flow of it, so it expires with its last flow.
      while (!mapping_lru_.empty() && mapping_lru_.back()->last <= expired) {
        Mapping& m = *mapping_lru_.back();
        if (m.flows != 0) {  // a flow touched later than the mapping: cannot happen; be safe
          touch(mapping_lru_, m, steady_ms());
          break;
        }
        evict_mapping(m);
        ++freed;
      }
      while (!reply_lru_.empty() && reply_lru_.back()->last <= expired) {
        evict_reply(*reply_lru_.back());
        ++freed;
      }
      bury();
      freed_since_trim_ += freed;
      if (freed > 0 && freed_since_trim_ >= kTrimAfter) {
        freed_since_trim_ = 0;
        log::debug("udp: ", freed, " idle flows, mappings and reply sockets closed; ", flows_.size(),
                   " flows and ", mappings_.size(), " mappings remain");
        if (flows_.empty()) flows_.rehash(0);
        if (mappings_.empty()) mappings_.rehash(0);
        ::malloc_trim(0);  // a burst's memory goes back to the OS, not only to malloc
      }
    }
  }

  UdpProxy& proxy_;
  const UdpProxyOptions& opts_;
  asio::io_context ctx_{1};
  asio::steady_timer sweep_timer_{ctx_};
  std::unique_ptr<char[]> buf_;  // one datagram; not zero-filled
  Hasher hasher_;
  std::vector<std::shared_ptr<Socket>> listeners_;
  std::unordered_map<FlowKey, std::unique_ptr<Flow>, Hasher> flows_;
  std::unordered_map<MappingKey, std::unique_ptr<Mapping>, Hasher> mappings_;
  std::unordered_map<Endpoint, std::unique_ptr<Reply>, Hasher> replies_;
  std::vector<std::unique_ptr<Mapping>> dead_mappings_;  // evicted, freed after the batch
  std::vector<std::unique_ptr<Reply>> dead_replies_;
  asio::posix::stream_descriptor epoll_desc_{ctx_};  // the worker's epoll set
  std::array<epoll_event, 128> events_;
  std::list<Flow*> flow_lru_;  // most recently used first
  std::list<Mapping*> mapping_lru_;
  std::list<Reply*> reply_lru_;
  WorkerCounters& counters_;
  std::shared_ptr<SessionOwner> owner_ = std::make_shared<SessionOwner>(nullptr);
  std::int64_t last_refused_log_ = 0;
  std::size_t freed_since_trim_ = 0;
  bool stopping_ = false;
  std::thread thread_;
};

UdpProxy::UdpProxy(UdpProxyOptions options, const Classifier& classifier, SessionTable& sessions)
    : options_(options), classifier_(classifier), sessions_(sessions) {}

UdpProxy::~UdpProxy() { stop(); }

Expected<void, std::string> UdpProxy::start() {
  auto w = std::make_unique<Worker>(*this);
  if (auto r = w->listen(); !r) return r;
  worker_ = std::move(w);
  worker_->start();
  return {};
}

void UdpProxy::stop(std::chrono::milliseconds deadline) {
  if (!worker_) return;
  worker_->stop(std::chrono::steady_clock::now() + deadline);
  worker_.reset();
  flows_.store(0);
  mappings_.store(0);
}

}  // namespace splitd::proxy
