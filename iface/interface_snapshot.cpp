#include "iface/interface_snapshot.hpp"

#include <linux/if_addr.h>
#include <net/if_arp.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <tuple>

namespace splitd::iface {

const char* to_string(InterfaceKind kind) {
  switch (kind) {
    case InterfaceKind::kPhysical: return "physical";
    case InterfaceKind::kTunnel: return "tunnel";
    case InterfaceKind::kLoopback: return "loopback";
    case InterfaceKind::kVirtual: return "virtual";
  }
  return "?";
}

bool Interface::up() const { return (flags & IFF_UP) != 0; }
bool Interface::running() const { return (flags & IFF_RUNNING) != 0; }

std::string Interface::mac_string() const {
  std::string out;
  char part[4];
  for (std::size_t i = 0; i < mac.size(); ++i) {
    std::snprintf(part, sizeof part, i == 0 ? "%02x" : ":%02x", mac[i]);
    out += part;
  }
  return out;
}

// ARPHRD_IP6GRE is in <linux/if_arp.h> only, which clashes with glibc's <net/if.h>.
constexpr std::uint16_t kArphrdIp6Gre = 823;

InterfaceKind classify(const LinkMsg& link) {
  if ((link.flags & IFF_LOOPBACK) != 0 || link.type == ARPHRD_LOOPBACK) {
    return InterfaceKind::kLoopback;
  }
  // Drivers whose devices carry a VPN or another tunnel. "tun" covers tap as well.
  static constexpr std::array<std::string_view, 14> kTunnelKinds = {
      "tun",  "wireguard", "ppp",    "ovpn",   "ipip", "gre",  "gretap",
      "sit",  "ip6tnl",    "ip6gre", "ip6gretap", "vti", "vti6", "xfrm"};
  if (std::find(kTunnelKinds.begin(), kTunnelKinds.end(), link.kind) != kTunnelKinds.end()) {
    return InterfaceKind::kTunnel;
  }
  switch (link.type) {
    case ARPHRD_PPP:
    case ARPHRD_NONE:
    case ARPHRD_TUNNEL:
    case ARPHRD_TUNNEL6:
    case ARPHRD_SIT:
    case ARPHRD_IPGRE:
    case kArphrdIp6Gre: return InterfaceKind::kTunnel;
    default: break;
  }
  if ((link.flags & IFF_POINTOPOINT) != 0 && (link.flags & IFF_NOARP) != 0) {
    return InterfaceKind::kTunnel;
  }
  // Hardware drivers register no rtnetlink kind; a bus parent says the same.
  if (link.kind.empty() || !link.parent_dev.empty()) return InterfaceKind::kPhysical;
  return InterfaceKind::kVirtual;
}

namespace {

// A route's identity as the kernel keys it: two IPv6 default routes through two routers
// on one link (router advertisements) are two routes, not one.
bool same_route(const RouteMsg& a, const RouteMsg& b) {
  return a.family == b.family && a.dst == b.dst && a.dst_len == b.dst_len && a.tos == b.tos &&
         a.metric == b.metric && a.oif == b.oif && a.gateway == b.gateway;
}

bool tracked_route(const RouteMsg& r) {
  return r.table == RT_TABLE_MAIN && r.type == RTN_UNICAST;
}

bool usable(const InterfaceAddress& a) {
  if ((a.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)) != 0) return false;
  if (a.address.is_link_local() || a.address.is_loopback() || a.address.is_multicast()) {
    return false;
  }
  return a.scope < RT_SCOPE_LINK;
}

// First routable address of a family; a deprecated one only when there is no other.
std::optional<IpAddress> first_routable(const std::vector<InterfaceAddress>& addrs,
                                        IpAddress::Family family) {
  const InterfaceAddress* fallback = nullptr;
  for (const auto& a : addrs) {
    if (a.address.family() != family || !usable(a)) continue;
    if ((a.flags & IFA_F_DEPRECATED) == 0) return a.address;
    if (fallback == nullptr) fallback = &a;
  }
  if (fallback != nullptr) return fallback->address;
  return std::nullopt;
}

}  // namespace

bool NetlinkState::apply(const Event& event) {
  if (const auto* le = std::get_if<LinkEvent>(&event)) {
    const std::uint32_t idx = le->link.index;
    if (le->removed) {
      links_.erase(idx);
      std::erase_if(addrs_, [idx](const AddrMsg& a) { return a.index == idx; });
      std::erase_if(routes_, [idx](const RouteMsg& r) { return r.oif == idx; });
      return false;
    }
    bool up_changed = false;
    if (auto it = links_.find(idx); it != links_.end()) {
      up_changed = ((it->second.flags ^ le->link.flags) & IFF_UP) != 0;
      it->second = le->link;
    } else {
      links_.emplace(idx, le->link);
    }
    return up_changed;
  }
  if (const auto* ae = std::get_if<AddrEvent>(&event)) {
    const AddrMsg& a = ae->addr;
    auto it = std::find_if(addrs_.begin(), addrs_.end(), [&a](const AddrMsg& x) {
      return x.index == a.index && x.address == a.address && x.prefix_len == a.prefix_len;
    });
    if (ae->removed) {
      if (it != addrs_.end()) addrs_.erase(it);
    } else if (it != addrs_.end()) {
      *it = a;
    } else {
      addrs_.push_back(a);
    }
    return false;
  }
  const auto& re = std::get<RouteEvent>(event);
  if (!tracked_route(re.route)) return false;
  auto it = std::find_if(routes_.begin(), routes_.end(),
                         [&re](const RouteMsg& x) { return same_route(x, re.route); });
  if (re.removed) {
    if (it != routes_.end()) routes_.erase(it);
  } else if (it != routes_.end()) {
    *it = re.route;
  } else {
    routes_.push_back(re.route);
  }
  return false;
}

void NetlinkState::clear() {
  links_.clear();
  addrs_.clear();
  routes_.clear();
}

std::shared_ptr<const InterfaceSnapshot> InterfaceSnapshot::build(const NetlinkState& state,
                                                                   const SelectionConfig& config) {
  auto snap = std::make_shared<InterfaceSnapshot>();
  snap->config_ = config;
  for (const auto& [index, link] : state.links()) {
    Interface itf;
    itf.index = index;
    itf.name = link.name;
    itf.kind = classify(link);
    itf.link_kind = link.kind;
    itf.flags = link.flags;
    itf.mtu = link.mtu;
    itf.mac = link.hwaddr;
    for (const auto& a : state.addresses()) {
      if (a.index == index) itf.addresses.push_back({a.address, a.prefix_len, a.scope, a.flags});
    }
    itf.ipv4 = first_routable(itf.addresses, IpAddress::Family::kV4);
    itf.ipv6 = first_routable(itf.addresses, IpAddress::Family::kV6);
    snap->interfaces_.push_back(std::move(itf));
  }
  for (const auto& r : state.routes()) {
    snap->routes_.push_back({r.family, r.dst, r.dst_len, r.oif, r.gateway, r.metric});
  }

  const auto pick_physical = [&](IpAddress::Family family, std::uint32_t& chosen,
                                 std::optional<std::size_t>& route_index) {
    if (!config.physical.empty()) {
      if (const Interface* itf = snap->by_name(config.physical)) chosen = itf->index;
      return;
    }
    for (std::size_t i = 0; i < snap->routes_.size(); ++i) {
      const Route& r = snap->routes_[i];
      if (r.family != family || !r.is_default()) continue;
      const Interface* itf = snap->by_index(r.oif);
      if (itf == nullptr || !itf->up() || itf->kind == InterfaceKind::kTunnel ||
          itf->kind == InterfaceKind::kLoopback) {
        continue;
      }
      if (route_index) {
        const Route& best = snap->routes_[*route_index];
        if (std::tie(best.metric, best.oif) <= std::tie(r.metric, r.oif)) continue;
      }
      route_index = i;
      chosen = itf->index;
    }
  };
  pick_physical(IpAddress::Family::kV4, snap->physical4_, snap->physical4_route_);
  pick_physical(IpAddress::Family::kV6, snap->physical6_, snap->physical6_route_);

  // A VPN that replaced the default route (OpenVPN redirect-gateway without def1) leaves
  // no default on a physical interface, but it keeps a route to its server through the
  // physical gateway: that interface is the physical one.
  const auto via_gateway = [&](IpAddress::Family family, std::uint32_t& chosen,
                               std::optional<std::size_t>& route_index) {
    if (chosen != 0 || !config.physical.empty()) return;
    for (std::size_t i = 0; i < snap->routes_.size(); ++i) {
      const Route& r = snap->routes_[i];
      if (r.family != family || !r.gateway) continue;
      const Interface* itf = snap->by_index(r.oif);
      if (itf == nullptr || !itf->up() || itf->kind == InterfaceKind::kTunnel ||
          itf->kind == InterfaceKind::kLoopback) {
        continue;
      }
      if (route_index && snap->routes_[*route_index].metric <= r.metric) continue;
      route_index = i;
      chosen = itf->index;
    }
  };
  via_gateway(IpAddress::Family::kV4, snap->physical4_, snap->physical4_route_);
  via_gateway(IpAddress::Family::kV6, snap->physical6_, snap->physical6_route_);

  if (!config.tunnel.empty()) {
    if (const Interface* itf = snap->by_name(config.tunnel)) snap->tunnel_ = itf->index;
  } else {
    for (const auto& itf : snap->interfaces_) {
      if (itf.kind == InterfaceKind::kTunnel && itf.up()) {
        snap->tunnel_ = itf.index;
        break;
      }
    }
  }
  return snap;
}

const Interface* InterfaceSnapshot::by_index(std::uint32_t index) const {
  auto it = std::lower_bound(interfaces_.begin(), interfaces_.end(), index,
                             [](const Interface& i, std::uint32_t v) { return i.index < v; });
  return it != interfaces_.end() && it->index == index ? &*it : nullptr;
}

const Interface* InterfaceSnapshot::by_name(std::string_view name) const {
  for (const auto& i : interfaces_) {
    if (i.name == name) return &i;
  }
  return nullptr;
}

const Interface* InterfaceSnapshot::by_address(const IpAddress& ip) const {
  const IpAddress want = ip.unmapped();
  for (const auto& i : interfaces_) {
    for (const auto& a : i.addresses) {
      if (a.address == want) return &i;
    }
  }
  return nullptr;
}

const Interface* InterfaceSnapshot::by_mac(std::span<const std::uint8_t> mac) const {
  if (mac.empty()) return nullptr;
  for (const auto& i : interfaces_) {
    if (std::equal(i.mac.begin(), i.mac.end(), mac.begin(), mac.end())) return &i;
  }
  return nullptr;
}

const Interface* InterfaceSnapshot::by_mac(std::string_view text) const {
  std::vector<std::uint8_t> mac;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t end = std::min(text.find(':', pos), text.size());
    const std::string_view part = text.substr(pos, end - pos);
    if (part.empty() || part.size() > 2) return nullptr;
    unsigned value = 0;
    for (char c : part) {
      value <<= 4;
      if (c >= '0' && c <= '9') value |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') value |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') value |= static_cast<unsigned>(c - 'A' + 10);
      else return nullptr;
    }
    mac.push_back(static_cast<std::uint8_t>(value));
    pos = end + 1;
  }
  return by_mac(mac);
}

const Interface* InterfaceSnapshot::physical(IpAddress::Family family) const {
  return by_index(family == IpAddress::Family::kV4 ? physical4_ : physical6_);
}

std::vector<IpAddress> InterfaceSnapshot::vpn_servers() const {
  std::vector<IpAddress> out;
  for (const Route& r : routes_) {
    const unsigned host_len = r.family == IpAddress::Family::kV4 ? 32 : 128;
    if (r.dst_len != host_len || !r.gateway) continue;
    const Interface* itf = by_index(r.oif);
    if (itf == nullptr || !itf->up() || itf->kind == InterfaceKind::kTunnel ||
        itf->kind == InterfaceKind::kLoopback || itf->index == tunnel_) {
      continue;
    }
    out.push_back(r.dst);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

const Route* InterfaceSnapshot::physical_route(IpAddress::Family family) const {
  const auto& idx = family == IpAddress::Family::kV4 ? physical4_route_ : physical6_route_;
  return idx ? &routes_[*idx] : nullptr;
}

const Interface* InterfaceSnapshot::tunnel() const { return by_index(tunnel_); }

bool InterfaceSnapshot::tunnel_up() const {
  const Interface* t = tunnel();
  return t != nullptr && t->up() && t->running();
}

}  // namespace splitd::iface
