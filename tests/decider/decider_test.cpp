#include "decider/decider.hpp"
#include "decider/vpn_carrier.hpp"

#include <gtest/gtest.h>

#include "fakes/interface_fixtures.hpp"

namespace splitd::decider {
namespace {

using fakes::ip;

std::shared_ptr<const RuleSet> rules(Mode mode, std::vector<const char*> cidrs,
                                     OnTunnelDown down = OnTunnelDown::kBlock) {
  RuleSpec spec;
  spec.mode = mode;
  spec.on_tunnel_down = down;
  for (const char* c : cidrs) spec.ips.push_back(*Cidr::parse(c));
  return build_rules(spec);
}

SessionInfo to(const char* dst) {
  SessionInfo s;
  s.dst = ip(dst);
  s.dst_port = 80;
  return s;
}

struct Case {
  Mode mode;
  const char* dst;
  RouteKind kind;
  const char* interface;
  const char* source;
  const char* rule;
};

TEST(RuleDecider, ModesAndFamilies) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  const std::vector<const char*> cidrs = {"203.0.113.0/24", "2001:db8::/64", "203.0.113.10/32"};
  const Case cases[] = {
      {Mode::kExclude, "203.0.113.10", RouteKind::kDirect, "phys0", "198.18.1.2", "ip 203.0.113.10/32"},
      {Mode::kExclude, "203.0.113.99", RouteKind::kDirect, "phys0", "198.18.1.2", "ip 203.0.113.0/24"},
      {Mode::kExclude, "198.51.100.10", RouteKind::kTunnel, "tun0", "198.18.2.2", "default"},
      {Mode::kExclude, "2001:db8::10", RouteKind::kDirect, "phys0", "2001:db8:ff:1::2", "ip 2001:db8::/64"},
      {Mode::kExclude, "2001:db8:1::10", RouteKind::kTunnel, "tun0", "2001:db8:ff:2::2", "default"},
      {Mode::kExclude, "::ffff:203.0.113.10", RouteKind::kDirect, "phys0", "198.18.1.2", "ip 203.0.113.10/32"},
      {Mode::kInclude, "203.0.113.10", RouteKind::kTunnel, "tun0", "198.18.2.2", "ip 203.0.113.10/32"},
      {Mode::kInclude, "198.51.100.10", RouteKind::kDirect, "phys0", "198.18.1.2", "default"},
      {Mode::kInclude, "2001:db8::10", RouteKind::kTunnel, "tun0", "2001:db8:ff:2::2", "ip 2001:db8::/64"},
      {Mode::kInclude, "2001:db8:1::10", RouteKind::kDirect, "phys0", "2001:db8:ff:1::2", "default"},
  };
  for (const auto& c : cases) {
    RuleDecider d(source, rules(c.mode, cidrs));
    const Route r = d.decide(to(c.dst));
    SCOPED_TRACE(std::string(to_string(c.mode)) + " " + c.dst);
    EXPECT_EQ(r.kind, c.kind);
    EXPECT_EQ(r.interface, c.interface);
    ASSERT_TRUE(r.source.has_value());
    EXPECT_EQ(r.source->to_string(), c.source);
    EXPECT_EQ(r.rule, c.rule);
    EXPECT_NE(r.ifindex, 0u);
  }
}

TEST(RuleDecider, KillSwitch) {
  auto state = fakes::lab_host_state(true);
  state.apply(fakes::link(3, "tun0", "tun", IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));  // down
  fakes::FakeInterfaceSource source(state);
  {
    RuleDecider d(source, rules(Mode::kExclude, {"203.0.113.0/24"}, OnTunnelDown::kBlock));
    const Route r = d.decide(to("198.51.100.10"));
    EXPECT_EQ(r.kind, RouteKind::kBlock);
    EXPECT_EQ(r.rule, "default; kill switch: tunnel down");
    EXPECT_TRUE(r.interface.empty());
    // Bypassed flows keep working.
    EXPECT_EQ(d.decide(to("203.0.113.10")).kind, RouteKind::kDirect);
  }
  {
    RuleDecider d(source, rules(Mode::kExclude, {}, OnTunnelDown::kDirect));
    const Route r = d.decide(to("198.51.100.10"));
    EXPECT_EQ(r.kind, RouteKind::kDirect);
    EXPECT_EQ(r.interface, "phys0");
  }
}

TEST(RuleDecider, TunnelWithoutFamilyAddressIsBlockedNotLeaked) {
  auto state = fakes::lab_host_state(true);
  iface::AddrEvent gone = fakes::addr(3, "2001:db8:ff:2::2", 64);
  gone.removed = true;
  state.apply(gone);
  fakes::FakeInterfaceSource source(state);
  RuleDecider d(source, rules(Mode::kExclude, {}, OnTunnelDown::kDirect));
  const Route r = d.decide(to("2001:db8:1::10"));
  EXPECT_EQ(r.kind, RouteKind::kBlock);
  EXPECT_NE(r.rule.find("has no IPv6 address"), std::string::npos) << r.rule;
  EXPECT_EQ(d.decide(to("198.51.100.10")).kind, RouteKind::kTunnel);
}

TEST(RuleDecider, NoPhysicalInterface) {
  auto state = fakes::lab_host_state(false);
  iface::RouteEvent gone = fakes::route("::", 0, 2, 100, "2001:db8:ff:1::1");
  gone.removed = true;
  state.apply(gone);
  fakes::FakeInterfaceSource source(state);
  RuleDecider d(source, rules(Mode::kInclude, {}));
  const Route r = d.decide(to("2001:db8::10"));
  EXPECT_EQ(r.kind, RouteKind::kBlock);
  EXPECT_EQ(r.rule, "default; no physical IPv6 interface");
  EXPECT_EQ(d.decide(to("203.0.113.10")).kind, RouteKind::kDirect);
}

TEST(RuleDecider, HandBuiltRuleSetStillMatchesIps) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  auto r = std::make_shared<RuleSet>();
  r->ips = {*Cidr::parse("10.0.0.0/8"), *Cidr::parse("10.1.0.0/16")};
  RuleDecider d(source, r);
  const Route route = d.decide(to("10.1.2.3"));
  EXPECT_EQ(route.kind, RouteKind::kDirect);
  EXPECT_EQ(route.rule, "ip 10.1.0.0/16");
  EXPECT_EQ(route.matched, MatchKind::kIp);
}

TEST(RuleDecider, RulesSwapAtomically) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  RuleDecider d(source, rules(Mode::kExclude, {}));
  EXPECT_EQ(d.decide(to("203.0.113.10")).kind, RouteKind::kTunnel);
  d.set_rules(rules(Mode::kExclude, {"0.0.0.0/0"}));
  EXPECT_EQ(d.decide(to("203.0.113.10")).kind, RouteKind::kDirect);
  EXPECT_EQ(d.decide(to("2001:db8::10")).kind, RouteKind::kTunnel);  // /0 of IPv4 only
  EXPECT_EQ(d.rules()->ips.size(), 1u);
}

TEST(RuleDecider, InterfaceChangesApplyToNextDecision) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  RuleDecider d(source, rules(Mode::kExclude, {}));
  EXPECT_EQ(d.decide(to("198.51.100.10")).kind, RouteKind::kTunnel);
  auto state = fakes::lab_host_state(true);
  iface::LinkEvent gone = fakes::link(3, "tun0", "tun", 0, ARPHRD_NONE);
  gone.removed = true;
  state.apply(gone);
  source.set(state);
  EXPECT_EQ(d.decide(to("198.51.100.10")).kind, RouteKind::kBlock);
}

// WireGuard's handshake initiation, sent before wg-quick sets the socket's fwmark, is the
// VPN's own carrier when a root socket sends it (the UDP proxy checks): direct, whatever
// the mode and the rules say.
TEST(RuleDecider, AVpnCarrierGoesDirect) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  for (Mode mode : {Mode::kExclude, Mode::kInclude}) {
    RuleDecider d(source, rules(mode, {"198.51.100.0/24"}));
    SessionInfo s = to("198.51.100.10");
    s.protocol = Protocol::kUdp;
    s.dst_port = 51820;
    EXPECT_EQ(d.decide(s).kind, mode == Mode::kExclude ? RouteKind::kDirect : RouteKind::kTunnel);
    s.vpn_carrier = true;
    const Route r = d.decide(s);
    EXPECT_EQ(r.kind, RouteKind::kDirect) << to_string(mode);
    EXPECT_EQ(r.interface, "phys0");
    EXPECT_EQ(r.rule, "VPN carrier (a WireGuard handshake)");
  }
}

TEST(VpnCarrier, TheShapeOfAWireGuardHandshakeInitiation) {
  std::vector<std::uint8_t> initiation(148, 0xab);
  initiation[0] = 1;
  initiation[1] = initiation[2] = initiation[3] = 0;
  EXPECT_TRUE(is_wireguard_handshake_initiation(initiation));
  for (std::size_t size : {std::size_t{0}, std::size_t{4}, std::size_t{147}, std::size_t{149}, std::size_t{1200}}) {
    std::vector<std::uint8_t> other = initiation;
    other.resize(size, 0);
    EXPECT_FALSE(is_wireguard_handshake_initiation(other)) << size;
  }
  for (std::size_t i : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{3}}) {
    std::vector<std::uint8_t> other = initiation;
    other[i] = i == 0 ? 2 : 1;  // a response (type 2), or reserved bytes set
    EXPECT_FALSE(is_wireguard_handshake_initiation(other)) << i;
  }
}

}  // namespace
}  // namespace splitd::decider
