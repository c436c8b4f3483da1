#pragma once

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/ip_address.hpp"
#include "decider/decider.hpp"
#include "proxy/counters.hpp"
#include "sniff/sniff.hpp"

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

// The app behind a flow, where known (pid 0 and empty strings when not).
struct AppInfo {
  std::int32_t pid = 0;
  std::string comm;
  std::string exe;
  std::string cgroup;
  std::string unit;     // the deepest systemd .service/.scope of the cgroup
  std::string app_id;   // the desktop application id of that unit
  std::optional<std::uint32_t> uid;  // the socket's owner
  std::uint64_t inode = 0;           // the client socket (to find the process later)
  std::string how;      // how it was found: "sock_diag+cgroup+proc", "socket gone", ...
  bool known() const { return pid != 0 || !cgroup.empty() || uid.has_value(); }
};

// The handle through which other threads end a worker's flows. A worker owns one for its
// lifetime and every session it starts holds it: kill() reaches the worker only while the
// worker is attached, and detach() (called by the worker before it goes away) waits for
// a kill in progress, so no kill ever calls into a worker that is gone. Thread-safe.
class SessionOwner {
 public:
  // `post` queues the kill of a session id on the worker and wakes it; it must not block
  // and is called under the handle's lock.
  explicit SessionOwner(std::function<void(std::uint64_t id)> post) : post_(std::move(post)) {}
  bool kill(std::uint64_t id);
  void detach();

 private:
  std::mutex mu_;
  std::function<void(std::uint64_t id)> post_;  // empty once detached
};

// What a new session is, as its worker classified it.
struct SessionSpec {
  decider::Protocol protocol = decider::Protocol::kTcp;
  Endpoint client;
  Endpoint destination;
  decider::Route route;
  AppInfo app;
  std::string domain;  // the name the flow was routed by; "" when none was known
  sniff::Source domain_source = sniff::Source::kNone;  // where `domain` came from
};

// One live flow. Its worker writes the counters (and its WorkerCounters with them); any
// thread may read them (relaxed atomics: figures for people, not for synchronisation).
struct Session : SessionSpec {
  std::uint64_t id = 0;
  std::chrono::system_clock::time_point started_at;
  std::atomic<std::uint64_t> bytes_sent{0};  // app → remote
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> packets_sent{0};
  std::atomic<std::uint64_t> packets_received{0};
  std::atomic<std::int64_t> last_activity_ms{0};  // steady clock, ms
  WorkerCounters* counters = nullptr;             // the owning worker's
  std::shared_ptr<SessionOwner> owner;            // may be null: cannot be killed

  void touch();
  // Single writer (the worker): load + store, no locked instruction.
  void add_sent(std::uint64_t bytes, std::uint64_t packets = 0);
  void add_received(std::uint64_t bytes, std::uint64_t packets = 0);
  // Packet counts read from the kernel (TCP_INFO) as running totals.
  void set_packets(std::uint64_t sent, std::uint64_t received);
};

// A copy of a session's state for listing.
struct SessionView : SessionSpec {
  std::uint64_t id = 0;
  std::chrono::system_clock::time_point started_at;
  std::uint64_t bytes_sent = 0, bytes_received = 0, packets_sent = 0, packets_received = 0;
  std::chrono::milliseconds idle{0};
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

// The counters of every worker, summed, and the live sessions per protocol.
struct CounterTotals {
  ProtocolCounters tcp, udp;
  std::uint64_t active_tcp = 0, active_udp = 0;
};

namespace detail {
// One worker's part of a SessionTable: its counters and its live sessions. On cache lines
// of its own, so that no two workers ever write the same line. (The table's fallback
// shard is the one all callers with counters it did not register share.)
struct alignas(64) SessionShard {
  WorkerCounters counters;  // the worker's (always zero in the table's fallback shard)
  // Taken by the worker to start and end a flow, and by the readers (list, kill,
  // counters) to look; never by another worker.
  mutable std::mutex mu;
  std::unordered_map<std::uint64_t, std::shared_ptr<Session>> live;  // under mu
  std::size_t tcp = 0;  // of `live`, so counting needs no walk; under mu
  // The block of ids this shard gives out next, [next_id, end_id); under mu.
  std::uint64_t next_id = 0, end_id = 0;
};
}  // namespace detail

// All live sessions of all workers, in shards by worker: a worker starts and ends its
// flows in its own shard, under a lock that only the readers (list, kill, counters: the
// API) contend for, and they hold one shard's lock at a time. Ids are unique and start
// at 1; a shard takes them in blocks of kIdBlock from one shared counter (one atomic
// operation per kIdBlock flows), so they increase per worker but are only roughly in the
// order of start across workers. Per-worker counters, written by their worker alone, keep
// the figures of flows out of any lock. Nothing here is touched per packet. Thread-safe.
class SessionTable {
 public:
  SessionTable() = default;
  SessionTable(const SessionTable&) = delete;
  SessionTable& operator=(const SessionTable&) = delete;

  // A worker's counters, alive as long as the table. Called when a worker is created;
  // the worker then calls add() and remove() with them from its own thread only.
  WorkerCounters& register_worker();

  // Counts the start and the decision; `owner` (may be null) is in place before the
  // session is visible to other threads. Counters that this table did not register
  // work too, through a fallback shard that all such callers share.
  std::shared_ptr<Session> add(SessionSpec spec, WorkerCounters& counters,
                               std::shared_ptr<SessionOwner> owner);
  void remove(const Session& session);

  std::vector<SessionView> list() const;  // sorted by id
  // Asks the session's worker to end it; false when the id is unknown or unkillable.
  bool kill(std::uint64_t id);
  SessionTotals totals() const;
  // Sums the counters this table registered (not those of the fallback's callers).
  CounterTotals counters() const;

 private:
  static constexpr std::uint64_t kIdBlock = 1024;

  // The shard of the worker that owns `counters`: O(1), no lock.
  detail::SessionShard& shard_of(const WorkerCounters& counters);
  // Calls f(shard) for the fallback and every worker's shard under workers_mu_, until f
  // returns true; f takes the shard's lock itself.
  template <class F>
  void for_each_shard(F&& f) const;

  std::atomic<std::uint64_t> next_id_{1};  // the first id of the next block
  detail::SessionShard fallback_;          // sessions of counters not registered here
  mutable std::mutex workers_mu_;          // registration against the readers' walks
  std::deque<detail::SessionShard> shards_;  // one per worker, never moved; under workers_mu_
};

std::int64_t steady_ms();

}  // namespace splitd::proxy
