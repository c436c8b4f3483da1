#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace splitd::cgroup {

// A process as /proc describes it. Plain value.
struct ProcessInfo {
  std::int32_t pid = 0;
  std::string comm;              // /proc/PID/comm without the newline
  std::string exe;               // readlink /proc/PID/exe, " (deleted)" stripped; "" if not readable
  std::uint64_t start_time = 0;  // field 22 of /proc/PID/stat (clock ticks since boot)
  std::uint32_t uid = 0;         // the real uid ("Uid:" of /proc/PID/status, first field)
  friend bool operator==(const ProcessInfo&, const ProcessInfo&) = default;
};

// Field 22 (starttime) of /proc/PID/stat text, read after the last ')' (comm may hold spaces
// and parentheses). nullopt if malformed.
std::optional<std::uint64_t> parse_stat_start_time(std::string_view stat_text);
// The real uid of the "Uid:" line of /proc/PID/status text.
std::optional<std::uint32_t> parse_status_uid(std::string_view status_text);
// N of "socket:[N]" (a /proc/PID/fd link target); nullopt for anything else.
std::optional<std::uint64_t> parse_socket_link(std::string_view link);

// Finds the process behind a socket among the processes of one cgroup (never all of /proc)
// and reads what rules match on. Results are cached by (pid, start time), so a reused pid is
// never taken for the process that had it before; an entry also expires after
// Options::cache_ttl, because execve() changes comm and exe but keeps pid and start time.
//
// Owned by the daemon's Runtime; used when a rule needs comm/exe or a listing asks.
// Thread-safe: the /proc reads run unlocked, a mutex guards only the cache.
class ProcessFinder {
 public:
  struct Options {
    std::size_t max_pids = 256;     // processes of a cgroup considered (the highest pids)
    std::size_t fd_budget = 4096;   // readlinks of /proc/PID/fd/N per owner() call
    std::size_t cache_entries = 4096;
    std::chrono::milliseconds cache_ttl{30000};
  };
  struct Stats {
    std::uint64_t cache_hits = 0;
    std::uint64_t cache_misses = 0;
    std::uint64_t fd_readlinks = 0;
  };

  // `mount`: the cgroup2 mount point; `proc_root`: where /proc is (tests use a fake tree).
  explicit ProcessFinder(std::string mount, std::string proc_root = "/proc");
  ProcessFinder(std::string mount, std::string proc_root, Options options);

  // The process owning the socket with inode `socket_inode` in cgroup `cgroup_path` (relative
  // to the mount, "/user.slice/…"). A cgroup of one process: that one. Otherwise the
  // process holding "socket:[inode]" among its fds, newest processes first, at most
  // Options::fd_budget readlinks. socket_inode 0 (unknown): the newest process if all of the
  // cgroup's processes run the same exe (the same comm when no exe is readable), else nullopt.
  std::optional<ProcessInfo> owner(std::string_view cgroup_path, std::uint64_t socket_inode);

  // inode → pid for every socket of the cgroup's processes (newest process wins when a socket
  // is shared), at most `fd_budget` readlinks in all. For listing many flows at once.
  std::unordered_map<std::uint64_t, std::int32_t> socket_owners(std::string_view cgroup_path,
                                                                std::size_t fd_budget = 65536);

  // ProcessInfo of one pid (cached); nullopt if it is gone.
  std::optional<ProcessInfo> info(std::int32_t pid);

  // The pids in <mount><cgroup_path>/cgroup.procs (at most Options::max_pids: the highest).
  std::vector<std::int32_t> pids(std::string_view cgroup_path) const;

  std::size_t cache_size() const;
  Stats stats() const;

 private:
  struct Key {
    std::int32_t pid;
    std::uint64_t start_time;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    std::size_t operator()(const Key& k) const noexcept {
      return std::hash<std::uint64_t>{}(k.start_time * 0x9e3779b97f4a7c15ull ^ static_cast<std::uint32_t>(k.pid));
    }
  };
  struct Entry {
    ProcessInfo info;
    std::chrono::steady_clock::time_point at;
    std::uint64_t generation;
  };

  std::optional<std::uint64_t> start_time_of(std::int32_t pid) const;
  std::optional<ProcessInfo> info_at(std::int32_t pid, std::uint64_t start_time);
  std::optional<ProcessInfo> read_info(std::int32_t pid, std::uint64_t start_time) const;
  bool holds_socket(std::int32_t pid, std::string_view target, std::size_t& budget);
  std::string proc_path(std::int32_t pid, const char* leaf) const;

  const std::string mount_;
  const std::string proc_root_;
  const Options options_;

  mutable std::mutex mu_;  // guards the cache, the last owners and stats
  // The process that held the last socket found in each cgroup, tried first: an app that
  // opens many connections (a browser) is found with one scan of its own fds. Bounded.
  std::unordered_map<std::string, std::int32_t> last_owner_;
  std::unordered_map<Key, Entry, KeyHash> cache_;
  std::deque<std::pair<Key, std::uint64_t>> order_;  // insertion order, for evicting the oldest
  std::uint64_t next_generation_ = 0;
  Stats stats_;
};

}  // namespace splitd::cgroup
