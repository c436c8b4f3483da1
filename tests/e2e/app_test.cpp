// Per-app routing end to end: the real splitd in the lab, real programs (curl, python3,
// sh) in cgroups the test creates, app rules by comm, cgroup, unit and user, `splitctl exec`,
// and answers that say which way each flow went (wan = direct, vpn = tunnel).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "cgroup/hierarchy.hpp"
#include "tests/e2e/splitd_process.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

using nlohmann::json;

const char* splitctl_path() { return SPLITCTL_BINARY; }

// A cgroup of the test's own below the cgroup2 mount (cgroups are global: named after the
// lab), removed with every child when the test ends, its processes killed first.
class TestCgroup {
 public:
  static std::unique_ptr<TestCgroup> make(const lab::Lab& lab, const std::string& leaf) {
    auto mount = cgroup::cgroup2_mount();
    if (!mount) return nullptr;
    auto cg = std::unique_ptr<TestCgroup>(new TestCgroup);
    cg->mount_ = *mount;
    cg->rel_ = "/splitd-apptest-" + lab.id();
    cg->leaf_ = cg->rel_ + "/" + leaf;
    std::error_code ec;
    std::filesystem::create_directories(cg->mount_ + cg->leaf_, ec);
    return ec ? nullptr : std::move(cg);
  }
  ~TestCgroup() {
    // Depth first: kill what lives there, wait until empty, rmdir.
    std::vector<std::string> dirs;
    std::error_code ec;
    for (auto it = std::filesystem::recursive_directory_iterator(mount_ + rel_, ec);
         !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory()) dirs.push_back(it->path());
    }
    dirs.push_back(mount_ + rel_);
    std::sort(dirs.begin(), dirs.end(), [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    for (const auto& d : dirs) {
      std::ifstream procs(d + "/cgroup.procs");
      for (pid_t pid; procs >> pid;) ::kill(pid, SIGKILL);
      for (int i = 0; i < 100 && ::rmdir(d.c_str()) != 0 && errno == EBUSY; ++i) ::usleep(20000);
    }
  }
  // The path relative to the mount, as sock_diag's cgroup id maps to it.
  const std::string& path() const { return leaf_; }
  // `sh -c` that moves itself into the cgroup, then execs `cmd`. Lab commands run under
  // `ip netns exec`, whose fresh /sys has no cgroup mounts: the shell mounts the hierarchy
  // in that private mount namespace first.
  std::string run(const std::string& cmd) const {
    return "sh -c 'mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup; "
           "echo $$ > /sys/fs/cgroup" + leaf_ + "/cgroup.procs || exit 99; exec " + cmd + "'";
  }

 private:
  TestCgroup() = default;
  std::string mount_, rel_, leaf_;
};

std::string app_config(const std::string& mode, const std::string& apps, const std::string& ips = "") {
  return "[daemon]\nlog_level = \"debug\"\n[split]\nmode = \"" + mode + "\"\nips = [" + ips + "]\n" + apps +
         "[dns]\nenabled = false\n";
}

lab::CmdResult splitctl(const lab::Lab& lab, const std::string& args) {
  return lab.exec(lab.host_ns(), std::string(splitctl_path()) + " --socket " + api_socket_path(lab) + " " + args);
}

const std::string kUrl = "http://203.0.113.10/";
const std::string kCurl = "curl -s --max-time 5 " + kUrl;
// python3's HTTP client to the same server: which side answered.
const std::string kPython =
    "/usr/bin/python3 -c \"import urllib.request;print(urllib.request.urlopen(\\\"" + kUrl + "\\\", timeout=5).read().decode())\"";

bool has_cgroup2() { return cgroup::cgroup2_mount().has_value(); }

#define SKIP_WITHOUT_CGROUP2() \
  if (!has_cgroup2()) GTEST_SKIP() << "no cgroup2 hierarchy in /proc/self/mountinfo"

TEST(Apps, ACommRuleSendsCurlDirectWhilePython3TakesTheDefault) {
  SKIP_WITHOUT_CGROUP2();
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  // Both run in one cgroup, as a terminal's shells do: the socket's inode picks the process.
  auto cg = TestCgroup::make(*lab, "term.scope");
  ASSERT_TRUE(cg);
  auto splitd = SplitdProcess::start(*lab, app_config("exclude", "[[split.apps]]\nname = \"Curl\"\ncomm = \"curl\"\n"));
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), cg->run(kCurl)).out, "wan")) << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), cg->run(kPython)).out, "vpn")) << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), kCurl).out, "wan"));  // outside the cgroup too
  EXPECT_TRUE(splitd->wait_for_log("app Curl")) << splitd->log();
  // A held connection shows its app in the listing, found when listed (no rule needed
  // python3's process).
  auto held = lab->exec(lab->host_ns(), cg->run(R"X(/usr/bin/python3 -c "import socket,time;s=socket.create_connection((\"203.0.113.10\",9000));s.recv(100);time.sleep(3)" & sleep 1; )X" +
                                                 std::string(splitctl_path()) + " --socket " + api_socket_path(*lab) +
                                                 " --json connections; wait"));
  const json list = json::parse(held.out, nullptr, false);
  ASSERT_TRUE(list.is_array()) << held.out << held.err;
  bool seen = false;
  for (const auto& c : list) {
    if (c["app"].is_object() && c["app"]["comm"] == "python3") {
      seen = true;
      EXPECT_EQ(c["app"]["cgroup"], cg->path()) << c.dump();
      EXPECT_EQ(c["app"]["uid"], 0) << c.dump();
      EXPECT_EQ(c["app"]["unit"], "term.scope") << c.dump();
      EXPECT_EQ(c["rule"], "default") << c.dump();
      EXPECT_TRUE(c["app"]["pid"].is_number()) << c.dump();
      EXPECT_EQ(c["app"]["found_by"], "sock_diag+cgroup+proc") << c.dump();
    }
  }
  EXPECT_TRUE(seen) << list.dump();
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(Apps, CgroupAndUnitRulesOnTheTestsOwnCgroups) {
  SKIP_WITHOUT_CGROUP2();
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto slack = TestCgroup::make(*lab, "app-gnome-com.slack.Slack-4242.scope");
  auto svc = TestCgroup::make(*lab, "transmission-daemon.service");
  auto other = TestCgroup::make(*lab, "other.scope");
  ASSERT_TRUE(slack && svc && other);
  const std::string apps = "[[split.apps]]\nname = \"Slack\"\napp_id = \"slack\"\n"
                           "[[split.apps]]\nname = \"Torrents\"\nunit = \"transmission-daemon.service\"\n"
                           "[[split.apps]]\nname = \"Tree\"\ncgroup = \"/splitd-apptest-*/nothing-*.scope\"\n";
  // The cgroups exist before splitd starts (the walk) and after (inotify): both are found.
  auto late = TestCgroup::make(*lab, "nothing-1.scope");
  auto splitd = SplitdProcess::start(*lab, app_config("exclude", apps));
  auto later = TestCgroup::make(*lab, "nothing-2.scope");
  ASSERT_TRUE(late && later);
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), slack->run(kCurl)).out, "wan")) << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), svc->run(kCurl)).out, "wan")) << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), late->run(kCurl)).out, "wan")) << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), later->run(kCurl)).out, "wan")) << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), other->run(kCurl)).out, "vpn")) << splitd->log();
  const std::string log = splitd->log();
  EXPECT_NE(log.find("app Slack"), std::string::npos) << log;
  EXPECT_NE(log.find("app Torrents"), std::string::npos) << log;
  EXPECT_NE(log.find("app Tree"), std::string::npos) << log;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(Apps, AUserRuleAndAUdpApp) {
  SKIP_WITHOUT_CGROUP2();
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, app_config("exclude", "[[split.apps]]\nname = \"Nobody\"\nuser = \"nobody\"\n"));
  const std::string udp =
      "/usr/bin/python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5);"
      "s.sendto(b\\\"hi\\\",(\\\"203.0.113.10\\\",9000));print(s.recv(2000).decode())\"";
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), "setpriv --reuid=65534 --regid=65534 --clear-groups " + udp).out, "wan"))
      << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), udp).out, "vpn")) << splitd->log();
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), "setpriv --reuid=65534 --regid=65534 --clear-groups " + kCurl).out, "wan"));
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(Apps, AnAppThatExitsBeforeItsFlowIsIdentifiedFallsThroughToTheIpRules) {
  SKIP_WITHOUT_CGROUP2();
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(
      *lab, app_config("exclude", "[[split.apps]]\nname = \"Py\"\ncomm = \"python3\"\n", "\"203.0.113.0/24\""));
  // splitd is stopped while the app sends one datagram and exits: when splitd reads the
  // datagram, its socket is gone. The app is unknown, the IP rule decides; it is counted.
  splitd->signal(SIGSTOP);
  lab->exec(lab->host_ns(),
            "/usr/bin/python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
            "s.sendto(b\\\"x\\\",(\\\"203.0.113.10\\\",9000));s.close()\"");
  splitd->signal(SIGCONT);
  json flow;
  for (int i = 0; i < 50 && flow.is_null(); ++i) {
    const auto r = splitctl(*lab, "--json connections --protocol udp");
    const json list = json::parse(r.out, nullptr, false);
    if (list.is_array() && !list.empty()) flow = list[0];
    if (flow.is_null()) ::usleep(100000);
  }
  ASSERT_FALSE(flow.is_null()) << splitd->log();
  EXPECT_EQ(flow["rule"], "ip 203.0.113.0/24") << flow.dump();
  EXPECT_EQ(flow["route"], "direct") << flow.dump();
  EXPECT_TRUE(flow["app"].is_null() || flow["app"]["found_by"] == "socket gone") << flow.dump();
  const auto m = lab->exec(lab->host_ns(), "curl -s --max-time 5 --unix-socket " + api_socket_path(*lab) + " http://x/metrics");
  EXPECT_NE(m.out.find("splitd_app_identifications_total{result=\"socket_gone\"} 1\n"), std::string::npos) << m.out;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(Apps, ExecRoutesAProgramAndTheChildrenOfAShell) {
  SKIP_WITHOUT_CGROUP2();
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, app_config("exclude", ""));
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), kCurl).out, "vpn"));
  auto r = splitctl(*lab, "exec --route direct -- " + kCurl);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(starts_with(r.out, "wan")) << r.out << r.err << splitd->log();
  // A shell's child, started after the move, is in the cgroup too.
  r = splitctl(*lab, "exec --route direct -- sh -c '" + kCurl + "; true'");
  EXPECT_TRUE(starts_with(r.out, "wan")) << r.out << r.err;
  // The exit status is the command's; a missing command is 127.
  EXPECT_EQ(splitctl(*lab, "exec --route direct -- sh -c 'exit 7'").exit_code, 7);
  EXPECT_EQ(splitctl(*lab, "exec --route direct -- /nonexistent/cmd").exit_code, 127);
  EXPECT_TRUE(splitd->wait_for_log("exec direct")) << splitd->log();
  EXPECT_EQ(splitd->terminate(), 0);
  // In include mode, exec --route tunnel sends one program through the tunnel.
  splitd = SplitdProcess::start(*lab, app_config("include", ""));
  EXPECT_TRUE(starts_with(lab->exec(lab->host_ns(), kCurl).out, "wan"));
  r = splitctl(*lab, "exec --route tunnel -- " + kCurl);
  EXPECT_TRUE(starts_with(r.out, "vpn")) << r.out << r.err << splitd->log();
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(Apps, ExecByANonRootUserForItsOwnProcessesOnly) {
  SKIP_WITHOUT_CGROUP2();
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, app_config("exclude", ""));
  // Let uid 65534 reach the socket (a member of group splitd could, by default).
  ASSERT_EQ(::chmod(api_socket_path(*lab).c_str(), 0666), 0);
  const std::string as_nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
  auto r = lab->exec(lab->host_ns(), as_nobody + splitctl_path() + " --socket " + api_socket_path(*lab) +
                                         " exec --route direct -- " + kCurl);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(starts_with(r.out, "wan")) << r.out << r.err << splitd->log();
  // Another user's process (pid 1, root's) is refused, and stays where it is.
  r = lab->exec(lab->host_ns(), as_nobody + "curl -s --max-time 5 --unix-socket " + api_socket_path(*lab) +
                                    " -H 'Content-Type: application/json' -d '{\"route\":\"direct\",\"pid\":\"1\"}'"
                                    " -w ' %{http_code}' http://x/api/v1/exec");
  EXPECT_NE(r.out.find(" 403"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("may move only its own processes"), std::string::npos) << r.out;
  std::ifstream self("/proc/1/cgroup");
  std::string text((std::istreambuf_iterator<char>(self)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find("splitd-lab-"), std::string::npos) << text;
  // Other changes still need root or group splitd.
  r = lab->exec(lab->host_ns(), as_nobody + splitctl_path() + " --socket " + api_socket_path(*lab) + " add ip 10.0.0.0/8");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(splitd->terminate(), 0);
}

}  // namespace
}  // namespace splitd::e2e
