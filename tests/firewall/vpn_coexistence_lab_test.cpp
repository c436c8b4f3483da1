// VpnCoexistence against the real kernel, next to wg-quick's anti-spoofing rules as
// wg-quick itself creates them (with nft, and with its iptables-restore fallback), each
// test in a private network namespace it creates and deletes. Needs root; skipped (with
// the reason) without it. The event classification test at the end needs nothing.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.hpp"
#include "firewall/nft_batch.hpp"
#include "firewall/nft_rule.hpp"
#include "firewall/vpn_coexistence.hpp"
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

constexpr const char* kTunnel4 = "198.18.2.2";
constexpr const char* kTunnel6 = "2001:db8:ff:2::2";
constexpr const char* kRemote4 = "203.0.113.10";  // the server splitd's proxy answers for
constexpr const char* kRemote6 = "2001:db8::10";
constexpr std::uint32_t kFwmark = 51820;

// What wg-quick's add_default() feeds `nft -f` for interface tun0 with one address of the
// family (wireguard-tools 1.0.20210914, /usr/bin/wg-quick), character for character.
std::string wg_quick_nft(const std::string& pf, const std::string& address) {
  const std::string t = "wg-quick-tun0";
  std::string s;
  s += "add table " + pf + " " + t + "\n";
  s += "add chain " + pf + " " + t + " preraw { type filter hook prerouting priority -300; }\n";
  s += "add chain " + pf + " " + t + " premangle { type filter hook prerouting priority -150; }\n";
  s +=
      "add chain " + pf + " " + t + " postmangle { type filter hook postrouting priority -150; }\n";
  s += "add rule " + pf + " " + t + " preraw iifname != \"tun0\" " + pf + " daddr " + address +
       " fib saddr type != local drop\n";
  s += "add rule " + pf + " " + t + " postmangle meta l4proto udp mark " + std::to_string(kFwmark) +
       " ct mark set mark \n";
  s += "add rule " + pf + " " + t + " premangle meta l4proto udp meta mark set ct mark \n";
  return s;
}

// What wg-quick feeds `iptables-restore -n` when nft is not in PATH.
std::string wg_quick_restore(const std::string& address, const std::string& iface = "tun0") {
  const std::string marker = "-m comment --comment \"wg-quick(8) rule for " + iface + "\"";
  return "*raw\n-I PREROUTING ! -i " + iface + " -d " + address +
         " -m addrtype ! --src-type LOCAL -j DROP " + marker + "\nCOMMIT\n*mangle\n" +
         "-I POSTROUTING -m mark --mark " + std::to_string(kFwmark) +
         " -p udp -j CONNMARK --save-mark " + marker +
         "\n-I PREROUTING -p udp -j CONNMARK --restore-mark " + marker + "\nCOMMIT\n";
}

// wg-quick's remove_firewall(): taken from /usr/bin/wg-quick when it is installed (the
// real teardown), else this copy of it.
std::string wg_quick_remove_firewall() {
  std::string fn;
  const CommandResult r = run("sed -n '/^remove_firewall() {/,/^}/p' /usr/bin/wg-quick");
  if (r.status == 0 && r.out.find("iptables-save") != std::string::npos) {
    fn = r.out;
  } else {
    fn = R"(remove_firewall() {
	if type -p nft >/dev/null; then
		local table nftcmd
		while read -r table; do
			[[ $table == *" wg-quick-$INTERFACE" ]] && printf -v nftcmd '%sdelete %s\n' "$nftcmd" "$table"
		done < <(nft list tables 2>/dev/null)
		[[ -z $nftcmd ]] || cmd nft -f <(echo -n "$nftcmd")
	fi
	if type -p iptables >/dev/null; then
		local line iptables found restore
		for iptables in iptables ip6tables; do
			restore="" found=0
			while read -r line; do
				[[ $line == "*"* || $line == COMMIT || $line == "-A "*"-m comment --comment \"wg-quick(8) rule for $INTERFACE\""* ]] || continue
				[[ $line == "-A"* ]] && found=1
				printf -v restore '%s%s\n' "$restore" "${line/#-A/-D}"
			done < <($iptables-save 2>/dev/null)
			[[ $found -ne 1 ]] || echo -n "$restore" | cmd $iptables-restore -n
		done
	fi
}
)";
  }
  return "set -e\nINTERFACE=tun0\ncmd() { \"$@\"; }\n" + fn + "remove_firewall\n";
}

// Runs `script` with bash inside the namespace.
CommandResult run_script(const TestNetns& ns, const std::string& script) {
  char path[] = "/tmp/sdfw-coex-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return {};
  ::close(fd);
  std::ofstream(path) << script;
  CommandResult r = ns.exec(std::string("bash ") + path);
  ::unlink(path);
  return r;
}

// `line` with every "[PACKETS:BYTES]" replaced by "[*]".
std::string without_counters(const std::string& line) {
  std::string out;
  for (std::size_t i = 0; i < line.size();) {
    if (line[i] == '[') {
      const auto close = line.find(']', i);
      if (close != std::string::npos) {
        const std::string inner = line.substr(i + 1, close - i - 1);
        if (!inner.empty() && inner.find_first_not_of("0123456789:") == std::string::npos &&
            inner.find(':') != std::string::npos) {
          out += "[*]";
          i = close + 1;
          continue;
        }
      }
    }
    out += line[i++];
  }
  return out;
}

// iptables-save without its timestamps and packet counters.
std::string iptables_save(const TestNetns& ns, const std::string& tool, int* status = nullptr) {
  const CommandResult r = ns.exec(tool + "-save");
  if (status) *status = r.status;
  std::string out;
  std::size_t at = 0;
  while (at < r.out.size()) {
    auto end = r.out.find('\n', at);
    if (end == std::string::npos) end = r.out.size();
    std::string line = r.out.substr(at, end - at);
    at = end + 1;
    if (line.starts_with("# Generated") || line.starts_with("# Completed")) continue;
    out += without_counters(line) + "\n";
  }
  return out;
}

std::string ruleset(const TestNetns& ns) { return ns.exec("nft list ruleset").out; }

// The rules of a chain, as `nft -a list chain` prints them, one per entry.
std::vector<std::string> chain_rules(const TestNetns& ns, const std::string& spec) {
  const std::string out = ns.exec("nft list chain " + spec).out;
  std::vector<std::string> rules;
  std::size_t at = 0;
  while (at < out.size()) {
    auto end = out.find('\n', at);
    if (end == std::string::npos) end = out.size();
    std::string line = out.substr(at, end - at);
    at = end + 1;
    const auto first = line.find_first_not_of("\t ");
    if (first == std::string::npos) continue;
    line = line.substr(first);
    if (line.starts_with("table") || line.starts_with("chain") || line.starts_with("type") ||
        line.starts_with("}") || line.starts_with("#"))
      continue;
    rules.push_back(line);
  }
  return rules;
}

const std::string kExpectedRule =
    "iifname \"lo\" accept comment \"" + std::string(VpnCoexistence::kRuleComment) + "\"";

// What splitd's UDP proxy does when it answers an app: a transparent socket bound to the
// remote server's address sends to the app's address (the tunnel address), through lo.
// True when the datagram reaches the app.
bool proxied_reply_arrives(const TestNetns& ns, const std::string& app, const std::string& remote) {
  bool arrived = false;
  ns.run_inside([&] {
    const bool v6 = app.find(':') != std::string::npos;
    const int family = v6 ? AF_INET6 : AF_INET;
    Fd rx(::socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    Fd tx(::socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(rx && tx) << std::strerror(errno);
    socklen_t len;
    auto at = make_addr(app, 40000, len);
    ASSERT_EQ(::bind(rx.get(), reinterpret_cast<sockaddr*>(&at), len), 0) << std::strerror(errno);
    const int one = 1;
    if (v6) {
      ASSERT_EQ(::setsockopt(tx.get(), SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one), 0);
    } else {
      ASSERT_EQ(::setsockopt(tx.get(), SOL_IP, IP_TRANSPARENT, &one, sizeof one), 0);
    }
    auto from = make_addr(remote, 443, len);
    ASSERT_EQ(::bind(tx.get(), reinterpret_cast<sockaddr*>(&from), len), 0) << std::strerror(errno);
    ASSERT_EQ(::sendto(tx.get(), "answer", 6, 0, reinterpret_cast<sockaddr*>(&at), len), 6)
        << std::strerror(errno);
    pollfd p{rx.get(), POLLIN, 0};
    if (::poll(&p, 1, 300) != 1) return;
    char buf[16];
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    const ssize_t n =
        ::recvfrom(rx.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&peer), &peer_len);
    arrived = n == 6 && std::memcmp(buf, "answer", 6) == 0;
  });
  return arrived;
}

class VpnCoexistenceLab : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = testing::netns_unavailable_reason();
    if (!why.empty()) GTEST_SKIP() << why;
    std::string error;
    ns_ = TestNetns::create(&error);
    ASSERT_TRUE(ns_) << error;
    // The tunnel interface wg-quick's rule names, with the tunnel addresses (a veth: the
    // rule only needs the name and the local addresses).
    for (const char* cmd : {"ip link add tun0 type veth peer name tun0-peer", "ip link set tun0 up",
                            "ip addr add 198.18.2.2/32 dev tun0",
                            "ip addr add 2001:db8:ff:2::2/128 dev tun0 nodad"}) {
      const CommandResult r = ns_->exec(cmd);
      ASSERT_EQ(r.status, 0) << cmd << ": " << r.out;
    }
  }

  void wg_quick_up() {
    const CommandResult r = ns_->exec("nft -f - <<'EOF'\n" + wg_quick_nft("ip", kTunnel4) +
                                      wg_quick_nft("ip6", kTunnel6) + "EOF");
    ASSERT_EQ(r.status, 0) << r.out;
  }

  std::unique_ptr<VpnCoexistence> open_coexistence() {
    std::unique_ptr<VpnCoexistence> coex;
    ns_->run_inside([&] {
      auto c = VpnCoexistence::open();
      ASSERT_TRUE(c) << c.error().message;
      coex = std::move(*c);
    });
    return coex;
  }

  std::unique_ptr<TestNetns> ns_;
};

TEST_F(VpnCoexistenceLab, WgQuickTablesGetTheRuleFirstAndProxiedRepliesPass) {
  wg_quick_up();
  const std::string before = ruleset(*ns_);
  ASSERT_NE(before.find("fib saddr type != local drop"), std::string::npos) << before;

  // The problem: wg-quick's rule drops the proxy's answers.
  EXPECT_FALSE(proxied_reply_arrives(*ns_, kTunnel4, kRemote4));
  EXPECT_FALSE(proxied_reply_arrives(*ns_, kTunnel6, kRemote6));

  auto coex = open_coexistence();
  ASSERT_TRUE(coex);
  auto report = coex->reconcile();
  ASSERT_TRUE(report) << report.error().message;
  EXPECT_EQ(report->placed.size(), 2u);
  EXPECT_TRUE(report->failures.empty());
  for (const char* chain : {"ip wg-quick-tun0 preraw", "ip6 wg-quick-tun0 preraw"}) {
    const auto rules = chain_rules(*ns_, chain);
    ASSERT_EQ(rules.size(), 2u) << chain;
    EXPECT_EQ(rules[0], kExpectedRule) << chain;
    EXPECT_NE(rules[1].find("fib saddr type != local drop"), std::string::npos) << chain;
  }
  ASSERT_EQ(coex->placements().size(), 2u);
  for (const auto& p : coex->placements()) EXPECT_NE(p.handle, 0u) << p.describe();

  EXPECT_TRUE(proxied_reply_arrives(*ns_, kTunnel4, kRemote4));
  EXPECT_TRUE(proxied_reply_arrives(*ns_, kTunnel6, kRemote6));

  // Idempotent: nothing to do, still one rule per chain.
  const std::string placed = ruleset(*ns_);
  auto again = coex->reconcile();
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_FALSE(again->changed());
  EXPECT_TRUE(again->adopted.empty());
  EXPECT_EQ(ruleset(*ns_), placed);
  EXPECT_EQ(count(placed, "splitd:"), 2u) << placed;

  auto removed = coex->remove_all();
  ASSERT_TRUE(removed) << removed.error().message;
  EXPECT_EQ(removed->removed.size(), 2u);
  EXPECT_TRUE(coex->placements().empty());
  EXPECT_EQ(ruleset(*ns_), before);
}

// Polls the kernel (a netlink socket inside the namespace) until splitd's rule heads both
// preraw chains.
bool wait_for_rules(netlink::Socket& sock, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    bool both = true;
    for (std::uint8_t family : {NFPROTO_IPV4, NFPROTO_IPV6}) {
      auto rules = nft_list_rules(sock, family, "wg-quick-tun0", "preraw");
      both = both && rules && rules->size() == 2 &&
             rules->front().comment == VpnCoexistence::kRuleComment;
    }
    if (both) return true;
    std::this_thread::sleep_for(200us);
  }
  return false;
}

// Records, as they arrive, when wg-quick's tables appear and when another program (splitd)
// adds a rule to them: the latency from the kernel's point of view, without the time nft
// takes to start.
class EventClock {
 public:
  explicit EventClock(netlink::Socket sock) : sock_(std::move(sock)) {
    thread_ = std::thread([this] { run(); });
  }
  ~EventClock() { join(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }
  // From the first new wg-quick-tun0 table to splitd's rule in both families; nullopt if
  // that was not seen within a second.
  std::optional<std::chrono::duration<double, std::milli>> latency() {
    join();
    if (!table_ || !rule4_ || !rule6_) return std::nullopt;
    return std::max(*rule4_, *rule6_) - *table_;
  }

 private:
  void run() {
    const auto deadline = std::chrono::steady_clock::now() + 1s;
    while (std::chrono::steady_clock::now() < deadline && !(rule4_ && rule6_)) {
      auto data = sock_.receive(20ms);
      const auto now = std::chrono::steady_clock::now();
      if (!data || data->empty()) continue;
      int left = static_cast<int>(data->size());
      const auto* nlh = reinterpret_cast<const nlmsghdr*>(data->data());
      for (; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
        if ((nlh->nlmsg_type >> 8) != NFNL_SUBSYS_NFTABLES) continue;
        if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nfgenmsg))) continue;
        const auto family = static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(nlh))->nfgen_family;
        const nlattr* name = nullptr;
        mnl_attr_parse(
            nlh, sizeof(nfgenmsg),
            [](const nlattr* a, void* out) -> int {
              if (mnl_attr_get_type(a) == 1 && mnl_attr_validate(a, MNL_TYPE_NUL_STRING) == 0)
                *static_cast<const nlattr**>(out) = a;
              return MNL_CB_OK;
            },
            &name);
        if (name == nullptr || std::strcmp(mnl_attr_get_str(name), "wg-quick-tun0") != 0) continue;
        const std::uint8_t type = nlh->nlmsg_type & 0xff;
        if (type == NFT_MSG_NEWTABLE && !table_) {
          table_ = now;
          wg_quick_pid_ = nlh->nlmsg_pid;
        } else if (type == NFT_MSG_NEWRULE && table_ && nlh->nlmsg_pid != wg_quick_pid_) {
          (family == NFPROTO_IPV4 ? rule4_ : rule6_) = now;
        }
      }
    }
  }

  netlink::Socket sock_;
  std::optional<std::chrono::steady_clock::time_point> table_, rule4_, rule6_;
  std::uint32_t wg_quick_pid_ = 0;
  std::thread thread_;
};

TEST_F(VpnCoexistenceLab, WatcherReappliesWithin200msWhenWgQuickRecreatesItsTables) {
  wg_quick_up();
  const std::string before = ruleset(*ns_);
  auto coex = open_coexistence();
  ASSERT_TRUE(coex);
  std::optional<netlink::Socket> probe;
  ns_->run_inside([&] {
    auto s = netlink::Socket::open(NETLINK_NETFILTER, "probe");
    ASSERT_TRUE(s) << s.error().message();
    probe.emplace(std::move(*s));
  });
  ASSERT_TRUE(probe);

  ASSERT_TRUE(coex->start()) << "start";
  EXPECT_TRUE(coex->running());
  ASSERT_EQ(coex->placements().size(), 2u);

  // Its own changes must not wake it: quiet for 300 ms, at most the periodic safety pass.
  const std::uint64_t idle_before = coex->watcher_reconciles();
  std::this_thread::sleep_for(300ms);
  EXPECT_LE(coex->watcher_reconciles() - idle_before, 1u) << "the watcher reacts to itself";

  // wg-quick down (its remove_firewall deletes both tables) and up again.
  const CommandResult down =
      ns_->exec("nft delete table ip wg-quick-tun0 && nft delete table ip6 wg-quick-tun0");
  ASSERT_EQ(down.status, 0) << down.out;
  const auto forget_deadline = std::chrono::steady_clock::now() + 1s;
  while (!coex->placements().empty() && std::chrono::steady_clock::now() < forget_deadline)
    std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(coex->placements().empty()) << "a deleted table's rule is still tracked";

  std::optional<EventClock> clock;
  ns_->run_inside([&] {
    auto s = netlink::Socket::open(NETLINK_NETFILTER, "event clock");
    ASSERT_TRUE(s) << s.error().message();
    ASSERT_TRUE(s->join_group(NFNLGRP_NFTABLES));
    clock.emplace(std::move(*s));
  });
  ASSERT_TRUE(clock);
  const auto t0 = std::chrono::steady_clock::now();
  wg_quick_up();
  const auto t1 = std::chrono::steady_clock::now();
  const bool back = wait_for_rules(*probe, 1000ms);
  const auto t2 = std::chrono::steady_clock::now();
  const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
  std::printf(
      "re-apply after wg-quick re-created its tables: %.2f ms after `nft -f` returned "
      "(%.2f ms after it started)\n",
      ms(t2 - t1), ms(t2 - t0));
  ASSERT_TRUE(back) << ruleset(*ns_);
  EXPECT_LT(t2 - t1, 200ms);
  const auto latency = clock->latency();
  ASSERT_TRUE(latency) << "the event clock did not see the table and splitd's rules";
  std::printf(
      "re-apply latency seen in nftables events: %.2f ms from wg-quick's new table to "
      "splitd's rule in both families\n",
      latency->count());
  EXPECT_LT(*latency, 200ms);
  EXPECT_EQ(chain_rules(*ns_, "ip wg-quick-tun0 preraw").front(), kExpectedRule);
  EXPECT_EQ(chain_rules(*ns_, "ip6 wg-quick-tun0 preraw").front(), kExpectedRule);
  EXPECT_TRUE(proxied_reply_arrives(*ns_, kTunnel4, kRemote4));

  // Someone flushes the chain and puts wg-quick's rule back: the rule returns too.
  const CommandResult flush = ns_->exec(
      "nft flush chain ip wg-quick-tun0 preraw && nft add rule ip wg-quick-tun0 preraw "
      "iifname != \"tun0\" ip daddr 198.18.2.2 fib saddr type != local drop");
  ASSERT_EQ(flush.status, 0) << flush.out;
  EXPECT_TRUE(wait_for_rules(*probe, 200ms)) << ruleset(*ns_);

  coex->stop();
  EXPECT_FALSE(coex->running());
  EXPECT_EQ(ruleset(*ns_), before);
}

TEST_F(VpnCoexistenceLab, IptablesNftFallbackStaysReadableByIptables) {
  for (const char* tool :
       {"iptables-restore", "ip6tables-restore", "iptables-save", "ip6tables-save"}) {
    if (run(std::string(tool) + " --version").status != 0) GTEST_SKIP() << "needs " << tool;
  }
  if (run("iptables --version").out.find("nf_tables") == std::string::npos)
    GTEST_SKIP() << "needs iptables-nft (iptables --version does not say nf_tables)";

  const std::string nft_empty = ruleset(*ns_);
  // wg-quick without nft in PATH.
  CommandResult r = ns_->exec("iptables-restore -n <<'EOF'\n" + wg_quick_restore(kTunnel4) + "EOF");
  ASSERT_EQ(r.status, 0) << r.out;
  r = ns_->exec("ip6tables-restore -n <<'EOF'\n" + wg_quick_restore(kTunnel6) + "EOF");
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string save4 = iptables_save(*ns_, "iptables");
  const std::string save6 = iptables_save(*ns_, "ip6tables");
  const std::string nft_before = ruleset(*ns_);
  ASSERT_NE(save4.find("wg-quick(8) rule for tun0"), std::string::npos) << save4;

  auto coex = open_coexistence();
  ASSERT_TRUE(coex);
  auto report = coex->reconcile();
  ASSERT_TRUE(report) << report.error().message;
  ASSERT_EQ(report->placed.size(), 2u);
  for (const auto& p : report->placed) {
    EXPECT_EQ(p.form, VpnCoexistence::Form::kIptablesNft);
    EXPECT_EQ(p.table, "raw");
    EXPECT_EQ(p.chain, "PREROUTING");
  }
  // iptables-nft still reads the table, and shows splitd's rule first.
  for (const char* tool : {"iptables", "ip6tables"}) {
    int status = -1;
    const std::string save = iptables_save(*ns_, tool, &status);
    EXPECT_EQ(status, 0) << save;
    EXPECT_EQ(save.find("Warning"), std::string::npos) << save;
    EXPECT_EQ(save.find("incompatible"), std::string::npos) << save;
    const std::string ours = "-A PREROUTING -i lo -m comment --comment \"" +
                             std::string(VpnCoexistence::kRuleComment) + "\" -j ACCEPT\n";
    const auto raw = save.find("*raw");
    ASSERT_NE(raw, std::string::npos) << save;
    EXPECT_EQ(save.find("-A PREROUTING", raw), save.find(ours, raw)) << save;
    const CommandResult list = ns_->exec(std::string(tool) + " -t raw -S PREROUTING");
    EXPECT_EQ(list.status, 0) << list.out;
  }
  auto again = coex->reconcile();
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_FALSE(again->changed());

  // remove_all leaves exactly what wg-quick made.
  auto removed = coex->remove_all();
  ASSERT_TRUE(removed) << removed.error().message;
  EXPECT_EQ(removed->removed.size(), 2u);
  EXPECT_EQ(iptables_save(*ns_, "iptables"), save4);
  EXPECT_EQ(iptables_save(*ns_, "ip6tables"), save6);
  EXPECT_EQ(ruleset(*ns_), nft_before);

  // Placed again, the proxy's answers pass; then wg-quick's own teardown (which greps
  // iptables-save for its comment and deletes with iptables-restore) still works.
  ASSERT_TRUE(coex->reconcile());
  EXPECT_TRUE(proxied_reply_arrives(*ns_, kTunnel4, kRemote4));
  EXPECT_TRUE(proxied_reply_arrives(*ns_, kTunnel6, kRemote6));
  const CommandResult down = run_script(*ns_, wg_quick_remove_firewall());
  ASSERT_EQ(down.status, 0) << down.out;
  for (const char* tool : {"iptables", "ip6tables"}) {
    const std::string save = iptables_save(*ns_, tool);
    EXPECT_EQ(save.find("wg-quick(8) rule for tun0"), std::string::npos) << save;
    EXPECT_NE(save.find("splitd:"), std::string::npos) << save;
  }
  // With wg-quick's rule gone, splitd's goes too.
  auto after = coex->reconcile();
  ASSERT_TRUE(after) << after.error().message;
  EXPECT_EQ(after->removed.size(), 2u);
  EXPECT_TRUE(coex->placements().empty());
  EXPECT_EQ(count(ruleset(*ns_), "splitd:"), 0u) << ruleset(*ns_);
  EXPECT_EQ(count(ruleset(*ns_), "drop"), 0u) << ruleset(*ns_);
  (void)nft_empty;
}

TEST_F(VpnCoexistenceLab, WatcherMovesItsRuleAheadOfAReinsertedIptablesRule) {
  if (run("iptables-restore --version").status != 0) GTEST_SKIP() << "needs iptables-restore";
  if (run("iptables --version").out.find("nf_tables") == std::string::npos)
    GTEST_SKIP() << "needs iptables-nft";
  CommandResult r = ns_->exec("iptables-restore -n <<'EOF'\n" + wg_quick_restore(kTunnel4) + "EOF");
  ASSERT_EQ(r.status, 0) << r.out;
  auto coex = open_coexistence();
  ASSERT_TRUE(coex);
  ASSERT_TRUE(coex->start());
  const auto head_is_ours = [&](std::size_t rules_expected) {
    const auto deadline = std::chrono::steady_clock::now() + 500ms;
    std::vector<std::string> rules;
    while (std::chrono::steady_clock::now() < deadline) {
      rules = chain_rules(*ns_, "ip raw PREROUTING");
      if (rules.size() == rules_expected && rules[0].find("splitd:") != std::string::npos)
        return true;
      std::this_thread::sleep_for(2ms);
    }
    ADD_FAILURE() << ruleset(*ns_);
    return false;
  };
  // A second tunnel comes up: wg-quick inserts (-I) its rule ahead of splitd's, and the
  // watcher moves splitd's to the head again.
  r = ns_->exec("iptables-restore -n <<'EOF'\n" + wg_quick_restore("198.18.3.2", "tun1") + "EOF");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(head_is_ours(3));
  EXPECT_EQ(count(ruleset(*ns_), "splitd:"), 1u) << ruleset(*ns_);
  // wg-quick down and up for tun0: still first.
  ASSERT_EQ(run_script(*ns_, wg_quick_remove_firewall()).status, 0);
  r = ns_->exec("iptables-restore -n <<'EOF'\n" + wg_quick_restore(kTunnel4) + "EOF");
  ASSERT_EQ(r.status, 0) << r.out;
  EXPECT_TRUE(head_is_ours(3));
  EXPECT_TRUE(proxied_reply_arrives(*ns_, kTunnel4, kRemote4));
  coex->stop();
  EXPECT_EQ(count(ruleset(*ns_), "splitd:"), 0u) << ruleset(*ns_);
}

TEST_F(VpnCoexistenceLab, LeftoverRulesAreAdoptedNotDuplicated) {
  wg_quick_up();
  const std::string before = ruleset(*ns_);
  // A crashed run's rule at the head of the v4 chain, and an old one behind wg-quick's
  // rule in the v6 chain (wg-quick re-inserted its rule after splitd's).
  CommandResult r =
      ns_->exec("nft insert rule ip wg-quick-tun0 preraw iifname \"lo\" accept comment '\"" +
                std::string(VpnCoexistence::kRuleComment) +
                "\"' && nft add rule ip6 wg-quick-tun0 preraw iifname \"lo\" accept comment "
                "'\"splitd: from an older version\"'");
  ASSERT_EQ(r.status, 0) << r.out;

  auto coex = open_coexistence();
  ASSERT_TRUE(coex);
  auto report = coex->reconcile();
  ASSERT_TRUE(report) << report.error().message;
  ASSERT_EQ(report->adopted.size(), 1u);
  EXPECT_EQ(report->adopted[0].family, NFPROTO_IPV4);
  ASSERT_EQ(report->placed.size(), 1u);
  EXPECT_EQ(report->placed[0].family, NFPROTO_IPV6);
  ASSERT_EQ(report->removed.size(), 1u);  // the one behind wg-quick's rule
  for (const char* chain : {"ip wg-quick-tun0 preraw", "ip6 wg-quick-tun0 preraw"}) {
    const auto rules = chain_rules(*ns_, chain);
    ASSERT_EQ(rules.size(), 2u) << chain << "\n" << ruleset(*ns_);
    EXPECT_EQ(rules[0], kExpectedRule) << chain;
  }
  auto again = coex->reconcile();
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->changed());
  EXPECT_TRUE(again->adopted.empty());

  // `splitd cleanup` without a running instance.
  std::optional<Expected<VpnCoexistence::Report, FirewallError>> cleanup;
  ns_->run_inside([&] { cleanup.emplace(VpnCoexistence::remove_leftovers()); });
  ASSERT_TRUE(cleanup && *cleanup) << (*cleanup).error().message;
  EXPECT_EQ((**cleanup).removed.size(), 2u);
  EXPECT_EQ(ruleset(*ns_), before);
}

TEST_F(VpnCoexistenceLab, UnexpectedTablesAreLeftAlone) {
  // A wg-quick-* table without preraw, one whose preraw is no base chain, an inet table of
  // wg-quick's name, a preraw on another hook, and an iptables raw table without wg-quick's
  // rule.
  const CommandResult r = ns_->exec(R"(nft -f - <<'EOF'
add table ip wg-quick-nopreraw
add chain ip wg-quick-nopreraw premangle { type filter hook prerouting priority -150; }
add table ip wg-quick-regular
add chain ip wg-quick-regular preraw
add rule ip wg-quick-regular preraw drop
add table inet wg-quick-tun0
add chain inet wg-quick-tun0 preraw { type filter hook prerouting priority -300; }
add rule inet wg-quick-tun0 preraw iifname != "tun0" ip daddr 198.18.2.2 drop
add table ip6 wg-quick-output
add chain ip6 wg-quick-output preraw { type filter hook output priority -300; }
add table ip wg-quick-
add chain ip wg-quick- preraw { type filter hook prerouting priority -300; }
add table ip raw
add chain ip raw PREROUTING { type filter hook prerouting priority -300; }
add rule ip raw PREROUTING iifname "eth9" drop comment "not wg-quick"
EOF)");
  ASSERT_EQ(r.status, 0) << r.out;
  const std::string before = ruleset(*ns_);
  auto coex = open_coexistence();
  ASSERT_TRUE(coex);
  auto report = coex->reconcile();
  ASSERT_TRUE(report) << report.error().message;
  EXPECT_FALSE(report->changed());
  EXPECT_TRUE(report->failures.empty());
  EXPECT_TRUE(report->adopted.empty());
  EXPECT_EQ(ruleset(*ns_), before);
  auto removed = coex->remove_all();
  ASSERT_TRUE(removed) << removed.error().message;
  EXPECT_TRUE(removed->removed.empty());
  EXPECT_EQ(ruleset(*ns_), before);
}

// ---- event classification (no root needed) --------------------------------------------

std::vector<std::uint8_t> event(std::uint8_t type, std::uint8_t family, const char* table,
                                std::uint32_t portid) {
  std::vector<std::uint8_t> buf(MNL_SOCKET_BUFFER_SIZE);
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf.data());
  nlh->nlmsg_type = static_cast<std::uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | type);
  nlh->nlmsg_pid = portid;
  auto* nfg = static_cast<nfgenmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(nfgenmsg)));
  nfg->nfgen_family = family;
  if (table != nullptr) mnl_attr_put_strz(nlh, NFTA_TABLE_NAME, table);
  buf.resize(nlh->nlmsg_len);
  return buf;
}

TEST(VpnCoexistenceEvents, OnlyOtherProgramsChangesToWgQuickAndRawTablesCount) {
  using C = VpnCoexistence;
  EXPECT_TRUE(C::is_relevant_event(event(NFT_MSG_NEWTABLE, NFPROTO_IPV4, "wg-quick-wg0", 7), 99));
  EXPECT_TRUE(C::is_relevant_event(event(NFT_MSG_DELRULE, NFPROTO_IPV6, "raw", 7), 99));
  EXPECT_TRUE(C::is_relevant_event(event(NFT_MSG_NEWCHAIN, NFPROTO_IPV6, "wg-quick-x", 0), 99));
  // splitd's own change
  EXPECT_FALSE(C::is_relevant_event(event(NFT_MSG_NEWRULE, NFPROTO_IPV4, "wg-quick-wg0", 99), 99));
  // other tables, families, message types
  EXPECT_FALSE(C::is_relevant_event(event(NFT_MSG_NEWRULE, NFPROTO_INET, "splitd", 7), 99));
  EXPECT_FALSE(C::is_relevant_event(event(NFT_MSG_NEWRULE, NFPROTO_INET, "wg-quick-wg0", 7), 99));
  EXPECT_FALSE(C::is_relevant_event(event(NFT_MSG_NEWRULE, NFPROTO_IPV4, "filter", 7), 99));
  EXPECT_FALSE(C::is_relevant_event(event(NFT_MSG_NEWSETELEM, NFPROTO_IPV4, "raw", 7), 99));
  EXPECT_FALSE(C::is_relevant_event(event(NFT_MSG_NEWGEN, NFPROTO_UNSPEC, nullptr, 7), 99));
  // malformed: resync
  EXPECT_TRUE(C::is_relevant_event(event(NFT_MSG_NEWRULE, NFPROTO_IPV4, nullptr, 7), 99));
  auto truncated = event(NFT_MSG_NEWRULE, NFPROTO_IPV4, "filter", 7);
  truncated.resize(truncated.size() - 3);
  EXPECT_TRUE(C::is_relevant_event(truncated, 99));
  // a datagram with several messages: one relevant is enough
  auto both = event(NFT_MSG_NEWRULE, NFPROTO_IPV4, "filter", 7);
  const auto second = event(NFT_MSG_NEWTABLE, NFPROTO_IPV4, "wg-quick-wg1", 7);
  both.insert(both.end(), second.begin(), second.end());
  EXPECT_TRUE(C::is_relevant_event(both, 99));
}

// ---- the batch messages splitd sends to another program's table (no root needed) --------

TEST(VpnCoexistenceBatch, InsertAtTheHeadWithEchoAndDeleteByHandle) {
  NftBatch b(NFPROTO_IPV4, "wg-quick-wg0");
  const std::size_t index = b.insert_rule(
      "preraw",
      std::move(NftRule(std::string(VpnCoexistence::kRuleComment)).iifname_eq("lo").accept()));
  b.delete_rule("preraw", 42, "splitd's");
  const auto datagram = b.finish(100);
  int left = static_cast<int>(datagram.size());
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(datagram.data());
  std::vector<const nlmsghdr*> msgs;
  for (; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) msgs.push_back(nlh);
  EXPECT_EQ(left, 0);
  ASSERT_EQ(msgs.size(), 4u);  // BEGIN, NEWRULE, DELRULE, END
  const auto nft = [](int type) { return (NFNL_SUBSYS_NFTABLES << 8) | type; };
  ASSERT_EQ(msgs[1]->nlmsg_type, nft(NFT_MSG_NEWRULE));
  // At the head: no NLM_F_APPEND; the echo gives the handle.
  EXPECT_EQ(msgs[1]->nlmsg_flags & NLM_F_APPEND, 0);
  EXPECT_NE(msgs[1]->nlmsg_flags & NLM_F_ECHO, 0);
  EXPECT_NE(msgs[1]->nlmsg_flags & NLM_F_ACK, 0);
  EXPECT_EQ(static_cast<const nfgenmsg*>(mnl_nlmsg_get_payload(msgs[1]))->nfgen_family,
            NFPROTO_IPV4);
  ASSERT_EQ(msgs[2]->nlmsg_type, nft(NFT_MSG_DELRULE));
  EXPECT_EQ(b.label(101), "rule '" + std::string(VpnCoexistence::kRuleComment) +
                              "' in chain ip wg-quick-wg0 preraw");
  EXPECT_EQ(b.label(102), "deletion of rule handle 42 (splitd's) in chain ip wg-quick-wg0 preraw");
  EXPECT_FALSE(b.inserted_handle(index));  // not committed
  EXPECT_LT(VpnCoexistence::kRuleComment.size(), 128u);  // NFTNL_UDATA_COMMENT_MAXLEN
  EXPECT_TRUE(VpnCoexistence::kRuleComment.starts_with(VpnCoexistence::kCommentPrefix));
}

}  // namespace
}  // namespace splitd::firewall
