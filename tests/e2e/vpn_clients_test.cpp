// splitd under the VPN clients people run: OpenVPN 2.6 (--redirect-gateway def1, its
// host route to the server) and wg-quick with wireguard-go (AllowedIPs 0/0 and ::/0, its
// fwmark policy routing and its anti-spoofing raw rule), each with its server beyond wan.
// The core cases of the relay suites run here against both: starting splitd changes
// nothing for the VPN's own traffic, flows split right across it (IPv4, IPv6, TCP, UDP,
// full cone), the kill switch holds while the VPN is down, and a clean exit leaves the
// VPN client's rules, routes and tables as found.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <thread>

#include "common/fd.hpp"
#include "tests/e2e/leak_counter.hpp"
#include "tests/e2e/splitd_process.hpp"
#include "tests/e2e/tcp_client.hpp"
#include "tests/e2e/udp_client.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using lab::Vpn;

struct Path {
  const char* ip;
  const char* url;
  const char* side;     // who answers
  const char* seen_as;  // the host address the responder sees
};
// Exclude mode with the wan servers excluded: A direct, B through the VPN.
const Path kExcludePaths[] = {
    {lab::kServerA4, "http://203.0.113.10/", "wan", lab::kHostPhys4},
    {lab::kServerB4, "http://198.51.100.10/", "vpn", lab::kHostTun4},
    {lab::kServerA6, "http://[2001:db8::10]/", "wan", lab::kHostPhys6},
    {lab::kServerB6, "http://[2001:db8:1::10]/", "vpn", lab::kHostTun6},
};

// What the VPN client put in place and splitd must leave as it found it: policy rules,
// every route table, every other program's nftables table.
std::string vpn_state(const lab::Lab& lab) {
  return lab
      .exec(lab.host_ns(),
            "ip -4 rule; ip -6 rule; ip -4 route show table all; ip -6 route show table all | "
            "grep -v '^local\\|expires'; nft list ruleset")
      .out;
}

// Checks one path with curl (TCP) and one datagram (UDP).
void expect_path(const lab::Lab& lab, const SplitdProcess& splitd, const Path& p) {
  const std::string http = curl(lab, p.url);
  EXPECT_TRUE(starts_with(http, std::string(p.side) + " " + p.seen_as + " "))
      << p.url << " answered '" << http << "'\n"
      << splitd.log();
  lab.in_ns(lab.host_ns(), [&] {
    Fd fd = udp_socket(addr(p.ip, 0).family());
    const auto a = exchange(fd.get(), p.ip, "ping");
    ASSERT_TRUE(a) << "udp " << p.ip << ": no answer\n" << splitd.log();
    EXPECT_EQ(a->side, p.side) << "udp " << p.ip;
    EXPECT_EQ(a->peer_ip, p.seen_as) << "udp " << p.ip;
    EXPECT_EQ(a->payload, "ping");
    EXPECT_EQ(a->from_ip, p.ip);
  });
}

// The session list that SIGUSR1 writes to the log.
std::string session_list(const SplitdProcess& splitd) {
  const std::size_t before = splitd.log().size();
  splitd.signal(SIGUSR1);
  splitd.wait_for_log("sessions: ");
  std::this_thread::sleep_for(100ms);
  const std::string log = splitd.log();
  return log.size() > before ? log.substr(before) : "";
}

class VpnClients : public ::testing::TestWithParam<Vpn> {
 protected:
  std::unique_ptr<lab::Lab> start_lab() {
    std::string reason;
    auto lab = lab::Lab::start(lab::LabOptions{.vpn = GetParam()}, &reason);
    if (!lab) std::printf("skipped: lab unavailable: %s\n", reason.c_str());
    return lab;
  }
};

#define LAB_OR_SKIP()                                          \
  auto lab = start_lab();                                      \
  if (!lab) GTEST_SKIP() << "lab unavailable (reason printed)"

// With the VPN up before splitd starts (the usual order), splitd intercepts none of the
// VPN's own traffic, and stopping it leaves every rule, route and table as it was.
TEST_P(VpnClients, StartingAndStoppingSplitdLeavesTheVpnAsFound) {
  LAB_OR_SKIP();
  ASSERT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 "));
  const std::string before = vpn_state(*lab);
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  // interfaces.tunnel = "auto" found the client's tun0.
  EXPECT_TRUE(splitd->wait_for_log("tunnel tun0 (up)")) << splitd->log();
  // The VPN keeps pinging its server (OpenVPN every second, WireGuard on traffic) and
  // keeps carrying flows.
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 ")) << splitd->log();
    std::this_thread::sleep_for(700ms);
  }
  const std::string sessions = session_list(*splitd);
  EXPECT_EQ(sessions.find(lab::kVpnServer4), std::string::npos)
      << "splitd intercepted the VPN's own carrier flow:\n" << sessions;
  if (GetParam() == Vpn::kOpenVpn) {
    EXPECT_NE(splitd->log().find("VPN carrier: never intercepting 198.18.3.2"), std::string::npos)
        << splitd->log();
  }
  EXPECT_EQ(splitd->terminate(), 0);
  EXPECT_EQ(vpn_state(*lab), before) << "splitd did not leave the VPN client's state as found";
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 "));
}

TEST_P(VpnClients, ExcludeModeSplitsTcpAndUdpBothFamilies) {
  LAB_OR_SKIP();
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  for (const Path& p : kExcludePaths) expect_path(*lab, *splitd, p);
  const std::string sessions = session_list(*splitd);
  EXPECT_NE(sessions.find("tunnel via tun0 rule 'default'"), std::string::npos) << sessions;
  EXPECT_NE(sessions.find("direct via phys0 rule 'ip 203.0.113.0/24'"), std::string::npos) << sessions;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST_P(VpnClients, IncludeModeSplitsTcpAndUdpBothFamilies) {
  LAB_OR_SKIP();
  auto splitd = SplitdProcess::start(*lab, lab_config("include", {"198.51.100.0/24", "2001:db8:1::/64"}));
  // Only the included networks go through the VPN; the rest goes direct even though the
  // VPN client's routes point everything at the tunnel.
  for (const Path& p : kExcludePaths) expect_path(*lab, *splitd, p);
  const std::string sessions = session_list(*splitd);
  EXPECT_NE(sessions.find("tunnel via tun0 rule 'ip 198.51.100.0/24'"), std::string::npos) << sessions;
  EXPECT_NE(sessions.find("direct via phys0 rule 'default'"), std::string::npos) << sessions;
  EXPECT_EQ(splitd->terminate(), 0);
}

// A peer the client never contacted reaches it through the mapping, on the direct path
// and through the VPN (STUN, WebRTC, games).
TEST_P(VpnClients, UdpFullConeOnBothPaths) {
  LAB_OR_SKIP();
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  struct Case {
    const char* server;
    const char* side_ns;
    const char* side;
  };
  for (const Case& c : {Case{lab::kServerA4, "wan", "wan"}, Case{lab::kServerB4, "vpn", "vpn"},
                        Case{lab::kServerA6, "wan", "wan"}, Case{lab::kServerB6, "vpn", "vpn"}}) {
    const int family = addr(c.server, 0).family();
    Fd client, stranger;
    std::optional<Answer> first;
    lab->in_ns(lab->host_ns(), [&] {
      client = udp_socket(family);
      first = exchange(client.get(), c.server, "hello");
    });
    ASSERT_TRUE(first) << c.server << "\n" << splitd->log();
    ASSERT_EQ(first->side, c.side);
    lab->in_ns(c.side_ns, [&] {
      stranger = udp_socket(family);
      const Addr a = addr(c.server, 9300);
      ASSERT_EQ(::bind(stranger.get(), reinterpret_cast<const sockaddr*>(&a.ss), a.len), 0)
          << std::strerror(errno);
      ASSERT_TRUE(send_to(stranger.get(), first->peer_ip, first->peer_port, "unsolicited"));
    });
    const auto got = receive(client.get());
    ASSERT_TRUE(got) << "full cone: nothing from " << c.server << ":9300\n" << splitd->log();
    EXPECT_EQ(got->payload, "unsolicited");
    EXPECT_EQ(got->from_ip, c.server);
    EXPECT_EQ(got->from_port, 9300);
    // The client answers the stranger through the same mapping.
    lab->in_ns(lab->host_ns(), [&] { ASSERT_TRUE(send_to(client.get(), c.server, 9300, "answer")); });
    const auto back = receive(stranger.get());
    ASSERT_TRUE(back) << c.server << "\n" << splitd->log();
    EXPECT_EQ(back->payload, "answer");
    EXPECT_EQ(back->from_ip, first->peer_ip);
    EXPECT_EQ(back->from_port, first->peer_port);
  }
  EXPECT_EQ(splitd->terminate(), 0);
}

// The VPN goes down (OpenVPN killed, wg-quick down): tunnel-bound flows are refused and
// not one packet of them leaves by the physical side; bypassed flows keep working. The
// VPN comes back (a new tun0): new flows use it without restarting splitd.
TEST_P(VpnClients, KillSwitchHoldsWhileTheVpnIsDownAndTheVpnComesBack) {
  LAB_OR_SKIP();
  add_leak_counter(*lab);
  auto splitd = SplitdProcess::start(
      *lab, lab_config("exclude", kExcludeWanServers, "", "on_tunnel_down = \"block\""));
  ASSERT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 ")) << splitd->log();
  lab->set_vpn_up(false);
  ASSERT_TRUE(splitd->wait_for_log("tunnel none")) << splitd->log();
  lab->in_ns(lab->host_ns(), [&] {
    for (const char* ip : {lab::kServerB4, lab::kServerB6}) {
      auto c = tcp_connect(ip, lab::kTcpPort);
      int err = -c.error;
      std::string got;
      if (c.fd) got = read_to_eof(c.fd.get(), &err, 2s);
      EXPECT_EQ(got, "") << ip << ": a tunnel-routed flow got through with the VPN down";
      EXPECT_EQ(err, -ECONNRESET) << ip << ": refused flows get a reset, not a hang";
      Fd u = udp_socket(addr(ip, 0).family());
      EXPECT_FALSE(exchange(u.get(), ip, "leak?", lab::kUdpPort)) << ip;
    }
    auto ok = tcp_connect(lab::kServerA4, lab::kTcpPort);
    ASSERT_TRUE(ok.fd);
    EXPECT_EQ(read_line(ok.fd.get()).rfind("wan ", 0), 0u);
  });
  // An unprivileged app sending what looks like a WireGuard handshake (the shape splitd
  // lets out for VPN clients) is still held by the kill switch.
  const auto shaped = lab->exec(
      lab->host_ns(),
      "setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 -c \"import socket; "
      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
      "s.sendto(bytes([1, 0, 0, 0]) + bytes(144), ('198.51.100.10', 9000)); "
      "import time; time.sleep(1)\"");  // the socket stays open while splitd asks who owns it
  EXPECT_EQ(shaped.exit_code, 0) << shaped.err;
  EXPECT_TRUE(splitd->wait_for_log("uid 65534: not a VPN client")) << splitd->log();
  expect_no_leak(*lab);
  EXPECT_NE(splitd->log().find("kill switch: tunnel down"), std::string::npos) << splitd->log();

  lab->set_vpn_up(true);
  // The tunnel is back as a new device; splitd follows it.
  bool back = false;
  for (auto deadline = Clock::now() + 5s; Clock::now() < deadline && !back;) {
    back = starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 ");
    if (!back) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(back) << splitd->log();
  for (const Path& p : kExcludePaths) expect_path(*lab, *splitd, p);
  expect_no_leak(*lab);
  EXPECT_EQ(splitd->terminate(), 0);
}

// Sockets bound to an interface (curl --interface, ping -I, SO_BINDTODEVICE) keep their
// binding: splitd does not re-route an app's explicit choice. A socket bound to the tunnel
// never falls back to the physical interface when the VPN is down.
TEST_P(VpnClients, SocketsBoundToAnInterfaceKeepTheirBinding) {
  LAB_OR_SKIP();
  add_leak_counter(*lab);
  auto splitd = SplitdProcess::start(
      *lab, lab_config("exclude", kExcludeWanServers, "", "on_tunnel_down = \"block\""));
  // The rules say tunnel for B and direct for A; the bindings say otherwise and win.
  EXPECT_TRUE(starts_with(curl(*lab, "--interface phys0 http://198.51.100.10/"), "wan 198.18.1.2 "))
      << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "--interface tun0 http://203.0.113.10/"), "vpn 198.18.2.2 "))
      << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "--interface tun0 http://[2001:db8::10]/"), "vpn 2001:db8:ff:2::2 "));
  // They are counted in splitd's table, where `nft list table inet splitd` shows them.
  const std::string rule =
      lab->exec(lab->host_ns(), "nft list chain inet splitd postrouting | grep 'bound to an interface'").out;
  const auto at = rule.find("counter packets ");
  ASSERT_NE(at, std::string::npos) << rule;
  EXPECT_GT(std::stol(rule.substr(at + 16)), 0) << rule;
  // Count afresh: the phys0-bound flow to B reached wan, as it should; from here on
  // nothing for B may.
  ASSERT_EQ(lab->exec(lab->wan_ns(), "nft delete table inet leak").exit_code, 0);
  add_leak_counter(*lab);
  lab->set_vpn_up(false);
  ASSERT_TRUE(splitd->wait_for_log("tunnel none")) << splitd->log();
  const std::string down = curl(*lab, "--interface tun0 http://198.51.100.10/");
  EXPECT_TRUE(starts_with(down, "curl exit ")) << down;
  expect_no_leak(*lab);
  EXPECT_EQ(splitd->terminate(), 0);
}

INSTANTIATE_TEST_SUITE_P(RealClients, VpnClients, ::testing::Values(Vpn::kOpenVpn, Vpn::kWireGuard),
                         [](const ::testing::TestParamInfo<Vpn>& info) {
                           return info.param == Vpn::kOpenVpn ? std::string("OpenVpn")
                                                              : std::string("WireGuard");
                         });

// wg-quick's anti-spoofing rule drops splitd's loopback replies; splitd places an allow
// rule at the head of wg-quick's preraw chain, re-places it when wg-quick re-creates its
// table, and removes it on exit, leaving wg-quick's table as it was.
TEST(WgQuick, AllowRuleIsPlacedReplacedAndRemoved) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{.vpn = Vpn::kWireGuard});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  for (const char* family : {"ip", "ip6"}) {
    const std::string t =
        lab->exec(lab->host_ns(), std::string("nft list chain ") + family + " wg-quick-tun0 preraw").out;
    const auto ours = t.find("splitd");
    EXPECT_NE(ours, std::string::npos) << t << splitd->log();
    EXPECT_LT(ours, t.find("drop")) << "the allow rule must come before wg-quick's drop:\n" << t;
  }
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 ")) << splitd->log();
  // wg-quick down/up makes a new table; the rule comes back without help.
  lab->set_vpn_up(false);
  lab->set_vpn_up(true);
  const auto up = Clock::now();
  // Both families' allow rules, and splitd's policy rules ahead of the ones wg-quick just
  // added (the kernel put those before splitd's).
  bool placed = false;
  while (!placed && Clock::now() - up < 3s) {
    const std::string v4_rules = lab->exec(lab->host_ns(), "ip -4 rule").out;
    const std::string v6_rules = lab->exec(lab->host_ns(), "ip -6 rule").out;
    placed = lab->exec(lab->host_ns(), "nft list chain ip wg-quick-tun0 preraw").out.find("splitd") != std::string::npos &&
             lab->exec(lab->host_ns(), "nft list chain ip6 wg-quick-tun0 preraw").out.find("splitd") != std::string::npos &&
             v4_rules.find("lookup 51820") != std::string::npos &&
             v6_rules.find("lookup 51820") != std::string::npos &&
             v4_rules.find("lookup 1501") < v4_rules.find("lookup 51820") &&
             v6_rules.find("lookup 1501") < v6_rules.find("lookup 51820");
    if (!placed) std::this_thread::sleep_for(5ms);
  }
  EXPECT_TRUE(placed) << vpn_state(*lab) << splitd->log();
  std::printf("allow rules and policy order back %lld ms after wg-quick up returned\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - up).count()));
  for (const Path& p : kExcludePaths) expect_path(*lab, *splitd, p);
  // wg-quick came up after splitd, so the kernel put its rules before splitd's; splitd
  // moved its own ahead again, or intercepted packets would go into the tunnel unproxied.
  const std::string rules = lab->exec(lab->host_ns(), "ip rule").out;
  ASSERT_NE(rules.find("lookup 51820"), std::string::npos) << rules;
  EXPECT_LT(rules.find("lookup 1501"), rules.find("lookup 51820")) << rules;
  EXPECT_EQ(splitd->terminate(), 0);
  // Nothing of splitd's is left, and wg-quick's own rules and tables are all there.
  const std::string after = vpn_state(*lab);
  EXPECT_EQ(after.find("splitd"), std::string::npos) << after;
  EXPECT_EQ(after.find("lookup 1501"), std::string::npos) << after;
  EXPECT_NE(after.find("not from all fwmark 0xca6c lookup 51820"), std::string::npos) << after;
  EXPECT_NE(after.find("table ip6 wg-quick-tun0"), std::string::npos) << after;

}

// A kill switch as VPN providers ship it for wg-quick: PostUp rules that reject whatever
// leaves neither through the tunnel nor with WireGuard's mark. Intercepted packets pass it
// (netfilter's output hooks see the device of the packet's first route, tun0, even after
// the reroute to lo), and so do tunnel-bound flows; splitd's direct flows pass with the
// one line README.md gives (accepting splitd's bypass mark).
TEST(WgQuick, ProviderKillSwitchWithTheDocumentedLine) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{.vpn = Vpn::kWireGuard});
  const std::string conf = lab->state_dir() + "/wg/tun0.conf";
  const auto append_to_interface = [&](const std::string& after, const std::string& line) {
    lab->set_vpn_up(false);
    ASSERT_EQ(lab->exec(lab->host_ns(), "sed -i '/^" + after + "/a " + line + "' " + conf).exit_code, 0);
    lab->set_vpn_up(true);
  };
  // Mullvad's and most providers' wg-quick kill switch, after the [Interface] line, with
  // the PreDown that removes it.
  const std::string reject =
      "OUTPUT ! -o %i -m mark ! --mark $(wg show %i fwmark) -m addrtype ! --dst-type LOCAL -j REJECT";
  append_to_interface("\\[Interface\\]", "PostUp = iptables -I " + reject + " \\&\\& ip6tables -I " + reject +
                                                "\\nPreDown = iptables -D " + reject + " \\&\\& ip6tables -D " +
                                                reject);
  ASSERT_NE(lab->exec(lab->host_ns(), "iptables -S OUTPUT").out.find("REJECT"), std::string::npos);
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  // Without the line: tunnel-bound flows work, the direct ones are rejected.
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 ")) << splitd->log();
  EXPECT_FALSE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan "));
  EXPECT_EQ(splitd->terminate(), 0);
  // The documented line, after the kill switch's (PostUp lines run in order; -I puts each
  // at the top, so the later one comes first).
  const std::string allow = "OUTPUT -m mark --mark 0x5d2 -j ACCEPT";
  append_to_interface("PostUp = iptables -I OUTPUT ! -o",
                      "PostUp = iptables -I " + allow + " \\&\\& ip6tables -I " + allow +
                          "\\nPreDown = iptables -D " + allow + " \\&\\& ip6tables -D " + allow);
  auto again = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  for (const Path& p : kExcludePaths) expect_path(*lab, *again, p);
  EXPECT_EQ(again->terminate(), 0);
  // Without splitd the kill switch still holds: nothing leaves outside the tunnel.
  EXPECT_TRUE(starts_with(curl(*lab, "--interface phys0 http://203.0.113.10/"), "curl exit "));
}

// splitd killed hard leaves its footprint, its allow rules in wg-quick's tables included;
// `splitd cleanup` removes all of it and nothing of wg-quick's.
TEST(WgQuick, CleanupAfterACrashRemovesEverythingOfSplitdsOnly) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{.vpn = Vpn::kWireGuard});
  const std::string before = vpn_state(*lab);
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  ASSERT_NE(lab->exec(lab->host_ns(), "nft list chain ip wg-quick-tun0 preraw").out.find("splitd"),
            std::string::npos);
  // Not while splitd runs: its footprint is no leftover.
  const auto refused = lab->exec(lab->host_ns(), std::string(splitd_path()) + " cleanup");
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("a splitd is running"), std::string::npos) << refused.err;
  EXPECT_NE(lab->exec(lab->host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
  splitd->kill_hard();
  EXPECT_NE(vpn_state(*lab).find("splitd"), std::string::npos) << "a crash leaves the footprint";
  const auto r = lab->exec(lab->host_ns(), std::string(splitd_path()) + " cleanup");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("removed"), std::string::npos) << r.err;
  EXPECT_EQ(vpn_state(*lab), before);
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn 198.18.2.2 "));
  // Twice is fine: nothing left to remove.
  EXPECT_EQ(lab->exec(lab->host_ns(), std::string(splitd_path()) + " cleanup").exit_code, 0);
}

}  // namespace
}  // namespace splitd::e2e
