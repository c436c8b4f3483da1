#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/ip_address.hpp"
#include "iface/netlink_messages.hpp"

namespace splitd::iface {

enum class InterfaceKind { kPhysical, kTunnel, kLoopback, kVirtual };
const char* to_string(InterfaceKind kind);

struct InterfaceAddress {
  IpAddress address;
  std::uint8_t prefix_len = 0;
  std::uint8_t scope = 0;   // RT_SCOPE_*
  std::uint32_t flags = 0;  // IFA_F_*
  friend bool operator==(const InterfaceAddress&, const InterfaceAddress&) = default;
};

struct Interface {
  std::uint32_t index = 0;
  std::string name;
  InterfaceKind kind = InterfaceKind::kVirtual;
  std::string link_kind;  // the driver's rtnetlink kind ("veth", "tun", ...), "" for hardware
  std::uint32_t flags = 0;
  std::uint32_t mtu = 0;
  std::vector<std::uint8_t> mac;
  std::vector<InterfaceAddress> addresses;
  std::optional<IpAddress> ipv4;  // first routable IPv4 (not link-local, not tentative)
  std::optional<IpAddress> ipv6;  // first routable IPv6 (global scope, not tentative)

  bool up() const;       // IFF_UP
  bool running() const;  // IFF_RUNNING (carrier)
  std::string mac_string() const;
  const std::optional<IpAddress>& address_for(IpAddress::Family f) const {
    return f == IpAddress::Family::kV4 ? ipv4 : ipv6;
  }
  friend bool operator==(const Interface&, const Interface&) = default;
};

// A route of the main table, as the physical-default selection needs it.
struct Route {
  IpAddress::Family family = IpAddress::Family::kV4;
  IpAddress dst;
  std::uint8_t dst_len = 0;
  std::uint32_t oif = 0;
  std::optional<IpAddress> gateway;
  std::uint32_t metric = 0;
  bool is_default() const { return dst_len == 0; }
  friend bool operator==(const Route&, const Route&) = default;
};

// Which names the operator configured ("" = auto-detect).
struct SelectionConfig {
  std::string physical;
  std::string tunnel;
  friend bool operator==(const SelectionConfig&, const SelectionConfig&) = default;
};

// The mutable state the netlink layer keeps between events: links, addresses and
// main-table unicast routes. Applying an event is idempotent.
class NetlinkState {
 public:
  // Returns true when a link's IFF_UP changed: the kernel flushes IPv4 routes of a
  // downed link without notifications, so the caller must re-dump routes.
  bool apply(const Event& event);
  void clear();

  const std::map<std::uint32_t, LinkMsg>& links() const { return links_; }
  const std::vector<AddrMsg>& addresses() const { return addrs_; }
  const std::vector<RouteMsg>& routes() const { return routes_; }

 private:
  std::map<std::uint32_t, LinkMsg> links_;
  std::vector<AddrMsg> addrs_;
  std::vector<RouteMsg> routes_;
};

// An immutable picture of the host's interfaces: what every routing decision reads.
// Built from a NetlinkState; shared between threads as shared_ptr<const>, never modified.
class InterfaceSnapshot {
 public:
  static std::shared_ptr<const InterfaceSnapshot> build(const NetlinkState& state,
                                                         const SelectionConfig& config);

  const std::vector<Interface>& interfaces() const { return interfaces_; }
  const std::vector<Route>& routes() const { return routes_; }
  const SelectionConfig& config() const { return config_; }

  const Interface* by_index(std::uint32_t index) const;
  const Interface* by_name(std::string_view name) const;
  const Interface* by_address(const IpAddress& ip) const;
  const Interface* by_mac(std::span<const std::uint8_t> mac) const;
  const Interface* by_mac(std::string_view mac_text) const;  // "aa:bb:cc:dd:ee:ff"

  // The physical default for a family: the configured interface, or the non-tunnel,
  // non-loopback, up interface whose default route has the lowest metric.
  const Interface* physical(IpAddress::Family family) const;
  // The default route that made `physical(family)` the choice (nullptr if configured).
  const Route* physical_route(IpAddress::Family family) const;
  // The tunnel: the configured interface if it exists, else the first up interface of a
  // tunnel kind. May be down when configured by name; see tunnel_up().
  const Interface* tunnel() const;
  bool tunnel_up() const;

  // Where VPN clients that do not mark their sockets (OpenVPN, OpenConnect with
  // vpnc-script, L2TP/IPsec) send their carrier flow: each installs a host route to its
  // server through a gateway of a physical interface, more specific than the catch-all
  // routes it points at the tunnel, so that its own packets escape them. These are the
  // destinations of such host routes (/32, /128 with a gateway, in the main table, via an
  // up interface that is neither a tunnel nor loopback), sorted and unique. splitd never
  // intercepts them: they keep following the VPN client's routes.
  std::vector<IpAddress> vpn_servers() const;

  friend bool operator==(const InterfaceSnapshot&, const InterfaceSnapshot&) = default;

 private:
  std::vector<Interface> interfaces_;  // sorted by index
  std::vector<Route> routes_;
  SelectionConfig config_;
  std::uint32_t physical4_ = 0, physical6_ = 0, tunnel_ = 0;
  std::optional<std::size_t> physical4_route_, physical6_route_;
};

// Classification rules, exposed for tests.
InterfaceKind classify(const LinkMsg& link);

}  // namespace splitd::iface
