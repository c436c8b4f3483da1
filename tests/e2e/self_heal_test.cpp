// Self-healing, end to end: another program changes or wipes splitd's footprint (as VPN
// clients and firewall managers do), splitd crashes, restarts, reloads. Measured against
// the real splitd in the lab: an owned table refuses, every other change is repaired
// within 100 ms (timed from the kernel's own events), a program that fights splitd gets
// backoff, and a counter on the wan side counts every packet for a tunnel-routed
// destination that leaks out the physical interface while this happens.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <mutex>
#include <thread>
#include <vector>

#include "tests/e2e/leak_counter.hpp"
#include "tests/e2e/splitd_process.hpp"
#include "tests/e2e/udp_client.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// The kernel's change events of host, read by a thread of the test as they happen and
// stamped on arrival: when another program's change arrived, and when splitd's repair.
class KernelEvents {
 public:
  struct Event {
    Clock::time_point at;
    bool nft = false;           // an nftables message (else rtnetlink)
    std::uint16_t type = 0;     // NFT_MSG_* or RTM_*
    std::uint32_t gen_pid = 0;  // NFT_MSG_NEWGEN: the pid of the process that committed
  };

  KernelEvents(const lab::Lab& lab) {
    lab.in_ns(lab.host_ns(), [&] {
      nft_ = Fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_NETFILTER));
      rt_ = Fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE));
    });
    if (!nft_ || !rt_) throw std::runtime_error("netlink sockets");
    sockaddr_nl a{};
    a.nl_family = AF_NETLINK;
    if (::bind(nft_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::bind(rt_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      throw std::runtime_error("netlink bind");
    }
    const int nft_group = NFNLGRP_NFTABLES;
    ::setsockopt(nft_.get(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &nft_group, sizeof nft_group);
    for (int g : {RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE}) {
      ::setsockopt(rt_.get(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof g);
    }
    const int big = 4 << 20;
    ::setsockopt(nft_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    ::setsockopt(rt_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
    reader_ = std::thread([this] { read_loop(); });
  }
  ~KernelEvents() {
    stop_ = true;
    reader_.join();
  }

  void clear() {
    std::lock_guard lock(mu_);
    events_.clear();
  }

  // The time from the first event of another program's nftables change to the first
  // commit of a different process after it (splitd's repair); nullopt if none came
  // within `timeout`.
  std::optional<double> nft_repair_ms(std::chrono::milliseconds timeout = 2s) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        std::optional<Clock::time_point> first;
        std::uint32_t culprit = 0;
        for (const auto& e : events_) {
          if (!e.nft) continue;
          if (!first) first = e.at;
          if (e.type != NFT_MSG_NEWGEN) continue;
          if (culprit == 0) {
            culprit = e.gen_pid;
          } else if (e.gen_pid != culprit) {
            return ms_between(*first, e.at);
          }
        }
      }
      std::this_thread::sleep_for(1ms);
    }
    return std::nullopt;
  }

  // The time from the first rtnetlink event of type `removed` to the first of type
  // `added` after it.
  std::optional<double> rtnl_repair_ms(std::uint16_t removed, std::uint16_t added,
                                       std::chrono::milliseconds timeout = 2s) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      {
        std::lock_guard lock(mu_);
        std::optional<Clock::time_point> first;
        for (const auto& e : events_) {
          if (e.nft) continue;
          if (!first && e.type == removed) first = e.at;
          if (first && e.type == added) return ms_between(*first, e.at);
        }
      }
      std::this_thread::sleep_for(1ms);
    }
    return std::nullopt;
  }

 private:
  void read_loop() {
    std::vector<std::uint8_t> buf(1 << 16);
    while (!stop_) {
      pollfd p[2] = {{nft_.get(), POLLIN, 0}, {rt_.get(), POLLIN, 0}};
      if (::poll(p, 2, 5) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (!(p[i].revents & POLLIN)) continue;
        for (;;) {
          const ssize_t n = ::recv(p[i].fd, buf.data(), buf.size(), 0);
          if (n <= 0) break;
          const auto at = Clock::now();
          std::lock_guard lock(mu_);
          int len = static_cast<int>(n);
          for (auto* m = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(m, len); m = NLMSG_NEXT(m, len)) {
            Event e;
            e.at = at;
            e.nft = i == 0;
            e.type = e.nft ? static_cast<std::uint16_t>(m->nlmsg_type & 0xff) : m->nlmsg_type;
            if (e.nft && e.type == NFT_MSG_NEWGEN) {
              const auto* base = reinterpret_cast<const std::uint8_t*>(NLMSG_DATA(m)) + NLMSG_ALIGN(sizeof(nfgenmsg));
              const auto* end = reinterpret_cast<const std::uint8_t*>(m) + m->nlmsg_len;
              while (base + sizeof(nlattr) <= end) {
                const auto* at_hdr = reinterpret_cast<const nlattr*>(base);
                if (at_hdr->nla_len < sizeof(nlattr) || base + at_hdr->nla_len > end) break;
                if ((at_hdr->nla_type & NLA_TYPE_MASK) == NFTA_GEN_PROC_PID && at_hdr->nla_len >= 8) {
                  std::uint32_t v;
                  std::memcpy(&v, base + sizeof(nlattr), 4);
                  e.gen_pid = ntohl(v);
                }
                base += NLA_ALIGN(at_hdr->nla_len);
              }
            }
            events_.push_back(e);
          }
        }
      }
    }
  }

  Fd nft_, rt_;
  std::atomic<bool> stop_{false};
  std::thread reader_;
  std::mutex mu_;
  std::vector<Event> events_;
};

// Traffic of the host's apps to the tunnel-routed servers while a test runs: a UDP
// datagram (port 7 and DNS's 53) and a TCP connection attempt to each family's server
// every millisecond or so. Counts what it sent.
class TunnelTraffic {
 public:
  explicit TunnelTraffic(const lab::Lab& lab) : lab_(lab) {
    thread_ = std::thread([this] { lab_.in_ns(lab_.host_ns(), [this] { loop(); }); });
  }
  ~TunnelTraffic() { stop(); }
  void stop() {
    if (stop_.exchange(true)) return;
    thread_.join();
  }
  std::uint64_t sent() const { return sent_; }

 private:
  void loop() {
    Fd u4 = udp_socket(AF_INET), u6 = udp_socket(AF_INET6);
    std::vector<Fd> pending;
    unsigned round = 0;
    while (!stop_) {
      for (const char* ip : {lab::kServerB4, lab::kServerB6}) {
        const int fd = std::strchr(ip, ':') ? u6.get() : u4.get();
        if (send_to(fd, ip, lab::kUdpPort, "leak?")) sent_++;
        if (send_to(fd, ip, 53, "\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01")) sent_++;
        if (round % 4 == 0) {
          const Addr a = addr(ip, 80);
          Fd t(::socket(a.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
          ::connect(t.get(), reinterpret_cast<const sockaddr*>(&a.ss), a.len);
          sent_++;
          pending.push_back(std::move(t));
        }
      }
      if (pending.size() > 64) pending.erase(pending.begin(), pending.begin() + 32);
      ++round;
      std::this_thread::sleep_for(1ms);
    }
  }

  const lab::Lab& lab_;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> sent_{0};
  std::thread thread_;
};

void expect_split_works(const lab::Lab& lab) {
  EXPECT_TRUE(starts_with(curl(lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  EXPECT_TRUE(starts_with(curl(lab, "http://198.51.100.10/"), "vpn "));
}

// utime + stime of a process, in seconds.
double cpu_seconds(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14) utime = std::stoull(f);
    if (i == 15) stime = std::stoull(f);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

std::string metrics(const lab::Lab& lab) {
  return lab.exec(lab.host_ns(), "curl -s --max-time 5 --unix-socket " + api_socket_path(lab) + " http://splitd/metrics")
      .out;
}

// The default: the table is owned, so other programs cannot delete or change it and
// `nft flush ruleset` passes it by. Checked with the nft CLI, as another program.
TEST(SelfHeal, AnOwnedTableRefusesOtherPrograms) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  const std::string m = metrics(*lab);
  if (m.find("splitd_firewall_table_owned 1") == std::string::npos) {
    GTEST_SKIP() << "this kernel does not let splitd own its table (NFT_TABLE_F_OWNER, Linux >= 5.12): " << m;
  }
  const std::string before = lab->exec(lab->host_ns(), "nft list table inet splitd").out;
  for (const char* cmd : {"nft delete table inet splitd", "nft flush chain inet splitd output",
                          "nft delete chain inet splitd postrouting", "nft insert rule inet splitd output accept",
                          "nft flush set inet splitd never4", "nft add element inet splitd never4 '{ 198.51.100.0/24 }'"}) {
    const auto r = lab->exec(lab->host_ns(), cmd);
    EXPECT_NE(r.exit_code, 0) << cmd << " was allowed";
    EXPECT_NE(r.err.find("Operation not permitted"), std::string::npos) << cmd << ": " << r.err;
  }
  EXPECT_EQ(lab->exec(lab->host_ns(), "nft flush ruleset").exit_code, 0);
  EXPECT_EQ(lab->exec(lab->host_ns(), "nft list table inet splitd").out, before);
  expect_split_works(*lab);
  EXPECT_EQ(splitd->log().find("restoring it"), std::string::npos) << "nothing needed repair";
  EXPECT_EQ(splitd->terminate(), 0);
  EXPECT_EQ(lab->exec(lab->host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
}

// Not owned (firewall.table_owner = false, or a kernel older than 5.12): every change is
// heard from the kernel's events and repaired in one batch. The time from the arrival of
// the other program's change to the arrival of splitd's repair, as seen by a third
// listener, is under 100 ms for each kind of change.
TEST(SelfHeal, EveryChangeIsRepairedWithin100ms) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers, "", "table_owner = false"));
  KernelEvents events(*lab);
  struct Case {
    const char* cmd;
    bool nft;
    std::uint16_t removed, added;  // rtnetlink cases
  };
  const Case cases[] = {
      {"nft delete table inet splitd", true, 0, 0},
      {"nft flush chain inet splitd output", true, 0, 0},
      {"nft delete chain inet splitd postrouting", true, 0, 0},
      {"nft insert rule inet splitd output accept", true, 0, 0},
      {"nft flush set inet splitd never4", true, 0, 0},
      {"nft flush ruleset", true, 0, 0},
      {"ip rule del fwmark 0x5d1", false, RTM_DELRULE, RTM_NEWRULE},
      {"ip -6 rule del fwmark 0x5d1", false, RTM_DELRULE, RTM_NEWRULE},
      {"ip route del local default dev lo table 1501", false, RTM_DELROUTE, RTM_NEWROUTE},
  };
  double worst = 0;
  for (const Case& c : cases) {
    std::vector<double> samples;
    for (int round = 0; round < 2; ++round) {
      // Well below the 20 repairs per 10 s that count as a fight: pause between rounds.
      std::this_thread::sleep_for(700ms);
      events.clear();
      const auto r = lab->exec(lab->host_ns(), c.cmd);
      ASSERT_EQ(r.exit_code, 0) << c.cmd << ": " << r.err;
      const auto ms = c.nft ? events.nft_repair_ms() : events.rtnl_repair_ms(c.removed, c.added);
      ASSERT_TRUE(ms) << c.cmd << ": no repair seen\n" << splitd->log();
      samples.push_back(*ms);
    }
    std::sort(samples.begin(), samples.end());
    std::printf("  repair after `%s`: %.2f ms, %.2f ms\n", c.cmd, samples[0], samples[1]);
    worst = std::max(worst, samples[1]);
    EXPECT_LT(samples[1], 100.0) << c.cmd;
  }
  RecordProperty("worst_repair_ms", std::to_string(worst));
  std::this_thread::sleep_for(100ms);
  expect_split_works(*lab);
  EXPECT_EQ(lab->exec(lab->host_ns(), "ip rule | grep -c fwmark").out, "1\n");
  EXPECT_EQ(lab->exec(lab->host_ns(), "ip -6 rule | grep -c fwmark").out, "1\n");
  EXPECT_NE(lab->exec(lab->host_ns(), "nft list chain inet splitd output").out.find("intercept TCP"),
            std::string::npos);
  const std::string m = metrics(*lab);
  EXPECT_NE(m.find("splitd_firewall_changes_total{what=\"nftables\"}"), std::string::npos) << m;
  EXPECT_EQ(m.find("splitd_firewall_changes_total{what=\"nftables\"} 0\n"), std::string::npos) << m;
  EXPECT_NE(m.find("splitd_firewall_table_owned 0"), std::string::npos) << m;
  // The culprit is named.
  EXPECT_NE(splitd->log().find("changed by nft (pid "), std::string::npos) << splitd->log();
  EXPECT_EQ(splitd->terminate(), 0);
}

// A program that keeps deleting the table (a VPN client's reload loop): splitd repairs
// the first few at once, then backs off with a loud error, and never spins.
TEST(SelfHeal, AProgramThatFightsGetsBackoffNotABusyLoop) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers, "", "table_owner = false"));
  const double cpu_before = cpu_seconds(splitd->pid());
  const auto r = lab->exec(lab->host_ns(),
                           "end=$(($(date +%s%N) + 3000000000)); n=0; "
                           "while [ $(date +%s%N) -lt $end ]; do nft delete table inet splitd 2>/dev/null && "
                           "n=$((n+1)); sleep 0.02; done; echo $n",
                           10s);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const int deletions = std::stoi(r.out);
  const std::string log = splitd->log();
  std::size_t repairs = 0;
  for (std::size_t at = log.find("firewall: restored ("); at != std::string::npos;
       at = log.find("firewall: restored (", at + 1)) {
    ++repairs;
  }
  std::printf("  %d deletions in 3 s, %zu repairs\n", deletions, repairs);
  EXPECT_NE(log.find("another program keeps undoing splitd's footprint"), std::string::npos) << log;
  EXPECT_GE(deletions, 21);  // enough to count as a fight
  // Not a busy loop: splitd's CPU time during the 3 s fight.
  const double cpu = cpu_seconds(splitd->pid()) - cpu_before;
  std::printf("  splitd used %.2f s of CPU during the fight\n", cpu);
  EXPECT_LT(cpu, 0.5);
  // 20 at once, then 100, 200, 400, 800 ms... apart: far fewer repairs than deletions.
  EXPECT_LE(repairs, 28u);
  // Once the fight stops, the footprint is back within the longest backoff.
  const auto deadline = Clock::now() + 7s;
  while (Clock::now() < deadline &&
         lab->exec(lab->host_ns(), "nft list table inet splitd >/dev/null 2>&1").exit_code != 0) {
    std::this_thread::sleep_for(100ms);
  }
  std::this_thread::sleep_for(50ms);
  expect_split_works(*lab);
  EXPECT_NE(metrics(*lab).find("splitd_firewall_repair_backoffs_total "), std::string::npos);
  EXPECT_EQ(splitd->terminate(), 0);
}

// While splitd is dead with the kill switch on, its table stays (owned and persistent,
// or not owned): tunnel-routed traffic does not leak, intercepted traffic is refused
// rather than sent along the system's routes. `splitd cleanup` gives the host back its
// own routes; a restart takes the table over.
TEST(SelfHeal, ACrashWithTheKillSwitchOnLeaksNothingAndCleanupGivesTheHostBack) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{false});
  add_leak_counter(*lab);
  const std::string cfg = lab_config("exclude", kExcludeWanServers);
  auto splitd = SplitdProcess::start(*lab, cfg);
  expect_split_works(*lab);
  const std::uint64_t before = leaked_packets(*lab);
  splitd->kill_hard();
  EXPECT_NE(lab->exec(lab->host_ns(), "nft list tables").out.find("inet splitd"), std::string::npos);
  {
    TunnelTraffic traffic(*lab);
    std::this_thread::sleep_for(500ms);
    traffic.stop();
    EXPECT_GT(traffic.sent(), 100u);
    std::printf("  dead splitd: %llu packets sent to tunnel-routed servers, %llu leaked\n",
                static_cast<unsigned long long>(traffic.sent()),
                static_cast<unsigned long long>(leaked_packets(*lab) - before));
  }
  EXPECT_EQ(leaked_packets(*lab), before);
  // Direct destinations are refused too while splitd is dead (fail closed, not black
  // holed: the refusal is immediate and systemd restarts splitd within a second).
  EXPECT_FALSE(starts_with(curl(*lab, "--max-time 2 http://203.0.113.10/"), "wan"));
  const auto c = lab->exec(lab->host_ns(), std::string(splitd_path()) + " cleanup");
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(lab->exec(lab->host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
  EXPECT_EQ(lab->exec(lab->host_ns(), "ip rule").out.find("fwmark"), std::string::npos);
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan 198.18.1.2 "));
  // A second crash, then a restart over the leftover table.
  splitd = SplitdProcess::start(*lab, cfg);
  splitd->kill_hard();
  splitd = SplitdProcess::start(*lab, cfg);
  expect_split_works(*lab);
  EXPECT_EQ(lab->exec(lab->host_ns(), "ip rule | grep -c fwmark").out, "1\n");
  EXPECT_EQ(splitd->terminate(), 0);
  EXPECT_EQ(lab->exec(lab->host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
}

// A start with interception disabled (splitctl disable, kept in state_dir) after a crash
// removes the crashed run's table: the kill switch it kept closed must not outlive a
// splitd told to stay out of the way.
TEST(SelfHeal, AStartWithInterceptionDisabledRemovesACrashedRunsTable) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string cfg = lab_config("exclude", kExcludeWanServers);
  const std::string api = "curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X POST --unix-socket " +
                          api_socket_path(*lab) + " http://splitd/api/v1/";
  const std::string state = lab->state_dir() + "/splitd-state/rules.json";
  auto splitd = SplitdProcess::start(*lab, cfg);
  ASSERT_EQ(lab->exec(lab->host_ns(), api + "disable").out, "200");
  ASSERT_EQ(lab->exec(lab->host_ns(), "cp " + state + " " + state + ".disabled").exit_code, 0);
  ASSERT_EQ(lab->exec(lab->host_ns(), api + "enable").out, "200");
  splitd->kill_hard();
  ASSERT_NE(lab->exec(lab->host_ns(), "nft list tables").out.find("inet splitd"), std::string::npos);
  ASSERT_EQ(lab->exec(lab->host_ns(), "mv " + state + ".disabled " + state).exit_code, 0);
  splitd = SplitdProcess::start(*lab, cfg);
  ASSERT_TRUE(splitd->wait_for_log("interception is disabled")) << splitd->log();
  EXPECT_EQ(lab->exec(lab->host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
  // The host's own routes (the VPN's default route) carry everything.
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn "));
  EXPECT_EQ(splitd->terminate(), 0);
}

// Without the kill switch (on_tunnel_down = "direct") a crashed splitd's owned table
// goes with it: the host falls back to its own routes at once, nothing is black-holed.
TEST(SelfHeal, ACrashWithoutTheKillSwitchLeavesTheHostItsRoutes) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers, "", "on_tunnel_down = \"direct\""));
  if (metrics(*lab).find("splitd_firewall_table_owned 1") == std::string::npos) {
    GTEST_SKIP() << "this kernel does not let splitd own its table (Linux >= 5.12)";
  }
  splitd->kill_hard();
  EXPECT_EQ(lab->exec(lab->host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
  // The system's routes: the VPN's default route takes everything.
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn "));
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn "));
  const auto c = lab->exec(lab->host_ns(), std::string(splitd_path()) + " cleanup");
  EXPECT_EQ(c.exit_code, 0) << c.err;
  EXPECT_EQ(lab->exec(lab->host_ns(), "ip rule").out.find("fwmark"), std::string::npos);
}

// The leak matrix: with the kill switch on, in exclude and in include mode, with the
// table owned (the default) and not, traffic to tunnel-routed servers (UDP, DNS, TCP;
// IPv4 and IPv6) runs while the footprint goes through everything another program or a
// crash can do to it. The VPN has no default route here: whatever is not held by
// splitd's footprint follows the host's default route out the physical side and is
// counted there.
struct MatrixCase {
  const char* mode;
  bool owned;
};

class LeakMatrix : public ::testing::TestWithParam<MatrixCase> {};

TEST_P(LeakMatrix, TunnelRoutedTrafficNeverLeavesByThePhysicalSide) {
  const MatrixCase mc = GetParam();
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{false});
  add_leak_counter(*lab);
  const std::vector<std::string> ips = std::string(mc.mode) == "include"
                                           ? std::vector<std::string>{"198.51.100.0/24", "2001:db8:1::/64"}
                                           : kExcludeWanServers;
  const std::string cfg = lab_config(mc.mode, ips, "", mc.owned ? "" : "table_owner = false");
  auto splitd = SplitdProcess::start(*lab, cfg);
  if (mc.owned && metrics(*lab).find("splitd_firewall_table_owned 1") == std::string::npos) {
    GTEST_SKIP() << "this kernel does not let splitd own a table that outlives a crash (Linux >= 6.9)";
  }
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn "));

  const auto started = Clock::now();
  TunnelTraffic traffic(*lab);
  struct Step {
    std::string what;
    std::uint64_t leaked = 0;
  };
  std::vector<Step> steps;
  std::uint64_t mark = leaked_packets(*lab);
  const auto step = [&](const std::string& what, const std::function<void()>& act) {
    act();
    std::this_thread::sleep_for(300ms);
    const std::uint64_t now = leaked_packets(*lab);
    steps.push_back({what, now - mark});
    mark = now;
  };
  step("normal running", [] {});
  step("nft flush ruleset", [&] { lab->exec(lab->host_ns(), "nft flush ruleset"); });
  step("nft delete table inet splitd", [&] { lab->exec(lab->host_ns(), "nft delete table inet splitd"); });
  step("policy rules deleted", [&] {
    lab->exec(lab->host_ns(), "ip rule del fwmark 0x5d1; ip -6 rule del fwmark 0x5d1");
  });
  step("SIGHUP", [&] {
    splitd->signal(SIGHUP);
    ASSERT_TRUE(splitd->wait_for_log("reload:")) << splitd->log();
  });
  step("SIGKILL (dead for 300 ms)", [&] { splitd->kill_hard(); });
  step("restart", [&] { splitd = SplitdProcess::start(*lab, cfg); });
  traffic.stop();

  std::printf("  %s mode, table %s: %llu packets sent to tunnel-routed servers\n", mc.mode,
              mc.owned ? "owned" : "not owned", static_cast<unsigned long long>(traffic.sent()));
  for (const auto& s : steps) {
    std::printf("    %-32s %llu leaked\n", s.what.c_str(), static_cast<unsigned long long>(s.leaked));
  }
  EXPECT_GT(traffic.sent(), 1000u);
  // What 100 ms of this traffic is: the most a repair within 100 ms can let through.
  const std::uint64_t per_100ms = traffic.sent() * 100 / static_cast<std::uint64_t>(std::max<long long>(
                                      1, std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started).count()));
  std::printf("    (100 ms of this traffic: %llu packets)\n", static_cast<unsigned long long>(per_100ms));
  for (const auto& s : steps) {
    // The policy rules are rtnetlink's: no kernel lets splitd own them. While one is gone
    // (until the repair, a few ms), the marked packets of locally started flows follow
    // the main table; see the README's leak table for the figure.
    if (s.what == "policy rules deleted") {
      EXPECT_LT(s.leaked, per_100ms) << s.what;
      continue;
    }
    // A table that is not owned can be deleted: the packets sent before the repair
    // landed (a few ms) follow the system's routes.
    if (!mc.owned && (s.what == "nft flush ruleset" || s.what == "nft delete table inet splitd")) {
      EXPECT_LT(s.leaked, per_100ms) << s.what;
      continue;
    }
    EXPECT_EQ(s.leaked, 0u) << s.what;
  }
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn "));
  EXPECT_EQ(splitd->terminate(), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, LeakMatrix,
                         ::testing::Values(MatrixCase{"exclude", true}, MatrixCase{"include", true},
                                           MatrixCase{"exclude", false}, MatrixCase{"include", false}),
                         [](const auto& info) {
                           return std::string(info.param.mode) + (info.param.owned ? "Owned" : "NotOwned");
                         });

}  // namespace
}  // namespace splitd::e2e
