#include "proxy/udp_proxy.hpp"

#include <malloc.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <sodium.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <deque>
#include <list>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "proxy/udp_batch.hpp"
#include "sniff/quic.hpp"

namespace splitd::proxy {

namespace {

#ifndef UDP_GRO
constexpr int UDP_GRO = 104;
#endif

// The reactor tags of the UDP proxy (the TCP proxy has 0-2): a listener is registered as
// its index, a mapping's socket as the Mapping's address (heap, 16-byte aligned).
enum Tag : std::uint8_t { kTagListener = 3, kTagMapping = 4 };
constexpr std::uint64_t kTagMask = Reactor::kTagMask;
constexpr unsigned kTagBits = Reactor::kTagBits;
static_assert(alignof(std::max_align_t) >= 8, "mapping pointers carry the tag in their low bits");

// Batches (of RecvBatch's size) read from one socket before other sockets get their turn.
constexpr int kReadRounds = 4;
// Listener receive buffer: every client datagram comes through the listeners, bursts of
// them queue here while the worker is busy.
constexpr int kListenerBuffer = 8 << 20;
// A mapping's receive buffer: a download at full rate queues here.
constexpr int kMappingBuffer = 4 << 20;
// After sweeps that freed this many entries, give the memory back to the OS.
constexpr std::size_t kTrimAfter = 1024;
// QUIC flows waiting for their ClientHello: what one may hold, how many may wait and how
// much they may hold together per worker (beyond that, new flows are decided at once, by
// their IP). A ClientHello takes one or two datagrams (Chrome's post-quantum one, two);
// these bounds leave room for reordering and retransmits. Per worker, the held datagrams
// take at most kMaxHeldTotal, and the sniffers' reassembly buffers (18 KiB each, once a
// CRYPTO frame came) at most kMaxPending of those.
constexpr std::size_t kMaxHeldDatagrams = 8;
constexpr std::size_t kMaxHeldBytes = 64 * 1024;
constexpr std::size_t kMaxHeldTotal = 8 * 1024 * 1024;
constexpr std::size_t kMaxPending = 1024;

// A client datagram that may start a QUIC connection: a long header with the fixed bit.
bool may_be_quic(std::span<const std::uint8_t> d) { return d.size() >= 7 && (d[0] & 0xc0) == 0xc0; }

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

socklen_t sockaddr_len(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
}

// The kernel zeroes the padding of the addresses it returns, so bytes compare.
bool same_sockaddr(const sockaddr_storage& a, const sockaddr_storage& b) {
  return a.ss_family == b.ss_family && std::memcmp(&a, &b, sockaddr_len(a)) == 0;
}

std::uint64_t segments_of(const Datagram& d) {
  return d.segment == 0 ? 1 : (d.data.size() + d.segment - 1) / d.segment;
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

// One reactor's part of the UDP proxy. Runs on its reactor's thread only (listen() and
// shutdown() through run_sync), except the kill handle, which posts.
class UdpProxy::Worker final : public Reactor::Client {
 public:
  Worker(UdpProxy& proxy, Reactor& reactor)
      : proxy_(proxy),
        opts_(proxy.options_),
        reactor_(reactor),
        flows_(64, hasher_),
        mappings_(64, hasher_),
        replies_(64, hasher_),
        pending_(16, hasher_),
        counters_(proxy.sessions_.register_worker()) {}

  ~Worker() override {
    owner_->detach();
    close_all();  // only if shutdown() never ran
  }

  // The listeners, bound but not yet read: every worker's are in the reuseport group
  // before any worker reads, so no client endpoint moves between workers at the start.
  Expected<void, std::string> open_listeners() {
    if (auto r = add_listener({*IpAddress::parse("127.0.0.1"), opts_.port}); !r) return r;
    if (opts_.ipv6) {
      if (auto r = add_listener({*IpAddress::parse("::1"), opts_.port}); !r) return r;
    }
    return {};
  }

  // On the reactor thread: the listeners join the epoll set, the worker takes its tags.
  Expected<void, std::string> listen() {
    for (std::size_t i = 0; i < listeners_.size(); ++i) {
      // Level-triggered: a socket whose read budget ran out is reported again.
      if (!reactor_.add(listeners_[i].get(), EPOLLIN, (i << kTagBits) | kTagListener)) {
        return unexpected("epoll: " + errno_text(errno));
      }
    }
    // Sessions hold owner_; it reaches this worker until shutdown() detaches it, and a
    // kill that races the detach either posts first (and runs before shutdown, the
    // reactor's tasks run in order) or finds it detached.
    owner_ = std::make_shared<SessionOwner>([this](std::uint64_t id) {
      reactor_.post([this, id] { kill(id); });
    });
    for (std::uint8_t tag : {kTagListener, kTagMapping}) reactor_.attach(tag, this);
    now_ = steady_ms();
    next_sweep_ = now_ + sweep_every().count();
    return {};
  }

  // On the reactor thread (or before the pool runs).
  void shutdown() {
    owner_->detach();  // kills of sessions that outlive us become no-ops
    close_all();
    reactor_.detach(this);
  }

  Reactor& reactor() { return reactor_; }

  // ---- Reactor::Client ------------------------------------------------------------------

  void on_event(std::uint64_t data, std::uint32_t) override {
    now_ = reactor_.now_ms();
    if ((data & kTagMask) == kTagListener) {
      const std::size_t i = data >> kTagBits;
      if (i < listeners_.size()) read_clients(listeners_[i].get());
      return;
    }
    auto* m = reinterpret_cast<Mapping*>(data & ~kTagMask);
    if (!m->closed) read_upstream(*m);
  }

  void after_events() override {
    now_ = reactor_.now_ms();
    if (!pending_order_.empty() && pending_order_.front().first <= now_) expire_pending();
    if (now_ >= next_sweep_) sweep();
    bury();
  }

  std::int64_t next_deadline_ms() const override {
    return pending_order_.empty() ? next_sweep_ : std::min(next_sweep_, pending_order_.front().first);
  }

 private:
  struct Mapping;
  struct Reply;

  struct Flow {
    FlowKey key;
    std::shared_ptr<Session> session;
    Mapping* mapping = nullptr;  // null: blocked
    std::int64_t last = 0;
    std::list<Flow*>::iterator lru;
  };

  struct Mapping {
    Fd fd;
    bool closed = false;
    bool gso = true;  // the socket takes UDP GSO sends (until it refuses one)
    MappingKey key;
    sockaddr_storage client{};  // key.client, ready for sendmsg
    decider::Route route;
    std::size_t flows = 0;
    std::int64_t last = 0;
    std::list<Mapping*>::iterator lru;
  };

  // A QUIC flow waiting for the rest of its ClientHello: its datagrams so far, copied (the
  // receive batch is reused), sent in order once the name decides the flow.
  struct Held {
    std::vector<std::uint8_t> data;
    std::uint16_t segment = 0;
  };
  struct Pending {
    sniff::QuicSniffer sniffer;
    sockaddr_storage to{};  // the original destination, ready for sendmsg
    std::vector<Held> held;
    std::size_t bytes = 0;
    std::int64_t deadline = 0;
  };

  // Send-only: nothing is ever delivered to it (the clients' datagrams all go to the
  // listeners), so it is not in the epoll set.
  struct Reply {
    Fd fd;
    bool gso = true;
    Endpoint peer;
    std::int64_t last = 0;
    std::list<Reply*>::iterator lru;
  };

  std::chrono::milliseconds sweep_every() const {
    return std::clamp(opts_.idle_timeout / 4, std::chrono::milliseconds(100), std::chrono::milliseconds(5000));
  }

  Expected<void, std::string> add_listener(const Endpoint& ep) {
    const bool v6 = ep.address.is_v6();
    Fd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd && v6 && errno == EAFNOSUPPORT) {
      if (reactor_.index() == 0) log::warn("udp proxy: IPv6 is disabled on this host (", errno_text(errno), "); IPv4 only");
      return {};
    }
    if (!fd) return unexpected("socket for " + ep.to_string() + ": " + errno_text(errno));
    const int s = fd.get();
    set_int(s, SOL_SOCKET, SO_REUSEADDR, 1);
    // One listener per worker on the same address: the kernel spreads client endpoints.
    if (!set_int(s, SOL_SOCKET, SO_REUSEPORT, 1)) return unexpected("SO_REUSEPORT: " + errno_text(errno));
    if (v6) set_int(s, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    if (!set_int(s, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1)) {
      return unexpected(std::string("transparent UDP listener: ") + errno_text(errno) +
                        (errno == EPERM ? " (splitd needs CAP_NET_ADMIN: run it as root or grant the capability)" : ""));
    }
    if (!set_int(s, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_RECVORIGDSTADDR : IP_RECVORIGDSTADDR, 1)) {
      return unexpected(std::string("UDP listener: RECVORIGDSTADDR: ") + errno_text(errno));
    }
    if (!set_int(s, SOL_SOCKET, SO_RCVBUFFORCE, kListenerBuffer)) set_int(s, SOL_SOCKET, SO_RCVBUF, kListenerBuffer);
    // An app that sends with GSO (QUIC stacks do) hands us its run as one datagram.
    set_int(s, SOL_UDP, UDP_GRO, 1);
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of(ep, ss);
    if (::bind(s, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      const int err = errno;
      return unexpected("bind UDP " + ep.to_string() + ": " + errno_text(err) +
                        (err == EADDRINUSE ? " (is another splitd running? change proxy.port)" : ""));
    }
    listeners_.push_back(std::move(fd));
    return {};
  }

  template <typename T>
  static void touch(std::list<T*>& lru, T& item, std::int64_t now) {
    item.last = now;
    if (item.lru != lru.begin()) lru.splice(lru.begin(), lru, item.lru);
  }

  // ---- reading ---------------------------------------------------------------------------

  // Datagrams of apps, every one via TPROXY, each with its original destination.
  void read_clients(int fd) {
    for (int round = 0; round < kReadRounds; ++round) {
      const int n = rx_.read(fd, true);
      if (n < 0) {
        if (n != -ECONNREFUSED) log::debug("udp: listener recvmmsg: ", errno_text(-n));
        break;
      }
      for (int i = 0; i < n; ++i) from_client(rx_[static_cast<std::size_t>(i)]);
      flush();
      if (static_cast<unsigned>(n) < rx_.capacity()) break;  // drained
    }
  }

  // What peers send to a mapping: any peer, not only those the client contacted.
  void read_upstream(Mapping& m) {
    for (int round = 0; round < kReadRounds && !m.closed; ++round) {
      const int n = rx_.read(m.fd.get(), false);
      if (n < 0) {
        // An ICMP error of one peer (port unreachable, ...) says nothing about the others:
        // the mapping stays.
        if (n == -ECONNREFUSED || n == -EHOSTUNREACH || n == -ENETUNREACH) continue;
        log::debug("udp: upstream recvmmsg on ", m.key.client.to_string(), "'s mapping: ", errno_text(-n));
        break;
      }
      for (int i = 0; i < n && !m.closed; ++i) from_peer(m, rx_[static_cast<std::size_t>(i)]);
      flush();
      if (static_cast<unsigned>(n) < rx_.capacity()) break;
    }
  }

  void flush() {
    tx_.flush();
    if (const int err = tx_.take_error(); err != 0 && log::enabled(log::Level::kDebug)) {
      log::debug("udp: sendmsg: ", errno_text(err));  // UDP may drop; say why for whoever debugs
    }
  }

  void from_client(const Datagram& d) {
    Flow* f = nullptr;
    // Consecutive datagrams of one flow (the common case in a batch) skip the lookup.
    if (cached_flow_ && same_sockaddr(cached_from_, *d.from) && same_sockaddr(cached_to_, *d.original_destination)) {
      f = cached_flow_;
    } else {
      const Endpoint client = endpoint_of(*d.from);
      const Endpoint dst = endpoint_of(*d.original_destination);
      const FlowKey key{client, dst};
      f = find_flow(key);
      if (!f) {
        if (!pending_.empty()) {
          if (auto it = pending_.find(key); it != pending_.end()) {
            if (hold(key, *it->second, d)) return;
            f = find_flow(key);  // decided to make room: this datagram goes the usual way
          }
        }
        if (!f && may_be_quic(d.data) && proxy_.classifier_.should_sniff(dst)) {
          auto p = std::make_unique<Pending>();
          sniff::Result r = feed(p->sniffer, d);
          if (r.outcome == sniff::Outcome::kNeedMore && pending_.size() < kMaxPending &&
              held_bytes_ + d.data.size() <= kMaxHeldTotal) {
            std::memcpy(&p->to, d.original_destination, sockaddr_len(*d.original_destination));
            p->deadline = now_ + proxy_.classifier_.sniff_timeout().count();
            pending_order_.emplace_back(p->deadline, key);
            Pending& held = *pending_.emplace(key, std::move(p)).first->second;
            hold(key, held, d, false);
            return;
          }
          sniffed(key, r, 1, false);
          f = new_flow(client, dst, d.data, &r);
        } else if (!f) {
          f = new_flow(client, dst, d.data, nullptr);
        }
      }
      if (!f) return;
      cache(f, *d.from, *d.original_destination);
    }
    touch(flow_lru_, *f, now_);
    f->session->add_sent(d.data.size(), segments_of(d));
    f->session->last_activity_ms.store(now_, std::memory_order_relaxed);
    if (!f->mapping) return;  // blocked
    Mapping& m = *f->mapping;
    touch(mapping_lru_, m, now_);
    tx_.queue(m.fd.get(), *d.original_destination, sockaddr_len(*d.original_destination), d.data, d.segment, &m.gso);
  }

  void from_peer(Mapping& m, const Datagram& d) {
    const Endpoint& client = m.key.client;
    Flow* f = nullptr;
    if (cached_flow_ && cached_flow_->mapping == &m && same_sockaddr(cached_to_, *d.from)) {
      f = cached_flow_;
    } else {
      const Endpoint peer = endpoint_of(*d.from);
      const FlowKey key{client, peer};
      f = find_flow(key);
      if (!f && !pending_.empty() && pending_.count(key) != 0) {
        // The peer answers before the client's flow to it was decided: decide it now (its
        // held datagrams first, in order) rather than make a second flow of that key.
        release(key, {}, false);
        f = find_flow(key);
      }
      if (!f) {
        // A peer the client never contacted (full cone): the flow takes the mapping's
        // route, so the client's answers leave through the address the peer knows.
        SessionSpec spec;
        spec.protocol = decider::Protocol::kUdp;
        spec.client = client;
        spec.destination = peer;
        spec.route = m.route;
        f = add_flow(std::move(spec), &m);
        if (!f) return;
      }
      cache(f, m.client, *d.from);
    }
    touch(flow_lru_, *f, now_);
    touch(mapping_lru_, m, now_);
    f->session->add_received(d.data.size(), segments_of(d));
    f->session->last_activity_ms.store(now_, std::memory_order_relaxed);
    Reply* r = reply_socket(f->key.destination);
    if (!r) return;
    tx_.queue(r->fd.get(), m.client, sockaddr_len(m.client), d.data, d.segment, &r->gso);
  }

  void cache(Flow* f, const sockaddr_storage& from, const sockaddr_storage& to) {
    cached_flow_ = f;
    std::memcpy(&cached_from_, &from, sockaddr_len(from));
    cached_from_.ss_family = from.ss_family;
    std::memcpy(&cached_to_, &to, sockaddr_len(to));
    cached_to_.ss_family = to.ss_family;
  }

  // ---- flows and mappings ----------------------------------------------------------------

  Flow* find_flow(const FlowKey& k) {
    auto it = flows_.find(k);
    return it == flows_.end() ? nullptr : it->second.get();
  }

  // ---- QUIC flows waiting for their name ---------------------------------------------

  // Feeds a datagram (each datagram of a GRO super-datagram) to the sniffer.
  static sniff::Result feed(sniff::QuicSniffer& sniffer, const Datagram& d) {
    if (d.segment == 0 || d.data.size() <= d.segment) return sniffer.feed(d.data);
    sniff::Result r;
    for (std::size_t at = 0; at < d.data.size() && r.outcome == sniff::Outcome::kNeedMore; at += d.segment) {
      r = sniffer.feed(d.data.subspan(at, std::min<std::size_t>(d.segment, d.data.size() - at)));
    }
    return r;
  }

  // Keeps a copy of `d` (already fed when !`fed`), and decides the flow when the sniffer
  // has its answer or the flow holds as many datagrams as it may. A datagram that would
  // take the flow or the worker over its byte bound is not held: the flow is decided
  // first (false; the caller sends `d` on as any datagram of a decided flow).
  bool hold(const FlowKey& key, Pending& p, const Datagram& d, bool fed = true) {
    if (p.bytes + d.data.size() > kMaxHeldBytes || held_bytes_ + d.data.size() > kMaxHeldTotal) {
      release(key, {}, false);
      return false;
    }
    const sniff::Result r = fed ? feed(p.sniffer, d) : sniff::Result{};
    p.held.push_back({{d.data.begin(), d.data.end()}, d.segment});
    p.bytes += d.data.size();
    held_bytes_ += d.data.size();
    if (fed && r.outcome != sniff::Outcome::kNeedMore) {
      release(key, r, false);
    } else if (p.held.size() >= kMaxHeldDatagrams) {
      release(key, {}, false);
    }
    return true;
  }

  void expire_pending() {
    while (!pending_order_.empty() && pending_order_.front().first <= now_) {
      const auto [deadline, key] = pending_order_.front();
      pending_order_.pop_front();
      auto it = pending_.find(key);
      // Decided already, or a later flow of the same key (with a later deadline) waits.
      if (it == pending_.end() || it->second->deadline != deadline) continue;
      release(key, {}, true);
    }
  }

  // Counts (and logs) what sniffing a flow's first `datagrams` gave.
  void sniffed(const FlowKey& key, const sniff::Result& r, std::size_t datagrams, bool timed_out) {
    if (timed_out) counters_.add(decider::Protocol::kUdp, WorkerCounters::kSniffTimeouts);
    counters_.sniffed(decider::Protocol::kUdp, static_cast<std::size_t>(r.outcome));
    if (log::enabled(log::Level::kDebug)) {
      log::debug("udp ", key.client.to_string(), " -> ", key.destination.to_string(), ": sniffed quic ",
                 sniff::to_string(r.outcome), r.name.empty() ? "" : " " + r.name, " after ", datagrams,
                 datagrams == 1 ? " datagram" : " datagrams", timed_out ? " (timed out)" : "");
    }
  }

  // Decides a waiting flow (by its name, or without one) and sends what it holds.
  void release(const FlowKey& key, sniff::Result r, bool timed_out) {
    auto node = pending_.extract(key);
    Pending& p = *node.mapped();
    held_bytes_ -= p.bytes;
    sniffed(key, r, p.held.size(), timed_out);
    // The peer may have written to the client first meanwhile (full cone: from_peer made
    // the flow, with its mapping's route): the held datagrams go that way.
    Flow* f = find_flow(key);
    if (!f) f = new_flow(key.client, key.destination, p.held.front().data, &r);
    if (!f) return;  // dropped (max_sessions, no socket), as a flow's first datagram would be
    touch(flow_lru_, *f, now_);
    f->session->last_activity_ms.store(now_, std::memory_order_relaxed);
    for (const Held& h : p.held) {
      f->session->add_sent(h.data.size(), segments_of({h.data, nullptr, nullptr, h.segment}));
      if (f->mapping) tx_.queue(f->mapping->fd.get(), p.to, sockaddr_len(p.to), h.data, h.segment, &f->mapping->gso);
    }
    if (f->mapping) touch(mapping_lru_, *f->mapping, now_);
    flush();  // the held bytes go with `node`
  }

  Flow* new_flow(const Endpoint& client, const Endpoint& dst, std::span<const std::uint8_t> first,
                 const sniff::Result* sniffed) {
    SessionSpec spec = proxy_.classifier_.classify({decider::Protocol::kUdp, client, dst, first, sniffed});
    const decider::Route& route = spec.route;
    Mapping* m = nullptr;
    if (route.kind != decider::RouteKind::kBlock) {
      // Checked before the mapping is made too: a refused flow leaves no mapping behind.
      if (proxy_.flows_.load(std::memory_order_relaxed) >= opts_.max_sessions) return refuse(client, dst);
      m = mapping_for(client, route);
      if (!m) return nullptr;
    }
    return add_flow(std::move(spec), m);
  }

  Flow* refuse(const Endpoint& client, const Endpoint& dst) {
    counters_.add(decider::Protocol::kUdp, WorkerCounters::kRefused);
    if (now_ - last_refused_log_ >= 1000) {  // one line per second at most
      last_refused_log_ = now_;
      log::warn("udp ", client.to_string(), " -> ", dst.to_string(), ": dropped, max_sessions (",
                opts_.max_sessions, ") reached");
    }
    return nullptr;
  }

  Flow* add_flow(SessionSpec spec, Mapping* m) {
    // The count is taken first so max_sessions holds across workers under a burst.
    if (proxy_.flows_.fetch_add(1, std::memory_order_relaxed) >= opts_.max_sessions) {
      proxy_.flows_.fetch_sub(1, std::memory_order_relaxed);
      return refuse(spec.client, spec.destination);
    }
    // One flow per key: a second one would be freed by the map at once while the LRU list
    // kept it (callers look first; this keeps it so).
    auto [it, inserted] = flows_.try_emplace(FlowKey{spec.client, spec.destination});
    if (!inserted) {
      proxy_.flows_.fetch_sub(1, std::memory_order_relaxed);
      return it->second.get();
    }
    it->second = std::make_unique<Flow>();
    Flow* f = it->second.get();
    f->key = it->first;
    f->mapping = m;
    f->last = now_;
    f->session = proxy_.sessions_.add(std::move(spec), counters_, owner_);
    if (m) ++m->flows;
    flow_lru_.push_front(f);
    f->lru = flow_lru_.begin();
    return f;
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
    if (cached_flow_ == &f) cached_flow_ = nullptr;
    proxy_.sessions_.remove(s);
    if (f.mapping) --f.mapping->flows;
    flow_lru_.erase(f.lru);
    const FlowKey key = f.key;
    flows_.erase(key);  // destroys f
    proxy_.flows_.fetch_sub(1, std::memory_order_relaxed);
  }

  Mapping* mapping_for(const Endpoint& client, const decider::Route& route) {
    const MappingKey key{client, route.kind, route.ifindex};
    if (auto it = mappings_.find(key); it != mappings_.end()) return it->second.get();
    auto m = std::make_unique<Mapping>();
    m->key = key;
    sockaddr_of(client, m->client);
    m->route = route;
    m->last = now_;
    if (auto r = open_upstream(*m); !r) {
      counters_.failure(decider::Protocol::kUdp, FailReason::kSocket);
      log::debug("udp ", client.to_string(), " via ", route.interface, ": ", r.error());
      return nullptr;
    }
    mapping_lru_.push_front(m.get());
    m->lru = mapping_lru_.begin();
    Mapping* raw = m.get();
    mappings_.emplace(key, std::move(m));
    proxy_.mappings_.fetch_add(1, std::memory_order_relaxed);
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
    // A limit, not an allocation: the kernel charges only what is queued.
    if (!set_int(fd, SOL_SOCKET, SO_RCVBUFFORCE, kMappingBuffer)) set_int(fd, SOL_SOCKET, SO_RCVBUF, kMappingBuffer);
    set_int(fd, SOL_UDP, UDP_GRO, 1);  // a download arrives in super-datagrams where the NIC path has GRO
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of({*route.source, 0}, ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      return unexpected("bind " + route.source->to_string() + ": " + errno_text(errno));
    }
    if (!reactor_.add(fd, EPOLLIN, reinterpret_cast<std::uint64_t>(&m) | kTagMapping)) {
      return unexpected("epoll: " + errno_text(errno));
    }
    return {};
  }

  void evict_mapping(Mapping& m) {
    flush();  // queued datagrams name its socket
    if (cached_flow_ && cached_flow_->mapping == &m) cached_flow_ = nullptr;
    m.closed = true;
    m.fd.reset();  // also leaves the epoll set
    mapping_lru_.erase(m.lru);
    const MappingKey key = m.key;
    auto it = mappings_.find(key);
    dead_mappings_.push_back(std::move(it->second));  // later events of this turn may name it
    mappings_.erase(it);
    proxy_.mappings_.fetch_sub(1, std::memory_order_relaxed);
  }

  // The transparent socket bound to `peer`, from which replies reach clients with the
  // peer's address as source. Bypass mark: the reply is not intercepted again. Every
  // worker has its own (SO_REUSEADDR lets them share the address): a worker sends only
  // from its own sockets.
  Reply* reply_socket(const Endpoint& peer) {
    if (cached_reply_ && cached_reply_->peer == peer) {
      touch(reply_lru_, *cached_reply_, now_);
      return cached_reply_;
    }
    if (auto it = replies_.find(peer); it != replies_.end()) {
      touch(reply_lru_, *it->second, now_);
      return cached_reply_ = it->second.get();
    }
    while (replies_.size() >= std::max<std::size_t>(1, opts_.reply_sockets)) evict_reply(*reply_lru_.back());
    auto r = std::make_unique<Reply>();
    r->peer = peer;
    r->last = now_;
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
    set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    set_int(fd, SOL_SOCKET, SO_RCVBUF, 0);  // the kernel's minimum: it receives nothing
    if (!set_int(fd, SOL_SOCKET, SO_MARK, static_cast<int>(opts_.bypass_mark))) return fail("SO_MARK");
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of(peer, ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return fail("bind");
    reply_lru_.push_front(r.get());
    r->lru = reply_lru_.begin();
    Reply* raw = r.get();
    replies_.emplace(peer, std::move(r));
    return cached_reply_ = raw;
  }

  void evict_reply(Reply& r) {
    flush();  // queued datagrams name its socket
    if (cached_reply_ == &r) cached_reply_ = nullptr;
    reply_lru_.erase(r.lru);
    const Endpoint peer = r.peer;
    replies_.erase(peer);  // closes it: never in the epoll set, no event can name it
  }

  void bury() { dead_mappings_.clear(); }

  // Closes what has been idle for idle_timeout: flows, then mappings without flows, then
  // reply sockets. Each list is ordered by last use, so a sweep only looks at the expired.
  void sweep() {
    next_sweep_ = now_ + sweep_every().count();
    const std::int64_t expired = now_ - opts_.idle_timeout.count();
    std::size_t freed = 0;
    while (!flow_lru_.empty() && flow_lru_.back()->last <= expired) {
      evict_flow(*flow_lru_.back(), "idle");
      ++freed;
    }
    // A mapping is touched with every flow of it, so it expires with its last flow.
    while (!mapping_lru_.empty() && mapping_lru_.back()->last <= expired) {
      Mapping& m = *mapping_lru_.back();
      if (m.flows != 0) {  // a flow touched later than the mapping: cannot happen; be safe
        touch(mapping_lru_, m, now_);
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
                 " flows and ", mappings_.size(), " mappings remain on worker ", reactor_.index());
      if (flows_.empty()) flows_.rehash(0);
      if (mappings_.empty()) mappings_.rehash(0);
      ::malloc_trim(0);  // a burst's memory goes back to the OS, not only to malloc
    }
  }

  void close_all() {
    for (auto& l : listeners_) reactor_.remove(l.get());
    listeners_.clear();
    pending_.clear();  // their datagrams go nowhere: as if lost before the shutdown
    pending_order_.clear();
    held_bytes_ = 0;
    while (!flow_lru_.empty()) evict_flow(*flow_lru_.back(), "shutdown");
    while (!mapping_lru_.empty()) evict_mapping(*mapping_lru_.back());
    while (!reply_lru_.empty()) evict_reply(*reply_lru_.back());
    tx_.flush();
    bury();
    next_sweep_ = LLONG_MAX;
  }

  UdpProxy& proxy_;
  const UdpProxyOptions& opts_;
  Reactor& reactor_;
  RecvBatch rx_;
  SendBatch tx_;
  Hasher hasher_;
  std::vector<Fd> listeners_;
  std::unordered_map<FlowKey, std::unique_ptr<Flow>, Hasher> flows_;
  std::unordered_map<MappingKey, std::unique_ptr<Mapping>, Hasher> mappings_;
  std::unordered_map<Endpoint, std::unique_ptr<Reply>, Hasher> replies_;
  std::unordered_map<FlowKey, std::unique_ptr<Pending>, Hasher> pending_;
  std::deque<std::pair<std::int64_t, FlowKey>> pending_order_;  // by deadline (one timeout for all)
  std::size_t held_bytes_ = 0;  // of all pending flows
  std::vector<std::unique_ptr<Mapping>> dead_mappings_;  // evicted, freed after the turn
  std::list<Flow*> flow_lru_;  // most recently used first
  std::list<Mapping*> mapping_lru_;
  std::list<Reply*> reply_lru_;
  Flow* cached_flow_ = nullptr;  // the last flow a datagram belonged to, and its addresses
  sockaddr_storage cached_from_{}, cached_to_{};
  Reply* cached_reply_ = nullptr;
  WorkerCounters& counters_;
  std::shared_ptr<SessionOwner> owner_ = std::make_shared<SessionOwner>(nullptr);
  std::int64_t now_ = 0;
  std::int64_t next_sweep_ = LLONG_MAX;
  std::int64_t last_refused_log_ = 0;
  std::size_t freed_since_trim_ = 0;
};

UdpProxy::UdpProxy(UdpProxyOptions options, const Classifier& classifier, SessionTable& sessions,
                   ReactorPool& reactors)
    : options_(options), classifier_(classifier), sessions_(sessions), reactors_(reactors) {}

UdpProxy::~UdpProxy() { stop(); }

Expected<void, std::string> UdpProxy::start() {
  for (std::size_t i = 0; i < reactors_.size(); ++i) {
    auto w = std::make_unique<Worker>(*this, reactors_.at(i));
    auto r = w->open_listeners();
    workers_.push_back(std::move(w));
    if (!r) {
      stop();
      return r;
    }
  }
  for (auto& w : workers_) {
    Expected<void, std::string> r;
    w->reactor().run_sync([&] { r = w->listen(); });
    if (!r) {
      stop();
      return r;
    }
  }
  return {};
}

void UdpProxy::stop() {
  for (auto& w : workers_) w->reactor().run_sync([&] { w->shutdown(); });
  workers_.clear();
}

}  // namespace splitd::proxy
