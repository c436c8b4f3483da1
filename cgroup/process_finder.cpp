#include "cgroup/process_finder.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "cgroup/file_util.hpp"
#include "cgroup/hierarchy.hpp"
#include "common/fd.hpp"

namespace splitd::cgroup {
namespace {

constexpr std::size_t kMaxProcsFile = 64u << 10;
constexpr std::size_t kMaxStat = 4096;
constexpr std::size_t kMaxComm = 256;
constexpr std::size_t kMaxStatus = 16u << 10;
constexpr std::string_view kDeleted = " (deleted)";

struct DirCloser {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

DirPtr open_dir(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return nullptr;
  DirPtr d(::fdopendir(fd.get()));
  if (d) fd.release();
  return d;
}

bool is_dot(const char* n) { return n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')); }

}  // namespace

std::optional<std::uint64_t> parse_stat_start_time(std::string_view stat) {
  const std::size_t paren = stat.rfind(')');
  if (paren == std::string_view::npos) return std::nullopt;
  std::string_view rest = stat.substr(paren + 1);
  // Fields after comm start at 3 (state); starttime is field 22.
  for (int field = 3; field <= 22; ++field) {
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    std::size_t end = rest.find_first_of(" \n");
    if (end == std::string_view::npos) end = rest.size();
    if (end == 0) return std::nullopt;
    if (field == 22) return detail::parse_unsigned<std::uint64_t>(rest.substr(0, end));
    rest.remove_prefix(end);
  }
  return std::nullopt;
}

std::optional<std::uint32_t> parse_status_uid(std::string_view status) {
  while (!status.empty()) {
    const std::size_t nl = status.find('\n');
    std::string_view line = status.substr(0, nl);
    if (line.starts_with("Uid:")) {
      line.remove_prefix(4);
      while (!line.empty() && (line.front() == '\t' || line.front() == ' ')) line.remove_prefix(1);
      const std::size_t end = line.find_first_of("\t ");
      return detail::parse_unsigned<std::uint32_t>(line.substr(0, end));
    }
    if (nl == std::string_view::npos) break;
    status.remove_prefix(nl + 1);
  }
  return std::nullopt;
}

std::optional<std::uint64_t> parse_socket_link(std::string_view link) {
  if (!link.starts_with("socket:[") || !link.ends_with(']')) return std::nullopt;
  return detail::parse_unsigned<std::uint64_t>(link.substr(8, link.size() - 9));
}

ProcessFinder::ProcessFinder(std::string mount, std::string proc_root)
    : ProcessFinder(std::move(mount), std::move(proc_root), Options{}) {}

ProcessFinder::ProcessFinder(std::string mount, std::string proc_root, Options options)
    : mount_(std::move(mount)), proc_root_(std::move(proc_root)), options_(options) {}

std::string ProcessFinder::proc_path(std::int32_t pid, const char* leaf) const {
  std::string p = proc_root_;
  p += '/';
  p += std::to_string(pid);
  if (leaf != nullptr) {
    p += '/';
    p += leaf;
  }
  return p;
}

std::vector<std::int32_t> ProcessFinder::pids(std::string_view cgroup_path) const {
  std::vector<std::int32_t> out;
  if (!detail::is_safe_relative_path(cgroup_path)) return out;
  std::string file = join_mount(mount_, cgroup_path);
  file += "/cgroup.procs";
  const auto text = detail::read_bounded(AT_FDCWD, file, kMaxProcsFile);
  if (!text) return out;
  std::string_view t = *text;
  while (!t.empty()) {
    const std::size_t nl = t.find('\n');
    const std::string_view line = t.substr(0, nl);
    if (auto pid = detail::parse_unsigned<std::uint32_t>(line); pid && *pid > 0 && *pid <= 0x7fffffffu) {
      out.push_back(static_cast<std::int32_t>(*pid));
    }
    if (nl == std::string_view::npos) break;  // a partial last line of a bounded read is kept only if whole
    t.remove_prefix(nl + 1);
  }
  if (text->size() == kMaxProcsFile && !text->ends_with('\n') && !out.empty()) out.pop_back();
  if (out.size() > options_.max_pids) {
    std::nth_element(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(options_.max_pids), out.end(),
                     std::greater<>());
    out.resize(options_.max_pids);
  }
  return out;
}

std::optional<std::uint64_t> ProcessFinder::start_time_of(std::int32_t pid) const {
  const auto stat = detail::read_bounded(AT_FDCWD, proc_path(pid, "stat"), kMaxStat);
  if (!stat) return std::nullopt;
  return parse_stat_start_time(*stat);
}

std::optional<ProcessInfo> ProcessFinder::read_info(std::int32_t pid, std::uint64_t start_time) const {
  ProcessInfo info;
  info.pid = pid;
  info.start_time = start_time;
  auto comm = detail::read_bounded(AT_FDCWD, proc_path(pid, "comm"), kMaxComm);
  if (!comm) return std::nullopt;
  if (comm->ends_with('\n')) comm->pop_back();
  info.comm = std::move(*comm);
  if (auto exe = detail::read_link(AT_FDCWD, proc_path(pid, "exe"))) {
    if (exe->ends_with(kDeleted)) exe->resize(exe->size() - kDeleted.size());
    info.exe = std::move(*exe);
  }
  const auto status = detail::read_bounded(AT_FDCWD, proc_path(pid, "status"), kMaxStatus);
  if (!status) return std::nullopt;
  const auto uid = parse_status_uid(*status);
  if (!uid) return std::nullopt;
  info.uid = *uid;
  // The pid may have died and been reused while we read: the start time tells.
  if (start_time_of(pid) != start_time) return std::nullopt;
  return info;
}

std::optional<ProcessInfo> ProcessFinder::info_at(std::int32_t pid, std::uint64_t start_time) {
  const Key key{pid, start_time};
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    const auto it = cache_.find(key);
    if (it != cache_.end() && now - it->second.at < options_.cache_ttl) {
      ++stats_.cache_hits;
      return it->second.info;
    }
    ++stats_.cache_misses;
  }
  auto info = read_info(pid, start_time);
  if (!info) return std::nullopt;
  std::lock_guard lock(mu_);
  const std::uint64_t gen = ++next_generation_;
  cache_.insert_or_assign(key, Entry{*info, now, gen});
  order_.emplace_back(key, gen);
  while (cache_.size() > options_.cache_entries && !order_.empty()) {
    const auto [old, old_gen] = order_.front();
    order_.pop_front();
    const auto it = cache_.find(old);
    if (it != cache_.end() && it->second.generation == old_gen) cache_.erase(it);
  }
  // Stale order entries (of keys re-inserted later) are dropped as they reach the front.
  while (order_.size() > 2 * options_.cache_entries + 16) {
    const auto [old, old_gen] = order_.front();
    order_.pop_front();
    const auto it = cache_.find(old);
    if (it != cache_.end() && it->second.generation == old_gen) cache_.erase(it);
  }
  return info;
}

std::optional<ProcessInfo> ProcessFinder::info(std::int32_t pid) {
  if (pid <= 0) return std::nullopt;
  const auto start = start_time_of(pid);
  if (!start) return std::nullopt;
  return info_at(pid, *start);
}

bool ProcessFinder::holds_socket(std::int32_t pid, std::string_view target, std::size_t& budget) {
  DirPtr dir = open_dir(proc_path(pid, "fd"));
  if (!dir) return false;
  const int dfd = ::dirfd(dir.get());
  char buf[64];
  std::uint64_t links = 0;
  bool found = false;
  while (budget > 0) {
    dirent* e = ::readdir(dir.get());
    if (e == nullptr) break;
    if (is_dot(e->d_name)) continue;
    --budget;
    ++links;
    const ssize_t n = ::readlinkat(dfd, e->d_name, buf, sizeof buf);
    if (n > 0 && std::string_view(buf, static_cast<std::size_t>(n)) == target) {
      found = true;
      break;
    }
  }
  std::lock_guard lock(mu_);
  stats_.fd_readlinks += links;
  return found;
}

std::optional<ProcessInfo> ProcessFinder::owner(std::string_view cgroup_path, std::uint64_t socket_inode) {
  // The process that held this cgroup's last socket first, before listing the cgroup at
  // all: an app opening many connections (a browser, a load generator in a crowded cgroup)
  // costs one scan of its own fds.
  std::int32_t hint = 0;
  const std::string target = socket_inode != 0 ? "socket:[" + std::to_string(socket_inode) + "]" : std::string();
  if (socket_inode != 0) {
    {
      std::lock_guard lock(mu_);
      if (auto it = last_owner_.find(std::string(cgroup_path)); it != last_owner_.end()) hint = it->second;
    }
    std::size_t budget = options_.fd_budget;
    if (hint != 0 && holds_socket(hint, target, budget)) return info(hint);
  }
  const std::vector<std::int32_t> list = pids(cgroup_path);
  if (list.empty()) return std::nullopt;
  if (list.size() == 1) return info(list.front());

  // Newest first: by start time (pids wrap), then by pid.
  std::vector<std::pair<std::uint64_t, std::int32_t>> procs;
  procs.reserve(list.size());
  for (std::int32_t pid : list) {
    if (auto start = start_time_of(pid)) procs.emplace_back(*start, pid);
  }
  std::sort(procs.begin(), procs.end(), std::greater<>());
  if (procs.empty()) return std::nullopt;

  if (socket_inode != 0) {
    std::size_t budget = options_.fd_budget;
    const auto found = [&](std::int32_t pid, std::uint64_t start) {
      std::lock_guard lock(mu_);
      if (last_owner_.size() >= options_.cache_entries) last_owner_.clear();
      last_owner_[std::string(cgroup_path)] = pid;
      return start;
    };
    for (const auto& [start, pid] : procs) {
      if (budget == 0) break;
      if (pid == hint) continue;
      if (holds_socket(pid, target, budget)) return info_at(pid, found(pid, start));
    }
    return std::nullopt;
  }

  std::optional<ProcessInfo> newest;
  bool same_exe = true;
  bool same_comm = true;
  for (const auto& [start, pid] : procs) {
    auto i = info_at(pid, start);
    if (!i) continue;  // exited meanwhile
    if (!newest) {
      newest = std::move(i);
      continue;
    }
    same_exe = same_exe && i->exe == newest->exe;
    same_comm = same_comm && i->comm == newest->comm;
  }
  if (!newest) return std::nullopt;
  if (!newest->exe.empty() ? same_exe : (same_exe && same_comm && !newest->comm.empty())) return newest;
  return std::nullopt;
}

std::unordered_map<std::uint64_t, std::int32_t> ProcessFinder::socket_owners(std::string_view cgroup_path,
                                                                             std::size_t fd_budget) {
  std::unordered_map<std::uint64_t, std::int32_t> out;
  std::vector<std::pair<std::uint64_t, std::int32_t>> procs;
  for (std::int32_t pid : pids(cgroup_path)) {
    if (auto start = start_time_of(pid)) procs.emplace_back(*start, pid);
  }
  std::sort(procs.begin(), procs.end(), std::greater<>());
  std::uint64_t links = 0;
  char buf[64];
  for (const auto& [start, pid] : procs) {
    if (fd_budget == 0) break;
    DirPtr dir = open_dir(proc_path(pid, "fd"));
    if (!dir) continue;
    const int dfd = ::dirfd(dir.get());
    while (fd_budget > 0) {
      dirent* e = ::readdir(dir.get());
      if (e == nullptr) break;
      if (is_dot(e->d_name)) continue;
      --fd_budget;
      ++links;
      const ssize_t n = ::readlinkat(dfd, e->d_name, buf, sizeof buf);
      if (n <= 0) continue;
      if (auto inode = parse_socket_link(std::string_view(buf, static_cast<std::size_t>(n)))) {
        out.emplace(*inode, pid);  // newest first: an older holder does not replace it
      }
    }
  }
  std::lock_guard lock(mu_);
  stats_.fd_readlinks += links;
  return out;
}

std::size_t ProcessFinder::cache_size() const {
  std::lock_guard lock(mu_);
  return cache_.size();
}

ProcessFinder::Stats ProcessFinder::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

}  // namespace splitd::cgroup
