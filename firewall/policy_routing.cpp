#include "firewall/policy_routing.hpp"

#include <linux/fib_rules.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/log.hpp"
#include "firewall/netlink_errors.hpp"
#include "firewall/ruleset.hpp"
#include "netlink/message.hpp"

namespace splitd::firewall {
namespace {

constexpr int kDumpRetries = 5;
constexpr std::uint32_t kExactMask = 0xffffffff;

const char* ip_command(std::uint8_t family) { return family == AF_INET6 ? "ip -6" : "ip"; }

// Room for one request: a header, rtmsg/fib_rule_hdr and a handful of attributes.
struct RequestBuffer {
  alignas(nlmsghdr) std::uint8_t bytes[512]{};
};

FirewallError describe_errno(const std::string& object, std::uint8_t family, int error,
                             const std::string& ext) {
  FirewallError e;
  e.message = object + ": " + std::strerror(error);
  if (!ext.empty()) e.message += " (" + ext + ")";
  switch (error) {
    case EPERM:
    case EACCES:
      e.code = FirewallErrorCode::kPermission;
      e.message += "; splitd needs CAP_NET_ADMIN in this network namespace";
      break;
    case EAFNOSUPPORT:
    case EOPNOTSUPP:
    case EPROTONOSUPPORT:
      e.code = FirewallErrorCode::kUnsupported;
      e.message += family == AF_INET6
                       ? "; the kernel lacks IPv6 or IPv6 policy routing "
                         "(CONFIG_IPV6_MULTIPLE_TABLES); set [firewall] ipv6 = false to "
                         "run without IPv6 interception"
                       : "; the kernel lacks policy routing (CONFIG_IP_MULTIPLE_TABLES)";
      break;
    case ENETDOWN:
      e.code = FirewallErrorCode::kKernel;
      e.message += "; the loopback device is down (ip link set lo up)";
      break;
    default:
      e.code = FirewallErrorCode::kKernel;
      break;
  }
  return e;
}

// Reads a u32 / u8 attribute into `out`; false when its payload is too short.
bool read(const nlattr* a, std::uint32_t& out) {
  auto v = netlink::attr_u32(a);
  if (v) out = *v;
  return v.has_value();
}
bool read(const nlattr* a, std::uint8_t& out) {
  auto v = netlink::attr_u8(a);
  if (v) out = *v;
  return v.has_value();
}

// Parses an RTM_NEWRULE message; false when it is not one or is malformed.
bool parse_rule(const nlmsghdr& nlh, PolicyRule& out) {
  if (nlh.nlmsg_type != RTM_NEWRULE) return false;
  auto frh = netlink::fixed_header<fib_rule_hdr>(nlh);
  if (!frh) return false;
  PolicyRule r;
  r.family = frh->family;
  r.action = frh->action;
  r.table = frh->table;
  netlink::AttrReader attrs(netlink::attributes(nlh, sizeof(fib_rule_hdr)), "rule");
  while (const nlattr* a = attrs.next()) {
    bool ok = true;
    switch (netlink::attr_type(a)) {
      case FRA_PRIORITY: ok = read(a, r.priority); break;
      case FRA_FWMARK: ok = read(a, r.fwmark); break;
      case FRA_FWMASK: ok = read(a, r.fwmask); break;
      case FRA_TABLE: ok = read(a, r.table); break;
      case FRA_PROTOCOL: ok = read(a, r.protocol); break;
      default: break;
    }
    if (!ok) return false;
  }
  if (attrs.failure()) return false;
  out = r;
  return true;
}

bool parse_route(const nlmsghdr& nlh, PolicyRoute& out) {
  if (nlh.nlmsg_type != RTM_NEWROUTE) return false;
  auto rtm = netlink::fixed_header<rtmsg>(nlh);
  if (!rtm) return false;
  PolicyRoute r;
  r.family = rtm->rtm_family;
  r.type = rtm->rtm_type;
  r.protocol = rtm->rtm_protocol;
  r.dst_len = rtm->rtm_dst_len;
  r.table = rtm->rtm_table;
  netlink::AttrReader attrs(netlink::attributes(nlh, sizeof(rtmsg)), "route");
  while (const nlattr* a = attrs.next()) {
    bool ok = true;
    switch (netlink::attr_type(a)) {
      case RTA_TABLE: ok = read(a, r.table); break;
      case RTA_OIF: ok = read(a, r.oif); break;
      case RTA_PRIORITY:
        ok = read(a, r.metric);
        r.has_metric = true;
        break;
      default: break;
    }
    if (!ok) return false;
  }
  if (attrs.failure()) return false;
  out = r;
  return true;
}

std::vector<PolicyRule> wanted_rules(const FirewallConfig& c) {
  std::vector<PolicyRule> out;
  for (std::uint8_t family : {std::uint8_t{AF_INET}, std::uint8_t{AF_INET6}}) {
    if (family == AF_INET6 && !c.ipv6) continue;
    PolicyRule r;
    r.family = family;
    r.action = FR_ACT_TO_TBL;
    r.protocol = Firewall::kRouteProtocol;
    r.priority = c.rule_priority;
    r.fwmark = c.mark;
    r.fwmask = kExactMask;
    r.table = c.route_table;
    out.push_back(r);
  }
  return out;
}

std::vector<PolicyRoute> wanted_routes(const FirewallConfig& c) {
  std::vector<PolicyRoute> out;
  for (std::uint8_t family : {std::uint8_t{AF_INET}, std::uint8_t{AF_INET6}}) {
    if (family == AF_INET6 && !c.ipv6) continue;
    PolicyRoute r;
    r.family = family;
    r.type = RTN_LOCAL;
    r.protocol = Firewall::kRouteProtocol;
    r.dst_len = 0;
    r.table = c.route_table;
    r.oif = kLoopbackIfindex;
    out.push_back(r);
  }
  return out;
}

// Same object, as far as splitd cares (the kernel adds the IPv6 metric, for instance).
bool same(const PolicyRule& a, const PolicyRule& b) {
  return a.family == b.family && a.action == b.action && a.priority == b.priority &&
         a.fwmark == b.fwmark && a.fwmask == b.fwmask && a.table == b.table;
}
bool same(const PolicyRoute& a, const PolicyRoute& b) {
  return a.family == b.family && a.type == b.type && a.dst_len == b.dst_len && a.table == b.table &&
         a.oif == b.oif;
}

}  // namespace

std::string describe(const PolicyRule& r) {
  std::string s = std::string(ip_command(r.family)) + " rule 'priority " +
                  std::to_string(r.priority) + " fwmark " + to_hex(r.fwmark);
  if (r.fwmask != kExactMask) s += "/" + to_hex(r.fwmask);
  return s + " lookup " + std::to_string(r.table) + "'";
}

std::string describe(const PolicyRoute& r) {
  const char* type = r.type == RTN_LOCAL ? "local " : "";
  const std::string dst = r.dst_len == 0 ? "default" : "prefix/" + std::to_string(r.dst_len);
  std::string dev = r.oif == kLoopbackIfindex ? " dev lo" : " dev #" + std::to_string(r.oif);
  return std::string(ip_command(r.family)) + " route '" + type + dst + dev + " table " +
         std::to_string(r.table) + "'";
}

Expected<PolicyRouting, FirewallError> PolicyRouting::open() {
  // Strict checking lets route dumps be filtered by protocol in the kernel.
  auto sock = netlink::Socket::open(NETLINK_ROUTE, "rtnetlink", {.strict_check = true});
  if (!sock) return unexpected(netlink_error(sock.error()));
  return PolicyRouting(std::move(*sock));
}

Expected<std::vector<PolicyRule>, FirewallError> PolicyRouting::rules(int family) {
  return dump_rules(family, true);
}

Expected<std::vector<PolicyRule>, FirewallError> PolicyRouting::all_rules(int family) {
  return dump_rules(family, false);
}

Expected<std::vector<PolicyRule>, FirewallError> PolicyRouting::dump_rules(int family, bool splitd_only) {
  for (int attempt = 1;; ++attempt) {
    RequestBuffer buf;
    netlink::MessageBuilder msg(buf.bytes, RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP);
    msg.put_header<fib_rule_hdr>().family = static_cast<std::uint8_t>(family);
    std::vector<PolicyRule> out;
    bool malformed = false;
    auto ack = sock_.dump(msg.header(), [&](const nlmsghdr& m) {
      PolicyRule r;
      if (!parse_rule(m, r)) {
        malformed = true;
        return;
      }
      if (r.family != family) return;
      if (!splitd_only || r.protocol == Firewall::kRouteProtocol) out.push_back(r);
    });
    if (!ack) return unexpected(netlink_error(ack.error()));
    const int error = ack_errno(*ack);
    if (error == EINTR && attempt < kDumpRetries) continue;  // changed while dumping
    if (error != 0) {
      return unexpected(
          describe_errno(std::string(ip_command(static_cast<std::uint8_t>(family))) + " rule list",
                         static_cast<std::uint8_t>(family), error, ack->message));
    }
    if (malformed) {
      return unexpected(
          FirewallError{FirewallErrorCode::kNetlink, "rtnetlink: malformed rule in dump"});
    }
    return out;
  }
}

Expected<std::vector<PolicyRoute>, FirewallError> PolicyRouting::routes(int family) {
  for (int attempt = 1;; ++attempt) {
    RequestBuffer buf;
    netlink::MessageBuilder msg(buf.bytes, RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
    auto& rtm = msg.put_header<rtmsg>();
    rtm.rtm_family = static_cast<std::uint8_t>(family);
    // With strict checking the kernel dumps only splitd's routes, from every table (a
    // router with a full BGP table has a million others); older kernels ignore it.
    rtm.rtm_protocol = Firewall::kRouteProtocol;
    std::vector<PolicyRoute> out;
    bool malformed = false;
    auto ack = sock_.dump(msg.header(), [&](const nlmsghdr& m) {
      PolicyRoute r;
      if (!parse_route(m, r)) {
        malformed = true;
        return;
      }
      if (r.protocol == Firewall::kRouteProtocol && r.family == family) out.push_back(r);
    });
    if (!ack) return unexpected(netlink_error(ack.error()));
    const int error = ack_errno(*ack);
    if (error == EINTR && attempt < kDumpRetries) continue;
    if (error != 0) {
      return unexpected(
          describe_errno(std::string(ip_command(static_cast<std::uint8_t>(family))) + " route list",
                         static_cast<std::uint8_t>(family), error, ack->message));
    }
    if (malformed) {
      return unexpected(
          FirewallError{FirewallErrorCode::kNetlink, "rtnetlink: malformed route in dump"});
    }
    return out;
  }
}

namespace {

void put_rule_attrs(netlink::MessageBuilder& msg, const PolicyRule& r) {
  auto& frh = msg.put_header<fib_rule_hdr>();
  frh.family = r.family;
  frh.action = r.action;
  frh.table = r.table < 256 ? static_cast<std::uint8_t>(r.table) : std::uint8_t{RT_TABLE_UNSPEC};
  msg.put_u32(FRA_PRIORITY, r.priority);
  msg.put_u32(FRA_FWMARK, r.fwmark);
  msg.put_u32(FRA_FWMASK, r.fwmask);
  msg.put_u32(FRA_TABLE, r.table);
  msg.put_u8(FRA_PROTOCOL, r.protocol);
}

void put_route_attrs(netlink::MessageBuilder& msg, const PolicyRoute& r, bool for_delete) {
  auto& rtm = msg.put_header<rtmsg>();
  rtm.rtm_family = r.family;
  rtm.rtm_dst_len = r.dst_len;
  rtm.rtm_table =
      r.table < 256 ? static_cast<std::uint8_t>(r.table) : std::uint8_t{RT_TABLE_UNSPEC};
  rtm.rtm_protocol = r.protocol;
  // Delete: scope "nowhere" matches any scope; a local route has host scope.
  rtm.rtm_scope = for_delete ? RT_SCOPE_NOWHERE : RT_SCOPE_HOST;
  rtm.rtm_type = r.type;
  msg.put_u32(RTA_TABLE, r.table);
  if (r.oif != 0) msg.put_u32(RTA_OIF, r.oif);
  if (r.has_metric) msg.put_u32(RTA_PRIORITY, r.metric);
}

}  // namespace

Expected<void, FirewallError> PolicyRouting::add_rule(const PolicyRule& r) {
  RequestBuffer buf;
  netlink::MessageBuilder msg(buf.bytes, RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
  put_rule_attrs(msg, r);
  auto ack = sock_.request(msg.header());
  if (!ack) return unexpected(netlink_error(ack.error()));
  if (ack->error == 0 || ack->error == EEXIST) return {};
  return unexpected(describe_errno(describe(r), r.family, ack->error, ack->message));
}

Expected<void, FirewallError> PolicyRouting::delete_rule(const PolicyRule& r) {
  RequestBuffer buf;
  netlink::MessageBuilder msg(buf.bytes, RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK);
  put_rule_attrs(msg, r);
  auto ack = sock_.request(msg.header());
  if (!ack) return unexpected(netlink_error(ack.error()));
  if (ack->error == 0 || ack->error == ENOENT) return {};  // ENOENT: already gone
  return unexpected(
      describe_errno("deletion of " + describe(r), r.family, ack->error, ack->message));
}

Expected<void, FirewallError> PolicyRouting::replace_route(const PolicyRoute& r) {
  RequestBuffer buf;
  netlink::MessageBuilder msg(buf.bytes, RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
  put_route_attrs(msg, r, false);
  auto ack = sock_.request(msg.header());
  if (!ack) return unexpected(netlink_error(ack.error()));
  if (ack->error == 0) return {};
  return unexpected(describe_errno(describe(r), r.family, ack->error, ack->message));
}

Expected<void, FirewallError> PolicyRouting::delete_route(const PolicyRoute& r) {
  RequestBuffer buf;
  netlink::MessageBuilder msg(buf.bytes, RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK);
  put_route_attrs(msg, r, true);
  auto ack = sock_.request(msg.header());
  if (!ack) return unexpected(netlink_error(ack.error()));
  if (ack->error == 0 || ack->error == ESRCH || ack->error == ENOENT) return {};
  return unexpected(
      describe_errno("deletion of " + describe(r), r.family, ack->error, ack->message));
}

Expected<void, FirewallError> PolicyRouting::remove_except(
    const std::vector<PolicyRule>& keep_rules, const std::vector<PolicyRoute>& keep_routes,
    bool report) {
  for (int family : {AF_INET, AF_INET6}) {
    const bool keeps_family = std::any_of(keep_rules.begin(), keep_rules.end(),
                                          [&](const PolicyRule& r) { return r.family == family; });
    auto rules_now = rules(family);
    if (!rules_now) {
      // Without IPv6 in the kernel there is nothing of splitd's to remove there.
      if (family == AF_INET6 && !keeps_family &&
          rules_now.error().code == FirewallErrorCode::kUnsupported) {
        continue;
      }
      return unexpected(rules_now.error());
    }
    std::vector<PolicyRule> kept;  // one of each wanted rule survives; duplicates go
    for (const auto& r : *rules_now) {
      const bool wanted = std::any_of(keep_rules.begin(), keep_rules.end(),
                                      [&](const PolicyRule& k) { return same(k, r); });
      const bool seen =
          std::any_of(kept.begin(), kept.end(), [&](const PolicyRule& k) { return same(k, r); });
      if (wanted && !seen) {
        kept.push_back(r);
        continue;
      }
      if (auto d = delete_rule(r); !d) return d;
      if (report) log::info("firewall: removed leftover ", describe(r));
    }
    auto routes_now = routes(family);
    if (!routes_now) return unexpected(routes_now.error());
    for (const auto& r : *routes_now) {
      const bool wanted = std::any_of(keep_routes.begin(), keep_routes.end(),
                                      [&](const PolicyRoute& k) { return same(k, r); });
      if (wanted) continue;
      if (auto d = delete_route(r); !d) return d;
      if (report) log::info("firewall: removed leftover ", describe(r));
    }
  }
  return {};
}

Expected<void, FirewallError> PolicyRouting::install(const FirewallConfig& config) {
  const auto want_routes = wanted_routes(config);
  const auto want_rules = wanted_rules(config);
  // The route first: a rule pointing to an empty table would send marked packets on to
  // the next rules for a moment.
  for (const auto& r : want_routes) {
    if (auto x = replace_route(r); !x) return x;
  }
  for (const auto& r : want_rules) {
    auto present = rules(r.family);
    if (!present) return unexpected(present.error());
    const bool have = std::any_of(present->begin(), present->end(),
                                  [&](const PolicyRule& p) { return same(p, r); });
    if (!have) {
      if (auto x = add_rule(r); !x) return x;
    }
  }
  return remove_except(want_rules, want_routes, true);
}

Expected<void, FirewallError> PolicyRouting::remove() { return remove_except({}, {}, false); }

}  // namespace splitd::firewall
