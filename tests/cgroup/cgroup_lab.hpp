#pragma once
// Helpers for the tests of cgroup/ against the real cgroup2 hierarchy (need root).

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "cgroup/hierarchy.hpp"

namespace splitd::cgroup::testing {

struct Hierarchy {
  std::string mount;  // "/sys/fs/cgroup/unified"
  std::string own;    // the test process's cgroup, relative to the mount
};

// The cgroup2 mount and our own cgroup, or why the test cannot run.
inline std::optional<Hierarchy> hierarchy_or_reason(std::string& reason) {
  if (::geteuid() != 0) {
    reason = "needs root (creates cgroups under the real cgroup2 hierarchy)";
    return std::nullopt;
  }
  auto mount = cgroup2_mount();
  if (!mount) {
    reason = "no cgroup2 hierarchy: " + mount.error().message();
    return std::nullopt;
  }
  auto own = own_cgroup();
  if (!own) {
    reason = "cannot read our cgroup: " + own.error().message();
    return std::nullopt;
  }
  return Hierarchy{*mount, *own};
}

// Removes a directory tree of cgroups, deepest first (cgroupfs only allows rmdir).
inline void remove_cgroup_tree(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return;
  std::vector<std::filesystem::path> children;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.is_directory(ec) && !e.is_symlink(ec)) children.push_back(e.path());
  }
  for (const auto& c : children) remove_cgroup_tree(c);
  ::rmdir(dir.c_str());
}

// A unique directory of test cgroups under our own cgroup; removes everything below it
// (and itself) on destruction, also when the test fails.
class TestCgroupDir {
 public:
  TestCgroupDir(const Hierarchy& h, const std::string& tag) {
    static std::atomic<int> counter{0};
    relative_ = (h.own == "/" ? std::string() : h.own) + "/splitd-test-" + tag + "-" +
                std::to_string(::getpid()) + "-" + std::to_string(counter++);
    absolute_ = join_mount(h.mount, relative_);
    ok_ = std::filesystem::create_directory(absolute_, ec_);
  }
  ~TestCgroupDir() { remove_cgroup_tree(absolute_); }
  TestCgroupDir(const TestCgroupDir&) = delete;
  TestCgroupDir& operator=(const TestCgroupDir&) = delete;

  bool ok() const { return ok_; }
  std::string error() const { return absolute_ + ": " + ec_.message(); }
  const std::string& relative() const { return relative_; }
  const std::string& absolute() const { return absolute_; }

 private:
  std::string relative_;
  std::string absolute_;
  std::error_code ec_;
  bool ok_ = false;
};

// A child process running `sleep 60`; killed and reaped on destruction.
class SleepingChild {
 public:
  SleepingChild() {
    pid_ = ::fork();
    if (pid_ == 0) {
      ::execlp("sleep", "sleep", "60", static_cast<char*>(nullptr));
      ::_exit(127);
    }
  }
  ~SleepingChild() { kill(); }
  SleepingChild(const SleepingChild&) = delete;
  SleepingChild& operator=(const SleepingChild&) = delete;

  pid_t pid() const { return pid_; }
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

}  // namespace splitd::cgroup::testing
