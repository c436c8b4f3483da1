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

void Session::touch() { last_activity_ms.store(steady_ms(), std::memory_order_relaxed); }

std::shared_ptr<Session> SessionTable::add(decider::Protocol protocol, const Endpoint& client,
                                           const Endpoint& destination,
                                           const decider::Route& route,
                                           std::function<void(std::uint64_t id)> kill) {
  auto s = std::make_shared<Session>();
  s->id = next_id_.fetch_add(1, std::memory_order_relaxed);
  s->kill = std::move(kill);
  s->protocol = protocol;
  s->client = client;
  s->destination = destination;
  s->route = route;
  s->started_at = std::chrono::system_clock::now();
  s->touch();
  total_.fetch_add(1, std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  live_.emplace(s->id, s);
  return s;
}

void SessionTable::remove(const Session& session) {
  // Under the lock, so totals() never counts a session twice or not at all.
  std::lock_guard lock(mu_);
  finished_sent_.fetch_add(session.bytes_sent.load(std::memory_order_relaxed), std::memory_order_relaxed);
  finished_received_.fetch_add(session.bytes_received.load(std::memory_order_relaxed),
                               std::memory_order_relaxed);
  live_.erase(session.id);
}

std::vector<SessionView> SessionTable::list() const {
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard lock(mu_);
    live.reserve(live_.size());
    for (const auto& [id, s] : live_) live.push_back(s);
  }
  const std::int64_t now = steady_ms();
  std::vector<SessionView> out;
  out.reserve(live.size());
  for (const auto& s : live) {
    out.push_back({s->id, s->protocol, s->client, s->destination, s->route, s->started_at,
                   s->bytes_sent.load(std::memory_order_relaxed),
                   s->bytes_received.load(std::memory_order_relaxed),
                   s->packets_sent.load(std::memory_order_relaxed),
                   s->packets_received.load(std::memory_order_relaxed),
                   std::chrono::milliseconds(now - s->last_activity_ms.load(std::memory_order_relaxed))});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

bool SessionTable::kill(std::uint64_t id) {
  std::shared_ptr<Session> s;
  {
    std::lock_guard lock(mu_);
    auto it = live_.find(id);
    if (it == live_.end()) return false;
    s = it->second;
  }
  if (!s->kill) return false;
  s->kill(id);
  return true;
}

SessionTotals SessionTable::totals() const {
  SessionTotals t;
  t.total = total_.load(std::memory_order_relaxed);
  t.refused = refused_.load(std::memory_order_relaxed);
  t.blocked = blocked_.load(std::memory_order_relaxed);
  t.failed = failed_.load(std::memory_order_relaxed);
  std::lock_guard lock(mu_);
  t.bytes_sent = finished_sent_.load(std::memory_order_relaxed);
  t.bytes_received = finished_received_.load(std::memory_order_relaxed);
  t.active = live_.size();
  for (const auto& [id, s] : live_) {
    t.bytes_sent += s->bytes_sent.load(std::memory_order_relaxed);
    t.bytes_received += s->bytes_received.load(std::memory_order_relaxed);
  }
  return t;
}

}  // namespace splitd::proxy
