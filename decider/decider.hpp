#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/atomic_shared_ptr.hpp"
#include "common/cidr.hpp"
#include "common/ip_address.hpp"
#include "decider/app_matcher.hpp"
#include "decider/domain_matcher.hpp"
#include "decider/prefix_trie.hpp"
#include "iface/interface_cache.hpp"

namespace splitd::decider {

enum class Protocol : std::uint8_t { kTcp, kUdp };
const char* to_string(Protocol p);

// "exclude": everything through the tunnel except matches; "include": only matches.
enum class Mode : std::uint8_t { kExclude, kInclude };
const char* to_string(Mode m);

// The kill switch: what happens to tunnel-bound flows while no tunnel is up.
enum class OnTunnelDown : std::uint8_t { kBlock, kDirect };
const char* to_string(OnTunnelDown o);

// When a flow's name is taken from its own first bytes (TLS SNI, HTTP Host, QUIC):
// "unknown" only when captured DNS named no destination, "always", or "off".
enum class SniffMode : std::uint8_t { kUnknown, kAlways, kOff };
const char* to_string(SniffMode m);

enum class RouteKind : std::uint8_t { kTunnel, kDirect, kBlock };
const char* to_string(RouteKind k);

// What the decider knows about a new flow.
struct SessionInfo {
  Protocol protocol = Protocol::kTcp;
  IpAddress src;
  std::uint16_t src_port = 0;
  IpAddress dst;  // the original destination
  std::uint16_t dst_port = 0;
  // The app that opened the flow, where known (empty / 0 / unset when not).
  std::int32_t pid = 0;
  std::string cgroup_path;  // cgroup v2 path, e.g. "/user.slice/.../app-slack-1.scope"
  std::string comm;         // /proc/PID/comm
  std::string exe;          // /proc/PID/exe
  std::string app_id;       // the desktop application id of its systemd unit ("firefox")
  std::optional<std::uint32_t> uid;  // the socket's owner
  // The flow's process runs in one of splitd's `splitctl exec` cgroups: that route wins
  // over every rule (kTunnel or kDirect).
  std::optional<RouteKind> exec_route;
  AppView app() const { return {cgroup_path, comm, exe, app_id, uid}; }
  // The flow is a VPN client's own carrier (its first datagram is a WireGuard handshake
  // initiation from a root-owned socket, vpn_carrier.hpp): it goes direct, before any rule.
  bool vpn_carrier = false;
  // The server name the flow itself gave (TLS SNI, HTTP Host, QUIC Initial), normalised,
  // and where it came from ("sni", "host", "quic"); empty when not sniffed. Domain rules
  // match it before the names of captured DNS: it is the name the app asked for.
  std::string sniffed_name;
  const char* sniffed_from = "";
  // Said in the rule text after whatever decides, e.g. "ECH: outer SNI x.com not used".
  std::string sniff_note;
};

// Which kind of rule decided a flow (for metrics and logs).
enum class MatchKind : std::uint8_t { kNone, kApp, kDomain, kIp };
const char* to_string(MatchKind k);

// The decider's answer: where the flow goes, bound to what, and why.
struct Route {
  RouteKind kind = RouteKind::kBlock;
  std::uint32_t ifindex = 0;
  std::string interface;           // empty for kBlock
  std::optional<IpAddress> source; // the interface's address of the flow's family
  std::string rule;                // what decided: "ip 10.0.0.0/8", "default", "kill switch"
  MatchKind matched = MatchKind::kNone;  // the kind of rule that matched, kNone = default
  std::string domain;              // a domain rule decided: the name it matched
};

// Decides the route of new flows. Implementations are called from every proxy thread at
// once and must not block.
class Decider {
 public:
  virtual ~Decider() = default;
  virtual Route decide(const SessionInfo& info) const = 0;
};

// Receives the names an IP was resolved from, one call per name; return true to stop.
// The view is valid only during the call (a store may recycle it afterwards), and the
// visitor must not call back into the store it visits.
class NameVisitor {
 public:
  virtual bool operator()(std::string_view name) = 0;

 protected:
  ~NameVisitor() = default;
};

// The names a destination IP was resolved from (filled from captured DNS answers, e.g.
// dns::NameStore). Called from every proxy thread at once on every new flow: must not
// block nor allocate. The order of the names is the store's own; callers must not depend
// on it.
class IpNames {
 public:
  virtual ~IpNames();
  virtual void visit_names(const IpAddress& ip, NameVisitor& visitor) const = 0;
};

// The [split] rules as configured, before indexing.
struct RuleSpec {
  Mode mode = Mode::kExclude;
  OnTunnelDown on_tunnel_down = OnTunnelDown::kBlock;
  std::vector<Cidr> ips;
  std::vector<std::string> domains;
  std::vector<AppSpec> apps;
};

// What a rule set says about a flow, before interfaces are considered.
struct RuleMatch {
  MatchKind kind = MatchKind::kNone;
  std::string rule = "default";  // "app Slack", "domain *.x.com (a.x.com)", "ip 10.0.0.0/8"
  std::string domain;            // kDomain: the name the rule matched (a.x.com)
};

// The rules of the current config with their lookup indexes, immutable once built
// (RuleSet::build / build_rules) and swapped whole on reload; match() is safe from any
// number of threads. The RuleSpec fields keep the rules as given (for the API). A RuleSet
// filled by hand without build() only matches its ips, by a linear scan.
struct RuleSet : RuleSpec {
  static std::shared_ptr<const RuleSet> build(const RuleSpec& spec);

  // Precedence, first match wins: apps (in order), then domains (the flow's sniffed name,
  // then any name of the destination that `names` knows; nullptr = none known), then ips
  // (longest prefix). A sniffed name that decides shows its source:
  // "domain *.x.com (a.x.com, sni)".
  // An IP often has several names (a CDN address shared by a.x.com and b.other.com). A
  // name a domain rule matches wins over names that match nothing, because the rule is the
  // user's explicit choice: that CDN IP follows the rule for a.x.com. Among the matching
  // names the lexicographically smallest (lowercase, no trailing dot) decides, so the
  // answer does not depend on the order in which the store keeps them; the rule text names
  // it and, when the IP has more than one name, how many it has:
  // "domain *.x.com (a.x.com; 1 of 3 names)". Allocates only the rule text.
  RuleMatch match(const SessionInfo& info, const IpNames* names) const;
  // A DNS query's match: the client's app rules (when its app is known), then the domain
  // rules on the queried name. IP rules do not apply to a name.
  RuleMatch match_name(const SessionInfo& client, std::string_view name) const;

  std::size_t invalid_domains = 0;  // patterns build() skipped (config validates them first)
  // Whether any app rule exists / needs the process (comm or path) rather than only the
  // socket's cgroup and owner: identification does only as much as the rules need.
  bool has_apps() const { return !apps.empty(); }
  bool needs_process() const { return needs_process_; }

 private:
  bool built_ = false;
  bool needs_process_ = false;
  PrefixTrie ip_index_;
  std::vector<std::string> ip_labels_;  // "ip 10.0.0.0/8", by rule index
  DomainMatcher domain_index_;
};

std::shared_ptr<const RuleSet> build_rules(const RuleSpec& spec);

// The rule engine of SPEC "Routing semantics": app, domain and IP rules with include /
// exclude mode and the kill switch, resolved against the current interface snapshot.
// Reads rules and interfaces from atomically swapped snapshots: decide() takes no lock.
// `names` (may be nullptr: no names known) must outlive the decider.
class RuleDecider final : public Decider {
 public:
  RuleDecider(const iface::InterfaceSource& interfaces, std::shared_ptr<const RuleSet> rules,
              const IpNames* names = nullptr);
  Route decide(const SessionInfo& info) const override;
  // The route of a DNS query for `name` from `client`, towards an upstream of
  // `upstream_family`: the same mode, kill switch and interfaces as a flow's.
  Route decide_name(const SessionInfo& client, std::string_view name,
                    IpAddress::Family upstream_family) const;
  void set_rules(std::shared_ptr<const RuleSet> rules) { rules_.store(std::move(rules)); }
  std::shared_ptr<const RuleSet> rules() const { return rules_.load(); }

 private:
  const iface::InterfaceSource& interfaces_;
  AtomicSharedPtr<const RuleSet> rules_;
  const IpNames* names_;
};

// Resolves a route kind to an interface of the snapshot (used by RuleDecider; exposed for
// tests). Tunnel-bound flows with no tunnel up follow on_tunnel_down.
Route resolve(RouteKind wanted, const IpAddress& dst, const iface::InterfaceSnapshot& snap,
              OnTunnelDown on_tunnel_down, std::string rule);

}  // namespace splitd::decider
