// Least privilege end to end: the real splitd in the lab, once set up, holds only the
// capabilities it keeps (and runs as the user splitd when one exists), read back from
// /proc/PID/task/*/status, and still splits by IP and by app, answers UDP from a
// privileged port, moves processes for `splitctl exec`, reloads on SIGHUP and stops
// without leaving anything behind.
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cgroup/hierarchy.hpp"
#include "tests/e2e/splitd_process.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

// The user of this test run (daemon.user in its config): never the system's `splitd`,
// so that the splitd of another test running meanwhile does not switch to it.
const std::string& test_user() {
  static const std::string name = "sdtest" + std::to_string(::getpid());
  return name;
}

constexpr std::uint64_t bit(int cap) { return std::uint64_t{1} << cap; }

bool kernel_before_5_7() {
  utsname u{};
  int major = 0, minor = 0;
  if (::uname(&u) != 0 || std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major < 5 || (major == 5 && minor < 7);
}

// The set the daemon must hold in the lab, where app identification and exec cgroups work,
// as the user splitd and as root alike.
std::uint64_t expected_caps() {
  std::uint64_t caps = bit(CAP_NET_ADMIN) | bit(CAP_NET_BIND_SERVICE) | bit(CAP_SYS_PTRACE) | bit(CAP_DAC_READ_SEARCH) |
                        bit(CAP_DAC_OVERRIDE);
  if (kernel_before_5_7()) caps |= bit(CAP_NET_RAW);
  return caps;
}

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SPLITD_TEST_SANITIZER 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__) || defined(SPLITD_TEST_SANITIZER)
constexpr bool kSanitizerBuild = true;  // a sanitizer runtime's thread blocks every signal: splitd cannot reach it
#else
constexpr bool kSanitizerBuild = false;
#endif

struct ThreadStatus {
  pid_t tid = 0;
  std::uint64_t eff = 0, prm = 0, bnd = 0, inh = 0, amb = 0, blocked = 0;
  std::string no_new_privs, uids, gids;
};

std::vector<ThreadStatus> read_threads(pid_t pid) {
  std::vector<ThreadStatus> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(e.path() / "status");
    if (!in.is_open()) continue;
    ThreadStatus t;
    t.tid = static_cast<pid_t>(std::stol(e.path().filename().string()));
    for (std::string line; std::getline(in, line);) {
      const std::size_t colon = line.find(':');
      if (colon == std::string::npos) continue;
      const std::string key = line.substr(0, colon);
      std::string value = line.substr(colon + 1);
      value.erase(0, value.find_first_not_of(" \t"));
      const auto hex = [&] { return std::stoull(value, nullptr, 16); };
      if (key == "CapEff") t.eff = hex();
      else if (key == "CapPrm") t.prm = hex();
      else if (key == "CapBnd") t.bnd = hex();
      else if (key == "CapInh") t.inh = hex();
      else if (key == "CapAmb") t.amb = hex();
      else if (key == "SigBlk") t.blocked = hex();
      else if (key == "NoNewPrivs") t.no_new_privs = value;
      else if (key == "Uid") t.uids = value;
      else if (key == "Gid") t.gids = value;
    }
    out.push_back(t);
  }
  return out;
}

// "N\tN\tN\tN": real, effective, saved and file-system id all `id`.
std::string all_four(unsigned id) {
  const std::string s = std::to_string(id);
  return s + "\t" + s + "\t" + s + "\t" + s;
}

std::string hex(std::uint64_t v) {
  std::ostringstream s;
  s << std::hex << v;
  return s.str();
}

const std::string kCurlB = "curl -s --max-time 5 http://198.51.100.10/";
const std::string kPythonB =
    "/usr/bin/python3 -c \"import urllib.request;print(urllib.request.urlopen(\\\"http://198.51.100.10/\\\", "
    "timeout=5).read().decode())\"";

std::string out_of(const lab::CmdResult& r) { return r.exit_code == 0 ? r.out : "exit " + std::to_string(r.exit_code) + ": " + r.out + r.err; }

// Exclude mode: the wan servers' networks direct by IP, curl direct by its path (an app
// rule: needs /proc/PID/exe and /proc/PID/fd of a root process), the rest through the tunnel.
std::string config_with_app_rule(const std::string& user) {
  const std::string curl = std::filesystem::canonical("/usr/bin/curl").string();
  return "[daemon]\nlog_level = \"debug\"\nuser = \"" + user + "\"\n"
         "[split]\nmode = \"exclude\"\nips = [\"203.0.113.0/24\", \"2001:db8::/64\"]\n"
         "[[split.apps]]\nname = \"Curl\"\npath = \"" + curl + "\"\n"
         "[dns]\nenabled = false\n";
}

// The user test_user() for a test: created by this fixture, which always removes it
// (TearDown runs after failed assertions too).
class Privileges : public ::testing::Test {
 protected:
  // Users of earlier runs that were killed before their TearDown: their pid is gone.
  static void SetUpTestSuite() {
    std::ifstream passwd("/etc/passwd");
    std::string line;
    std::vector<std::string> stale;
    while (std::getline(passwd, line)) {
      const std::string name = line.substr(0, line.find(':'));
      if (name.rfind("sdtest", 0) != 0 || name.size() == 6 ||
          name.find_first_not_of("0123456789", 6) != std::string::npos) {
        continue;
      }
      if (::kill(static_cast<pid_t>(std::stol(name.substr(6))), 0) != 0 && errno == ESRCH) stale.push_back(name);
    }
    for (const auto& name : stale) lab::run_command({"userdel", "-f", name});
  }
  void TearDown() override { remove_user(); }

  static std::optional<passwd> find_user() {
    passwd* pw = ::getpwnam(test_user().c_str());
    if (pw == nullptr) return std::nullopt;
    return *pw;
  }

  // The user's uid and gid, creating it if needed; nullopt (with a failure) if it cannot be.
  std::optional<std::pair<uid_t, gid_t>> ensure_user() {
    if (!find_user()) {
      const auto r = lab::run_command(
          {"useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", test_user()});
      if (r.exit_code != 0) {
        ADD_FAILURE() << "useradd " << test_user() << ": " << r.err;
        return std::nullopt;
      }
      created_ = true;
    }
    const auto pw = find_user();
    if (!pw) return std::nullopt;
    return std::make_pair(pw->pw_uid, pw->pw_gid);
  }

  void remove_user() {
    if (!created_) return;
    created_ = false;
    // -f: a splitd of a failed test may still run as it; the fixture's user must go anyway.
    const auto r = lab::run_command({"userdel", "-f", test_user()});
    EXPECT_EQ(r.exit_code, 0) << "userdel " << test_user() << ": " << r.err;
  }

  bool created_ = false;
};

void expect_dropped(const SplitdProcess& splitd, std::uint64_t caps, uid_t uid, gid_t gid) {
  const auto threads = read_threads(splitd.pid());
  ASSERT_GT(threads.size(), 1u) << "splitd runs worker threads";
  for (const ThreadStatus& t : threads) {
    if (kSanitizerBuild && ((t.blocked >> (SIGRTMAX - 1)) & 1) != 0) continue;
    SCOPED_TRACE("thread " + std::to_string(t.tid));
    EXPECT_EQ(hex(t.eff), hex(caps));
    EXPECT_EQ(hex(t.prm), hex(caps));
    EXPECT_EQ(hex(t.bnd), hex(caps));
    EXPECT_EQ(t.inh, 0u);
    EXPECT_EQ(t.amb, 0u);
    EXPECT_EQ(t.no_new_privs, "1");
    EXPECT_EQ(t.uids, all_four(uid));
    EXPECT_EQ(t.gids, all_four(gid));
  }
}

lab::CmdResult splitctl(const lab::Lab& lab, const std::string& args) {
  return lab.exec(lab.host_ns(), std::string(SPLITCTL_BINARY) + " --socket " + api_socket_path(lab) + " " + args);
}

// What needs each kept capability, after the drop: the path rule (CAP_SYS_PTRACE), the UDP
// reply from port 53 (CAP_NET_BIND_SERVICE), `splitctl exec` (CAP_DAC_OVERRIDE as the user),
// every flow (CAP_NET_ADMIN); then SIGHUP. The clean stop (removing the exec cgroups: their
// base's parent is the hierarchy's root, mode 0555) needs CAP_DAC_OVERRIDE even as root.
void check_daemon_works(const lab::Lab& lab, SplitdProcess& splitd) {
  EXPECT_TRUE(starts_with(curl(lab, "http://203.0.113.10/"), "wan 198.18.1.2 ")) << splitd.log();
  EXPECT_TRUE(starts_with(out_of(lab.exec(lab.host_ns(), kCurlB)), "wan 198.18.1.2 ")) << splitd.log();
  EXPECT_TRUE(starts_with(out_of(lab.exec(lab.host_ns(), kPythonB)), "vpn 198.18.2.2 ")) << splitd.log();
  EXPECT_EQ(out_of(lab.exec(lab.host_ns(), "dig @203.0.113.53 whoami.lab.test +short +time=2 +tries=1")),
            "203.0.113.10\n")
      << splitd.log();
  const auto exec = splitctl(lab, "exec --route direct -- " + kPythonB);
  EXPECT_EQ(exec.exit_code, 0) << exec.err << splitd.log();
  EXPECT_TRUE(starts_with(exec.out, "wan 198.18.1.2 ")) << exec.out << exec.err << splitd.log();

  // Reload: no IP and no app rule any more, everything through the tunnel.
  { std::ofstream(lab.state_dir() + "/splitd.toml") << with_lab_paths(lab, lab_config("exclude", {}), "splitd"); }
  splitd.signal(SIGHUP);
  ASSERT_TRUE(splitd.wait_for_log("reload: rules applied")) << splitd.log();
  EXPECT_TRUE(starts_with(curl(lab, "http://203.0.113.10/"), "vpn 198.18.2.2 ")) << splitd.log();
  EXPECT_TRUE(starts_with(out_of(lab.exec(lab.host_ns(), kCurlB)), "vpn 198.18.2.2 ")) << splitd.log();
}

void expect_clean_stop(const lab::Lab& lab, SplitdProcess& splitd) {
  EXPECT_EQ(splitd.terminate(), 0) << splitd.log();
  EXPECT_EQ(lab.exec(lab.host_ns(), "nft list tables").out.find("splitd"), std::string::npos);
  EXPECT_EQ(lab.exec(lab.host_ns(), "ip rule").out.find("fwmark"), std::string::npos);
  EXPECT_EQ(lab.exec(lab.host_ns(), "ip -6 rule").out.find("fwmark"), std::string::npos);
  EXPECT_EQ(lab.exec(lab.host_ns(), "ip route show table 1501").out, "");
  // The exec cgroups are gone too.
  if (auto mount = cgroup::cgroup2_mount()) {
    EXPECT_FALSE(std::filesystem::exists(*mount + "/splitd-lab-" + lab.id() + "-splitd")) << splitd.log();
  }
  EXPECT_FALSE(std::filesystem::exists(api_socket_path(lab))) << splitd.log();
  const std::string log = splitd.log();
  EXPECT_EQ(log.find(" ERROR "), std::string::npos) << log;
  EXPECT_EQ(log.find("exec cgroups kept"), std::string::npos) << log;
}

TEST_F(Privileges, DropsToTheSplitdUserAndItsCapabilitiesAndKeepsSplitting) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (the lab, and a user splitd it may create)";
  if (!cgroup::cgroup2_mount()) GTEST_SKIP() << "no cgroup2 hierarchy: app identification and exec are off";
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const auto ids = ensure_user();
  ASSERT_TRUE(ids);
  const auto [uid, gid] = *ids;
  auto splitd = SplitdProcess::start(*lab, config_with_app_rule(test_user()));
  ASSERT_TRUE(splitd->wait_for_log("privileges: running as user " + test_user())) << splitd->log();
  expect_dropped(*splitd, expected_caps(), uid, gid);
  // state_dir is the user's now (rule edits and learned names are written there).
  struct stat st {};
  ASSERT_EQ(::stat((lab->state_dir() + "/splitd-state").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, uid);

  check_daemon_works(*lab, *splitd);
  expect_dropped(*splitd, expected_caps(), uid, gid);  // a reload regains nothing
  expect_clean_stop(*lab, *splitd);
}

TEST_F(Privileges, WithoutASplitdUserStaysRootWithTheSameCapabilities) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (the lab)";
  if (!cgroup::cgroup2_mount()) GTEST_SKIP() << "no cgroup2 hierarchy: app identification and exec are off";
  ASSERT_FALSE(find_user()) << test_user() << " exists";
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, config_with_app_rule(test_user()));
  ASSERT_TRUE(splitd->wait_for_log("privileges: running as root")) << splitd->log();
  expect_dropped(*splitd, expected_caps(), 0, 0);
  check_daemon_works(*lab, *splitd);
  expect_dropped(*splitd, expected_caps(), 0, 0);
  expect_clean_stop(*lab, *splitd);
}

}  // namespace
}  // namespace splitd::e2e
