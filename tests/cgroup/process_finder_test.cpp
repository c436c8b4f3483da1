// ProcessFinder against a fake /proc and cgroup tree in a temp dir.
#include "cgroup/process_finder.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

namespace splitd::cgroup {
namespace {

namespace fs = std::filesystem;

std::string stat_line(int pid, const std::string& comm, std::uint64_t start) {
  // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  // cutime cstime priority nice threads itrealvalue starttime vsize ...
  return std::to_string(pid) + " (" + comm + ") S 1 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 " +
         std::to_string(start) + " 1000000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n";
}

class FakeTree : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/splitd-pf-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = tmpl;
    fs::create_directories(root_ / "proc");
    fs::create_directories(root_ / "cg");
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  static void write(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::trunc) << text;
  }

  void add_process(int pid, const std::string& comm, std::uint64_t start, std::uint32_t uid,
                   const std::string& exe, std::vector<std::string> fds = {}) {
    const fs::path d = root_ / "proc" / std::to_string(pid);
    std::error_code ec;
    fs::remove_all(d, ec);
    fs::create_directories(d / "fd");
    write(d / "stat", stat_line(pid, comm, start));
    write(d / "comm", comm + "\n");
    write(d / "status", "Name:\t" + comm + "\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t" + std::to_string(uid) +
                            "\t0\t0\t0\nGid:\t100\t100\t100\t100\n");
    if (!exe.empty()) fs::create_symlink(exe, d / "exe");
    int n = 0;
    for (const auto& target : fds) fs::create_symlink(target, d / "fd" / std::to_string(n++));
  }

  void set_procs(const std::string& cgroup, const std::vector<int>& pids) {
    std::string text;
    for (int p : pids) text += std::to_string(p) + "\n";
    write(root_ / "cg" / cgroup.substr(1) / "cgroup.procs", text);
  }

  ProcessFinder finder(ProcessFinder::Options o = {}) {
    return ProcessFinder((root_ / "cg").string(), (root_ / "proc").string(), o);
  }

  fs::path root_;
};

TEST(ParseStat, CommWithSpacesAndParens) {
  EXPECT_EQ(parse_stat_start_time(stat_line(7, "a) (b c))", 123456)), 123456u);
  EXPECT_EQ(parse_stat_start_time(stat_line(7, "x", 0)), 0u);
  EXPECT_EQ(parse_stat_start_time("7 (x) S 1 2 3"), std::nullopt);
  EXPECT_EQ(parse_stat_start_time("7 x S 1 2 3"), std::nullopt);
  EXPECT_EQ(parse_stat_start_time(""), std::nullopt);
  EXPECT_EQ(parse_stat_start_time("1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12x 0"), std::nullopt);
}

TEST(ParseStatus, RealUid) {
  EXPECT_EQ(parse_status_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"), 1000u);
  EXPECT_EQ(parse_status_uid("Uid: 5 5 5 5"), 5u);
  EXPECT_EQ(parse_status_uid("Name:\tx\n"), std::nullopt);
  EXPECT_EQ(parse_status_uid("Uid:\t\n"), std::nullopt);
}

TEST(ParseSocketLink, Forms) {
  EXPECT_EQ(parse_socket_link("socket:[123]"), 123u);
  EXPECT_EQ(parse_socket_link("socket:[]"), std::nullopt);
  EXPECT_EQ(parse_socket_link("pipe:[123]"), std::nullopt);
  EXPECT_EQ(parse_socket_link("/dev/null"), std::nullopt);
  EXPECT_EQ(parse_socket_link("socket:[12"), std::nullopt);
}

TEST_F(FakeTree, SingleProcess) {
  add_process(100, "my (weird) app", 5000, 1000, "/usr/bin/app");
  set_procs("/app.slice/a.scope", {100});
  auto pf = finder();
  const auto p = pf.owner("/app.slice/a.scope", 999);
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, (ProcessInfo{100, "my (weird) app", "/usr/bin/app", 5000, 1000}));
}

TEST_F(FakeTree, FindsSocketHolderNewestFirst) {
  add_process(200, "old", 100, 1000, "/usr/bin/firefox", {"/dev/null", "socket:[555]"});
  add_process(201, "new", 900, 1000, "/usr/bin/firefox", {"pipe:[1]", "socket:[555]", "socket:[777]"});
  add_process(202, "mid", 500, 1000, "/usr/bin/firefox", {"socket:[888]"});
  set_procs("/s.scope", {200, 201, 202});
  auto pf = finder();
  EXPECT_EQ(pf.owner("/s.scope", 555)->pid, 201);  // shared socket: the newest holder
  EXPECT_EQ(pf.owner("/s.scope", 888)->pid, 202);
  EXPECT_EQ(pf.owner("/s.scope", 12345), std::nullopt);
}

TEST_F(FakeTree, FdBudgetBoundsTheSearch) {
  std::vector<std::string> many(50, "/dev/null");
  add_process(300, "a", 10, 0, "/bin/a", many);
  auto with_socket = many;
  with_socket.push_back("socket:[42]");
  add_process(301, "b", 5, 0, "/bin/b", with_socket);  // older: searched second
  set_procs("/x", {300, 301});
  ProcessFinder::Options o;
  o.fd_budget = 50;  // all spent on the newest process
  EXPECT_EQ(finder(o).owner("/x", 42), std::nullopt);
  o.fd_budget = 200;
  EXPECT_EQ(finder(o).owner("/x", 42)->pid, 301);
}

TEST_F(FakeTree, UnknownInodeSameExe) {
  add_process(400, "worker", 10, 1000, "/usr/lib/app/app");
  add_process(401, "worker", 20, 1000, "/usr/lib/app/app");
  set_procs("/y", {400, 401});
  auto pf = finder();
  EXPECT_EQ(pf.owner("/y", 0)->pid, 401);
  add_process(402, "other", 30, 1000, "/usr/bin/other");
  set_procs("/y", {400, 401, 402});
  EXPECT_EQ(pf.owner("/y", 0), std::nullopt);
}

TEST_F(FakeTree, UnknownInodeNoExeFallsBackToComm) {
  add_process(410, "same", 10, 1000, "");
  add_process(411, "same", 20, 1000, "");
  set_procs("/z", {410, 411});
  auto pf = finder();
  EXPECT_EQ(pf.owner("/z", 0)->pid, 411);
  add_process(412, "diff", 30, 1000, "");
  set_procs("/z", {410, 411, 412});
  EXPECT_EQ(pf.owner("/z", 0), std::nullopt);
}

TEST_F(FakeTree, DeletedExe) {
  add_process(500, "gone", 1, 1000, "/opt/app/bin (deleted)");
  set_procs("/d", {500});
  EXPECT_EQ(finder().owner("/d", 0)->exe, "/opt/app/bin");
}

TEST_F(FakeTree, UnreadableExeIsEmptyNotAnError) {
  add_process(510, "nopriv", 1, 1000, "");
  const auto p = finder().info(510);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->exe, "");
  EXPECT_EQ(p->comm, "nopriv");
}

TEST_F(FakeTree, PidReuseIsNotConfused) {
  add_process(600, "first", 1000, 1000, "/bin/first");
  auto pf = finder();
  EXPECT_EQ(pf.info(600)->comm, "first");
  EXPECT_EQ(pf.info(600)->comm, "first");
  EXPECT_EQ(pf.stats().cache_hits, 1u);
  // The pid is reused by another process: a new start time.
  add_process(600, "second", 2000, 0, "/bin/second");
  const auto p = pf.info(600);
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, (ProcessInfo{600, "second", "/bin/second", 2000, 0}));
}

TEST_F(FakeTree, CacheIsBounded) {
  ProcessFinder::Options o;
  o.cache_entries = 8;
  auto pf = finder(o);
  for (int pid = 700; pid < 740; ++pid) {
    add_process(pid, "p", static_cast<std::uint64_t>(pid), 0, "/bin/p");
    ASSERT_TRUE(pf.info(pid));
  }
  EXPECT_LE(pf.cache_size(), 8u);
  EXPECT_EQ(pf.info(739)->pid, 739);  // the newest survived
  EXPECT_EQ(pf.stats().cache_hits, 1u);
}

TEST_F(FakeTree, CacheExpires) {
  ProcessFinder::Options o;
  o.cache_ttl = std::chrono::milliseconds(0);
  auto pf = finder(o);
  add_process(800, "sh", 1, 0, "/bin/sh");
  EXPECT_EQ(pf.info(800)->comm, "sh");
  add_process(800, "curl", 1, 0, "/usr/bin/curl");  // execve: same pid and start time
  EXPECT_EQ(pf.info(800)->comm, "curl");
}

TEST_F(FakeTree, VanishedOrMalformed) {
  auto pf = finder();
  EXPECT_EQ(pf.owner("/nonexistent", 1), std::nullopt);
  set_procs("/v", {900});  // listed, but no /proc entry
  EXPECT_EQ(pf.owner("/v", 1), std::nullopt);
  EXPECT_EQ(pf.info(0), std::nullopt);
  EXPECT_EQ(pf.info(-1), std::nullopt);
  write(root_ / "proc" / "901" / "stat", "garbage");
  EXPECT_EQ(pf.info(901), std::nullopt);
  add_process(902, "nouid", 1, 0, "/bin/x");
  write(root_ / "proc" / "902" / "status", "Name:\tx\n");
  EXPECT_EQ(pf.info(902), std::nullopt);
  // Paths that leave the mount are refused.
  EXPECT_TRUE(pf.pids("/../proc").empty());
  EXPECT_TRUE(pf.pids("relative").empty());
}

TEST_F(FakeTree, ProcsFileBounds) {
  std::string text;
  for (int i = 1; i <= 1000; ++i) text += std::to_string(i) + "\n";
  text += "junk\n-5\n0\n99999999999\n";
  write(root_ / "cg" / "big" / "cgroup.procs", text);
  ProcessFinder::Options o;
  o.max_pids = 10;
  const auto pids = finder(o).pids("/big");
  ASSERT_EQ(pids.size(), 10u);
  for (int p : pids) EXPECT_GT(p, 990);
}

TEST_F(FakeTree, SocketOwners) {
  add_process(1000, "a", 1, 0, "/bin/a", {"socket:[1]", "socket:[2]", "/dev/null"});
  add_process(1001, "b", 2, 0, "/bin/b", {"socket:[2]", "socket:[3]"});
  set_procs("/m", {1000, 1001});
  auto pf = finder();
  const auto owners = pf.socket_owners("/m");
  EXPECT_EQ(owners.size(), 3u);
  EXPECT_EQ(owners.at(1), 1000);
  EXPECT_EQ(owners.at(2), 1001);  // newest holder
  EXPECT_EQ(owners.at(3), 1001);
  EXPECT_EQ(pf.socket_owners("/m", 2).size(), 2u);  // budget: 1001's two fds only
}

}  // namespace
}  // namespace splitd::cgroup
