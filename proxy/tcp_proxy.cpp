#include "proxy/tcp_proxy.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <fstream>
#include <random>
#include <tuple>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "proxy/splice_pump.hpp"
#include "proxy/tcp_info.hpp"
#include "sniff/sniff.hpp"

namespace splitd::proxy {

namespace {

constexpr int kListenBacklog = 4096;
constexpr int kPortAttempts = 32;
constexpr int kAcceptBatch = 64;         // accepts per listener event (it is level-triggered)
constexpr int kPumpRounds = 16;          // splice rounds per turn before other flows get theirs
constexpr std::int64_t kPacketsEveryMs = 100;
constexpr std::int64_t kAcceptPauseMs = 50;

// The reactor tags of the TCP proxy (Reactor: the low 3 bits of epoll_event.data). A flow
// is registered as its pointer (8-byte aligned) plus the side, so the side is the tag.
enum Tag : std::uint8_t { kTagClient = 0, kTagUpstream = 1, kTagListener = 2 };
constexpr std::uint64_t kTagMask = Reactor::kTagMask;
constexpr unsigned kTagBits = Reactor::kTagBits;
static_assert(alignof(std::max_align_t) >= 8, "flow pointers carry the tag in their low bits");
enum Side : int { kClient = 0, kUpstream = 1 };

std::string errno_text(int err) { return std::strerror(err); }

// Closes with SO_LINGER 0: the peer gets a RST instead of a FIN.
void reset_fd(int fd) {
  if (fd < 0) return;
  const linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

void set_int(int fd, int level, int name, int value) {
  ::setsockopt(fd, level, name, &value, sizeof value);
}

// A flow waiting for its client's first bytes (the name in them decides its route): the
// endpoints it will be classified with. Only sniffed flows have one, only until decided.
struct Sniffing {
  Endpoint client, destination;
};

// A flow, the only per-connection allocation besides its Session. It sits on one of the
// worker's three lists: sniffing or connecting (each ordered by deadline: one timeout for
// all), or open (ordered by activity). A sniffing flow has no Session yet.
struct Flow {
  Flow* prev = nullptr;
  Flow* next = nullptr;
  std::shared_ptr<Session> session;
  std::unique_ptr<Sniffing> sniffing;  // set while sniffing
  int fd[2] = {-1, -1};    // kClient, kUpstream
  Direction dir[2];        // dir[kClient]: client → upstream; dir[kUpstream]: back
  std::int64_t deadline_ms = 0;  // while sniffing or connecting
  std::int64_t packets_ms = 0;   // last TCP_INFO refresh
  bool connecting = true;
  bool dead = false;
};

// An intrusive doubly linked list: O(1) insert, remove and move to the back, no allocation.
class FlowList {
 public:
  Flow* front() const { return head_; }
  bool empty() const { return head_ == nullptr; }
  void push_back(Flow* f) {
    f->prev = tail_;
    f->next = nullptr;
    (tail_ ? tail_->next : head_) = f;
    tail_ = f;
  }
  void remove(Flow* f) {
    (f->prev ? f->prev->next : head_) = f->next;
    (f->next ? f->next->prev : tail_) = f->prev;
    f->prev = f->next = nullptr;
  }
  void move_to_back(Flow* f) {
    if (tail_ == f) return;
    remove(f);
    push_back(f);
  }

 private:
  Flow* head_ = nullptr;
  Flow* tail_ = nullptr;
};

FailReason connect_failure(int err) {
  switch (err) {
    case ECONNREFUSED: return FailReason::kConnectRefused;
    case ETIMEDOUT: return FailReason::kConnectTimeout;
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EHOSTDOWN:
    case ENETDOWN: return FailReason::kUnreachable;
    default: return FailReason::kConnectError;
  }
}

}  // namespace

// One reactor's part of the TCP proxy: its own SO_REUSEPORT listeners; a flow lives
// entirely on the worker that accepted it. Sockets are registered once, edge-triggered, for
// both directions; nothing is allocated per event. Runs on its reactor's thread only
// (listen() and shutdown() through run_sync), except the kill handle, which posts.
class TcpProxy::Worker final : public Reactor::Client {
 public:
  Worker(TcpProxy& proxy, Reactor& reactor)
      : proxy_(proxy), reactor_(reactor), counters_(proxy.sessions_.register_worker()) {}

  ~Worker() override {
    owner_->detach();
    close_all("shutdown");  // only if shutdown() never ran
  }

  // On the reactor thread: the listeners, then the worker takes its tags.
  Expected<void, std::string> listen() {
    const auto port = proxy_.options_.port;
    if (auto r = add_listener(false, port); !r) return r;
    if (proxy_.options_.ipv6) {
      if (auto r = add_listener(true, port); !r) return r;
    }
    // Sessions hold owner_; it reaches this worker until shutdown() detaches it, and a kill
    // that races the detach either posts first (and runs before shutdown, the reactor's
    // tasks run in order) or finds it detached.
    owner_ = std::make_shared<SessionOwner>([this](std::uint64_t id) {
      reactor_.post([this, id] { kill(id); });
    });
    for (std::uint8_t tag : {kTagClient, kTagUpstream, kTagListener}) reactor_.attach(tag, this);
    return {};
  }

  // On the reactor thread: stop accepting and end every flow with a reset (an app must see
  // its connection fail, not a clean EOF that truncates what it was receiving).
  void shutdown() {
    owner_->detach();  // kills of sessions that outlive us become no-ops
    listeners_.clear();
    close_all("shutdown");
    reactor_.detach(this);
  }

  // ---- Reactor::Client ------------------------------------------------------------------

  void on_event(std::uint64_t data, std::uint32_t events) override {
    now_ = reactor_.now_ms();
    const std::uint64_t tag = data & kTagMask;
    if (tag == kTagListener) {
      accept_some(data >> kTagBits);
      return;
    }
    Flow* f = reinterpret_cast<Flow*>(data & ~kTagMask);
    if (f->dead) return;
    const int side = static_cast<int>(tag);
    if (events & EPOLLPRI) f->dir[side].urgent = true;
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) f->dir[side].read_all = true;
    if (f->sniffing) {  // registering the client raises its first event, bytes or not
      if (events & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) sniff(f, false);
      return;
    }
    if (f->connecting) {
      if (side == kUpstream) connected(f, events);
      return;  // the client's data waits in its socket until the upstream is there
    }
    if (events & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) pump(f, side);
    // Writable: resume the direction that waits for room in this socket.
    const int other = 1 - side;
    if (!f->dead && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && f->dir[other].pending > 0) {
      pump(f, other);
    }
  }

  void after_events() override {
    now_ = reactor_.now_ms();
    run_more();
    expire();
    free_dead();
  }

  std::int64_t next_deadline_ms() const override {
    std::int64_t next = LLONG_MAX;
    if (const Flow* f = connecting_.front()) next = f->deadline_ms;
    if (const Flow* f = sniffing_.front()) next = std::min(next, f->deadline_ms);
    if (const Flow* f = open_.front()) {
      next = std::min(next, f->session->last_activity_ms.load(std::memory_order_relaxed) +
                                proxy_.options_.idle_timeout.count());
    }
    if (accept_paused_until_ != 0) next = std::min(next, accept_paused_until_);
    return next;
  }

  bool has_ready_work() const override { return !more_.empty(); }

  Reactor& reactor() { return reactor_; }

 private:
  std::uint64_t listener_data(std::size_t index) const { return (index << kTagBits) | kTagListener; }

  Expected<void, std::string> add_listener(bool v6, std::uint16_t port) {
    Fd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd && v6 && errno == EAFNOSUPPORT) {
      log::warn("tcp proxy: IPv6 is disabled on this host (", errno_text(errno), "); IPv4 only");
      return {};
    }
    if (!fd) return unexpected(std::string("socket: ") + errno_text(errno));
    set_int(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1);
    set_int(fd.get(), SOL_SOCKET, SO_REUSEPORT, 1);
    // Accepted sockets inherit these: two setsockopt calls less per flow.
    set_int(fd.get(), IPPROTO_TCP, TCP_NODELAY, 1);
    // Urgent bytes stay in the stream (forwarded as data) instead of being dropped.
    set_int(fd.get(), SOL_SOCKET, SO_OOBINLINE, 1);
    if (v6) set_int(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
    const int one = 1;
    const int rc = v6 ? ::setsockopt(fd.get(), SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one)
                      : ::setsockopt(fd.get(), SOL_IP, IP_TRANSPARENT, &one, sizeof one);
    if (rc != 0) {
      return unexpected(std::string("transparent listener: ") + errno_text(errno) +
                        (errno == EPERM ? " (splitd needs CAP_NET_ADMIN: run it as root or grant the capability)" : ""));
    }
    const Endpoint ep{v6 ? *IpAddress::parse("::1") : *IpAddress::parse("127.0.0.1"), port};
    sockaddr_storage ss;
    const socklen_t len = sockaddr_of(ep, ss);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      const int err = errno;
      return unexpected("bind " + ep.to_string() + ": " + errno_text(err) +
                        (err == EADDRINUSE ? " (is another splitd running? change proxy.port)" : ""));
    }
    if (::listen(fd.get(), kListenBacklog) != 0) return unexpected("listen: " + errno_text(errno));
    // Level-triggered: a batch limit or EMFILE leaves the rest queued.
    if (!reactor_.add(fd.get(), EPOLLIN, listener_data(listeners_.size()))) {
      return unexpected("epoll: " + errno_text(errno));
    }
    listeners_.push_back(std::move(fd));
    return {};
  }

  // ---- new flows ------------------------------------------------------------------------

  void accept_some(std::size_t index) {
    const int lfd = listeners_[index].get();
    for (int i = 0; i < kAcceptBatch; ++i) {
      sockaddr_storage peer{};
      socklen_t len = sizeof peer;
      const int fd = ::accept4(lfd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) {
        start_flow(fd, peer);
        continue;
      }
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
      // EMFILE and friends: pause accepting briefly instead of spinning on the listener.
      log::warn("tcp proxy: accept: ", errno_text(errno), "; pausing accepts for ", kAcceptPauseMs, "ms");
      pause_accepting();
      return;
    }
  }

  void pause_accepting() {
    for (std::size_t i = 0; i < listeners_.size(); ++i) reactor_.modify(listeners_[i].get(), 0, listener_data(i));
    accept_paused_until_ = now_ + kAcceptPauseMs;
  }

  void resume_accepting() {
    for (std::size_t i = 0; i < listeners_.size(); ++i) {
      reactor_.modify(listeners_[i].get(), EPOLLIN, listener_data(i));
    }
    accept_paused_until_ = 0;
  }

  void start_flow(int fd, const sockaddr_storage& peer_ss) {
    sockaddr_storage local_ss{};
    socklen_t len = sizeof local_ss;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local_ss), &len) != 0) {
      ::close(fd);
      return;
    }
    const Endpoint peer = endpoint_of(peer_ss);
    const Endpoint local = endpoint_of(local_ss);
    // TPROXY never delivers flows to loopback destinations (they are not intercepted); a
    // local process connecting straight to the listener gets a reset, not a dial.
    if (local.address.is_loopback()) {
      reset_fd(fd);
      return;
    }
    auto& opts = proxy_.options_;
    // The count is taken before anything else so max_sessions holds under a burst.
    if (proxy_.active_.fetch_add(1, std::memory_order_relaxed) >= opts.max_sessions) {
      proxy_.active_.fetch_sub(1, std::memory_order_relaxed);
      counters_.add(decider::Protocol::kTcp, WorkerCounters::kRefused);
      log::warn("tcp ", peer.to_string(), " -> ", local.to_string(), ": refused, max_sessions (",
                opts.max_sessions, ") reached");
      reset_fd(fd);
      return;
    }

    auto* f = new Flow;
    f->fd[kClient] = fd;
    // A flow whose destination has no name yet waits (up to sniff_timeout) for the
    // client's first bytes, read with MSG_PEEK: they stay in the socket, and the pump
    // forwards them unchanged once the upstream is connected.
    if (proxy_.classifier_.should_sniff(local)) {
      f->sniffing = std::make_unique<Sniffing>(Sniffing{peer, local});
      f->deadline_ms = now_ + proxy_.classifier_.sniff_timeout().count();
      sniffing_.push_back(f);
      watch(f, kClient);
      return;
    }
    classified(f, proxy_.classifier_.classify({decider::Protocol::kTcp, peer, local, {}}));
    if (!f->dead && watch(f, kClient)) dial(f);
  }

  // The session starts: counted, listed, and the flow waits for its upstream.
  void classified(Flow* f, SessionSpec spec) {
    f->session = proxy_.sessions_.add(std::move(spec), counters_, owner_);
    f->deadline_ms = now_ + proxy_.options_.connect_timeout.count();
    f->packets_ms = now_;  // first TCP_INFO after kPacketsEveryMs: short flows need none
    connecting_.push_back(f);
    if (f->session->route.kind == decider::RouteKind::kBlock) end(f, End::kReset, "blocked");
  }

  // ---- sniffing -------------------------------------------------------------------------

  // Peeks at what the client sent so far and decides the flow once the bytes name its
  // server, say they never will (not TLS/HTTP, no SNI, ECH, malformed, EOF), or the
  // deadline passed (`timed_out`). Every new segment raises an edge, so each call sees
  // more; the parse restarts from the first byte (bounded by the peek buffer).
  void sniff(Flow* f, bool timed_out) {
    const ssize_t n = ::recv(f->fd[kClient], peek_.data(), peek_.size(), MSG_PEEK | MSG_DONTWAIT);
    sniff::Result r;
    if (n > 0) {
      r = sniff::sniff_stream({peek_.data(), static_cast<std::size_t>(n)});
      // A full peek buffer with the parser still waiting: it will not get more (the
      // parsers' own bounds are below the buffer's size; this is the safety net).
      if (r.outcome == sniff::Outcome::kNeedMore && static_cast<std::size_t>(n) == peek_.size()) {
        r.outcome = sniff::Outcome::kMalformed;
      }
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      return end(f, End::kReset, "client: " + errno_text(errno));
    }
    // n == 0: the client closed without a byte; decide now, the pump forwards the EOF.
    const bool client_done = n == 0 || f->dir[kClient].read_all;
    if (r.outcome == sniff::Outcome::kNeedMore && !timed_out && !client_done) return;
    if (r.outcome == sniff::Outcome::kNeedMore && timed_out) {
      counters_.add(decider::Protocol::kTcp, WorkerCounters::kSniffTimeouts);
    }
    counters_.sniffed(decider::Protocol::kTcp, static_cast<std::size_t>(r.outcome));
    const std::unique_ptr<Sniffing> s = std::move(f->sniffing);
    sniffing_.remove(f);
    FlowFacts facts{decider::Protocol::kTcp, s->client, s->destination, {}, &r};
    if (log::enabled(log::Level::kDebug)) {
      log::debug("tcp ", s->client.to_string(), " -> ", s->destination.to_string(), ": sniffed ",
                 sniff::to_string(r.source), " ", sniff::to_string(r.outcome), r.name.empty() ? "" : " " + r.name,
                 " after ", now_ - (f->deadline_ms - proxy_.classifier_.sniff_timeout().count()), "ms",
                 n > 0 ? ", " + std::to_string(n) + " bytes" : std::string());
    }
    classified(f, proxy_.classifier_.classify(facts));
    if (!f->dead) dial(f);
  }

  std::uint32_t random() {  // xorshift64*: plenty for spreading ports, no shared state
    rng_ ^= rng_ >> 12;
    rng_ ^= rng_ << 25;
    rng_ ^= rng_ >> 27;
    return static_cast<std::uint32_t>((rng_ * 0x2545F4914F6CDD1Dull) >> 32);
  }

  bool watch(Flow* f, int side) {
    const std::uint64_t data = reinterpret_cast<std::uint64_t>(f) | static_cast<std::uint64_t>(side);
    if (reactor_.add(f->fd[side], EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET, data)) return true;
    log::warn("tcp #", f->session ? f->session->id : 0, ": epoll: ", errno_text(errno));
    end(f, End::kReset, "epoll failed");
    return false;
  }

  // SO_MARK so our own packets are never intercepted again; SO_BINDTODEVICE plus a bind
  // to the interface's address so no other policy routing can move the flow.
  //
  // The source port comes from our own range outside the system's ephemeral range. The
  // kernel's 4-tuple uniqueness check does not see a device-bound socket from an unbound
  // one: an app connecting later to the same server from the same address (the tunnel's,
  // under a VPN's default route) may be given our port, and then our replies go to the
  // app's socket and our connect stalls. Apps never get ports outside the ephemeral
  // range. SO_REUSEADDR lets flows to different servers share a port; connect() still
  // checks the whole 4-tuple: one in use is refused (EADDRNOTAVAIL, we retry with the
  // next port) and one in TIME_WAIT is recycled when the old connection used TCP
  // timestamps (tcp_twsk_unique), refused otherwise. Limits: per source address and
  // server ip:port, as many concurrent flows as the range has ports (4536 by default),
  // and against servers without timestamps that many per TIME_WAIT period (60 s).
  //
  // Ports are drawn at random: a sequential sweep meets long runs of ports already used
  // for the same server (a burst takes them in order) and gave up after kPortAttempts at
  // half occupancy; at random that takes an occupancy above 0.9 to matter (0.9^32 = 3%).
  void dial(Flow* f) {
    const Session& s = *f->session;
    const decider::Route& route = s.route;
    const auto& opts = proxy_.options_;
    const auto fail = [&](const std::string& why) {
      counters_.failure(decider::Protocol::kTcp, FailReason::kSocket);
      end(f, End::kReset, why);
    };
    if (!route.source) return fail("interface " + route.interface + " has no address for this family");
    sockaddr_storage target;
    const socklen_t target_len = sockaddr_of(s.destination, target);
    const std::uint32_t mark = opts.bypass_mark;
    const auto lo = opts.source_port_min, hi = opts.source_port_max;
    const bool own_ports = lo != 0 && hi >= lo;
    for (int attempt = 0; attempt < kPortAttempts; ++attempt) {
      const int fd = ::socket(s.destination.address.af(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) return fail("socket: " + errno_text(errno));
      f->fd[kUpstream] = fd;
      if (::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
        return fail("SO_MARK: " + errno_text(errno));
      }
      if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, route.interface.c_str(),
                       static_cast<socklen_t>(route.interface.size())) != 0) {
        return fail("bind to device " + route.interface + ": " + errno_text(errno));
      }
      std::uint16_t port = 0;
      if (own_ports) {
        const std::uint32_t span = hi - lo + 1u;
        port = static_cast<std::uint16_t>(lo + random() % span);
        set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
      } else {
        // No room outside the ephemeral range: let connect() pick (may collide, see above).
        set_int(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1);
      }
      set_int(fd, IPPROTO_TCP, TCP_NODELAY, 1);
      set_int(fd, SOL_SOCKET, SO_OOBINLINE, 1);
      sockaddr_storage src;
      const socklen_t src_len = sockaddr_of({*route.source, port}, src);
      if (::bind(fd, reinterpret_cast<sockaddr*>(&src), src_len) != 0) {
        const int err = errno;
        ::close(std::exchange(f->fd[kUpstream], -1));
        if (err == EADDRINUSE) continue;
        return fail("bind " + route.source->to_string() + ": " + errno_text(err));
      }
      if (::connect(fd, reinterpret_cast<sockaddr*>(&target), target_len) == 0 || errno == EINPROGRESS) {
        watch(f, kUpstream);  // EPOLLOUT (or an error) says how the connect ended
        return;
      }
      const int err = errno;
      // The 4-tuple is in use or in TIME_WAIT: the next port.
      ::close(std::exchange(f->fd[kUpstream], -1));
      if (err != EADDRNOTAVAIL) {
        counters_.failure(decider::Protocol::kTcp, connect_failure(err));
        end(f, End::kReset, "connect: " + errno_text(err));
        return;
      }
    }
    log::warn("tcp #", s.id, " ", s.destination.to_string(), ": no free source port after ", kPortAttempts,
              " attempts (range ", lo, "-", hi, ")");
    fail("no free source port after " + std::to_string(kPortAttempts) + " attempts");
  }

  void connected(Flow* f, std::uint32_t events) {
    if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    int err = 0;
    // A failed connect always raises EPOLLERR (tcp_poll reports sk_err), so a plain
    // EPOLLOUT is a success and needs no SO_ERROR round trip.
    if (events & (EPOLLERR | EPOLLHUP)) {
      socklen_t len = sizeof err;
      if (::getsockopt(f->fd[kUpstream], SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
      if (err == 0) err = ECONNRESET;
    }
    if (err != 0) {
      counters_.failure(decider::Protocol::kTcp, connect_failure(err));
      end(f, End::kReset, "connect: " + errno_text(err));
      return;
    }
    connecting_.remove(f);
    f->connecting = false;
    open_.push_back(f);
    activity(f);
    // Both sockets are edge-triggered: what the client sent meanwhile is read now (its
    // events went unheeded while connecting). The upstream's bytes, if any, came with
    // this event: anything later raises an event of its own.
    pump(f, kClient);
    if (!f->dead && (events & (EPOLLIN | EPOLLPRI | EPOLLRDHUP | EPOLLHUP))) pump(f, kUpstream);
  }

  // ---- moving bytes ---------------------------------------------------------------------

  // Moves bytes from side `from` to the other side until the source has nothing more
  // (EAGAIN), the sink is full (then EPOLLOUT on the sink resumes here), EOF (then the
  // sink is shut down for writing) or an error (then both are reset: a reset must reach
  // the other side, not turn into a clean close). After kPumpRounds the direction goes
  // to the back of the queue so one busy flow cannot starve the others.
  void pump(Flow* f, int from) {
    Direction& d = f->dir[from];
    if (d.done) return;
    const int sink = f->fd[1 - from];
    const PumpResult r = proxy::pump(d, f->fd[from], sink, pipes_, kPumpRounds);
    if (r.read > 0) {
      if (from == kClient) f->session->add_sent(r.read);
      else f->session->add_received(r.read);
    }
    switch (r.stop) {
      case PumpResult::kError: return fail(f, from, r.err, r.what);
      case PumpResult::kEof:
        if (r.moved) activity(f);
        if (f->dir[1 - from].done) {
          end(f, End::kClose, "closed");  // close() sends the FIN: no shutdown() first
        } else {
          ::shutdown(sink, SHUT_WR);
        }
        return;
      case PumpResult::kBudget:
        if (!d.queued) {
          d.queued = true;
          more_.push_back({f, from});
        }
        break;
      case PumpResult::kDrained:
      case PumpResult::kSinkFull: break;  // the sink's EPOLLOUT resumes a full one
    }
    if (r.moved) activity(f);
  }

  void fail(Flow* f, int from, int err, const char* what) {
    if (log::enabled(log::Level::kDebug)) {
      log::debug("tcp #", f->session->id, ": ", from == kClient ? "client" : "server", " side ", what, ": ",
                 errno_text(err));
    }
    end(f, End::kReset, errno_text(err));
  }

  // Progress in either direction keeps a flow alive (a slow reader's flow too).
  void activity(Flow* f) {
    f->session->last_activity_ms.store(now_, std::memory_order_relaxed);
    open_.move_to_back(f);
    if (now_ - f->packets_ms >= kPacketsEveryMs) refresh_packets(f);
  }

  // Packet counts come from the kernel (TCP_INFO of the client socket).
  void refresh_packets(Flow* f) {
    f->packets_ms = now_;
    std::uint32_t in = 0, out = 0;
    if (f->fd[kClient] >= 0 && tcp_segments(f->fd[kClient], in, out)) {
      f->session->set_packets(in, out);
    }
  }

  void run_more() {
    more_batch_.swap(more_);  // pump() may queue a direction again, into the empty more_
    for (auto [f, from] : more_batch_) {
      f->dir[from].queued = false;
      if (!f->dead) pump(f, from);
    }
    more_batch_.clear();
  }

  // ---- ending flows ---------------------------------------------------------------------

  enum class End { kClose, kReset };

  void end(Flow* f, End how, const std::string& why) {
    if (f->dead) return;
    f->dead = true;
    (f->sniffing ? sniffing_ : f->connecting ? connecting_ : open_).remove(f);
    f->sniffing.reset();
    for (int side : {kClient, kUpstream}) {
      if (how == End::kReset) {
        reset_fd(f->fd[side]);
      } else if (f->fd[side] >= 0) {
        ::close(f->fd[side]);
      }
      f->fd[side] = -1;
      Direction& d = f->dir[side];
      if (d.pending > 0) d.pipe.close();  // bytes nobody will read: not for the pool
      pipes_.give(d.pipe);
    }
    proxy_.active_.fetch_sub(1, std::memory_order_relaxed);
    dead_.push_back(f);  // freed after this turn: events later in the batch may name it
    if (!f->session) {  // ended while sniffing: never classified, never listed
      log::debug("tcp: a flow ended while sniffing (", why, ")");
      return;
    }
    const Session& s = *f->session;
    if (log::enabled(log::Level::kDebug)) {
      const auto& route = s.route;
      log::debug("tcp #", s.id, " ", s.client.to_string(), " -> ", s.destination.to_string(), " ",
                 decider::to_string(route.kind), route.interface.empty() ? "" : " via " + route.interface,
                 " rule '", route.rule, "' sent ", s.bytes_sent.load(), "B received ", s.bytes_received.load(),
                 "B in ",
                 std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now() - s.started_at).count(),
                 "ms (", why, ")");
    }
    proxy_.sessions_.remove(s);
  }

  void free_dead() {
    if (dead_.empty()) return;
    // A flow still queued for another turn (ended by a kill or a timeout after it was
    // queued) must leave the queue before its memory goes.
    if (std::any_of(dead_.begin(), dead_.end(), [](const Flow* f) { return f->dir[0].queued || f->dir[1].queued; })) {
      std::erase_if(more_, [](const std::pair<Flow*, int>& e) { return e.first->dead; });
    }
    for (Flow* f : dead_) delete f;
    dead_.clear();
  }

  // Sniff and connect timeouts, idle flows and paused accepts.
  void expire() {
    while (Flow* f = sniffing_.front()) {
      if (f->deadline_ms > now_) break;
      sniff(f, true);  // decides it: off the sniffing list
    }
    while (Flow* f = connecting_.front()) {
      if (f->deadline_ms > now_) break;
      counters_.failure(decider::Protocol::kTcp, FailReason::kConnectTimeout);
      end(f, End::kReset, "connect timed out");
    }
    const std::int64_t idle = proxy_.options_.idle_timeout.count();
    while (Flow* f = open_.front()) {
      if (f->session->last_activity_ms.load(std::memory_order_relaxed) + idle > now_) break;
      log::debug("tcp #", f->session->id, ": idle for ", idle, "ms, closing");
      end(f, End::kClose, "idle");
    }
    if (accept_paused_until_ != 0 && accept_paused_until_ <= now_) resume_accepting();
  }

  // Kills are rare (an operator's request): a walk over the flows beats an index that
  // every flow would pay for in memory.
  void kill(std::uint64_t id) {
    now_ = reactor_.now_ms();
    for (FlowList* list : {&connecting_, &open_}) {
      for (Flow* f = list->front(); f; f = f->next) {
        if (f->session->id == id) {
          end(f, End::kReset, "killed");
          return;
        }
      }
    }
  }

  void close_all(const char* why) {
    while (Flow* f = sniffing_.front()) end(f, End::kReset, why);
    while (Flow* f = connecting_.front()) end(f, End::kReset, why);
    while (Flow* f = open_.front()) end(f, End::kReset, why);
    more_.clear();
    free_dead();
  }

  TcpProxy& proxy_;
  Reactor& reactor_;
  std::vector<Fd> listeners_;
  FlowList sniffing_, connecting_, open_;
  // The peek buffer of sniffing: a ClientHello at its bound fits in records of 20 bytes of
  // payload or more (smaller ones fill it first: the safety net in sniff() gives up).
  std::array<std::uint8_t, sniff::kMaxClientHello + 4096> peek_;
  std::vector<std::pair<Flow*, int>> more_, more_batch_;  // directions with more to read
  std::vector<Flow*> dead_;
  PipePool pipes_;
  std::int64_t now_ = 0;
  std::int64_t accept_paused_until_ = 0;
  std::uint64_t rng_ = (static_cast<std::uint64_t>(std::random_device{}()) << 32) | std::random_device{}() | 1;
  WorkerCounters& counters_;
  std::shared_ptr<SessionOwner> owner_ = std::make_shared<SessionOwner>(nullptr);
};

TcpProxy::TcpProxy(TcpProxyOptions options, const Classifier& classifier, SessionTable& sessions,
                   ReactorPool& reactors)
    : options_(options), classifier_(classifier), sessions_(sessions), reactors_(reactors) {}

TcpProxy::~TcpProxy() { stop(); }

std::pair<std::uint16_t, std::uint16_t> upstream_port_range(unsigned low, unsigned high) {
  constexpr unsigned kMinPorts = 1024;
  if (high < 65535 && 65535 - high >= kMinPorts) return {static_cast<std::uint16_t>(high + 1), 65535};
  if (low > 1024 && low - 1024 >= kMinPorts) return {1024, static_cast<std::uint16_t>(low - 1)};
  return {0, 0};
}

Expected<void, std::string> TcpProxy::start() {
  // splice(2) to a socket the peer reset raises SIGPIPE; the proxy handles EPIPE instead.
  ::signal(SIGPIPE, SIG_IGN);
  if (options_.source_port_min == 0 && options_.source_port_max == 0) {
    unsigned low = 32768, high = 60999;
    std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> low >> high;
    std::tie(options_.source_port_min, options_.source_port_max) = upstream_port_range(low, high);
    if (options_.source_port_min == 0) {
      log::warn("tcp proxy: the ephemeral port range ", low, "-", high,
                " leaves no room for upstream ports; apps may collide with tunnelled flows");
    } else {
      log::info("tcp proxy: upstream source ports ", options_.source_port_min, "-",
                options_.source_port_max, " (outside the ephemeral range ", low, "-", high, ")");
    }
  }
  for (std::size_t i = 0; i < reactors_.size(); ++i) {
    Reactor& reactor = reactors_.at(i);
    auto w = std::make_unique<Worker>(*this, reactor);
    Expected<void, std::string> r;
    reactor.run_sync([&] { r = w->listen(); });
    if (!r) {
      reactor.run_sync([&] { w->shutdown(); });
      stop();
      return r;
    }
    workers_.push_back(std::move(w));
  }
  return {};
}

void TcpProxy::stop() {
  for (auto& w : workers_) w->reactor().run_sync([&] { w->shutdown(); });
  workers_.clear();
}

}  // namespace splitd::proxy
