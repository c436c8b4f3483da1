#include "decider/decider.hpp"

namespace splitd::decider {

const char* to_string(Protocol p) { return p == Protocol::kTcp ? "tcp" : "udp"; }
const char* to_string(Mode m) { return m == Mode::kExclude ? "exclude" : "include"; }
const char* to_string(OnTunnelDown o) { return o == OnTunnelDown::kBlock ? "block" : "direct"; }
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
      if (tun->address_for(family)) return bound_to(RouteKind::kTunnel, *tun, family, rule);
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

}  // namespace

RuleMatch RuleSet::match(const SessionInfo& info, const IpNames* names) const {
  RuleMatch m;
  if (!info.cgroup_path.empty() || !info.comm.empty() || !info.exe.empty()) {
    for (const AppSpec& a : apps) {
      if (app_matches(a, info.cgroup_path, info.comm, info.exe)) {
        m.kind = MatchKind::kApp;
        m.rule = "app " + a.name;
        return m;
      }
    }
  }
  const IpAddress dst = info.dst.unmapped();
  if (names != nullptr && !domain_index_.empty()) {
    for (const std::string& n : names->names_for(dst)) {
      if (const std::string* p = domain_index_.match(n)) {
        m.kind = MatchKind::kDomain;
        m.rule = "domain " + *p + " (" + display_name(n) + ")";
        return m;
      }
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
  RuleMatch m = rules->match(info, names_);
  // A match sends the flow the other way than the mode's default.
  const bool matched = m.kind != MatchKind::kNone;
  const bool tunnel = (rules->mode == Mode::kExclude) != matched;
  Route r = resolve(tunnel ? RouteKind::kTunnel : RouteKind::kDirect, info.dst.unmapped(), *snap,
                    rules->on_tunnel_down, std::move(m.rule));
  r.matched = m.kind;
  return r;
}

}  // namespace splitd::decider
