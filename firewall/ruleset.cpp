#include "firewall/ruleset.hpp"

#include <linux/netfilter.h>
#include <linux/netfilter/nf_conntrack_tuple_common.h>
#include <linux/netfilter_ipv4.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>

#include <string>

namespace splitd::firewall {
namespace {

FirewallError invalid(std::string message) {
  return FirewallError{FirewallErrorCode::kInvalidConfig, "[firewall] " + std::move(message)};
}

}  // namespace

std::string to_hex(std::uint32_t v) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  do {
    out.insert(out.begin(), kDigits[v & 0xf]);
    v >>= 4;
  } while (v != 0);
  return "0x" + out;
}

Expected<void, FirewallError> validate(const FirewallConfig& c) {
  if (c.mark == 0) return unexpected(invalid("mark must not be 0 (0 means unmarked)"));
  if (c.bypass_mark == 0)
    return unexpected(invalid("bypass_mark must not be 0 (0 means unmarked)"));
  if (c.mark == c.bypass_mark) {
    return unexpected(
        invalid("mark and bypass_mark must differ (both are " + to_hex(c.mark) + ")"));
  }
  if (c.port == 0) return unexpected(invalid("proxy port must not be 0"));
  if (c.dns_port != 0 && c.dns_port == c.port) {
    return unexpected(invalid("the DNS forwarder's port must differ from the proxy port (" +
                              std::to_string(c.port) + ")"));
  }
  if (c.dns_port != 0 && c.dns_intercept_port == 0) {
    return unexpected(invalid("DNS intercept port must not be 0"));
  }
  if (c.route_table == RT_TABLE_UNSPEC ||
      (c.route_table >= RT_TABLE_COMPAT && c.route_table <= RT_TABLE_LOCAL)) {
    return unexpected(invalid("route_table " + std::to_string(c.route_table) +
                              " is reserved (0, 252 compat, 253 default, 254 main, 255 local)"));
  }
  // 0 is the `lookup local` rule; 32766 and later are main and default, which marked
  // packets must never reach first.
  if (c.rule_priority == 0 || c.rule_priority >= 32766) {
    return unexpected(invalid("rule priority " + std::to_string(c.rule_priority) +
                              " must be between 1 and 32765 (before `lookup main`)"));
  }
  return {};
}

NftBatch install_batch(const FirewallConfig& c, std::uint32_t table_flags) {
  NftBatch b(kTableName);
  // Replace atomically: the first add makes the delete succeed whether or not a table
  // (a crashed run's, or the current one) exists.
  b.add_table();
  b.delete_table();
  b.add_table("managed by splitd (split tunnelling); removed when splitd stops", table_flags);
  b.add_interval_set("never4", IpAddress::Family::kV4, c.never_intercept);
  if (c.ipv6) b.add_interval_set("never6", IpAddress::Family::kV6, c.never_intercept);
  b.add_interval_set("vpn_servers4", IpAddress::Family::kV4, c.vpn_servers);
  if (c.ipv6) b.add_interval_set("vpn_servers6", IpAddress::Family::kV6, c.vpn_servers);

  // Locally generated packets: mark what splitd intercepts, so the ip rule sends them to
  // the `local default dev lo` table and they come back in through lo. A `route` chain
  // re-routes a packet whose mark changed.
  b.add_chain("output", "route", NF_INET_LOCAL_OUT, NF_IP_PRI_MANGLE);
  // splitd's own packets also mark their connection: an app's answer to a peer that
  // reached it through splitd (a UDP full-cone stranger) is conntrack's reply direction,
  // and must still be intercepted, not let out by the next rule along the system routes.
  b.add_rule("output", std::move(NftRule("splitd's own sockets (bypass mark)")
                                     .meta_mark_eq(c.bypass_mark)
                                     .set_ct_mark(c.bypass_mark)
                                     .accept()));
  b.add_rule("output", std::move(NftRule("replies of inbound connections")
                                     .ct_direction_eq(IP_CT_DIR_REPLY)
                                     .ct_mark_neq(c.bypass_mark)
                                     .accept()));
  b.add_rule("output", std::move(NftRule("marked by other software").meta_mark_neq(0).accept()));
  // A VPN client's own carrier flow (some run on port 53, to pass firewalls) to its server must follow the client's host route out
  // the physical interface; intercepted, it would be routed into the tunnel it carries.
  b.add_rule("output", std::move(NftRule("VPN clients' servers (their host routes via a physical gateway)")
                                     .daddr_in_set(IpAddress::Family::kV4, "vpn_servers4")
                                     .accept()));
  if (c.ipv6) {
    b.add_rule("output", std::move(NftRule("VPN clients' servers (their host routes via a physical gateway)")
                                       .daddr_in_set(IpAddress::Family::kV6, "vpn_servers6")
                                       .accept()));
  }
  // DNS before the local-destination and never_intercept rules: a query to a stub on
  // this host (127.0.0.53, ::1) is captured too, and so is one to a server in
  // never_intercept (a LAN router), so every name an app resolves reaches the forwarder
  // and no query for a tunnel name leaves by the physical side.
  if (c.dns_port != 0) {
    NftRule r("DNS to any server, local stubs included");
    if (!c.ipv6) r.nfproto_eq(NFPROTO_IPV4);
    r.l4proto_in({IPPROTO_UDP, IPPROTO_TCP}).th_dport_eq(c.dns_intercept_port).set_mark(c.mark).accept();
    b.add_rule("output", std::move(r));
  }
  if (c.block_dot) {
    constexpr std::uint16_t kDnsOverTls = 853;
    NftRule r("DNS over TLS refused (dns.block_dot): clients fall back to plain DNS");
    if (!c.ipv6) r.nfproto_eq(NFPROTO_IPV4);
    r.l4proto_in({IPPROTO_UDP, IPPROTO_TCP}).th_dport_eq(kDnsOverTls).counter().reject_port_unreachable();
    b.add_rule("output", std::move(r));
  }
  b.add_rule(
      "output",
      std::move(NftRule("local, broadcast, multicast destinations")
                    .fib_daddr_type_in({RTN_LOCAL, RTN_BROADCAST, RTN_ANYCAST, RTN_MULTICAST})
                    .accept()));
  b.add_rule(
      "output",
      std::move(
          NftRule("never_intercept").daddr_in_set(IpAddress::Family::kV4, "never4").accept()));
  if (c.ipv6) {
    b.add_rule(
        "output",
        std::move(
            NftRule("never_intercept").daddr_in_set(IpAddress::Family::kV6, "never6").accept()));
  }
  const auto intercept = [&](const char* comment, std::uint8_t proto) {
    NftRule r(comment);
    if (!c.ipv6) r.nfproto_eq(NFPROTO_IPV4);
    r.l4proto_in({proto}).set_mark(c.mark);
    b.add_rule("output", std::move(r));
  };
  if (c.intercept_tcp) intercept("intercept TCP", IPPROTO_TCP);
  if (c.intercept_udp) intercept("intercept UDP", IPPROTO_UDP);

  // A socket bound to an interface (SO_BINDTODEVICE, IP_UNICAST_IF: `curl --interface`,
  // `ping -I`) keeps its binding: the reroute of a marked packet looks up routes of the
  // bound interface only, which `local default dev lo` is not, so it leaves by that
  // interface. That is the app's explicit choice; count it, so it is visible.
  b.add_chain("postrouting", "filter", NF_INET_POST_ROUTING, NF_IP_PRI_MANGLE);
  b.add_rule("postrouting", std::move(NftRule("sockets bound to an interface keep their binding (not intercepted)")
                                          .meta_mark_eq(c.mark)
                                          .oif_neq(kLoopbackIfindex)
                                          .counter()
                                          .accept()));

  // The marked packets coming back through lo: those of an established transparent TCP
  // socket (the proxy's accepted connections) go straight to it, the rest to the proxy
  // listener. tproxy is only possible in prerouting.
  //
  // Every UDP datagram goes to the listener, also those to a peer splitd has a reply
  // socket bound to: the listeners form a reuseport group (one per worker) in which the
  // kernel picks the socket by the client's address and port, so a client's datagrams all
  // reach the worker that owns its flows. A socket match would hand them to whichever
  // worker's reply socket for that peer the lookup finds first.
  //
  // Not a TCP SYN: a client that reuses its port for the same server meets the proxy's
  // accepted socket of the previous flow in TIME_WAIT (the proxy closed first), and the
  // socket match would deliver the SYN to it. It answers with a stale ACK, the client
  // resets and retries after a timeout: ~16 ms per connection, most connections under
  // load. tproxy instead ends the TIME_WAIT and hands the SYN to the listener.
  //
  // Before every mangle-priority chain of other programs, whatever order the tables were
  // created in (among equal priorities the newest hook runs first): wg-quick's
  // `meta l4proto udp meta mark set ct mark` would reset the mark this chain looks for,
  // and once it is past, the packet's route (local, from the reroute in output) no longer
  // depends on the mark.
  b.add_chain("prerouting", "filter", NF_INET_PRE_ROUTING, NF_IP_PRI_MANGLE - 10);
  // Captured DNS to the forwarder, before the proxies' rules. tproxy itself finds the
  // forwarder's established TCP connections before its listener.
  if (c.dns_port != 0) {
    b.add_rule("prerouting", std::move(NftRule("captured DNS to splitd's forwarder")
                                           .iif_eq(kLoopbackIfindex)
                                           .meta_mark_eq(c.mark)
                                           .l4proto_in({IPPROTO_UDP, IPPROTO_TCP})
                                           .th_dport_eq(c.dns_intercept_port)
                                           .tproxy_to_port(c.dns_port)
                                           .accept()));
  }
  if (c.intercept_tcp) {
    b.add_rule("prerouting", std::move(NftRule("TCP packets of established transparent sockets")
                                           .iif_eq(kLoopbackIfindex)
                                           .l4proto_in({IPPROTO_TCP})
                                           .tcp_not_syn()
                                           .socket_transparent()
                                           .set_mark(c.mark)
                                           .accept()));
  }
  const auto tproxy = [&](const char* comment, std::uint8_t proto) {
    b.add_rule("prerouting", std::move(NftRule(comment)
                                           .iif_eq(kLoopbackIfindex)
                                           .meta_mark_eq(c.mark)
                                           .l4proto_in({proto})
                                           .tproxy_to_port(c.port)
                                           .accept()));
  };
  if (c.intercept_tcp) tproxy("to splitd's TCP proxy", IPPROTO_TCP);
  if (c.intercept_udp) tproxy("to splitd's UDP proxy", IPPROTO_UDP);
  return b;
}

NftBatch remove_batch() {
  NftBatch b(kTableName);
  b.add_table();
  b.delete_table();
  return b;
}

}  // namespace splitd::firewall
