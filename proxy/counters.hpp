#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "decider/decider.hpp"

namespace splitd::proxy {

class SessionTable;
namespace detail {
struct SessionShard;  // a SessionTable's sessions of one worker (session_table.hpp)
}  // namespace detail

// Why a flow failed (bounded: these are /metrics labels).
enum class FailReason : std::uint8_t {
  kConnectTimeout,  // no answer within connect_timeout
  kConnectRefused,  // RST from the server
  kUnreachable,     // no route, host or network unreachable (ICMP, EHOSTUNREACH, ENETUNREACH)
  kConnectError,    // any other connect error
  kSocket,          // the upstream socket could not be opened, bound or registered
  kCount
};
const char* to_string(FailReason r);  // "connect_timeout", "connect_refused", ...

inline constexpr std::size_t kRouteKinds = 3;   // decider::RouteKind
inline constexpr std::size_t kNameSources = 5;  // sniff::Source (kNone counts flows without a name)
inline constexpr std::size_t kSniffOutcomes = 6;  // sniff::Outcome (kNeedMore: gave up, see timeouts)
inline constexpr std::size_t kMatchKinds = 4;   // decider::MatchKind
inline constexpr std::size_t kFailReasons = static_cast<std::size_t>(FailReason::kCount);

// The counters of one protocol, as read (summed over workers).
struct ProtocolCounters {
  std::uint64_t started = 0;  // sessions that entered the table (blocked ones included)
  std::uint64_t ended = 0;
  std::uint64_t refused = 0;  // over max_sessions
  std::uint64_t blocked = 0;  // decided "block"
  // decisions[route kind][match kind], e.g. decisions[kTunnel][kIp]
  std::array<std::array<std::uint64_t, kMatchKinds>, kRouteKinds> decisions{};
  std::array<std::uint64_t, kFailReasons> failures{};
  std::array<std::uint64_t, kNameSources> named{};     // flows by where their name came from
  std::array<std::uint64_t, kSniffOutcomes> sniffed{};  // sniffed flows by the parser's outcome
  std::uint64_t sniff_timeouts = 0;  // sniffed flows decided at sniff_timeout, bytes incomplete
  std::uint64_t bytes_sent = 0;  // app → remote, live and ended flows
  std::uint64_t bytes_received = 0;
  std::uint64_t packets_sent = 0;
  std::uint64_t packets_received = 0;

  std::uint64_t failed() const {
    std::uint64_t n = 0;
    for (auto f : failures) n += f;
    return n;
  }
};

// One worker's counters: written by that worker only (relaxed load + store, no locked
// instruction), read by anyone. Each protocol's block starts on its own cache line so
// two workers never write the same line. Those of SessionTable::register_worker() are
// part of that worker's shard of the table and live as long as the table.
class WorkerCounters {
 public:
  enum Slot : std::size_t {
    kStarted,
    kEnded,
    kRefused,
    kBlocked,
    kBytesSent,
    kBytesReceived,
    kPacketsSent,
    kPacketsReceived,
    kDecisions,                                           // kRouteKinds × kMatchKinds
    kFailures = kDecisions + kRouteKinds * kMatchKinds,   // kFailReasons
    kNamed = kFailures + kFailReasons,                    // kNameSources
    kSniffed = kNamed + kNameSources,                     // kSniffOutcomes
    kSniffTimeouts = kSniffed + kSniffOutcomes,
    kSlots,
  };

  void add(decider::Protocol p, std::size_t slot, std::uint64_t n = 1) {
    auto& c = block(p)[slot];
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void decision(decider::Protocol p, decider::RouteKind route, decider::MatchKind match) {
    add(p, kDecisions + static_cast<std::size_t>(route) * kMatchKinds + static_cast<std::size_t>(match));
  }
  void failure(decider::Protocol p, FailReason r) { add(p, kFailures + static_cast<std::size_t>(r)); }
  // `source`, `outcome`: sniff::Source and sniff::Outcome as integers (no dependency here).
  void named(decider::Protocol p, std::size_t source) { add(p, kNamed + source); }
  void sniffed(decider::Protocol p, std::size_t outcome) { add(p, kSniffed + outcome); }

  // Adds this worker's figures of protocol p to `out`.
  void sum_into(decider::Protocol p, ProtocolCounters& out) const;

 private:
  struct alignas(64) Block : std::array<std::atomic<std::uint64_t>, kSlots> {
    Block() {
      for (auto& c : *this) c.store(0, std::memory_order_relaxed);
    }
  };
  Block& block(decider::Protocol p) { return p == decider::Protocol::kTcp ? tcp_ : udp_; }
  const Block& block(decider::Protocol p) const { return p == decider::Protocol::kTcp ? tcp_ : udp_; }
  Block tcp_, udp_;

  // Set once by the SessionTable that registered this worker, before it hands the counters
  // out: how add() and remove() find the worker's shard without a lookup or a lock. Null
  // for counters made elsewhere.
  friend class SessionTable;
  const SessionTable* table_ = nullptr;
  detail::SessionShard* shard_ = nullptr;
};

}  // namespace splitd::proxy
