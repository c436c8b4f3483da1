#include "iface/interface_snapshot.hpp"

#include "fakes/interface_fixtures.hpp"

#include <gtest/gtest.h>
#include <linux/if_addr.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>

namespace splitd::iface {
namespace {

using fakes::addr;
using fakes::ip;
using fakes::kUpRunning;
using fakes::link;
using fakes::route;

NetlinkState lab_host(bool vpn_routes) { return fakes::lab_host_state(vpn_routes); }

TEST(InterfaceSnapshot, LabHostSelection) {
  for (bool vpn : {false, true}) {
    auto snap = InterfaceSnapshot::build(lab_host(vpn), {});
    ASSERT_NE(snap->physical(IpAddress::Family::kV4), nullptr);
    EXPECT_EQ(snap->physical(IpAddress::Family::kV4)->name, "phys0") << "vpn routes " << vpn;
    EXPECT_EQ(snap->physical(IpAddress::Family::kV6)->name, "phys0") << "vpn routes " << vpn;
    ASSERT_NE(snap->tunnel(), nullptr);
    EXPECT_EQ(snap->tunnel()->name, "tun0");
    EXPECT_TRUE(snap->tunnel_up());
    EXPECT_EQ(snap->physical_route(IpAddress::Family::kV4)->gateway->to_string(), "198.18.1.1");
  }
}

TEST(InterfaceSnapshot, KindsAndFirstRoutableAddresses) {
  auto snap = InterfaceSnapshot::build(lab_host(false), {});
  EXPECT_EQ(snap->by_name("lo")->kind, InterfaceKind::kLoopback);
  EXPECT_EQ(snap->by_name("phys0")->kind, InterfaceKind::kVirtual);
  EXPECT_EQ(snap->by_name("tun0")->kind, InterfaceKind::kTunnel);
  const Interface* phys = snap->by_name("phys0");
  EXPECT_EQ(phys->ipv4->to_string(), "198.18.1.2");
  EXPECT_EQ(phys->ipv6->to_string(), "2001:db8:ff:1::2");  // not the link-local one
  EXPECT_FALSE(snap->by_name("lo")->ipv4.has_value());    // host scope is not routable
}

TEST(InterfaceSnapshot, TentativeAndDeprecatedAddresses) {
  NetlinkState s;
  s.apply(link(2, "eth0", "", kUpRunning));
  s.apply(addr(2, "2001:db8::1", 64, RT_SCOPE_UNIVERSE, IFA_F_TENTATIVE));
  s.apply(addr(2, "2001:db8::2", 64, RT_SCOPE_UNIVERSE, IFA_F_DEPRECATED));
  auto snap = InterfaceSnapshot::build(s, {});
  EXPECT_EQ(snap->by_name("eth0")->ipv6->to_string(), "2001:db8::2");
  s.apply(addr(2, "2001:db8::3", 64));
  snap = InterfaceSnapshot::build(s, {});
  EXPECT_EQ(snap->by_name("eth0")->ipv6->to_string(), "2001:db8::3");
}

TEST(InterfaceSnapshot, LowestMetricWinsAndTunnelsNeverPhysical) {
  NetlinkState s;
  s.apply(link(2, "eth0", "", kUpRunning));
  s.apply(link(3, "wlan0", "", kUpRunning));
  s.apply(link(4, "wg0", "wireguard", kUpRunning | IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));
  s.apply(route("0.0.0.0", 0, 2, 600, "192.0.2.1"));
  s.apply(route("0.0.0.0", 0, 3, 100, "198.51.100.1"));
  s.apply(route("0.0.0.0", 0, 4, 0));  // a VPN with a real default route, lowest metric
  auto snap = InterfaceSnapshot::build(s, {});
  EXPECT_EQ(snap->physical(IpAddress::Family::kV4)->name, "wlan0");
  EXPECT_EQ(snap->physical(IpAddress::Family::kV6), nullptr);
  EXPECT_EQ(snap->tunnel()->name, "wg0");

  // wlan0 goes down: eth0 takes over.
  s.apply(link(3, "wlan0", "", 0));
  snap = InterfaceSnapshot::build(s, {});
  EXPECT_EQ(snap->physical(IpAddress::Family::kV4)->name, "eth0");
}

TEST(InterfaceSnapshot, ConfiguredNamesOverrideDetection) {
  auto snap = InterfaceSnapshot::build(lab_host(true), {"tun0", "phys0"});
  EXPECT_EQ(snap->physical(IpAddress::Family::kV4)->name, "tun0");
  EXPECT_EQ(snap->physical_route(IpAddress::Family::kV4), nullptr);
  EXPECT_EQ(snap->tunnel()->name, "phys0");
  snap = InterfaceSnapshot::build(lab_host(true), {"", "nosuch0"});
  EXPECT_EQ(snap->tunnel(), nullptr);
  EXPECT_FALSE(snap->tunnel_up());
}

TEST(InterfaceSnapshot, TunnelDownOrWithoutCarrier) {
  NetlinkState s = lab_host(false);
  s.apply(link(3, "tun0", "tun", IFF_UP | IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));  // no carrier
  auto snap = InterfaceSnapshot::build(s, {});
  ASSERT_NE(snap->tunnel(), nullptr);
  EXPECT_FALSE(snap->tunnel_up());
  s.apply(link(3, "tun0", "tun", IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));  // down
  snap = InterfaceSnapshot::build(s, {});
  EXPECT_EQ(snap->tunnel(), nullptr);
  // Configured by name, a down tunnel is still "the tunnel", reported down (kill switch).
  snap = InterfaceSnapshot::build(s, {"", "tun0"});
  ASSERT_NE(snap->tunnel(), nullptr);
  EXPECT_FALSE(snap->tunnel_up());
}

TEST(InterfaceSnapshot, Lookups) {
  auto snap = InterfaceSnapshot::build(lab_host(false), {});
  EXPECT_EQ(snap->by_index(2)->name, "phys0");
  EXPECT_EQ(snap->by_index(99), nullptr);
  EXPECT_EQ(snap->by_name("nosuch"), nullptr);
  EXPECT_EQ(snap->by_address(ip("198.18.2.2"))->name, "tun0");
  EXPECT_EQ(snap->by_address(ip("::ffff:198.18.1.2"))->name, "phys0");
  EXPECT_EQ(snap->by_address(ip("2001:db8:ff:2::2"))->name, "tun0");
  EXPECT_EQ(snap->by_address(ip("203.0.113.1")), nullptr);
  EXPECT_EQ(snap->by_mac("02:00:00:00:00:02")->name, "phys0");
  EXPECT_EQ(snap->by_mac("02:00:00:00:00:2"), snap->by_index(2));
  EXPECT_EQ(snap->by_mac("zz:00:00:00:00:02"), nullptr);
  EXPECT_EQ(snap->by_mac(""), nullptr);
  EXPECT_EQ(snap->by_name("phys0")->mac_string(), "02:00:00:00:00:02");
}

TEST(NetlinkState, RemovalsAndIdempotence) {
  NetlinkState s = lab_host(true);
  const std::size_t routes = s.routes().size();
  s.apply(route("0.0.0.0", 0, 2, 100, "198.18.1.1"));  // repeated NEW: no duplicate
  EXPECT_EQ(s.routes().size(), routes);
  RouteEvent del = route("0.0.0.0", 0, 2, 100, "198.18.1.1");
  del.removed = true;
  s.apply(del);
  s.apply(del);  // deleting what is gone is harmless
  EXPECT_EQ(s.routes().size(), routes - 1);
  EXPECT_EQ(InterfaceSnapshot::build(s, {})->physical(IpAddress::Family::kV4), nullptr);

  // Other tables and non-unicast routes are not tracked.
  s.apply(route("0.0.0.0", 0, 2, 1, "198.18.1.1", 1501));
  EXPECT_EQ(s.routes().size(), routes - 1);

  // Removing a link removes its addresses and routes.
  LinkEvent gone = link(3, "tun0", "tun", 0, ARPHRD_NONE);
  gone.removed = true;
  s.apply(gone);
  for (const auto& a : s.addresses()) EXPECT_NE(a.index, 3u);
  for (const auto& r : s.routes()) EXPECT_NE(r.oif, 3u);
  EXPECT_EQ(s.links().count(3), 0u);
}

TEST(NetlinkState, UpDownAsksForRouteResync) {
  NetlinkState s = lab_host(false);
  EXPECT_FALSE(s.apply(link(2, "phys0", "veth", kUpRunning)));  // unchanged
  EXPECT_TRUE(s.apply(link(2, "phys0", "veth", 0)));            // went down
  EXPECT_TRUE(s.apply(link(2, "phys0", "veth", IFF_UP)));       // came back
  EXPECT_FALSE(s.apply(link(9, "new0", "dummy", IFF_UP)));      // new link: no resync
}

TEST(Classify, Kinds) {
  EXPECT_EQ(classify(link(5, "eth0", "", IFF_UP).link), InterfaceKind::kPhysical);
  LinkMsg vlan = link(6, "eth0.10", "vlan", IFF_UP).link;
  EXPECT_EQ(classify(vlan), InterfaceKind::kVirtual);
  vlan.parent_dev = "0000:00:03.0";
  EXPECT_EQ(classify(vlan), InterfaceKind::kPhysical);
  EXPECT_EQ(classify(link(7, "tap0", "tun", IFF_UP).link), InterfaceKind::kTunnel);
  EXPECT_EQ(classify(link(8, "ppp0", "", IFF_UP, ARPHRD_PPP).link), InterfaceKind::kTunnel);
  EXPECT_EQ(classify(link(9, "x0", "foo", IFF_UP | IFF_POINTOPOINT | IFF_NOARP).link),
            InterfaceKind::kTunnel);
  EXPECT_EQ(classify(link(10, "br0", "bridge", IFF_UP).link), InterfaceKind::kVirtual);
}

TEST(InterfaceSnapshot, TwoRoutersOnOneLinkAreTwoDefaults) {
  NetlinkState s;
  s.apply(link(2, "eth0", "", kUpRunning));
  s.apply(route("::", 0, 2, 1024, "fe80::1"));
  s.apply(route("::", 0, 2, 1024, "fe80::2"));
  EXPECT_EQ(s.routes().size(), 2u);
  RouteEvent expired = route("::", 0, 2, 1024, "fe80::1");
  expired.removed = true;
  s.apply(expired);
  auto snap = InterfaceSnapshot::build(s, {});
  ASSERT_NE(snap->physical(IpAddress::Family::kV6), nullptr);
  EXPECT_EQ(snap->physical_route(IpAddress::Family::kV6)->gateway->to_string(), "fe80::2");
}

TEST(InterfaceSnapshot, VpnThatReplacedTheDefaultRoute) {
  // OpenVPN redirect-gateway (no def1): default via tun0, the server via eth0's gateway.
  NetlinkState s;
  s.apply(link(2, "eth0", "", kUpRunning));
  s.apply(link(3, "tun0", "tun", kUpRunning | IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));
  s.apply(route("0.0.0.0", 0, 3, 0));
  s.apply(route("192.0.2.44", 32, 2, 0, "198.51.100.1"));
  auto snap = InterfaceSnapshot::build(s, {});
  ASSERT_NE(snap->physical(IpAddress::Family::kV4), nullptr);
  EXPECT_EQ(snap->physical(IpAddress::Family::kV4)->name, "eth0");
  EXPECT_EQ(snap->physical_route(IpAddress::Family::kV4)->gateway->to_string(), "198.51.100.1");
  EXPECT_EQ(snap->tunnel()->name, "tun0");
}

TEST(InterfaceSnapshot, VpnServersAreHostRoutesThroughAPhysicalGateway) {
  // OpenVPN redirect-gateway def1: 0/1 + 128/1 via tun0 and a host route to its server
  // via eth0's gateway; plus routes that are not a VPN's carrier.
  NetlinkState s;
  s.apply(link(2, "eth0", "", kUpRunning));
  s.apply(link(3, "tun0", "tun", kUpRunning | IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));
  s.apply(link(4, "eth1", "", 0));  // down
  s.apply(route("0.0.0.0", 0, 2, 100, "198.51.100.1"));
  s.apply(route("0.0.0.0", 1, 3, 0));
  s.apply(route("128.0.0.0", 1, 3, 0));
  s.apply(route("192.0.2.44", 32, 2, 0, "198.51.100.1"));   // the VPN server
  s.apply(route("192.0.2.44", 32, 2, 50, "198.51.100.1"));  // twice: listed once
  s.apply(route("2001:db8::44", 128, 2, 0, "fe80::1"));     // an IPv6 server
  s.apply(route("192.0.2.45", 32, 3, 0, "10.8.0.1"));       // through the tunnel: not a carrier
  s.apply(route("192.0.2.46", 32, 2, 0));                   // on-link, no gateway
  s.apply(route("192.0.2.47", 32, 4, 0, "198.51.100.9"));   // a down interface
  s.apply(route("192.0.2.0", 24, 2, 0, "198.51.100.1"));    // a network, not a host
  auto snap = InterfaceSnapshot::build(s, {});
  const auto servers = snap->vpn_servers();
  ASSERT_EQ(servers.size(), 2u);
  EXPECT_EQ(servers[0].to_string(), "192.0.2.44");
  EXPECT_EQ(servers[1].to_string(), "2001:db8::44");
  EXPECT_TRUE(InterfaceSnapshot::build(lab_host(true), {})->vpn_servers().empty());
}

TEST(InterfaceSnapshot, EqualityDetectsChanges) {
  auto a = InterfaceSnapshot::build(lab_host(false), {});
  auto b = InterfaceSnapshot::build(lab_host(false), {});
  EXPECT_EQ(*a, *b);
  auto c = InterfaceSnapshot::build(lab_host(true), {});
  EXPECT_FALSE(*a == *c);
}

}  // namespace
}  // namespace splitd::iface
