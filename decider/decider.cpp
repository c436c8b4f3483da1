#include "decider/decider.hpp"

namespace splitd::decider {

const char* to_string(Protocol p) { return p == Protocol::kTcp ? "tcp" : "udp"; }
const char* to_string(Mode m) { return m == Mode::kExclude ? "exclude" : "include"; }
const char* to_string(OnTunnelDown o) { return o == OnTunnelDown::kBlock ? "block" : "direct"; }
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

RuleDecider::RuleDecider(const iface::InterfaceSource& interfaces,
                         std::shared_ptr<const RuleSet> rules)
    : interfaces_(interfaces), rules_(std::move(rules)) {}

Route RuleDecider::decide(const SessionInfo& info) const {
  const auto rules = rules_.load();
  const auto snap = interfaces_.snapshot();
  const IpAddress dst = info.dst.unmapped();
  const Cidr* matched = nullptr;
  // Longest prefix wins among overlapping blocks, so the named rule is the most specific.
  for (const Cidr& c : rules->ips) {
    if (c.contains(dst) && (matched == nullptr || c.prefix_len() > matched->prefix_len())) {
      matched = &c;
    }
  }
  // A match sends the flow the other way than the mode's default.
  const bool tunnel = (rules->mode == Mode::kExclude) == (matched == nullptr);
  std::string rule = matched ? "ip " + matched->to_string() : std::string("default");
  return resolve(tunnel ? RouteKind::kTunnel : RouteKind::kDirect, dst, *snap,
                 rules->on_tunnel_down, std::move(rule));
}

}  // namespace splitd::decider
