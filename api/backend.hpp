#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/cidr.hpp"
#include "common/expected.hpp"
#include "common/ip_address.hpp"
#include "config/config.hpp"
#include "decider/decider.hpp"
#include "dns/forwarder.hpp"
#include "iface/interface_snapshot.hpp"
#include "proxy/session_table.hpp"

namespace splitd::api {

// Who sent a request. On the unix socket from SO_PEERCRED; on the TCP listener a caller
// with the right token.
struct Caller {
  enum class Transport : std::uint8_t { kUnix, kTcp };
  Transport transport = Transport::kUnix;
  std::int64_t uid = -1;
  std::int64_t gid = -1;
  std::int64_t pid = 0;
  bool may_change = false;  // root or a member of group `splitd` (unix); a valid token (tcp)
};

// An error the API answers with: HTTP status and the JSON body {error, detail}.
struct ApiError {
  int status = 500;
  std::string error;   // short and stable: "bad request", "not found", "conflict", ...
  std::string detail;  // for people: which field, what is allowed, what to do
};
template <typename T>
using Result = Expected<T, ApiError>;
struct Ok {};

// GET /api/v1/status
struct Status {
  bool ready = false;    // false while starting: the API answers 503
  bool enabled = true;   // interception installed (POST /disable removes it)
  decider::Mode mode = decider::Mode::kExclude;
  std::string tunnel_interface;     // "" = none
  bool tunnel_up = false;
  std::string physical_interface;   // IPv4's, else IPv6's; "" = none
  std::string physical_interface6;  // "" = none
  bool dns_enabled = false;                 // DNS capture on ([dns] enabled)
  std::vector<IpAddress> dns_servers;         // upstreams of tunnel-routed names
  std::vector<IpAddress> dns_direct_servers;  // of direct-routed names, in use (configured or the system's)
  std::uint64_t sessions_active = 0;
  std::uint64_t sessions_total = 0;
  std::uint64_t bytes_sent = 0;
  std::uint64_t bytes_received = 0;
  std::chrono::system_clock::time_point started_at;
  std::string version;       // "0.1.0"
  std::string git_revision;  // "d863c34"
  std::string config_file;   // "" = built-in defaults
  std::string state_file;    // where API rule edits persist
  std::vector<std::string> warnings;  // e.g. the state file was unreadable and set aside
};

// GET /api/v1/split/rules: the rules in force (config plus API edits) and the edits.
struct Rules {
  config::SplitSection effective;
  bool mode_from_api = false;  // the mode was set over the API (else: the config's)
  config::SplitSection added;  // API additions (mode unused)
  config::SplitSection removed;  // API removals of config entries (mode unused)
};

// Daemon-level figures for /metrics (beyond the session counters).
struct DaemonCounters {
  std::uint64_t firewall_repairs = 0;          // footprint restored after another program changed it
  std::uint64_t firewall_repair_failures = 0;
  std::uint64_t firewall_repair_backoffs = 0;  // repairs delayed: another program keeps undoing them
  std::uint64_t firewall_last_repair_us = 0;   // how long the last repair took (gauge)
  // Changes by other programs the kernel's events reported, by what they touched.
  std::uint64_t firewall_changes_nftables = 0;  // table inet splitd
  std::uint64_t firewall_changes_policy = 0;    // policy rules (anyone's; splitd's checked)
  std::uint64_t firewall_changes_route = 0;     // routes of splitd's route table
  std::uint64_t firewall_events_lost = 0;       // event bursts lost (ENOBUFS): full checks
  bool firewall_table_owned = false;            // NFT_TABLE_F_OWNER (gauge)
  bool firewall_table_persistent = false;       // NFT_TABLE_F_PERSIST (gauge)
  std::uint64_t reloads = 0;                   // SIGHUP reloads applied
  std::uint64_t reload_failures = 0;           // SIGHUP with a bad config (kept running)
  std::uint64_t rule_edits = 0;                // API rule changes applied
  std::uint64_t vpn_servers = 0;               // VPN servers never intercepted (gauge)
};

// GET /api/v1/dns/cache: one learned ip -> names entry.
struct DnsEntry {
  IpAddress ip;
  std::vector<std::string> names;  // most recent first
  std::chrono::system_clock::time_point expires_at;  // the latest name's TTL (matching lasts `grace` longer)
  std::string source;              // "dns" (a captured answer), "state" (kept across a restart)
};

// The DNS capture's figures for /metrics.
struct DnsMetrics {
  bool enabled = false;
  dns::ForwarderStats forwarder;
  std::uint64_t names = 0;        // learned IPs (gauge)
  std::uint64_t names_bytes = 0;  // heap the learned names hold (gauge)
};

// App identification (cgroup/): how flows' apps were found.
struct AppMetrics {
  bool enabled = false;           // the cgroup2 hierarchy was found
  std::uint64_t identified = 0;   // sockets found by sock_diag
  std::uint64_t socket_gone = 0;  // no such socket any more (an app that exited, a closed UDP socket)
  std::uint64_t failed = 0;       // netlink errors
  std::uint64_t no_path = 0;      // found, but the cgroup id had no path
  std::uint64_t processes = 0;    // processes found for rules or listings
  std::uint64_t no_process = 0;
  std::uint64_t cgroups = 0;      // the cgroup map's size (gauge)
  std::uint64_t execs = 0;        // processes moved by POST /exec
};

struct MetricsSnapshot {
  proxy::CounterTotals sessions;
  DaemonCounters daemon;
  DnsMetrics dns;
  AppMetrics apps;
  bool enabled = true;
  bool tunnel_up = false;
  std::chrono::system_clock::time_point started_at;
  std::uint64_t rules_apps = 0, rules_domains = 0, rules_ips = 0;  // rules in force (gauges)
  std::string version, git_revision;
};

// What the REST API serves and changes. Implemented by the daemon's Runtime; every call
// comes from the control executor's one thread (the API server runs on it), so an
// implementation needs no locking of its own against other API calls.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual Status status() const = 0;
  virtual Result<Ok> set_enabled(bool enabled) = 0;

  virtual std::vector<proxy::SessionView> connections() const = 0;
  // false when no live session has that id.
  virtual bool kill(std::uint64_t id) = 0;

  virtual Rules rules() const = 0;
  virtual Result<Ok> set_mode(decider::Mode mode) = 0;
  // 409 when the rule is already in force; 404 on remove when it is not.
  virtual Result<Ok> add_app(const config::AppRule& app) = 0;
  virtual Result<Ok> remove_app(const std::string& name) = 0;
  virtual Result<Ok> add_domain(const std::string& pattern) = 0;  // normalised (config::domain_pattern)
  virtual Result<Ok> remove_domain(const std::string& pattern) = 0;
  virtual Result<Ok> add_ip(const Cidr& cidr) = 0;
  virtual Result<Ok> remove_ip(const Cidr& cidr) = 0;

  virtual std::shared_ptr<const iface::InterfaceSnapshot> interfaces() const = 0;
  virtual MetricsSnapshot metrics() const = 0;

  // The learned names (empty when DNS capture is off); flush returns how many it removed.
  // POST /api/v1/exec: moves process `pid` (the caller itself when 0) into splitd's exec
  // cgroup of `route` (kDirect or kTunnel). Callers other than root may move only their own
  // processes. Returns the cgroup path the process is now in.
  virtual Result<std::string> exec(const Caller& caller, std::int64_t pid, decider::RouteKind route) = 0;
  virtual std::vector<DnsEntry> dns_cache() const = 0;
  virtual std::size_t flush_dns_cache() = 0;
};

}  // namespace splitd::api
