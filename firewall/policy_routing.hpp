#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/expected.hpp"
#include "firewall/firewall.hpp"
#include "netlink/socket.hpp"

namespace splitd::firewall {

// An ip rule as rtnetlink reports it (the fields splitd uses).
struct PolicyRule {
  std::uint8_t family = 0;  // AF_INET, AF_INET6
  std::uint8_t action = 0;  // FR_ACT_*
  std::uint8_t protocol = 0;
  std::uint32_t priority = 0;
  std::uint32_t fwmark = 0;
  std::uint32_t fwmask = 0;
  std::uint32_t table = 0;
  friend bool operator==(const PolicyRule&, const PolicyRule&) = default;
};

// A route as rtnetlink reports it (the fields splitd uses; splitd's routes are defaults).
struct PolicyRoute {
  std::uint8_t family = 0;
  std::uint8_t type = 0;  // RTN_*
  std::uint8_t protocol = 0;
  std::uint8_t dst_len = 0;
  std::uint32_t table = 0;
  std::uint32_t oif = 0;
  std::uint32_t metric = 0;
  bool has_metric = false;
  friend bool operator==(const PolicyRoute&, const PolicyRoute&) = default;
};

// splitd's policy routing over rtnetlink: per family the rule `fwmark MARK lookup TABLE`
// at a fixed priority and the route `local default dev lo table TABLE`, both with route
// protocol Firewall::kRouteProtocol, which is what marks them as splitd's. Owns a
// NETLINK_ROUTE socket of the namespace it was opened in. Not thread-safe.
class PolicyRouting {
 public:
  static Expected<PolicyRouting, FirewallError> open();

  // Creates the rule and route of `config` for IPv4 and, if config.ipv6, IPv6 (present
  // ones are kept, so installing twice adds nothing), then deletes every other rule and
  // route of splitd's: leftovers of a crashed run or of another mark, table or priority.
  Expected<void, FirewallError> install(const FirewallConfig& config);

  // Deletes every rule and route of splitd's in both families; succeeds if none is left.
  Expected<void, FirewallError> remove();

  // splitd's rules / routes of `family` now (protocol kRouteProtocol).
  Expected<std::vector<PolicyRule>, FirewallError> rules(int family);
  // Every rule of `family` (anyone's), in the order the kernel evaluates them.
  Expected<std::vector<PolicyRule>, FirewallError> all_rules(int family);
  Expected<std::vector<PolicyRoute>, FirewallError> routes(int family);
  // The netlink port splitd's rule and route changes come from (their events carry it).
  std::uint32_t portid() const { return sock_.portid(); }

 private:
  explicit PolicyRouting(netlink::Socket sock) : sock_(std::move(sock)) {}
  Expected<std::vector<PolicyRule>, FirewallError> dump_rules(int family, bool splitd_only);
  Expected<void, FirewallError> add_rule(const PolicyRule& r);
  Expected<void, FirewallError> delete_rule(const PolicyRule& r);
  Expected<void, FirewallError> replace_route(const PolicyRoute& r);
  Expected<void, FirewallError> delete_route(const PolicyRoute& r);
  // `report`: log each deletion (leftovers found by install()).
  Expected<void, FirewallError> remove_except(const std::vector<PolicyRule>& keep_rules,
                                              const std::vector<PolicyRoute>& keep_routes,
                                              bool report);

  netlink::Socket sock_;
};

// How `ip` would write them, for messages: "ip -6 rule 'priority 1501 fwmark 0x5d1 lookup 1501'".
std::string describe(const PolicyRule& r);
std::string describe(const PolicyRoute& r);

}  // namespace splitd::firewall
