#include "decider/decider.hpp"

#include "decider/identifier.hpp"

#include <algorithm>
#include <array>

namespace splitd::decider {

const char* to_string(Protocol p) { return p == Protocol::kTcp ? "tcp" : "udp"; }
const char* to_string(Mode m) { return m == Mode::kExclude ? "exclude" : "include"; }
const char* to_string(OnTunnelDown o) { return o == OnTunnelDown::kBlock ? "block" : "direct"; }
const char* to_string(SniffMode m) {
  switch (m) {
    case SniffMode::kUnknown: return "unknown";
    case SniffMode::kAlways: return "always";
    case SniffMode::kOff: return "off";
  }
  return "?";
}
const char* to_string(MatchKind k) {
  switch (k) {
    case MatchKind::kNone: return "default";
    case MatchKind::kApp: return "app";
    case MatchKind::kDomain: return "domain";
    case MatchKind::kIp: return "ip";
  }
  return "?";
}
const char* to_string(RouteKind k) {
  switch (k) {
    case RouteKind::kTunnel: return "tunnel";
    case RouteKind::kDirect: return "direct";
    case RouteKind::kBlock: return "block";
  }
  return "?";
}

namespace {

Route bound_to(RouteKind kind, const iface::Interface& itf, IpAddress::Family family,
               std::string rule) {
  Route r;
  r.kind = kind;
  r.ifindex = itf.index;
  r.interface = itf.name;
  r.source = itf.address_for(family);
  r.rule = std::move(rule);
  return r;
}

Route blocked(std::string rule) {
  Route r;
  r.kind = RouteKind::kBlock;
  r.rule = std::move(rule);
  return r;
}

}  // namespace

Route resolve(RouteKind wanted, const IpAddress& dst, const iface::InterfaceSnapshot& snap,
              OnTunnelDown on_tunnel_down, std::string rule) {
  const IpAddress::Family family = dst.unmapped().family();
  const char* fam = family == IpAddress::Family::kV4 ? "IPv4" : "IPv6";
  if (wanted == RouteKind::kBlock) return blocked(std::move(rule));
  if (wanted == RouteKind::kTunnel) {
    const iface::Interface* tun = snap.tunnel();
    if (tun != nullptr && snap.tunnel_up()) {
      if (tun->address_for(family)) return bound_to(RouteKind::kTunnel, *tun, family, std::move(rule));
      // A tunnel without an address of this family cannot carry the flow; sending it
      // direct would leak it, so it is refused whatever the kill switch says.
      return blocked(rule + "; tunnel " + tun->name + " has no " + fam + " address");
    }
    if (on_tunnel_down == OnTunnelDown::kBlock) return blocked(rule + "; kill switch: tunnel down");
    rule += "; tunnel down, on_tunnel_down=direct";
  }
  const iface::Interface* phys = snap.physical(family);
  if (phys == nullptr) return blocked(rule + "; no physical " + fam + " interface");
  if (!phys->address_for(family)) {
    return blocked(rule + "; " + phys->name + " has no " + fam + " address");
  }
  return bound_to(RouteKind::kDirect, *phys, family, std::move(rule));
}

IpNames::~IpNames() = default;

std::shared_ptr<const RuleSet> RuleSet::build(const RuleSpec& spec) {
  auto r = std::make_shared<RuleSet>();
  static_cast<RuleSpec&>(*r) = spec;
  r->ip_labels_.reserve(spec.ips.size());
  for (std::size_t i = 0; i < spec.ips.size(); ++i) {
    r->ip_index_.insert(spec.ips[i], static_cast<std::uint32_t>(i));
    r->ip_labels_.push_back("ip " + spec.ips[i].to_string());
  }
  r->ip_index_.freeze();
  for (const std::string& d : spec.domains) {
    if (!r->domain_index_.add(d)) ++r->invalid_domains;
  }
  for (const AppSpec& a : spec.apps) r->needs_process_ = r->needs_process_ || a.needs_process();
  r->built_ = true;
  return r;
}

std::shared_ptr<const RuleSet> build_rules(const RuleSpec& spec) { return RuleSet::build(spec); }

namespace {

// The name as matched: lowercase, no trailing dot.
std::string display_name(std::string_view name) {
  if (name.ends_with('.')) name.remove_suffix(1);
  std::string s(name);
  for (char& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

// Visits the names of a destination and keeps, among those a domain rule matches, the
// lexicographically smallest (as displayed), with its pattern and the count of all names.
// The store's views die with each call, so the winner is copied into a fixed buffer: no
// allocation until rule_text().
class SmallestMatchingName final : public NameVisitor {
 public:
  explicit SmallestMatchingName(const DomainMatcher& index) : index_(index) {}

  bool operator()(std::string_view name) override {
    ++names_;  // every name counts, so no early stop
    if (name.ends_with('.')) name.remove_suffix(1);
    if (name.size() > DomainMatcher::kMaxName) return false;  // matches nothing
    std::array<char, DomainMatcher::kMaxName> buf;
    for (std::size_t i = 0; i < name.size(); ++i) buf[i] = lower(name[i]);
    const std::string_view shown(buf.data(), name.size());
    // A name that sorts after the best so far cannot win: spare the index its lookups
    // (the suffix walk's cache misses are most of a decision's cost).
    if (pattern_ != nullptr && shown >= best()) return false;
    if (const std::string* p = index_.match(shown)) {
      pattern_ = p;
      std::copy(shown.begin(), shown.end(), best_.begin());
      best_len_ = shown.size();
    }
    return false;
  }

  const std::string* pattern() const { return pattern_; }

  // "domain *.x.com (a.x.com)", or "domain *.x.com (a.x.com; 1 of 3 names)".
  std::string rule_text() const {
    std::string r;
    r.reserve(32 + pattern_->size() + best_len_);
    r.append("domain ").append(*pattern_).append(" (").append(best());
    if (names_ > 1) r.append("; 1 of ").append(std::to_string(names_)).append(" names");
    r.append(")");
    return r;
  }

  std::string_view best() const { return {best_.data(), best_len_}; }

 private:
  static char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

  const DomainMatcher& index_;
  const std::string* pattern_ = nullptr;
  std::array<char, DomainMatcher::kMaxName> best_;
  std::size_t best_len_ = 0;
  std::size_t names_ = 0;
};

}  // namespace

namespace {

bool match_app(const std::vector<AppSpec>& apps, const SessionInfo& info, RuleMatch& m) {
  const AppView app = info.app();
  if (app.empty()) return false;
  for (const AppSpec& a : apps) {
    if (app_matches(a, app)) {
      m.kind = MatchKind::kApp;
      m.rule = "app " + a.name;
      return true;
    }
  }
  return false;
}

}  // namespace

RuleMatch RuleSet::match_name(const SessionInfo& client, std::string_view name) const {
  RuleMatch m;
  if (match_app(apps, client, m)) return m;
  if (const std::string* p = domain_index_.match(name)) {
    m.kind = MatchKind::kDomain;
    m.domain = display_name(name);
    m.rule = "domain " + *p + " (" + m.domain + ")";
  }
  return m;
}

RuleMatch RuleSet::match(const SessionInfo& info, const IpNames* names) const {
  RuleMatch m;
  if (match_app(apps, info, m)) return m;
  const IpAddress dst = info.dst.unmapped();
  if (!info.sniffed_name.empty() && !domain_index_.empty()) {
    if (const std::string* p = domain_index_.match(info.sniffed_name)) {
      m.kind = MatchKind::kDomain;
      m.rule.reserve(16 + p->size() + info.sniffed_name.size());
      m.rule.assign("domain ").append(*p).append(" (").append(info.sniffed_name).append(", ");
      m.rule.append(info.sniffed_from).append(")");
      m.domain = info.sniffed_name;
      return m;
    }
  }
  if (names != nullptr && !domain_index_.empty()) {
    SmallestMatchingName best(domain_index_);
    names->visit_names(dst, best);
    if (best.pattern() != nullptr) {
      m.kind = MatchKind::kDomain;
      m.rule = best.rule_text();
      m.domain = best.best();
      return m;
    }
  }
  if (built_) {
    if (const std::uint32_t i = ip_index_.lookup(dst); i != PrefixTrie::kNone) {
      m.kind = MatchKind::kIp;
      m.rule = ip_labels_[i];
    }
    return m;
  }
  const Cidr* matched = nullptr;
  for (const Cidr& c : ips) {
    if (c.contains(dst) && (matched == nullptr || c.prefix_len() > matched->prefix_len())) {
      matched = &c;
    }
  }
  if (matched != nullptr) {
    m.kind = MatchKind::kIp;
    m.rule = "ip " + matched->to_string();
  }
  return m;
}

RuleDecider::RuleDecider(const iface::InterfaceSource& interfaces,
                         std::shared_ptr<const RuleSet> rules, const IpNames* names)
    : interfaces_(interfaces), rules_(std::move(rules)), names_(names) {}

Route RuleDecider::decide(const SessionInfo& info) const {
  const auto rules = rules_.load();
  const auto snap = interfaces_.snapshot();
  // A VPN client's own carrier flow keeps to the physical interface, whatever the rules
  // say (it would otherwise be routed into the tunnel it carries).
  if (info.vpn_carrier) {
    return resolve(RouteKind::kDirect, info.dst.unmapped(), *snap, rules->on_tunnel_down,
                   "VPN carrier (a WireGuard handshake)");
  }
  // `splitctl exec`'s cgroups come before every rule (SPEC: precedence among app rules).
  if (info.exec_route) {
    Route r = resolve(*info.exec_route, info.dst.unmapped(), *snap, rules->on_tunnel_down,
                      *info.exec_route == RouteKind::kDirect ? "exec direct" : "exec tunnel");
    r.matched = MatchKind::kApp;
    return r;
  }
  RuleMatch m = rules->match(info, names_);
  if (!info.sniff_note.empty()) m.rule.append("; ").append(info.sniff_note);
  // A match sends the flow the other way than the mode's default.
  const bool matched = m.kind != MatchKind::kNone;
  const bool tunnel = (rules->mode == Mode::kExclude) != matched;
  Route r = resolve(tunnel ? RouteKind::kTunnel : RouteKind::kDirect, info.dst.unmapped(), *snap,
                    rules->on_tunnel_down, std::move(m.rule));
  r.matched = m.kind;
  r.domain = std::move(m.domain);
  return r;
}

std::optional<AppIdentity> identify_client(const Identifier* identifier, const RuleSet& rules, SessionInfo& info) {
  if (identifier == nullptr || !(rules.has_apps() || identifier->wanted())) return std::nullopt;
  AppIdentity app = identifier->identify(info.protocol, info.src, info.src_port, info.dst, info.dst_port);
  if (rules.needs_process()) identifier->find_process(app);
  if (app.found) info.uid = app.uid;
  info.pid = app.pid;
  info.cgroup_path = app.cgroup_path;
  info.comm = app.comm;
  info.exe = app.exe;
  info.app_id = app.app_id;
  info.exec_route = app.exec_route;
  return app;
}

Route RuleDecider::decide_name(const SessionInfo& client, std::string_view name,
                               IpAddress::Family upstream_family) const {
  const auto rules = rules_.load();
  const auto snap = interfaces_.snapshot();
  // resolve() picks the interface by the destination's family: that of the upstream.
  const IpAddress family_of =
      upstream_family == IpAddress::Family::kV4 ? IpAddress() : IpAddress::v6(in6addr_any);
  if (client.exec_route) {
    Route r = resolve(*client.exec_route, family_of, *snap, rules->on_tunnel_down,
                      *client.exec_route == RouteKind::kDirect ? "exec direct" : "exec tunnel");
    r.matched = MatchKind::kApp;
    return r;
  }
  RuleMatch m = rules->match_name(client, name);
  const bool matched = m.kind != MatchKind::kNone;
  const bool tunnel = (rules->mode == Mode::kExclude) != matched;
  Route r = resolve(tunnel ? RouteKind::kTunnel : RouteKind::kDirect, family_of, *snap,
                    rules->on_tunnel_down, std::move(m.rule));
  r.matched = m.kind;
  r.domain = std::move(m.domain);
  return r;
}

}  // namespace splitd::decider
