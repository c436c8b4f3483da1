#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/cidr.hpp"
#include "common/expected.hpp"
#include "common/ip_address.hpp"
#include "common/log.hpp"
#include "decider/decider.hpp"

namespace splitd::config {

using Duration = std::chrono::milliseconds;

struct DaemonSection {
  std::string api_socket = "/run/splitd/api.sock";
  std::string api_listen;  // "" = no TCP listener
  std::string api_token_file = "/etc/splitd/api.token";
  std::string state_dir = "/var/lib/splitd";
  // Where `splitctl exec` cgroups live, relative to the cgroup2 mount ("/splitd-exec");
  // "" = "splitd-exec" below splitd's own cgroup (its unit's, under systemd).
  std::string exec_cgroup;
  // The user splitd switches to after setup when it exists (it keeps only the
  // capabilities it uses either way); "" = stay uid 0.
  std::string user = "splitd";
  log::Level log_level = log::Level::kInfo;
  friend bool operator==(const DaemonSection&, const DaemonSection&) = default;
};

struct InterfacesSection {
  std::string physical = "auto";
  std::string tunnel = "auto";
  friend bool operator==(const InterfacesSection&, const InterfacesSection&) = default;
};

struct ProxySection {
  std::uint16_t port = 15001;
  std::uint32_t max_sessions = 100000;
  Duration connect_timeout = std::chrono::seconds(10);
  Duration idle_timeout = std::chrono::minutes(5);
  Duration udp_idle_timeout = std::chrono::seconds(60);
  friend bool operator==(const ProxySection&, const ProxySection&) = default;
};

struct FirewallSection {
  std::uint32_t mark = 0x5d1;
  std::uint32_t bypass_mark = 0x5d2;
  std::uint32_t route_table = 1501;
  bool ipv6 = true;
  std::vector<Cidr> never_intercept;  // defaults filled by Config's constructor
  decider::OnTunnelDown on_tunnel_down = decider::OnTunnelDown::kBlock;
  // Own table inet splitd (Linux >= 5.12) so that no other program can change it; false:
  // others may, and splitd repairs what they change.
  bool table_owner = true;
  friend bool operator==(const FirewallSection&, const FirewallSection&) = default;
};

struct AppRule {
  std::string name;
  std::string cgroup;
  std::string comm;
  std::string path;
  std::string unit;    // glob on any systemd unit of the cgroup path
  std::string app_id;  // desktop application id ("firefox", "org.mozilla.firefox")
  std::string user;    // a user name or a uid, as given
  friend bool operator==(const AppRule&, const AppRule&) = default;
};

struct SplitSection {
  decider::Mode mode = decider::Mode::kExclude;
  std::vector<std::string> domains;
  std::vector<Cidr> ips;
  std::vector<AppRule> apps;
  friend bool operator==(const SplitSection&, const SplitSection&) = default;
};

struct DnsSection {
  bool enabled = true;
  std::vector<IpAddress> servers;         // for names routed through the tunnel
  std::vector<IpAddress> direct_servers;  // for names routed direct; empty: the system's own
  Duration cache_ttl = std::chrono::minutes(5);  // cap on cached answers; 0s: no answer cache
  std::uint16_t intercept_port = 53;      // the port captured (UDP and TCP)
  std::uint16_t forwarder_port = 15053;   // splitd's forwarder (TPROXY target), loopback only
  Duration timeout = std::chrono::milliseconds(1500);  // per upstream try
  Duration grace = std::chrono::minutes(10);  // a learned ip -> name outlives its TTL this long
  Duration ttl_floor = std::chrono::seconds(30);  // a learned name lives at least this long
  std::uint32_t max_names = 200000;       // learned IPs kept (LRU)
  bool doh_canary = true;                 // NXDOMAIN for use-application-dns.net
  bool block_dot = false;                 // refuse TCP/UDP 853 (DNS over TLS)
  std::uint32_t threads = 0;              // forwarder threads; 0: one per CPU, at most 4
  // The name from the flow itself (TLS SNI, HTTP Host, QUIC Initial) when DNS gave none.
  decider::SniffMode sniff = decider::SniffMode::kUnknown;
  std::vector<std::uint16_t> sniff_ports = {80, 443};  // TCP (TLS, HTTP) and UDP (QUIC)
  Duration sniff_timeout = std::chrono::milliseconds(300);  // the longest a flow waits for its first bytes
  // The public names of ECH providers: an Encrypted Client Hello whose outer SNI is one of
  // these names no real server; any other outer SNI of a hello with the ECH extension is
  // the real name (browsers send a GREASE ECH extension when they have no ECH config).
  std::vector<std::string> ech_public_names = {"cloudflare-ech.com"};
  friend bool operator==(const DnsSection&, const DnsSection&) = default;
};

// splitd's whole configuration (SPEC.md "Configuration"). A default-constructed Config
// holds the built-in defaults.
struct Config {
  Config();
  std::string source;  // file it came from, "" for built-in defaults
  DaemonSection daemon;
  InterfacesSection interfaces;
  ProxySection proxy;
  FirewallSection firewall;
  SplitSection split;
  DnsSection dns;
};

// One problem in a config file, printed as `FILE:LINE:COL: error: MESSAGE`.
struct Diagnostic {
  std::string file;
  std::uint32_t line = 0;
  std::uint32_t column = 0;
  std::string message;
  std::string to_string() const;
};
using Diagnostics = std::vector<Diagnostic>;

// Parses TOML text. Every problem found is reported, not just the first (a syntax error
// stops parsing, since nothing after it can be trusted).
Expected<Config, Diagnostics> parse(std::string_view text, std::string_view file_name);
// Reads and parses a file; an unreadable file is one diagnostic at 0:0.
Expected<Config, Diagnostics> load_file(const std::string& path);

// "10s", "5m", "1h", "250ms", "1d"; nullopt for anything else (no bare numbers).
std::optional<Duration> parse_duration(std::string_view text);
std::string format_duration(Duration d);

// The checks the config file and the REST API share, so both give the same message for
// the same mistake. Each returns the normalised value or a message without a location.
Expected<std::string, std::string> check_domain_pattern(const std::string& text);  // lower case, no trailing dot
Expected<Cidr, std::string> check_cidr(const std::string& text);
// An app rule: a name (1 to 64 characters) and at least one of cgroup, comm, path, unit,
// app_id, user.
Expected<AppRule, std::string> check_app(const AppRule& app);
// A user name (from the system's user database) or a decimal uid, to the uid.
Expected<std::uint32_t, std::string> resolve_user(const std::string& user);
Expected<decider::Mode, std::string> parse_mode(const std::string& text);

// One line: what the config does, for `splitd check` and the startup log.
std::string summary(const Config& config);

}  // namespace splitd::config

namespace splitd::config {

// How a key takes effect when the config is reloaded (SIGHUP).
enum class Apply : std::uint8_t {
  kRules,      // the decider's rules: new flows at once ([split], firewall.on_tunnel_down)
  kFootprint,  // the interception footprint, replaced in one transaction
  kRestart,    // only at the next start (listeners, live sockets, the API carry them)
};

// What differs between the running config and the next one, key by key. Derived from one
// table that names every key of the config and how it applies (config.cpp), so the
// "needs a restart" warning cannot drift from the code.
struct ConfigChanges {
  bool rules = false;
  bool footprint = false;
  std::vector<std::string> restart;  // keys, e.g. "proxy.port", in the config's order
};
ConfigChanges changes(const Config& running, const Config& next);
// Every key the table knows ("daemon.api_socket", ...), for tests.
std::vector<std::string> known_keys();

}  // namespace splitd::config
