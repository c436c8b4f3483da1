#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/expected.hpp"
#include "decider/identifier.hpp"
#include "common/ip_address.hpp"

namespace splitd::decider {
class RuleDecider;
}

namespace splitd::dns {

class NameStore;

struct ForwarderOptions {
  std::uint16_t port = 15053;       // the TPROXY target; listens on 127.0.0.1 and ::1
  bool ipv6 = true;
  std::uint32_t bypass_mark = 0x5d2;  // SO_MARK of every socket: never captured again
  std::chrono::milliseconds timeout{1500};  // per upstream try
  std::chrono::seconds cache_ttl{300};      // cap on cached answers; 0: no cache
  std::size_t cache_entries = 10000;
  bool doh_canary = true;           // NXDOMAIN for use-application-dns.net
  std::size_t max_pending = 8192;   // queries waiting for an upstream; beyond: SERVFAIL
  std::size_t max_tcp_clients = 256;
  std::size_t max_tcp_queries = 64;  // in flight per TCP client connection
  std::chrono::milliseconds tcp_idle{10000};
  std::size_t threads = 0;  // workers; 0: one per CPU, at most 4
  // Finds the app behind a query for app rules (and exec); nullptr: apps are not known.
  // Must outlive the forwarder.
  const decider::Identifier* identifier = nullptr;
};

// The upstream servers, by route. `direct` empty: the system's resolvers are used, which
// the owner keeps current in `system`.
struct Upstreams {
  std::vector<IpAddress> tunnel;
  std::vector<IpAddress> direct;
  std::vector<IpAddress> system;  // non-local resolvers of the system (resolv.conf)
  const std::vector<IpAddress>& for_direct() const { return direct.empty() ? system : direct; }
  friend bool operator==(const Upstreams&, const Upstreams&) = default;
};

enum class QueryRoute : std::uint8_t { kTunnel, kDirect, kBlock, kLocal };
inline constexpr std::size_t kQueryRoutes = 4;
const char* to_string(QueryRoute r);

// What became of a query.
enum class QueryResult : std::uint8_t {
  kAnswered,   // an upstream's answer, relayed
  kCached,     // from the answer cache
  kServfail,   // every upstream failed or timed out: SERVFAIL made by splitd
  kBlocked,    // the kill switch (tunnel down): SERVFAIL, no upstream tried
  kCanary,     // use-application-dns.net: NXDOMAIN
  kFormerr,    // a malformed query answered FORMERR
  kDropped,    // dropped: garbage without a header, overload, or the client went away
};
inline constexpr std::size_t kQueryResults = 7;
const char* to_string(QueryResult r);

// Upstream latency histogram bounds, in microseconds (the last bucket is +Inf).
inline constexpr std::array<std::uint32_t, 11> kLatencyBoundsUs = {
    250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 500000, 1000000};

struct ForwarderStats {
  std::array<std::array<std::uint64_t, kQueryResults>, kQueryRoutes> queries{};
  std::uint64_t malformed_queries = 0;   // queries that did not parse (FORMERR or dropped)
  std::uint64_t malformed_answers = 0;   // upstream answers that did not parse
  std::uint64_t upstream_timeouts = 0;
  std::uint64_t upstream_errors = 0;     // send/connect/read failures, SERVFAIL/REFUSED
  std::uint64_t tcp_retries = 0;         // truncated UDP answers asked again over TCP
  std::uint64_t tcp_clients = 0;         // client connections accepted
  std::uint64_t cache_entries = 0;
  std::array<std::uint64_t, kLatencyBoundsUs.size() + 1> latency_buckets{};  // not cumulative
  double latency_sum_seconds = 0;
  std::uint64_t latency_count = 0;
};

// splitd's DNS forwarder: the captured queries (TPROXY to `port`, UDP and TCP) are routed
// by their name through the decider (domain rules, the mode, the kill switch), sent to
// the upstreams of that route bound to its interface, and answered from the address the
// client asked. Every answer's addresses are recorded in the NameStore before the answer
// is sent, so the connection that follows is decided with its name known.
//
// Runs `threads` workers, each a thread with its own io_context and SO_REUSEPORT
// listeners, so the kernel spreads the queries over the cores; start()/stop()/
// set_upstreams()/stats() may be called from any thread. The decider and the store must
// outlive it.
class Forwarder {
 public:
  Forwarder(const decider::RuleDecider& decider, NameStore& names, ForwarderOptions options);
  ~Forwarder();
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;

  // Binds the listeners (needs CAP_NET_ADMIN for IP_TRANSPARENT) and starts the thread.
  Expected<void, std::string> start(Upstreams upstreams);
  void stop();

  void set_upstreams(Upstreams upstreams);
  Upstreams upstreams() const;
  ForwarderStats stats() const;
  void clear_cache();
  std::size_t threads() const;

  class Worker;
  struct Shared;

 private:
  std::unique_ptr<Shared> shared_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

// The nameservers of a resolv.conf text that are not on this host (127/8, ::1 and the
// unspecified address are local stubs, which splitd's own queries must not reach).
std::vector<IpAddress> parse_resolv_conf(const std::string& text);
// The system's non-local resolvers: /etc/resolv.conf, or where it names only a local stub
// (systemd-resolved's 127.0.0.53), the upstreams resolved itself uses
// (/run/systemd/resolve/resolv.conf). Empty when neither names one.
std::vector<IpAddress> system_resolvers(const std::string& etc_resolv_conf = "/etc/resolv.conf",
                                        const std::string& resolved_conf =
                                            "/run/systemd/resolve/resolv.conf");

}  // namespace splitd::dns
