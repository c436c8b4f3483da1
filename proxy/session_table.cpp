#include "proxy/session_table.hpp"

#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace splitd::proxy {

std::int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

const char* to_string(FailReason r) {
  switch (r) {
    case FailReason::kConnectTimeout: return "connect_timeout";
    case FailReason::kConnectRefused: return "connect_refused";
    case FailReason::kUnreachable: return "unreachable";
    case FailReason::kConnectError: return "connect_error";
    case FailReason::kSocket: return "socket";
    case FailReason::kCount: break;
  }
  return "unknown";
}

static_assert(static_cast<std::size_t>(sniff::Source::kQuic) + 1 == kNameSources, "a counter per name source");
static_assert(static_cast<std::size_t>(sniff::Outcome::kMalformed) + 1 == kSniffOutcomes, "a counter per outcome");

void WorkerCounters::sum_into(decider::Protocol p, ProtocolCounters& out) const {
  const Block& b = block(p);
  const auto get = [&b](std::size_t slot) { return b[slot].load(std::memory_order_relaxed); };
  out.started += get(kStarted);
  out.ended += get(kEnded);
  out.refused += get(kRefused);
  out.blocked += get(kBlocked);
  out.bytes_sent += get(kBytesSent);
  out.bytes_received += get(kBytesReceived);
  out.packets_sent += get(kPacketsSent);
  out.packets_received += get(kPacketsReceived);
  for (std::size_t r = 0; r < kRouteKinds; ++r) {
    for (std::size_t m = 0; m < kMatchKinds; ++m) out.decisions[r][m] += get(kDecisions + r * kMatchKinds + m);
  }
  for (std::size_t f = 0; f < kFailReasons; ++f) out.failures[f] += get(kFailures + f);
  for (std::size_t n = 0; n < kNameSources; ++n) out.named[n] += get(kNamed + n);
  for (std::size_t o = 0; o < kSniffOutcomes; ++o) out.sniffed[o] += get(kSniffed + o);
  out.sniff_timeouts += get(kSniffTimeouts);
}

std::string Endpoint::to_string() const {
  const std::string a = address.to_string();
  return address.is_v6() ? "[" + a + "]:" + std::to_string(port) : a + ":" + std::to_string(port);
}

Endpoint endpoint_of(const sockaddr_storage& ss) {
  if (ss.ss_family == AF_INET) {
    const auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    return {IpAddress::v4(a.sin_addr), ntohs(a.sin_port)};
  }
  const auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
  return {IpAddress::v6(a.sin6_addr).unmapped(), ntohs(a.sin6_port)};
}

socklen_t sockaddr_of(const Endpoint& ep, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (ep.address.is_v4()) {
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    a.sin_family = AF_INET;
    a.sin_addr = ep.address.to_in_addr();
    a.sin_port = htons(ep.port);
    return sizeof a;
  }
  auto& a = reinterpret_cast<sockaddr_in6&>(ss);
  a.sin6_family = AF_INET6;
  a.sin6_addr = ep.address.to_in6_addr();
  a.sin6_port = htons(ep.port);
  return sizeof a;
}

bool SessionOwner::kill(std::uint64_t id) {
  std::lock_guard lock(mu_);
  if (!post_) return false;
  post_(id);
  return true;
}

void SessionOwner::detach() {
  std::lock_guard lock(mu_);
  post_ = nullptr;
}

void Session::touch() { last_activity_ms.store(steady_ms(), std::memory_order_relaxed); }

namespace {
void bump(std::atomic<std::uint64_t>& c, std::uint64_t n) {
  c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
}  // namespace

void Session::add_sent(std::uint64_t bytes, std::uint64_t packets) {
  bump(bytes_sent, bytes);
  counters->add(protocol, WorkerCounters::kBytesSent, bytes);
  if (packets != 0) {
    bump(packets_sent, packets);
    counters->add(protocol, WorkerCounters::kPacketsSent, packets);
  }
}

void Session::add_received(std::uint64_t bytes, std::uint64_t packets) {
  bump(bytes_received, bytes);
  counters->add(protocol, WorkerCounters::kBytesReceived, bytes);
  if (packets != 0) {
    bump(packets_received, packets);
    counters->add(protocol, WorkerCounters::kPacketsReceived, packets);
  }
}

void Session::set_packets(std::uint64_t sent, std::uint64_t received) {
  const std::uint64_t old_sent = packets_sent.load(std::memory_order_relaxed);
  const std::uint64_t old_received = packets_received.load(std::memory_order_relaxed);
  if (sent > old_sent) counters->add(protocol, WorkerCounters::kPacketsSent, sent - old_sent);
  if (received > old_received) counters->add(protocol, WorkerCounters::kPacketsReceived, received - old_received);
  packets_sent.store(std::max(sent, old_sent), std::memory_order_relaxed);
  packets_received.store(std::max(received, old_received), std::memory_order_relaxed);
}

WorkerCounters& SessionTable::register_worker() {
  std::lock_guard lock(workers_mu_);
  detail::SessionShard& sh = shards_.emplace_back();
  // Before the counters are handed out: the worker reads these without a lock.
  sh.counters.table_ = this;
  sh.counters.shard_ = &sh;
  return sh.counters;
}

detail::SessionShard& SessionTable::shard_of(const WorkerCounters& counters) {
  return counters.table_ == this ? *counters.shard_ : fallback_;
}

template <class F>
void SessionTable::for_each_shard(F&& f) const {
  std::lock_guard lock(workers_mu_);
  if (f(fallback_)) return;
  for (const detail::SessionShard& sh : shards_) {
    if (f(sh)) return;
  }
}

std::shared_ptr<Session> SessionTable::add(SessionSpec spec, WorkerCounters& counters,
                                           std::shared_ptr<SessionOwner> owner) {
  auto s = std::make_shared<Session>();
  static_cast<SessionSpec&>(*s) = std::move(spec);
  s->counters = &counters;
  s->owner = std::move(owner);
  s->started_at = std::chrono::system_clock::now();
  s->touch();
  counters.add(s->protocol, WorkerCounters::kStarted);
  counters.decision(s->protocol, s->route.kind, s->route.matched);
  counters.named(s->protocol, static_cast<std::size_t>(s->domain_source));
  if (s->route.kind == decider::RouteKind::kBlock) counters.add(s->protocol, WorkerCounters::kBlocked);
  detail::SessionShard& sh = shard_of(counters);
  std::lock_guard lock(sh.mu);
  if (sh.next_id == sh.end_id) {  // the block is used up, or there is none yet: take one
    sh.next_id = next_id_.fetch_add(kIdBlock, std::memory_order_relaxed);
    sh.end_id = sh.next_id + kIdBlock;
  }
  s->id = sh.next_id++;
  sh.live.emplace(s->id, s);
  if (s->protocol == decider::Protocol::kTcp) ++sh.tcp;
  return s;
}

void SessionTable::remove(const Session& session) {
  {
    detail::SessionShard& sh = shard_of(*session.counters);  // the shard add() chose
    std::lock_guard lock(sh.mu);
    if (sh.live.erase(session.id) != 0 && session.protocol == decider::Protocol::kTcp) --sh.tcp;
  }
  session.counters->add(session.protocol, WorkerCounters::kEnded);
}

std::vector<SessionView> SessionTable::list() const {
  // Copies of the pointers, one shard's lock at a time; the views are made outside.
  std::vector<std::shared_ptr<Session>> live;
  for_each_shard([&live](const detail::SessionShard& sh) {
    std::lock_guard lock(sh.mu);
    const std::size_t needed = live.size() + sh.live.size();
    if (needed > live.capacity()) live.reserve(std::max(needed, 2 * live.capacity()));
    for (const auto& [id, s] : sh.live) live.push_back(s);
    return false;
  });
  const std::int64_t now = steady_ms();
  std::vector<SessionView> out;
  out.reserve(live.size());
  for (const auto& s : live) {
    SessionView& v = out.emplace_back();
    static_cast<SessionSpec&>(v) = *s;
    v.id = s->id;
    v.started_at = s->started_at;
    v.bytes_sent = s->bytes_sent.load(std::memory_order_relaxed);
    v.bytes_received = s->bytes_received.load(std::memory_order_relaxed);
    v.packets_sent = s->packets_sent.load(std::memory_order_relaxed);
    v.packets_received = s->packets_received.load(std::memory_order_relaxed);
    v.idle = std::chrono::milliseconds(now - s->last_activity_ms.load(std::memory_order_relaxed));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

bool SessionTable::kill(std::uint64_t id) {
  // Ids do not tell their shard: ask each in turn (kills are rare, an operator's request).
  std::shared_ptr<SessionOwner> owner;
  bool found = false;
  for_each_shard([&](const detail::SessionShard& sh) {
    std::lock_guard lock(sh.mu);
    auto it = sh.live.find(id);
    if (it == sh.live.end()) return false;
    owner = it->second->owner;
    found = true;
    return true;
  });
  // Outside the table's locks: the owner's lock is held while posting, never with them.
  return found && owner && owner->kill(id);
}

CounterTotals SessionTable::counters() const {
  CounterTotals t;
  for_each_shard([&t](const detail::SessionShard& sh) {
    sh.counters.sum_into(decider::Protocol::kTcp, t.tcp);
    sh.counters.sum_into(decider::Protocol::kUdp, t.udp);
    std::lock_guard lock(sh.mu);
    t.active_tcp += sh.tcp;
    t.active_udp += sh.live.size() - sh.tcp;
    return false;
  });
  return t;
}

SessionTotals SessionTable::totals() const {
  const CounterTotals c = counters();
  SessionTotals t;
  t.active = c.active_tcp + c.active_udp;
  t.total = c.tcp.started + c.udp.started;
  t.refused = c.tcp.refused + c.udp.refused;
  t.blocked = c.tcp.blocked + c.udp.blocked;
  t.failed = c.tcp.failed() + c.udp.failed();
  t.bytes_sent = c.tcp.bytes_sent + c.udp.bytes_sent;
  t.bytes_received = c.tcp.bytes_received + c.udp.bytes_received;
  return t;
}

}  // namespace splitd::proxy
