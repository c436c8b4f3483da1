#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cgroup/error.hpp"
#include "common/expected.hpp"
#include "common/fd.hpp"

namespace splitd::cgroup {

// cgroup id → path (relative to the cgroup2 mount, with a leading '/': "/user.slice/…") for
// the whole cgroup2 hierarchy, kept current with inotify (one watch per directory).
//
// Owned by the daemon's Runtime, shared by the workers that classify flows. Thread-safe:
// path_of()/lookup()/size()/stats() take a shared lock and may run on any number of threads;
// refresh() (and a miss in path_of, which calls it) serialises on its own mutex so one thread
// drains inotify at a time, and takes the exclusive lock only to apply what it found.
// When inotify is unavailable (no instance: EMFILE; or not enough watches: ENOSPC,
// fs.inotify.max_user_watches) a miss triggers a full rewalk, at most once per
// Options::min_rewalk_interval.
class CgroupMap {
 public:
  struct Options {
    std::size_t max_entries = 200000;  // cgroups beyond this are not mapped (warned once)
    int max_depth = 64;                // deeper directories are not walked (warned once)
    bool use_inotify = true;           // false: the rewalk-on-miss fallback only
    std::chrono::milliseconds min_rewalk_interval{1000};
  };

  struct Stats {
    std::uint64_t walks = 0;           // full walks (open, IN_Q_OVERFLOW, fallback rewalks)
    std::uint64_t events = 0;          // inotify events read
    std::uint64_t misses = 0;          // path_of() calls not answered by the map at first
    std::uint64_t refreshes = 0;       // refresh() calls that drained the inotify fd
    std::uint64_t overflows = 0;       // IN_Q_OVERFLOW seen
    std::uint64_t handle_lookups = 0;  // resolve_by_handle() successes
    std::uint64_t watch_failures = 0;  // inotify_add_watch failures other than a vanished dir
    std::uint64_t dropped = 0;         // cgroups not mapped because of max_entries
    bool inotify = false;              // every directory is watched
  };

  // Walks the hierarchy below `mount` (the cgroup2 mount point, see cgroup2_mount()).
  static Expected<std::unique_ptr<CgroupMap>, Error> open(std::string mount,
                                                          std::size_t max_entries = 200000);
  static Expected<std::unique_ptr<CgroupMap>, Error> open(std::string mount, Options options);

  CgroupMap(const CgroupMap&) = delete;
  CgroupMap& operator=(const CgroupMap&) = delete;
  ~CgroupMap();

  // The path of cgroup `id`. On a miss: refresh() once and retry (a cgroup created just
  // before its process opened a socket is found: mkdir queues IN_CREATE before it returns),
  // then the rate-limited rewalk when inotify is incomplete, then resolve_by_handle().
  std::optional<std::string> path_of(std::uint64_t id);
  // The map's answer only (never refreshes).
  std::optional<std::string> lookup(std::uint64_t id) const;

  // Applies pending inotify events (creates: stat, watch, scan for children made before the
  // watch; deletes; moves). IN_Q_OVERFLOW → full rewalk. Without inotify: a rate-limited rewalk.
  void refresh();

  // Asks the kernel directly: open_by_handle_at(mount, {8, FILEID_KERNFS, id}) + readlink of
  // /proc/self/fd/N. Needs CAP_DAC_READ_SEARCH; nullopt on EPERM, ESTALE (no such cgroup), ...
  std::optional<std::string> resolve_by_handle(std::uint64_t id) const;

  std::size_t size() const;
  Stats stats() const;
  const std::string& mount() const { return mount_; }
  // The inotify fd (non-blocking; -1 without inotify), still owned by the map: a reactor may
  // poll it and call refresh() when it is readable, so misses stay rare. Never read or close it.
  int inotify_fd() const { return inotify_.get(); }

 private:
  struct Node {
    std::uint64_t id = 0;
    int wd = -1;
  };
  struct Op {
    bool add = false;
    std::uint64_t id = 0;
    std::string path;
  };

  CgroupMap(std::string mount, Options options, Fd mount_fd, Fd inotify);

  // All below run with refresh_mu_ held.
  void rewalk_locked();
  void rewalk_if_due_locked();
  void drain_locked(std::vector<Op>& ops, bool& overflow);
  void add_tree_locked(int parent_fd, const char* name, const std::string& rel, int depth,
                       std::vector<Op>* ops);
  void remove_tree_locked(const std::string& rel, std::vector<Op>& ops);
  void apply(std::vector<Op>& ops);
  std::optional<std::string> refresh_after_miss(std::uint64_t id);

  const std::string mount_;
  const Options options_;
  const Fd mount_fd_;
  Fd inotify_;

  mutable std::shared_mutex mu_;
  std::unordered_map<std::uint64_t, std::string> paths_;  // guarded by mu_

  std::mutex refresh_mu_;  // guards everything below
  std::map<std::string, Node, std::less<>> nodes_;  // path → id and watch
  std::unordered_map<int, std::string> wd_paths_;
  bool degraded_ = false;  // some directory could not be watched
  bool warned_depth_ = false;
  bool warned_entries_ = false;
  bool warned_watch_ = false;
  std::chrono::steady_clock::time_point last_walk_{};

  std::atomic<std::uint64_t> walks_{0}, events_{0}, misses_{0}, refreshes_{0}, overflows_{0},
      handle_lookups_{0}, watch_failures_{0}, dropped_{0};
  std::atomic<bool> complete_watch_{false};
};

}  // namespace splitd::cgroup
