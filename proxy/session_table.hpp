#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/ip_address.hpp"
#include "decider/decider.hpp"

namespace splitd::proxy {

struct Endpoint {
  IpAddress address;
  std::uint16_t port = 0;
  std::string to_string() const;  // "1.2.3.4:80", "[2001:db8::1]:80"
  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

// Socket addresses of either family; IPv4-mapped IPv6 addresses come out as IPv4.
Endpoint endpoint_of(const sockaddr_storage& ss);
socklen_t sockaddr_of(const Endpoint& ep, sockaddr_storage& ss);

// One live flow. Its worker writes the counters; any thread may read them (relaxed
// atomics: figures for people, not for synchronisation).
struct Session {
  std::uint64_t id = 0;
  decider::Protocol protocol = decider::Protocol::kTcp;
  Endpoint client;
  Endpoint destination;
  decider::Route route;
  std::chrono::system_clock::time_point started_at;
  std::atomic<std::uint64_t> bytes_sent{0};  // app → remote
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> packets_sent{0};
  std::atomic<std::uint64_t> packets_received{0};
  std::atomic<std::int64_t> last_activity_ms{0};  // steady clock, ms
  // Asks the owning worker to end the flow with this id (may be empty). Called with the
  // session's id, so a hook needs no per-session capture.
  std::function<void(std::uint64_t id)> kill;

  void touch();
};

// A copy of a session's state for listing.
struct SessionView {
  std::uint64_t id;
  decider::Protocol protocol;
  Endpoint client, destination;
  decider::Route route;
  std::chrono::system_clock::time_point started_at;
  std::uint64_t bytes_sent, bytes_received, packets_sent, packets_received;
  std::chrono::milliseconds idle;
};

struct SessionTotals {
  std::uint64_t active = 0;
  std::uint64_t total = 0;    // sessions ever started (refused ones not included)
  std::uint64_t refused = 0;  // over max_sessions
  std::uint64_t blocked = 0;  // decided "block"
  std::uint64_t failed = 0;   // upstream connect failed or timed out
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
};

// All live sessions of all workers. The mutex is taken once when a session starts and
// once when it ends, and by readers; never per packet. Thread-safe.
class SessionTable {
 public:
  // `kill` is set before the session is visible to other threads.
  std::shared_ptr<Session> add(decider::Protocol protocol, const Endpoint& client,
                               const Endpoint& destination, const decider::Route& route,
                               std::function<void(std::uint64_t id)> kill = {});
  void remove(const Session& session);

  std::vector<SessionView> list() const;
  bool kill(std::uint64_t id);
  SessionTotals totals() const;

  void count_refused() { refused_.fetch_add(1, std::memory_order_relaxed); }
  void count_blocked() { blocked_.fetch_add(1, std::memory_order_relaxed); }
  void count_failed() { failed_.fetch_add(1, std::memory_order_relaxed); }

 private:
  mutable std::mutex mu_;
  std::unordered_map<std::uint64_t, std::shared_ptr<Session>> live_;
  std::atomic<std::uint64_t> next_id_{1};
  std::atomic<std::uint64_t> total_{0}, refused_{0}, blocked_{0}, failed_{0};
  std::atomic<std::uint64_t> finished_sent_{0}, finished_received_{0};
};

std::int64_t steady_ms();

}  // namespace splitd::proxy
