// ExecCgroups against the real cgroup2 hierarchy (needs root): create, adopt, move a child
// process, populated, remove.
#include "cgroup/exec_cgroups.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "tests/cgroup/cgroup_lab.hpp"

namespace splitd::cgroup {
namespace {

using testing::SleepingChild;
using testing::TestCgroupDir;

std::string cgroup_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
  std::stringstream ss;
  ss << in.rdbuf();
  return own_cgroup(ss.str()).value_or("?");
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

class ExecCgroupsLab : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string reason;
    h_ = testing::hierarchy_or_reason(reason);
    if (!h_) GTEST_SKIP() << reason;
    dir_ = std::make_unique<TestCgroupDir>(*h_, "exec");
    ASSERT_TRUE(dir_->ok()) << dir_->error();
  }
  void TearDown() override {
    child_.reset();  // kill and reap before the cgroups go
    dir_.reset();
  }

  std::optional<testing::Hierarchy> h_;
  std::unique_ptr<TestCgroupDir> dir_;
  std::unique_ptr<SleepingChild> child_;
};

TEST_F(ExecCgroupsLab, CreateMoveRemove) {
  const std::string base = dir_->relative() + "/nested/splitd-exec";
  auto made = ExecCgroups::create(h_->mount, base);
  ASSERT_TRUE(made) << made.error().message();
  ExecCgroups& ec = **made;
  EXPECT_EQ(ec.base(), base);
  EXPECT_EQ(ec.path(Route::kDirect), base + "/direct");
  EXPECT_EQ(ec.absolute_path(Route::kTunnel), join_mount(h_->mount, base + "/tunnel"));
  EXPECT_EQ(ec.id(Route::kDirect), cgroup_id_of(ec.absolute_path(Route::kDirect)));
  EXPECT_EQ(ec.id(Route::kTunnel), cgroup_id_of(ec.absolute_path(Route::kTunnel)));
  EXPECT_NE(ec.id(Route::kDirect), ec.id(Route::kTunnel));

  EXPECT_EQ(ec.route_of(ec.id(Route::kDirect), ""), Route::kDirect);
  EXPECT_EQ(ec.route_of(ec.id(Route::kTunnel), "/whatever"), Route::kTunnel);
  EXPECT_EQ(ec.route_of(12345678, base + "/tunnel/child/grandchild"), Route::kTunnel);
  EXPECT_EQ(ec.route_of(0, base + "/direct"), Route::kDirect);
  EXPECT_EQ(ec.route_of(0, base + "/directory"), std::nullopt);
  EXPECT_EQ(ec.route_of(0, base), std::nullopt);
  EXPECT_EQ(ec.route_of(1, "/"), std::nullopt);

  EXPECT_FALSE(ec.populated(Route::kTunnel));
  child_ = std::make_unique<SleepingChild>();
  ASSERT_GT(child_->pid(), 0);
  auto moved = ec.move(child_->pid(), Route::kTunnel);
  ASSERT_TRUE(moved) << moved.error().message();
  EXPECT_EQ(cgroup_of(child_->pid()), base + "/tunnel");
  EXPECT_TRUE(ec.populated(Route::kTunnel));
  EXPECT_FALSE(ec.populated(Route::kDirect));
  moved = ec.move(child_->pid(), Route::kDirect);
  ASSERT_TRUE(moved) << moved.error().message();
  EXPECT_EQ(cgroup_of(child_->pid()), base + "/direct");

  // A restart adopts the cgroups and their processes.
  auto again = ExecCgroups::create(h_->mount, base);
  ASSERT_TRUE(again) << again.error().message();
  EXPECT_EQ((*again)->id(Route::kDirect), ec.id(Route::kDirect));
  EXPECT_TRUE((*again)->populated(Route::kDirect));

  // Busy: the process stays, and so does its cgroup.
  auto removed = ec.remove();
  ASSERT_FALSE(removed);
  EXPECT_EQ(removed.error().code, Errc::kBusy);
  EXPECT_NE(removed.error().message().find(ec.absolute_path(Route::kDirect)), std::string::npos)
      << removed.error().message();
  EXPECT_TRUE(exists(ec.absolute_path(Route::kDirect)));
  EXPECT_FALSE(exists(ec.absolute_path(Route::kTunnel)));  // the empty one went
  EXPECT_EQ(cgroup_of(child_->pid()), base + "/direct");

  child_->kill();
  Expected<void, Error> last = unexpected(Error{});
  for (int i = 0; i < 100; ++i) {  // the kernel drops "populated" shortly after the reap
    last = ec.remove();
    if (last) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(last) << last.error().message();
  EXPECT_FALSE(exists(join_mount(h_->mount, base)));
  EXPECT_TRUE(exists(join_mount(h_->mount, dir_->relative() + "/nested")));  // not ours to remove
}

TEST_F(ExecCgroupsLab, RemovesEmptyChildCgroups) {
  const std::string base = dir_->relative() + "/splitd-exec";
  auto made = ExecCgroups::create(h_->mount, base);
  ASSERT_TRUE(made) << made.error().message();
  ASSERT_EQ(::mkdir(((*made)->absolute_path(Route::kTunnel) + "/sub").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(((*made)->absolute_path(Route::kTunnel) + "/sub/deeper").c_str(), 0755), 0);
  auto removed = (*made)->remove();
  ASSERT_TRUE(removed) << removed.error().message();
  EXPECT_FALSE(exists(join_mount(h_->mount, base)));
}

TEST_F(ExecCgroupsLab, MoveErrors) {
  auto made = ExecCgroups::create(h_->mount, dir_->relative() + "/splitd-exec");
  ASSERT_TRUE(made) << made.error().message();
  ExecCgroups& ec = **made;
  EXPECT_EQ(ec.move(0, Route::kDirect).error().code, Errc::kInvalid);
  EXPECT_EQ(ec.move(-1, Route::kDirect).error().code, Errc::kInvalid);
  // A reaped child's pid: no such process.
  const pid_t gone = ::fork();
  if (gone == 0) ::_exit(0);
  int status = 0;
  ::waitpid(gone, &status, 0);
  const auto r = ec.move(gone, Route::kTunnel);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kNoSuchProcess) << r.error().message();
  EXPECT_NE(r.error().message().find(std::to_string(gone)), std::string::npos);
  ASSERT_TRUE(ec.remove());
  // The cgroups are gone: a clear error, not a crash.
  EXPECT_EQ(ec.move(gone, Route::kTunnel).error().code, Errc::kNotFound);
  EXPECT_FALSE(ec.populated(Route::kTunnel));
}

TEST_F(ExecCgroupsLab, RejectsBadBases) {
  EXPECT_EQ(ExecCgroups::create(h_->mount, "/").error().code, Errc::kInvalid);
  EXPECT_EQ(ExecCgroups::create(h_->mount, "").error().code, Errc::kInvalid);
  EXPECT_EQ(ExecCgroups::create(h_->mount, "relative").error().code, Errc::kInvalid);
  EXPECT_EQ(ExecCgroups::create(h_->mount, dir_->relative() + "/../x").error().code, Errc::kInvalid);
  // A plain directory is no cgroup2 hierarchy.
  char tmpl[] = "/tmp/splitd-ec-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const auto r = ExecCgroups::create(tmpl, "/splitd-exec");
  EXPECT_FALSE(r);
  if (!r) {
    EXPECT_EQ(r.error().code, Errc::kNoCgroup2) << r.error().message();
  }
  std::error_code ignored;
  std::filesystem::remove_all(tmpl, ignored);
}

}  // namespace
}  // namespace splitd::cgroup
