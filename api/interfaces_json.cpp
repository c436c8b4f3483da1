#include "api/interfaces_json.hpp"

#include <linux/if.h>

#include <nlohmann/json.hpp>

namespace splitd::api {
namespace {

using nlohmann::json;
using iface::Interface;

json flag_names(std::uint32_t flags) {
  static constexpr std::pair<std::uint32_t, const char*> kFlags[] = {
      {IFF_UP, "up"},           {IFF_RUNNING, "running"},         {IFF_LOOPBACK, "loopback"},
      {IFF_POINTOPOINT, "pointopoint"}, {IFF_NOARP, "noarp"},     {IFF_BROADCAST, "broadcast"},
      {IFF_MULTICAST, "multicast"},     {IFF_PROMISC, "promisc"}, {IFF_LOWER_UP, "lower_up"}};
  json out = json::array();
  for (const auto& [bit, name] : kFlags) {
    if ((flags & bit) != 0) out.push_back(name);
  }
  return out;
}

json optional_ip(const std::optional<IpAddress>& ip) {
  return ip ? json(ip->to_string()) : json(nullptr);
}

json interface_json(const Interface& itf) {
  json addrs = json::array();
  for (const auto& a : itf.addresses) {
    addrs.push_back(a.address.to_string() + "/" + std::to_string(a.prefix_len));
  }
  return json{{"index", itf.index},
              {"name", itf.name},
              {"kind", iface::to_string(itf.kind)},
              {"driver", itf.link_kind},
              {"up", itf.up()},
              {"running", itf.running()},
              {"flags", flag_names(itf.flags)},
              {"mtu", itf.mtu},
              {"mac", itf.mac.empty() ? json(nullptr) : json(itf.mac_string())},
              {"addresses", std::move(addrs)},
              {"ipv4", optional_ip(itf.ipv4)},
              {"ipv6", optional_ip(itf.ipv6)}};
}

json name_or_null(const Interface* itf) { return itf ? json(itf->name) : json(nullptr); }

}  // namespace

std::string interfaces_json(const iface::InterfaceSnapshot& snap, int indent) {
  json interfaces = json::array();
  for (const auto& itf : snap.interfaces()) interfaces.push_back(interface_json(itf));
  json routes = json::array();
  for (const auto& r : snap.routes()) {
    if (!r.is_default()) continue;
    const Interface* itf = snap.by_index(r.oif);
    routes.push_back({{"family", r.family == IpAddress::Family::kV4 ? "ipv4" : "ipv6"},
                      {"interface", name_or_null(itf)},
                      {"gateway", optional_ip(r.gateway)},
                      {"metric", r.metric}});
  }
  const json doc{
      {"physical",
       {{"ipv4", name_or_null(snap.physical(IpAddress::Family::kV4))},
        {"ipv6", name_or_null(snap.physical(IpAddress::Family::kV6))}}},
      {"tunnel", name_or_null(snap.tunnel())},
      {"tunnel_up", snap.tunnel_up()},
      {"configured",
       {{"physical", snap.config().physical.empty() ? "auto" : snap.config().physical},
        {"tunnel", snap.config().tunnel.empty() ? "auto" : snap.config().tunnel}}},
      {"interfaces", std::move(interfaces)},
      {"default_routes", std::move(routes)}};
  return doc.dump(indent);
}

}  // namespace splitd::api
