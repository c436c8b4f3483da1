#include "cgroup/hierarchy.hpp"

#include <gtest/gtest.h>

#include <filesystem>

namespace splitd::cgroup {
namespace {

constexpr std::string_view kHybrid =
    "22 27 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:9 - cgroup cgroup rw,name=systemd\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate\n";

TEST(FindCgroup2Mount, Hybrid) {
  EXPECT_EQ(find_cgroup2_mount(kHybrid), "/sys/fs/cgroup/unified");
}

TEST(FindCgroup2Mount, Unified) {
  EXPECT_EQ(find_cgroup2_mount("35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - "
                               "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot"),
            "/sys/fs/cgroup");
}

TEST(FindCgroup2Mount, NoOptionalFields) {
  EXPECT_EQ(find_cgroup2_mount("41 31 0:38 / /cg rw - cgroup2 none rw\n"), "/cg");
}

TEST(FindCgroup2Mount, ManyOptionalFields) {
  EXPECT_EQ(find_cgroup2_mount("41 31 0:38 / /cg rw shared:1 master:2 propagate_from:3 unbindable - cgroup2 x rw\n"),
            "/cg");
}

TEST(FindCgroup2Mount, OctalEscapes) {
  EXPECT_EQ(find_cgroup2_mount("41 31 0:38 / /mnt/my\\040cgroups\\011x\\134y rw - cgroup2 cgroup2 rw\n"),
            "/mnt/my cgroups\tx\\y");
}

TEST(FindCgroup2Mount, FirstWins) {
  EXPECT_EQ(find_cgroup2_mount("1 0 0:1 / /a rw - cgroup2 c rw\n2 0 0:2 / /b rw - cgroup2 c rw\n"), "/a");
}

TEST(FindCgroup2Mount, NotPresentOrGarbage) {
  EXPECT_EQ(find_cgroup2_mount(""), std::nullopt);
  EXPECT_EQ(find_cgroup2_mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"), std::nullopt);
  EXPECT_EQ(find_cgroup2_mount("cgroup2\n - cgroup2\n1 2 3 4\n\n\n"), std::nullopt);
  // The fs type is "cgroup2" only after the separator, not as a mount point or option.
  EXPECT_EQ(find_cgroup2_mount("1 0 0:1 / /cgroup2 cgroup2 - tmpfs cgroup2 rw\n"), std::nullopt);
  EXPECT_EQ(find_cgroup2_mount("1 0 0:1 / relative rw - cgroup2 c rw\n"), std::nullopt);
  EXPECT_EQ(find_cgroup2_mount("1 0 0:1 / /x rw a b c d e f\n"), std::nullopt);  // no separator
  std::string many(100000, ' ');
  EXPECT_EQ(find_cgroup2_mount(many), std::nullopt);
  // A trailing line without a newline still counts.
  EXPECT_EQ(find_cgroup2_mount("1 0 0:1 / /x rw - tmpfs t rw\n2 0 0:2 / /y rw - cgroup2 c rw"), "/y");
  // A truncated escape is kept as is.
  EXPECT_EQ(find_cgroup2_mount("1 0 0:1 / /x\\04 rw - cgroup2 c rw"), "/x\\04");
}

TEST(OwnCgroup, V2Line) {
  EXPECT_EQ(own_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n"),
            "/user.slice/user-1000.slice/session-3.scope");
  EXPECT_EQ(own_cgroup("0::/\n"), "/");
}

TEST(OwnCgroup, HybridLines) {
  EXPECT_EQ(own_cgroup("12:pids:/user.slice\n1:name=systemd:/user.slice/x.scope\n0::/user.slice/x.scope\n"),
            "/user.slice/x.scope");
}

TEST(OwnCgroup, Missing) {
  EXPECT_EQ(own_cgroup(""), std::nullopt);
  EXPECT_EQ(own_cgroup("1:name=systemd:/\n"), std::nullopt);
  EXPECT_EQ(own_cgroup("0::\n"), std::nullopt);
  EXPECT_EQ(own_cgroup("0::relative\n"), std::nullopt);
  EXPECT_EQ(own_cgroup("10::/x\n"), std::nullopt);
}

TEST(OwnCgroup, PathWithSpaces) {
  EXPECT_EQ(own_cgroup("0::/a b/c\n"), "/a b/c");
}

TEST(JoinMount, Forms) {
  EXPECT_EQ(join_mount("/sys/fs/cgroup", "/"), "/sys/fs/cgroup");
  EXPECT_EQ(join_mount("/sys/fs/cgroup/", "/a/b"), "/sys/fs/cgroup/a/b");
  EXPECT_EQ(join_mount("/sys/fs/cgroup", ""), "/sys/fs/cgroup");
  EXPECT_EQ(join_mount("/", "/a"), "/a");
}

TEST(CgroupIdOf, InodeOfDirectory) {
  const auto tmp = std::filesystem::temp_directory_path();
  const auto id = cgroup_id_of(tmp.string());
  ASSERT_TRUE(id.has_value());
  EXPECT_NE(*id, 0u);
  EXPECT_EQ(cgroup_id_of("/nonexistent/splitd/x"), std::nullopt);
  EXPECT_EQ(cgroup_id_of("/proc/self/status"), std::nullopt);  // not a directory
}

TEST(Cgroup2Mount, ReadsThisMachine) {
  auto m = cgroup2_mount();
  if (!m) GTEST_SKIP() << "no cgroup2 mounted here: " << m.error().message();
  EXPECT_EQ(m->front(), '/');
  auto own = own_cgroup();
  ASSERT_TRUE(own) << own.error().message();
  EXPECT_EQ(own->front(), '/');
}

}  // namespace
}  // namespace splitd::cgroup
