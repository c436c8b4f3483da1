// The firewall against the real kernel, each test in a private network namespace it
// creates and deletes. Needs root; skipped (with the reason) without it. Every test also
// checks that the namespace it was started in (nft tables, ip rules, proto-93 routes)
// is unchanged afterwards.

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <optional>
#include <string>

#include "common/fd.hpp"
#include "firewall/firewall.hpp"
#include "firewall/nft_batch.hpp"
#include "firewall/nft_rule.hpp"
#include "netlink/socket.hpp"
#include "test_netns.hpp"

namespace splitd::firewall {
namespace {

using namespace std::chrono_literals;
using testing::CommandResult;
using testing::run;
using testing::TestNetns;
using testing::count;
using testing::make_addr;

constexpr std::uint16_t kPort = 15001;

// ---- sockets used inside the namespace -------------------------------------------------

// "198.51.100.7:80", "[2001:db8:9::7]:80"; IPv4-mapped addresses shown as IPv4.
std::string to_text(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto* sin = reinterpret_cast<const sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(sin->sin_port));
  }
  const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&ss);
  if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
    inet_ntop(AF_INET, &sin6->sin6_addr.s6_addr[12], buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(ntohs(sin6->sin6_port));
  }
  inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof buf);
  return "[" + std::string(buf) + "]:" + std::to_string(ntohs(sin6->sin6_port));
}

std::string local_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return to_text(ss);
}

void set_int(int fd, int level, int opt, int value) {
  ASSERT_EQ(::setsockopt(fd, level, opt, &value, sizeof value), 0)
      << "setsockopt " << level << "/" << opt << ": " << std::strerror(errno);
}

// A dual-stack transparent listener on [::]:port, as splitd's proxy has.
Fd transparent_listener(int type, std::uint16_t port) {
  Fd fd(::socket(AF_INET6, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  EXPECT_TRUE(fd) << std::strerror(errno);
  set_int(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 0);
  set_int(fd.get(), SOL_IP, IP_TRANSPARENT, 1);
  set_int(fd.get(), SOL_IPV6, IPV6_TRANSPARENT, 1);
  set_int(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1);
  if (type == SOCK_DGRAM) {
    set_int(fd.get(), SOL_IP, IP_RECVORIGDSTADDR, 1);
    set_int(fd.get(), SOL_IPV6, IPV6_RECVORIGDSTADDR, 1);
  }
  socklen_t len;
  auto addr = make_addr("::", port, len);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), len), 0) << std::strerror(errno);
  if (type == SOCK_STREAM) {
    EXPECT_EQ(::listen(fd.get(), 16), 0);
  }
  return fd;
}

// Starts a non-blocking connect; `mark` sets SO_MARK first.
Fd start_connect(const std::string& ip, std::uint16_t port,
                 std::optional<std::uint32_t> mark = {}) {
  socklen_t len;
  auto addr = make_addr(ip, port, len);
  Fd fd(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  EXPECT_TRUE(fd);
  if (mark) set_int(fd.get(), SOL_SOCKET, SO_MARK, static_cast<int>(*mark));
  const int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), len);
  EXPECT_TRUE(rc == 0 || errno == EINPROGRESS) << "connect " << ip << ": " << std::strerror(errno);
  return fd;
}

// The connection accepted on `listener` within `timeout`, or an invalid Fd.
Fd accept_within(int listener, std::chrono::milliseconds timeout) {
  pollfd p{listener, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return Fd();
  return Fd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
}

// Where a connection to ip:port ends up: "intercepted <original destination>" when the
// transparent listener got it, "not intercepted" otherwise (within the timeout).
std::string probe_tcp(int listener, const std::string& ip, std::uint16_t port,
                      std::optional<std::uint32_t> mark = {},
                      std::chrono::milliseconds timeout = 1000ms) {
  Fd client = start_connect(ip, port, mark);
  Fd accepted = accept_within(listener, timeout);
  if (!accepted) return "not intercepted";
  return "intercepted " + local_address(accepted.get());
}

// ---- the fixture ------------------------------------------------------------------------

class FirewallLab : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto why = testing::netns_unavailable_reason(); !why.empty()) GTEST_SKIP() << why;
    root_before_ = root_state();
    std::string error;
    ns_ = TestNetns::create(&error);
    ASSERT_TRUE(ns_) << error;
  }

  void TearDown() override {
    fw_.reset();
    ns_.reset();
    if (!root_before_.empty()) {
      EXPECT_EQ(root_state(), root_before_) << "the tests changed the namespace they run in";
    }
  }

  // What must stay untouched outside the test namespace.
  static std::string root_state() {
    return run("nft list tables").out + "--\n" + run("ip rule").out + "--\n" +
           run("ip -6 rule").out + "--\n" + run("ip route show table all proto 93").out + "--\n" +
           run("ip -6 route show table all proto 93").out;
  }

  std::unique_ptr<Firewall> open_firewall() {
    std::unique_ptr<Firewall> fw;
    ns_->run_inside([&] {
      auto r = Firewall::open();
      ASSERT_TRUE(r) << r.error().message;
      fw = std::move(*r);
    });
    return fw;
  }

  void install(const FirewallConfig& config = {}) {
    if (!fw_) fw_ = open_firewall();
    ASSERT_TRUE(fw_);
    auto r = fw_->install(config);
    ASSERT_TRUE(r) << r.error().message;
  }

  std::string listing() const { return ns_->exec("nft list table inet splitd").out; }
  std::string ip(const std::string& args) const { return ns_->exec("ip " + args).out; }

  // A non-local network behind a veth (default routes for both families) so that
  // connects to 198.51.100.7 / 2001:db8:9::7 find a route.
  void add_uplink() {
    const CommandResult r = ns_->exec(
        "set -e; ip link add d0 type veth peer name d1; "
        "ip addr add 198.18.9.1/24 dev d0; ip addr add 2001:db8:9::1/64 dev d0 nodad; "
        "ip link set d0 up; ip link set d1 up; "
        "ip route add default via 198.18.9.2; ip -6 route add default via 2001:db8:9::2");
    ASSERT_EQ(r.status, 0) << r.out;
  }

  std::unique_ptr<TestNetns> ns_;
  std::unique_ptr<Firewall> fw_;
  std::string root_before_;
};

TEST_F(FirewallLab, InstallCreatesTableRulesAndRoutes) {
  ASSERT_NO_FATAL_FAILURE(install());
  const std::string t = listing();
  for (const char* want : {
           "table inet splitd {",
           "set never4 {",
           "type ipv4_addr",
           "127.0.0.0/8",
           "169.254.0.0/16",
           "224.0.0.0/4",
           "set never6 {",
           "type ipv6_addr",
           "fe80::/10",
           "ff00::/8",
           "chain output {",
           "type route hook output priority mangle; policy accept;",
           "meta mark 0x000005d2 ct mark set 0x000005d2 accept comment \"splitd's own sockets (bypass mark)\"",
           "ct direction reply ct mark != 0x000005d2 accept comment \"replies of inbound connections\"",
           "meta mark != 0x00000000 accept comment \"marked by other software\"",
           "fib daddr type { local, broadcast, anycast, multicast } accept comment \"local, "
           "broadcast, multicast destinations\"",
           "ip daddr @never4 accept comment \"never_intercept\"",
           "ip6 daddr @never6 accept comment \"never_intercept\"",
           "set vpn_servers4 {",
           "set vpn_servers6 {",
           "ip daddr @vpn_servers4 accept comment \"VPN clients' servers (their host routes via a physical gateway)\"",
           "ip6 daddr @vpn_servers6 accept comment \"VPN clients' servers (their host routes via a physical gateway)\"",
           "meta l4proto tcp meta mark set 0x000005d1 comment \"intercept TCP\"",
           "chain postrouting {",
           "type filter hook postrouting priority mangle; policy accept;",
           "meta mark 0x000005d1 oif != \"lo\" counter packets 0 bytes 0 accept comment \"sockets bound to an interface keep their binding (not intercepted)\"",
           "chain prerouting {",
           "type filter hook prerouting priority mangle - 10; policy accept;",
           // nft prints "tcp flags & (syn | ack) != syn" this way.
           "iif \"lo\" tcp flags != syn / syn,ack socket transparent 1 meta mark set 0x000005d1 "
           "accept comment \"TCP packets of established transparent sockets\"",
           "iif \"lo\" meta mark 0x000005d1 meta l4proto tcp tproxy to :15001 accept comment \"to "
           "splitd's TCP proxy\"",
       }) {
    EXPECT_NE(t.find(want), std::string::npos) << "missing: " << want << "\nin:\n" << t;
  }
  EXPECT_EQ(t.find("UDP"), std::string::npos) << t;

  // What `nft list` prints, nft itself reads back (checked in a scratch namespace: the
  // owned table refuses even a dry run from another process).
  const CommandResult check =
      ns_->exec("nft list table inet splitd > /tmp/" + ns_->name() + ".nft && unshare -n nft -c -f /tmp/" +
                ns_->name() + ".nft; rc=$?; rm -f /tmp/" + ns_->name() + ".nft; exit $rc");
  EXPECT_EQ(check.status, 0) << check.out;

  EXPECT_EQ(count(ip("rule"), "1501:\tfrom all fwmark 0x5d1 lookup 1501 proto 93"), 1u)
      << ip("rule");
  EXPECT_EQ(count(ip("-6 rule"), "1501:\tfrom all fwmark 0x5d1 lookup 1501 proto 93"), 1u)
      << ip("-6 rule");
  EXPECT_NE(ip("route show table 1501").find("local default dev lo proto 93 scope host"),
            std::string::npos)
      << ip("route show table 1501");
  EXPECT_NE(ip("-6 route show table 1501").find("local default dev lo proto 93"), std::string::npos)
      << ip("-6 route show table 1501");
  EXPECT_TRUE(fw_->installed());
}

TEST_F(FirewallLab, InstallTwiceGivesTheSameState) {
  ASSERT_NO_FATAL_FAILURE(install());
  const std::string table = listing();
  const std::string rules4 = ip("rule"), rules6 = ip("-6 rule");
  const std::string routes4 = ip("route show table 1501"), routes6 = ip("-6 route show table 1501");
  ASSERT_NO_FATAL_FAILURE(install());
  EXPECT_EQ(listing(), table);
  EXPECT_EQ(ip("rule"), rules4);
  EXPECT_EQ(ip("-6 rule"), rules6);
  EXPECT_EQ(ip("route show table 1501"), routes4);
  EXPECT_EQ(ip("-6 route show table 1501"), routes6);
  EXPECT_EQ(count(ip("rule"), "fwmark 0x5d1"), 1u);
  EXPECT_EQ(count(ip("-6 rule"), "fwmark 0x5d1"), 1u);
  EXPECT_EQ(count(ns_->exec("nft list tables").out, "splitd"), 1u);
  // And a new Firewall object (a restart) installing the same config changes nothing.
  fw_ = open_firewall();
  ASSERT_NO_FATAL_FAILURE(install());
  EXPECT_EQ(listing(), table);
  EXPECT_EQ(ip("rule"), rules4);
  EXPECT_EQ(ip("-6 rule"), rules6);
}

TEST_F(FirewallLab, LeftoversOfACrashedRunAreReplaced) {
  ASSERT_NO_FATAL_FAILURE(install());
  fw_.reset();  // "crash": no remove()
  ASSERT_NE(listing().find("tproxy to :15001"), std::string::npos);

  FirewallConfig other;
  other.port = 15002;
  other.mark = 0x77;
  other.route_table = 1600;
  other.rule_priority = 1600;
  fw_ = open_firewall();
  ASSERT_NO_FATAL_FAILURE(install(other));
  const std::string t = listing();
  EXPECT_NE(t.find("tproxy to :15002"), std::string::npos) << t;
  EXPECT_EQ(t.find("15001"), std::string::npos) << t;
  EXPECT_NE(t.find("meta mark set 0x00000077"), std::string::npos) << t;
  EXPECT_EQ(t.find("0x000005d1"), std::string::npos) << t;
  EXPECT_EQ(count(ns_->exec("nft list tables").out, "splitd"), 1u);
  for (const char* fam : {"", "-6 "}) {
    const std::string rules = ip(std::string(fam) + "rule");
    EXPECT_EQ(count(rules, "fwmark"), 1u) << rules;
    EXPECT_NE(rules.find("1600:\tfrom all fwmark 0x77 lookup 1600 proto 93"), std::string::npos)
        << rules;
    EXPECT_EQ(ip(std::string(fam) + "route show table 1501"), "");
    EXPECT_NE(ip(std::string(fam) + "route show table 1600").find("local default dev lo proto 93"),
              std::string::npos);
  }
}

TEST_F(FirewallLab, RemoveDeletesEverythingAndIsIdempotent) {
  ASSERT_NO_FATAL_FAILURE(install());
  auto r = fw_->remove();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_NE(ns_->exec("nft list table inet splitd").status, 0);
  EXPECT_EQ(ns_->exec("nft list ruleset").out, "");
  EXPECT_EQ(count(ip("rule"), "fwmark"), 0u) << ip("rule");
  EXPECT_EQ(count(ip("-6 rule"), "fwmark"), 0u) << ip("-6 rule");
  EXPECT_EQ(ip("route show table 1501"), "");
  EXPECT_EQ(ip("-6 route show table 1501"), "");
  EXPECT_EQ(ip("route show table all proto 93"), "");
  EXPECT_EQ(ip("-6 route show table all proto 93"), "");
  EXPECT_FALSE(fw_->installed());
  r = fw_->remove();
  EXPECT_TRUE(r) << r.error().message;
}

TEST_F(FirewallLab, RemoveLeavesOtherSoftwaresRulesAndRoutes) {
  // The same rule and route, but not splitd's (no proto 93): remove() must not take them.
  ASSERT_EQ(ns_->exec("ip rule add fwmark 0x5d1 lookup 1501 priority 1400 && "
                      "ip route add local 0.0.0.0/0 dev lo table 1502")
                .status,
            0);
  ASSERT_NO_FATAL_FAILURE(install());
  ASSERT_TRUE(fw_->remove());
  EXPECT_NE(ip("rule").find("1400:\tfrom all fwmark 0x5d1 lookup 1501"), std::string::npos)
      << ip("rule");
  EXPECT_NE(ip("route show table 1502").find("local default dev lo"), std::string::npos);
}

TEST_F(FirewallLab, ALongNeverInterceptListIsSentInChunks) {
  // 1000 separate /24s (every other one) and 1000 /64s: 4001 set elements, several
  // element messages, as many ACKs.
  FirewallConfig c;
  for (int i = 0; i < 1000; ++i) {
    const int n = i * 2;
    c.never_intercept.push_back(
        *Cidr::parse("10." + std::to_string(n / 256) + "." + std::to_string(n % 256) + ".0/24"));
    c.never_intercept.push_back(*Cidr::parse("2001:db8:" + std::to_string(n) + "::/64"));
  }
  ASSERT_NO_FATAL_FAILURE(install(c));
  const auto in_set = [&](const std::string& set, const std::string& addr) {
    return ns_->exec("nft get element inet splitd " + set + " '{ " + addr + " }'").status == 0;
  };
  EXPECT_TRUE(in_set("never4", "10.0.0.1"));
  EXPECT_FALSE(in_set("never4", "10.0.1.1"));
  EXPECT_TRUE(in_set("never4", "10.7.206.255"));  // the last one: 10.(1998/256).(1998%256).0/24
  EXPECT_FALSE(in_set("never4", "10.7.208.1"));
  EXPECT_TRUE(in_set("never4", "127.0.0.1"));
  EXPECT_TRUE(in_set("never6", "2001:db8:1998::1"));
  EXPECT_FALSE(in_set("never6", "2001:db8:1999::1"));
  EXPECT_TRUE(in_set("never6", "ff02::1"));
}

TEST_F(FirewallLab, InstalledFollowsTheKernel) {
  fw_ = open_firewall();
  EXPECT_FALSE(fw_->installed());
  FirewallConfig unowned;
  unowned.own_table = false;  // so that another program can delete it
  ASSERT_NO_FATAL_FAILURE(install(unowned));
  EXPECT_TRUE(fw_->installed());
  ASSERT_EQ(ns_->exec("nft delete table inet splitd").status, 0);
  EXPECT_FALSE(fw_->installed());
  ASSERT_NO_FATAL_FAILURE(install(unowned));  // self-repair
  EXPECT_TRUE(fw_->installed());
}

// The kernel's version decides what ownership splitd gets (owner: 5.12, persist: 6.9).
bool kernel_at_least(int major, int minor) {
  utsname u{};
  if (uname(&u) != 0) return false;
  int ma = 0, mi = 0;
  if (std::sscanf(u.release, "%d.%d", &ma, &mi) != 2) return false;
  return ma > major || (ma == major && mi >= minor);
}

// An owned table: other programs cannot delete it, change it, or flush it with the rest.
TEST_F(FirewallLab, AnOwnedTableRefusesOtherPrograms) {
  if (!kernel_at_least(5, 12)) GTEST_SKIP() << "NFT_TABLE_F_OWNER needs Linux 5.12";
  ASSERT_NO_FATAL_FAILURE(install());
  const auto own = fw_->ownership();
  EXPECT_EQ(own.persistent, kernel_at_least(6, 9));
  EXPECT_EQ(own.owned, kernel_at_least(6, 9));  // persist_table wins: no owner without it
  if (!own.owned) GTEST_SKIP() << "no NFT_TABLE_F_PERSIST: the table is not owned here";
  const std::string before = listing();
  const CommandResult del = ns_->exec("nft delete table inet splitd");
  EXPECT_NE(del.status, 0);
  EXPECT_NE(del.out.find("Operation not permitted"), std::string::npos) << del.out;
  EXPECT_NE(ns_->exec("nft flush chain inet splitd output").status, 0);
  EXPECT_NE(ns_->exec("nft add chain inet splitd extra").status, 0);
  EXPECT_NE(ns_->exec("nft add element inet splitd never4 '{ 192.0.2.1 }'").status, 0);
  // `nft flush ruleset` removes every other table and passes splitd's by.
  ASSERT_EQ(ns_->exec("nft add table inet other && nft flush ruleset").status, 0);
  EXPECT_EQ(ns_->exec("nft list tables").out, "table inet splitd\n");
  EXPECT_EQ(listing(), before);
  EXPECT_TRUE(fw_->intact(FirewallConfig{}));
  // splitd itself still changes it (a reload) and removes it.
  FirewallConfig other;
  other.port = 15002;
  ASSERT_NO_FATAL_FAILURE(install(other));
  EXPECT_NE(listing().find("tproxy to :15002"), std::string::npos);
  EXPECT_NE(ns_->exec("nft delete table inet splitd").status, 0);
  ASSERT_TRUE(fw_->remove());
  EXPECT_EQ(ns_->exec("nft list tables").out, "");
}

// A crash (the owning socket closes without remove()): a persistent table stays, with
// its kill switch, and anyone may then remove it (`splitd cleanup`); the next splitd
// takes it over. A table that is owned but not persistent goes with its owner.
TEST_F(FirewallLab, APersistentTableOutlivesItsOwnerAndIsTakenOver) {
  if (!kernel_at_least(6, 9)) GTEST_SKIP() << "NFT_TABLE_F_PERSIST needs Linux 6.9";
  ASSERT_NO_FATAL_FAILURE(install());
  ASSERT_TRUE(fw_->ownership().persistent);
  fw_.reset();  // "crash"
  ASSERT_NE(listing().find("tproxy to :15001"), std::string::npos) << "the table went with its owner";
  EXPECT_EQ(ns_->exec("nft add chain inet splitd probe && nft delete chain inet splitd probe").status, 0)
      << "an orphaned table is anyone's";
  fw_ = open_firewall();
  ASSERT_NO_FATAL_FAILURE(install());  // the restart takes it over
  EXPECT_TRUE(fw_->ownership().owned);
  EXPECT_NE(ns_->exec("nft delete table inet splitd").status, 0);
  EXPECT_EQ(count(ns_->exec("nft list tables").out, "splitd"), 1u);

  // Owned, not persistent (on_tunnel_down = "direct"): gone with the process.
  FirewallConfig fleeting;
  fleeting.persist_table = false;
  ASSERT_NO_FATAL_FAILURE(install(fleeting));
  EXPECT_TRUE(fw_->ownership().owned);
  EXPECT_FALSE(fw_->ownership().persistent);
  fw_.reset();
  for (int i = 0; i < 100 && ns_->exec("nft list tables").out != ""; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(ns_->exec("nft list tables").out, "");
  // Its policy rules stay (harmless without the table's marks); cleanup removes them.
  fw_ = open_firewall();
  ASSERT_TRUE(fw_->remove());
}

// The kernel's events name what other programs changed, and who; splitd's own changes
// are not reported.
TEST_F(FirewallLab, EventsReportOtherProgramsChanges) {
  FirewallConfig unowned;
  unowned.own_table = false;
  ASSERT_NO_FATAL_FAILURE(install(unowned));
  const auto wait_events = [&](int fd) {
    pollfd p{fd, POLLIN, 0};
    return ::poll(&p, 1, 2000) == 1;
  };
  (void)fw_->drain_events();  // the install's own
  ASSERT_NO_FATAL_FAILURE(install(unowned));
  FootprintEvents own = fw_->drain_events();
  EXPECT_FALSE(own.nftables);
  EXPECT_FALSE(own.policy);
  EXPECT_FALSE(own.route);
  EXPECT_TRUE(fw_->intact(unowned));

  ASSERT_EQ(ns_->exec("nft flush chain inet splitd output").status, 0);
  ASSERT_TRUE(wait_events(fw_->nft_events_fd()));
  FootprintEvents ev = fw_->drain_events();
  EXPECT_TRUE(ev.nftables);
  EXPECT_NE(ev.culprit.find("nft"), std::string::npos) << ev.culprit;
  EXPECT_NE(ev.culprit_pid, 0u);
  EXPECT_FALSE(fw_->intact(unowned)) << "a flushed chain is not intact";
  ASSERT_NO_FATAL_FAILURE(install(unowned));
  EXPECT_TRUE(fw_->intact(unowned));
  (void)fw_->drain_events();

  // Another program's table is not splitd's business.
  ASSERT_EQ(ns_->exec("nft add table inet other && nft delete table inet other").status, 0);
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(fw_->drain_events().nftables);

  ASSERT_EQ(ns_->exec("ip rule del fwmark 0x5d1").status, 0);
  ASSERT_TRUE(wait_events(fw_->rule_events_fd()));
  ev = fw_->drain_events();
  EXPECT_TRUE(ev.policy);
  EXPECT_FALSE(fw_->intact(unowned));
  ASSERT_NO_FATAL_FAILURE(install(unowned));
  (void)fw_->drain_events();

  ASSERT_EQ(ns_->exec("ip route del local default dev lo table 1501").status, 0);
  ASSERT_TRUE(wait_events(fw_->rule_events_fd()));
  ev = fw_->drain_events();
  EXPECT_TRUE(ev.route);
  EXPECT_FALSE(fw_->intact(unowned));
  // A route in another table is not reported.
  ASSERT_NO_FATAL_FAILURE(install(unowned));
  (void)fw_->drain_events();
  ASSERT_EQ(ns_->exec("ip route add local 192.0.2.0/24 dev lo table 1700").status, 0);
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(fw_->drain_events().route);
}

TEST_F(FirewallLab, Ipv6OffLeavesIpv6Alone) {
  FirewallConfig c;
  c.ipv6 = false;
  ASSERT_NO_FATAL_FAILURE(install());  // first with IPv6, then switch it off
  ASSERT_NO_FATAL_FAILURE(install(c));
  const std::string t = listing();
  EXPECT_NE(
      t.find(
          "meta nfproto ipv4 meta l4proto tcp meta mark set 0x000005d1 comment \"intercept TCP\""),
      std::string::npos)
      << t;
  EXPECT_EQ(t.find("never6"), std::string::npos) << t;
  EXPECT_EQ(count(ip("rule"), "fwmark 0x5d1"), 1u);
  EXPECT_EQ(count(ip("-6 rule"), "fwmark"), 0u) << ip("-6 rule");
  EXPECT_EQ(ip("-6 route show table 1501"), "");
}

TEST_F(FirewallLab, UdpRulesWhenEnabled) {
  FirewallConfig c;
  c.intercept_udp = true;
  ASSERT_NO_FATAL_FAILURE(install(c));
  const std::string t = listing();
  EXPECT_NE(t.find("meta l4proto udp meta mark set 0x000005d1 comment \"intercept UDP\""),
            std::string::npos)
      << t;
  // No socket match for UDP: every datagram goes to the listeners' reuseport group, where
  // the kernel keeps a client endpoint on one worker.
  EXPECT_EQ(t.find("meta l4proto udp socket transparent"), std::string::npos) << t;
  EXPECT_NE(t.find("meta l4proto udp tproxy to :15001 accept comment \"to splitd's UDP proxy\""),
            std::string::npos)
      << t;
}

// ---- traffic ----------------------------------------------------------------------------

TEST_F(FirewallLab, TcpToARemoteAddressReachesTheTransparentListener) {
  ASSERT_NO_FATAL_FAILURE(add_uplink());
  ASSERT_NO_FATAL_FAILURE(install());
  ns_->run_inside([&] {
    Fd listener = transparent_listener(SOCK_STREAM, kPort);
    EXPECT_EQ(probe_tcp(listener.get(), "198.51.100.7", 80), "intercepted 198.51.100.7:80");
    EXPECT_EQ(probe_tcp(listener.get(), "2001:db8:9::7", 80), "intercepted [2001:db8:9::7]:80");
    // Data flows both ways through the intercepted connection.
    Fd client = start_connect("198.51.100.7", 443);
    Fd accepted = accept_within(listener.get(), 1000ms);
    ASSERT_TRUE(accepted);
    pollfd p{client.get(), POLLOUT, 0};
    ASSERT_EQ(::poll(&p, 1, 1000), 1);
    ASSERT_EQ(::send(client.get(), "ping", 4, MSG_NOSIGNAL), 4);
    char buf[8] = {};
    pollfd a{accepted.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&a, 1, 1000), 1);
    EXPECT_EQ(::recv(accepted.get(), buf, sizeof buf, 0), 4);
    EXPECT_EQ(std::string(buf, 4), "ping");
    ASSERT_EQ(::send(accepted.get(), "pong", 4, MSG_NOSIGNAL), 4);
    pollfd c{client.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&c, 1, 1000), 1);
    EXPECT_EQ(::recv(client.get(), buf, sizeof buf, 0), 4);
    EXPECT_EQ(std::string(buf, 4), "pong");
  });
}

TEST_F(FirewallLab, BypassMarkOtherMarksAndNeverInterceptAreNotIntercepted) {
  ASSERT_NO_FATAL_FAILURE(add_uplink());
  FirewallConfig c;
  c.never_intercept.push_back(*Cidr::parse("203.0.113.0/24"));
  c.never_intercept.push_back(*Cidr::parse("2001:db8:77::/48"));
  ASSERT_NO_FATAL_FAILURE(install(c));
  ns_->run_inside([&] {
    Fd listener = transparent_listener(SOCK_STREAM, kPort);
    // The uplink's gateway does not exist, so a connection that is not intercepted
    // just does not complete.
    EXPECT_EQ(probe_tcp(listener.get(), "198.51.100.7", 80, 0x5d2u, 300ms), "not intercepted");
    EXPECT_EQ(probe_tcp(listener.get(), "2001:db8:9::7", 80, 0x5d2u, 300ms), "not intercepted");
    EXPECT_EQ(probe_tcp(listener.get(), "198.51.100.7", 80, 0x77u, 300ms), "not intercepted");
    EXPECT_EQ(probe_tcp(listener.get(), "203.0.113.9", 80, std::nullopt, 300ms), "not intercepted");
    EXPECT_EQ(probe_tcp(listener.get(), "2001:db8:77::9", 80, std::nullopt, 300ms),
              "not intercepted");
    // Still intercepted next to them.
    EXPECT_EQ(probe_tcp(listener.get(), "203.0.114.9", 80), "intercepted 203.0.114.9:80");
    EXPECT_EQ(probe_tcp(listener.get(), "198.51.100.7", 80), "intercepted 198.51.100.7:80");
  });
}

TEST_F(FirewallLab, LocalDestinationsAreNotIntercepted) {
  ASSERT_NO_FATAL_FAILURE(add_uplink());
  ASSERT_NO_FATAL_FAILURE(install());
  ns_->run_inside([&] {
    Fd transparent = transparent_listener(SOCK_STREAM, kPort);
    for (const char* local : {"198.18.9.1", "127.0.0.1", "2001:db8:9::1", "::1"}) {
      socklen_t len;
      auto addr = make_addr(local, 8080, len);
      Fd server(::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
      set_int(server.get(), SOL_SOCKET, SO_REUSEADDR, 1);
      ASSERT_EQ(::bind(server.get(), reinterpret_cast<sockaddr*>(&addr), len), 0) << local;
      ASSERT_EQ(::listen(server.get(), 4), 0);
      Fd client = start_connect(local, 8080);
      Fd accepted = accept_within(server.get(), 1000ms);
      EXPECT_TRUE(accepted) << local << " did not reach its own listener";
      EXPECT_FALSE(accept_within(transparent.get(), 0ms)) << local << " was intercepted";
    }
  });
}

TEST_F(FirewallLab, UdpToARemoteAddressReachesTheTransparentSocket) {
  ASSERT_NO_FATAL_FAILURE(add_uplink());
  FirewallConfig c;
  c.intercept_udp = true;
  ASSERT_NO_FATAL_FAILURE(install(c));
  ns_->run_inside([&] {
    Fd server = transparent_listener(SOCK_DGRAM, kPort);
    for (const std::string dst : {"198.51.100.7", "2001:db8:9::7"}) {
      socklen_t len;
      auto addr = make_addr(dst, 53, len);
      Fd client(::socket(addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      ASSERT_EQ(::sendto(client.get(), "q", 1, 0, reinterpret_cast<sockaddr*>(&addr), len), 1)
          << std::strerror(errno);
      pollfd p{server.get(), POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 1000), 1) << dst << " was not intercepted";
      char data[16];
      alignas(cmsghdr) char control[256];
      iovec iov{data, sizeof data};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ASSERT_EQ(::recvmsg(server.get(), &msg, 0), 1);
      std::optional<sockaddr_storage> orig;
      for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr; cm = CMSG_NXTHDR(&msg, cm)) {
        sockaddr_storage ss{};
        if (cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_ORIGDSTADDR) {
          std::memcpy(&ss, CMSG_DATA(cm), sizeof(sockaddr_in));
          orig = ss;
        } else if (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_ORIGDSTADDR) {
          std::memcpy(&ss, CMSG_DATA(cm), sizeof(sockaddr_in6));
          orig = ss;
        }
      }
      ASSERT_TRUE(orig) << "no original destination for " << dst;
      const std::string want =
          dst.find(':') == std::string::npos ? dst + ":53" : "[" + dst + "]:53";
      EXPECT_EQ(to_text(*orig), want);
    }
  });
}

TEST_F(FirewallLab, DnsRulesWhenCaptureIsOn) {
  FirewallConfig c;
  c.dns_port = 15053;
  c.block_dot = true;
  ASSERT_NO_FATAL_FAILURE(install(c));
  const std::string t = listing();
  EXPECT_NE(t.find("meta l4proto { tcp, udp } th dport 53 meta mark set 0x000005d1 accept comment "
                   "\"DNS to any server, local stubs included\""),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("th dport 853 counter packets 0 bytes 0 reject comment \"DNS over TLS refused"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("iif \"lo\" meta mark 0x000005d1 meta l4proto { tcp, udp } th dport 53 tproxy to :15053 "
                   "accept comment \"captured DNS to splitd's forwarder\""),
            std::string::npos)
      << t;
  // The DNS rule comes after the VPN servers' (a VPN carrier on port 53 is never
  // captured) and before the local-destination and never_intercept rules, so stubs on
  // 127/8 and servers in never_intercept are captured.
  EXPECT_LT(t.find("VPN clients' servers"), t.find("DNS to any server")) << t;
  EXPECT_LT(t.find("DNS to any server"), t.find("local, broadcast, multicast destinations")) << t;
  EXPECT_LT(t.find("DNS to any server"), t.find("comment \"never_intercept\"")) << t;
}

TEST_F(FirewallLab, DnsToAnyServerAndToLocalStubsReachesTheForwarder) {
  ASSERT_NO_FATAL_FAILURE(add_uplink());
  FirewallConfig c;
  c.dns_port = 15053;
  c.block_dot = true;
  ASSERT_NO_FATAL_FAILURE(install(c));
  ns_->run_inside([&] {
    Fd dns_udp = transparent_listener(SOCK_DGRAM, 15053);
    Fd dns_tcp = transparent_listener(SOCK_STREAM, 15053);
    Fd proxy = transparent_listener(SOCK_STREAM, kPort);
    for (const std::string dst : {"198.51.100.7", "2001:db8:9::7", "127.0.0.53", "::1"}) {
      socklen_t len;
      auto addr = make_addr(dst, 53, len);
      Fd client(::socket(addr.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
      ASSERT_EQ(::sendto(client.get(), "q", 1, 0, reinterpret_cast<sockaddr*>(&addr), len), 1)
          << std::strerror(errno);
      pollfd p{dns_udp.get(), POLLIN, 0};
      ASSERT_EQ(::poll(&p, 1, 1000), 1) << "UDP DNS to " << dst << " did not reach the forwarder";
      char data[16];
      EXPECT_EQ(::recv(dns_udp.get(), data, sizeof data, 0), 1);
      const std::string want = dst.find(':') == std::string::npos ? dst + ":53" : "[" + dst + "]:53";
      EXPECT_EQ(probe_tcp(dns_tcp.get(), dst, 53), "intercepted " + want);
    }
    // Other TCP still goes to the proxy; DNS over TLS is refused at once.
    EXPECT_EQ(probe_tcp(proxy.get(), "198.51.100.7", 80), "intercepted 198.51.100.7:80");
    Fd dot = start_connect("198.51.100.7", 853);
    pollfd p{dot.get(), POLLOUT, 0};
    ASSERT_EQ(::poll(&p, 1, 1000), 1);
    int err = 0;
    socklen_t elen = sizeof err;
    ::getsockopt(dot.get(), SOL_SOCKET, SO_ERROR, &err, &elen);
    EXPECT_EQ(err, ECONNREFUSED) << std::strerror(err);
  });
}

// ---- errors -----------------------------------------------------------------------------

TEST_F(FirewallLab, AKernelRefusalNamesTheRule) {
  // tproxy is only valid in prerouting: the kernel refuses this rule, and the error must
  // name it, not just say "Operation not supported".
  ns_->run_inside([&] {
    auto sock = netlink::Socket::open(NETLINK_NETFILTER, "nfnetlink");
    ASSERT_TRUE(sock) << sock.error().message();
    NftBatch b("splitd");
    b.add_table();
    b.add_chain("output", "route", 3 /* NF_INET_LOCAL_OUT */, -150);
    b.add_rule("output", std::move(NftRule("intercept TCP").l4proto_in({6}).tproxy_to_port(kPort)));
    auto r = b.commit(*sock);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, FirewallErrorCode::kUnsupported) << r.error().message;
    EXPECT_EQ(
        r.error().message.rfind("rule 'intercept TCP' in chain output: Operation not supported", 0),
        0u)
        << r.error().message;
    EXPECT_NE(r.error().message.find("nft_tproxy"), std::string::npos) << r.error().message;
  });
  // The batch was atomic: the table and chain that preceded the rule are not there.
  EXPECT_NE(ns_->exec("nft list table inet splitd").status, 0);
}

TEST_F(FirewallLab, WithoutCapNetAdminTheErrorSaysSo) {
  ns_->run_inside([&] {
    auto fw = Firewall::open();
    ASSERT_TRUE(fw) << fw.error().message;
    // Drop CAP_NET_ADMIN from this thread's effective set only (capset is per thread).
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    ASSERT_EQ(::syscall(SYS_capget, &hdr, data), 0);
    data[0].effective &= ~(1u << CAP_NET_ADMIN);
    ASSERT_EQ(::syscall(SYS_capset, &hdr, data), 0);
    auto r = (*fw)->install({});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, FirewallErrorCode::kPermission) << r.error().message;
    EXPECT_NE(r.error().message.find("CAP_NET_ADMIN"), std::string::npos) << r.error().message;
    EXPECT_FALSE((*fw)->installed());
  });
  EXPECT_NE(ns_->exec("nft list table inet splitd").status, 0);
  EXPECT_EQ(count(ip("rule"), "fwmark"), 0u);
}

TEST_F(FirewallLab, InvalidConfigIsRefusedBeforeTheKernel) {
  fw_ = open_firewall();
  FirewallConfig c;
  c.port = 0;
  auto r = fw_->install(c);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, FirewallErrorCode::kInvalidConfig);
  EXPECT_NE(r.error().message.find("port"), std::string::npos) << r.error().message;
  EXPECT_EQ(ns_->exec("nft list ruleset").out, "");
}

}  // namespace
}  // namespace splitd::firewall
