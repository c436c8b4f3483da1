// CgroupMap against the real cgroup2 hierarchy (needs root): churn, nested creation,
// concurrent readers, the no-inotify fallback and the by-handle lookup.
#include "cgroup/cgroup_map.hpp"

#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "cgroup/file_util.hpp"
#include "tests/cgroup/cgroup_lab.hpp"

namespace splitd::cgroup {
namespace {

using testing::Hierarchy;
using testing::TestCgroupDir;

#define SPLITD_CGROUP_LAB_OR_SKIP(var)                      \
  std::string skip_reason_;                                 \
  auto var = testing::hierarchy_or_reason(skip_reason_);    \
  if (!var) GTEST_SKIP() << skip_reason_;

// mkdir below the mount; returns the new cgroup's id (0 on failure, with a test failure).
std::uint64_t make(const Hierarchy& h, const std::string& rel) {
  const std::string abs = join_mount(h.mount, rel);
  if (::mkdir(abs.c_str(), 0755) != 0) {
    ADD_FAILURE() << "mkdir " << abs << ": " << std::strerror(errno);
    return 0;
  }
  return cgroup_id_of(abs).value_or(0);
}

void remove(const Hierarchy& h, const std::string& rel) {
  const std::string abs = join_mount(h.mount, rel);
  ASSERT_EQ(::rmdir(abs.c_str()), 0) << abs << ": " << std::strerror(errno);
}

TEST(CgroupMapLab, SeesTheHierarchy) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  auto map = CgroupMap::open(h->mount);
  ASSERT_TRUE(map) << map.error().message();
  EXPECT_GE((*map)->size(), 1u);
  EXPECT_EQ((*map)->path_of(*cgroup_id_of(h->mount)), "/");
  EXPECT_EQ((*map)->path_of(*cgroup_id_of(join_mount(h->mount, h->own))), h->own);
  EXPECT_TRUE((*map)->stats().inotify);
  EXPECT_EQ((*map)->path_of(0), std::nullopt);
}

TEST(CgroupMapLab, ChurnEveryIdMapsRightAfterMkdir) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  TestCgroupDir dir(*h, "map");
  ASSERT_TRUE(dir.ok()) << dir.error();
  auto opened = CgroupMap::open(h->mount);
  ASSERT_TRUE(opened) << opened.error().message();
  CgroupMap& map = **opened;
  const std::size_t before = map.size();

  // 20 top-level cgroups with 9 children each = 200 cgroups (nested), each looked up at once.
  std::map<std::string, std::uint64_t> made;
  for (int i = 0; i < 20; ++i) {
    const std::string top = dir.relative() + "/g" + std::to_string(i);
    const std::uint64_t id = make(*h, top);
    ASSERT_NE(id, 0u);
    made[top] = id;
    EXPECT_EQ(map.path_of(id), top);
    for (int j = 0; j < 9; ++j) {
      const std::string child = top + "/c" + std::to_string(j);
      const std::uint64_t cid = make(*h, child);
      ASSERT_NE(cid, 0u);
      made[child] = cid;
      EXPECT_EQ(map.path_of(cid), child);
    }
  }
  map.refresh();
  EXPECT_EQ(map.size(), before + made.size());  // `dir` was there before open()
  for (const auto& [path, id] : made) EXPECT_EQ(map.lookup(id), path);

  // Remove the children of even groups (and the even groups): gone after refresh.
  std::map<std::string, std::uint64_t> removed;
  for (int i = 0; i < 20; i += 2) {
    const std::string top = dir.relative() + "/g" + std::to_string(i);
    for (int j = 0; j < 9; ++j) {
      const std::string child = top + "/c" + std::to_string(j);
      remove(*h, child);
      removed[child] = made.at(child);
    }
    remove(*h, top);
    removed[top] = made.at(top);
  }
  map.refresh();
  for (const auto& [path, id] : made) {
    if (removed.count(path)) {
      EXPECT_EQ(map.lookup(id), std::nullopt) << path;
      EXPECT_EQ(map.path_of(id), std::nullopt) << path;  // also not by handle: the cgroup is gone
    } else {
      EXPECT_EQ(map.lookup(id), path);
    }
  }
  EXPECT_EQ(map.size(), before + made.size() - removed.size());
  // Re-made with the same name: a new id, the old one stays unknown.
  const std::string again = dir.relative() + "/g0";
  const std::uint64_t new_id = make(*h, again);
  EXPECT_NE(new_id, removed.at(again));
  EXPECT_EQ(map.path_of(new_id), again);
  EXPECT_EQ(map.lookup(removed.at(again)), std::nullopt);
  const auto s = map.stats();
  EXPECT_GT(s.events, 0u);
  EXPECT_EQ(s.overflows, 0u);
}

TEST(CgroupMapLab, ChildrenMadeBeforeTheirParentIsWatched) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  TestCgroupDir dir(*h, "nest");
  ASSERT_TRUE(dir.ok()) << dir.error();
  auto map = CgroupMap::open(h->mount);
  ASSERT_TRUE(map) << map.error().message();
  // A chain made in one go, without the map seeing anything until the deepest is asked for.
  std::string rel = dir.relative();
  std::vector<std::pair<std::string, std::uint64_t>> chain;
  for (int d = 0; d < 12; ++d) {
    rel += "/d" + std::to_string(d);
    chain.emplace_back(rel, make(*h, rel));
  }
  EXPECT_EQ((*map)->path_of(chain.back().second), chain.back().first);
  for (const auto& [path, id] : chain) EXPECT_EQ((*map)->lookup(id), path);
}

TEST(CgroupMapLab, ConcurrentReadersDuringChurn) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  TestCgroupDir dir(*h, "conc");
  ASSERT_TRUE(dir.ok()) << dir.error();
  auto opened = CgroupMap::open(h->mount);
  ASSERT_TRUE(opened) << opened.error().message();
  CgroupMap& map = **opened;

  std::vector<std::pair<std::string, std::uint64_t>> stable;
  for (int i = 0; i < 20; ++i) {
    const std::string p = dir.relative() + "/s" + std::to_string(i);
    stable.emplace_back(p, make(*h, p));
  }
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 4; ++t) {
    readers.emplace_back([&, t] {
      std::minstd_rand rng(static_cast<unsigned>(t));
      while (!stop.load()) {
        const auto& [path, id] = stable[rng() % stable.size()];
        if (map.path_of(id) != path) wrong.fetch_add(1);
      }
    });
  }
  for (int round = 0; round < 30; ++round) {
    const std::string p = dir.relative() + "/churn" + std::to_string(round);
    const std::uint64_t id = make(*h, p);
    EXPECT_EQ(map.path_of(id), p);
    remove(*h, p);
  }
  stop = true;
  for (auto& r : readers) r.join();
  EXPECT_EQ(wrong.load(), 0);
  map.refresh();
}

TEST(CgroupMapLab, QueueOverflowRewalks) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  const auto limit = detail::read_bounded(AT_FDCWD, "/proc/sys/fs/inotify/max_queued_events", 64);
  const auto max_queued = limit ? detail::parse_unsigned<std::uint32_t>(
                                      std::string_view(*limit).substr(0, limit->find('\n')))
                                : std::nullopt;
  if (!max_queued || *max_queued > 20000) {
    GTEST_SKIP() << "fs.inotify.max_queued_events is above 20000 (or unreadable): too many cgroups to overflow it";
  }
  TestCgroupDir dir(*h, "overflow");
  ASSERT_TRUE(dir.ok()) << dir.error();
  auto opened = CgroupMap::open(h->mount);
  ASSERT_TRUE(opened) << opened.error().message();
  CgroupMap& map = **opened;
  const std::uint32_t n = *max_queued + 100;
  std::uint64_t last = 0;
  for (std::uint32_t i = 0; i < n; ++i) {
    last = make(*h, dir.relative() + "/o" + std::to_string(i));
    ASSERT_NE(last, 0u);
  }
  map.refresh();
  const auto s = map.stats();
  EXPECT_GE(s.overflows, 1u);
  EXPECT_GE(s.walks, 2u);
  EXPECT_EQ(map.lookup(last), dir.relative() + "/o" + std::to_string(n - 1));
  // Watches survive the rewalk: a new cgroup is still an event.
  const std::string p = dir.relative() + "/after";
  const std::uint64_t id = make(*h, p);
  EXPECT_EQ(map.path_of(id), p);
  EXPECT_EQ(map.stats().walks, s.walks);
}

TEST(CgroupMapLab, FallbackWithoutInotify) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  TestCgroupDir dir(*h, "fallback");
  ASSERT_TRUE(dir.ok()) << dir.error();
  CgroupMap::Options o;
  o.use_inotify = false;
  o.min_rewalk_interval = std::chrono::milliseconds(0);
  auto map = CgroupMap::open(h->mount, o);
  ASSERT_TRUE(map) << map.error().message();
  EXPECT_FALSE((*map)->stats().inotify);
  EXPECT_EQ((*map)->inotify_fd(), -1);
  const std::string p = dir.relative() + "/x";
  const std::uint64_t id = make(*h, p);
  EXPECT_EQ((*map)->path_of(id), p);
  EXPECT_GE((*map)->stats().walks, 2u);

  // Rate limited: within the interval a miss does not rewalk (found by handle instead).
  o.min_rewalk_interval = std::chrono::hours(1);
  auto slow = CgroupMap::open(h->mount, o);
  ASSERT_TRUE(slow);
  const std::string q = dir.relative() + "/y";
  const std::uint64_t qid = make(*h, q);
  (*slow)->path_of(qid);
  EXPECT_EQ((*slow)->stats().walks, 1u);
  EXPECT_EQ((*slow)->lookup(qid), std::nullopt);
}

TEST(CgroupMapLab, MaxEntries) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  auto map = CgroupMap::open(h->mount, 1);
  ASSERT_TRUE(map) << map.error().message();
  EXPECT_EQ((*map)->size(), 1u);
}

TEST(CgroupMapLab, ResolveByHandle) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  TestCgroupDir dir(*h, "handle");
  ASSERT_TRUE(dir.ok()) << dir.error();
  auto map = CgroupMap::open(h->mount);
  ASSERT_TRUE(map) << map.error().message();
  const std::uint64_t id = *cgroup_id_of(dir.absolute());
  const auto p = (*map)->resolve_by_handle(id);
  if (!p) GTEST_SKIP() << "open_by_handle_at refused here (no CAP_DAC_READ_SEARCH or seccomp)";
  EXPECT_EQ(*p, dir.relative());
  EXPECT_EQ((*map)->resolve_by_handle(*cgroup_id_of(h->mount)), "/");
  EXPECT_EQ((*map)->resolve_by_handle(0xffffffffffffull), std::nullopt);
}

TEST(CgroupMapLab, OpenFailsCleanly) {
  SPLITD_CGROUP_LAB_OR_SKIP(h);
  EXPECT_FALSE(CgroupMap::open("/nonexistent/splitd"));
  EXPECT_FALSE(CgroupMap::open("relative"));
}

}  // namespace
}  // namespace splitd::cgroup
