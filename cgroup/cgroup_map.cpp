#include "cgroup/cgroup_map.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "cgroup/file_util.hpp"
#include "cgroup/hierarchy.hpp"
#include "common/log.hpp"

namespace splitd::cgroup {
namespace {

constexpr std::uint32_t kWatchMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
                                     IN_DELETE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW;
// A refresh reads at most this many buffers; the rest waits for the next one, so a storm of
// cgroup churn cannot hold a worker forever.
constexpr int kMaxReadsPerRefresh = 256;
constexpr int kFileidKernfs = 0xfe;

struct DirCloser {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

std::string child_path(const std::string& parent, std::string_view name) {
  std::string out;
  out.reserve(parent.size() + 1 + name.size());
  out = parent;
  if (out.back() != '/') out.push_back('/');
  out.append(name);
  return out;
}

int depth_of(std::string_view rel) {
  return rel == "/" ? 0 : static_cast<int>(std::count(rel.begin(), rel.end(), '/'));
}

std::string normalise_mount(std::string mount) {
  while (mount.size() > 1 && mount.back() == '/') mount.pop_back();
  return mount;
}

}  // namespace

Expected<std::unique_ptr<CgroupMap>, Error> CgroupMap::open(std::string mount, std::size_t max_entries) {
  Options options;
  options.max_entries = max_entries;
  return open(std::move(mount), options);
}

Expected<std::unique_ptr<CgroupMap>, Error> CgroupMap::open(std::string mount, Options options) {
  mount = normalise_mount(std::move(mount));
  if (mount.empty() || mount.front() != '/') {
    return unexpected(Error{Errc::kInvalid, 0, "cgroup2 mount \"" + mount + "\" is not absolute"});
  }
  Fd mount_fd(::open(mount.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!mount_fd) return unexpected(make_error(errno, "open " + mount));
  Fd inotify;
  if (options.use_inotify) {
    inotify.reset(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!inotify) {
      log::warn("cgroup map: no inotify instance (", std::strerror(errno),
                "); new cgroups are found by a rewalk of ", mount, " at most every ",
                options.min_rewalk_interval.count(), " ms");
    }
  }
  std::unique_ptr<CgroupMap> map(
      new CgroupMap(std::move(mount), options, std::move(mount_fd), std::move(inotify)));
  {
    std::lock_guard lock(map->refresh_mu_);
    map->rewalk_locked();
  }
  if (map->size() == 0) {
    return unexpected(Error{Errc::kNotFound, 0, "walk " + map->mount_ + " found no cgroup"});
  }
  return map;
}

CgroupMap::CgroupMap(std::string mount, Options options, Fd mount_fd, Fd inotify)
    : mount_(std::move(mount)), options_(options), mount_fd_(std::move(mount_fd)), inotify_(std::move(inotify)) {}

CgroupMap::~CgroupMap() = default;

std::optional<std::string> CgroupMap::lookup(std::uint64_t id) const {
  std::shared_lock lock(mu_);
  const auto it = paths_.find(id);
  if (it == paths_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> CgroupMap::path_of(std::uint64_t id) {
  if (id == 0) return std::nullopt;
  if (auto p = lookup(id)) return p;
  misses_.fetch_add(1, std::memory_order_relaxed);
  if (auto p = refresh_after_miss(id)) return p;
  auto p = resolve_by_handle(id);
  if (p) handle_lookups_.fetch_add(1, std::memory_order_relaxed);
  return p;
}

std::optional<std::string> CgroupMap::refresh_after_miss(std::uint64_t id) {
  std::lock_guard lock(refresh_mu_);
  // Another thread may have applied our cgroup while we waited for the mutex.
  if (auto p = lookup(id)) return p;
  if (inotify_) {
    std::vector<Op> ops;
    bool overflow = false;
    drain_locked(ops, overflow);
    if (overflow) {
      rewalk_locked();
    } else {
      apply(ops);
    }
    if (auto p = lookup(id)) return p;
    if (!degraded_) return std::nullopt;
  }
  rewalk_if_due_locked();
  return lookup(id);
}

void CgroupMap::refresh() {
  std::lock_guard lock(refresh_mu_);
  if (!inotify_) {
    rewalk_if_due_locked();
    return;
  }
  std::vector<Op> ops;
  bool overflow = false;
  drain_locked(ops, overflow);
  if (overflow) {
    rewalk_locked();
  } else {
    apply(ops);
  }
}

void CgroupMap::rewalk_if_due_locked() {
  const auto now = std::chrono::steady_clock::now();
  if (walks_.load(std::memory_order_relaxed) != 0 && now - last_walk_ < options_.min_rewalk_interval) return;
  rewalk_locked();
}

void CgroupMap::rewalk_locked() {
  last_walk_ = std::chrono::steady_clock::now();
  walks_.fetch_add(1, std::memory_order_relaxed);
  nodes_.clear();
  wd_paths_.clear();  // watches stay; inotify_add_watch returns the same wd for a known inode
  degraded_ = !inotify_;
  add_tree_locked(AT_FDCWD, mount_.c_str(), "/", 0, nullptr);
  std::unordered_map<std::uint64_t, std::string> fresh;
  fresh.reserve(nodes_.size());
  for (const auto& [path, node] : nodes_) fresh.emplace(node.id, path);
  {
    std::unique_lock lock(mu_);
    paths_.swap(fresh);
  }
  complete_watch_.store(inotify_ && !degraded_, std::memory_order_relaxed);
  // `fresh` (the old map) is freed outside the lock.
}

void CgroupMap::add_tree_locked(int parent_fd, const char* name, const std::string& rel, int depth,
                                std::vector<Op>* ops) {
  Fd fd(::openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return;  // gone already, or not a directory
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0 || !S_ISDIR(st.st_mode)) return;
  const auto id = static_cast<std::uint64_t>(st.st_ino);

  auto it = nodes_.find(rel);
  if (it != nodes_.end() && it->second.id == id && (it->second.wd >= 0 || !inotify_)) {
    return;  // known, watched and listed already (found by its parent's scan)
  }
  if (it != nodes_.end() && it->second.id != id) {
    // Same name, another cgroup (removed and made again between two drains).
    if (ops != nullptr) ops->push_back({false, it->second.id, rel});
    it->second.id = id;
    if (ops != nullptr) ops->push_back({true, id, rel});
  } else if (it == nodes_.end()) {
    if (nodes_.size() >= options_.max_entries) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      if (!warned_entries_) {
        warned_entries_ = true;
        log::warn("cgroup map: more than ", options_.max_entries, " cgroups below ", mount_,
                  "; the rest are resolved by handle only");
      }
      return;
    }
    it = nodes_.emplace(rel, Node{id, -1}).first;
    if (ops != nullptr) ops->push_back({true, id, rel});
  }

  if (inotify_) {
    // Watch before listing: a child made from now on is an event, one made before is listed.
    const std::string abs = join_mount(mount_, rel);
    const int wd = ::inotify_add_watch(inotify_.get(), abs.c_str(), kWatchMask);
    if (wd >= 0) {
      it->second.wd = wd;
      wd_paths_[wd] = rel;
    } else if (errno != ENOENT && errno != ENOTDIR) {
      watch_failures_.fetch_add(1, std::memory_order_relaxed);
      if (!warned_watch_) {
        warned_watch_ = true;
        log::warn("cgroup map: cannot watch ", abs, " (", std::strerror(errno),
                  "; see fs.inotify.max_user_watches); new cgroups are found by a rewalk at most every ",
                  options_.min_rewalk_interval.count(), " ms");
      }
      degraded_ = true;
      complete_watch_.store(false, std::memory_order_relaxed);
    }
  }

  if (depth >= options_.max_depth) {
    if (!warned_depth_) {
      warned_depth_ = true;
      log::warn("cgroup map: ", join_mount(mount_, rel), " is deeper than ", options_.max_depth,
                " levels; its children are not mapped");
    }
    return;
  }
  DirPtr dir(::fdopendir(fd.get()));
  if (!dir) return;
  fd.release();  // owned by dir now
  const int dfd = ::dirfd(dir.get());
  while (dirent* e = ::readdir(dir.get())) {
    if (e->d_name[0] == '.' && (e->d_name[1] == '\0' || (e->d_name[1] == '.' && e->d_name[2] == '\0'))) {
      continue;
    }
    if (e->d_type == DT_UNKNOWN) {
      struct stat cst {};
      if (::fstatat(dfd, e->d_name, &cst, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISDIR(cst.st_mode)) continue;
    } else if (e->d_type != DT_DIR) {
      continue;
    }
    add_tree_locked(dfd, e->d_name, child_path(rel, e->d_name), depth + 1, ops);
  }
}

void CgroupMap::remove_tree_locked(const std::string& rel, std::vector<Op>& ops) {
  auto first = nodes_.lower_bound(rel);
  auto last = first;
  const std::string prefix = rel == "/" ? rel : rel + "/";
  while (last != nodes_.end() && (last->first == rel || last->first.starts_with(prefix))) {
    ops.push_back({false, last->second.id, last->first});
    if (last->second.wd >= 0) {
      // Forget the watch's path: events on it are ignored until a move re-adds it (then
      // inotify_add_watch hands back the same wd with the new path).
      auto w = wd_paths_.find(last->second.wd);
      if (w != wd_paths_.end() && w->second == last->first) wd_paths_.erase(w);
    }
    ++last;
  }
  nodes_.erase(first, last);
}

void CgroupMap::drain_locked(std::vector<Op>& ops, bool& overflow) {
  refreshes_.fetch_add(1, std::memory_order_relaxed);
  alignas(inotify_event) char buf[16 * 1024];  // small: workers call this on a miss
  for (int reads = 0; reads < kMaxReadsPerRefresh; ++reads) {
    const ssize_t n = ::read(inotify_.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // EAGAIN: drained
    }
    if (n == 0) return;
    std::size_t off = 0;
    const auto len = static_cast<std::size_t>(n);
    while (off + sizeof(inotify_event) <= len) {
      inotify_event ev;
      std::memcpy(&ev, buf + off, sizeof ev);
      const char* name = buf + off + sizeof ev;
      if (ev.len > len - off - sizeof ev) break;  // cannot happen; never read past the buffer
      off += sizeof ev + ev.len;
      events_.fetch_add(1, std::memory_order_relaxed);
      if (ev.mask & IN_Q_OVERFLOW) {
        overflows_.fetch_add(1, std::memory_order_relaxed);
        overflow = true;
        continue;
      }
      if (overflow) continue;  // a rewalk follows anyway
      if (ev.mask & IN_IGNORED) {
        wd_paths_.erase(ev.wd);
        continue;
      }
      const auto w = wd_paths_.find(ev.wd);
      if (w == wd_paths_.end()) continue;
      if (ev.mask & IN_DELETE_SELF) {
        const std::string self = w->second;
        remove_tree_locked(self, ops);
        continue;
      }
      if (!(ev.mask & IN_ISDIR) || ev.len == 0) continue;
      const std::string_view child_name(name, ::strnlen(name, ev.len));
      if (child_name.empty()) continue;
      const std::string child = child_path(w->second, child_name);
      if (ev.mask & (IN_DELETE | IN_MOVED_FROM)) remove_tree_locked(child, ops);
      if (ev.mask & (IN_CREATE | IN_MOVED_TO)) {
        add_tree_locked(mount_fd_.get(), child.c_str() + 1, child, depth_of(child), &ops);
      }
    }
  }
}

void CgroupMap::apply(std::vector<Op>& ops) {
  if (ops.empty()) return;
  std::unique_lock lock(mu_);
  for (Op& op : ops) {
    if (op.add) {
      paths_.insert_or_assign(op.id, std::move(op.path));
    } else {
      const auto it = paths_.find(op.id);
      if (it != paths_.end() && it->second == op.path) paths_.erase(it);
    }
  }
}

std::optional<std::string> CgroupMap::resolve_by_handle(std::uint64_t id) const {
  if (id == 0) return std::nullopt;
  alignas(file_handle) unsigned char storage[sizeof(file_handle) + sizeof id];
  auto* fh = reinterpret_cast<file_handle*>(storage);
  fh->handle_bytes = sizeof id;
  fh->handle_type = kFileidKernfs;
  std::memcpy(storage + sizeof(file_handle), &id, sizeof id);
  Fd fd(::open_by_handle_at(mount_fd_.get(), fh, O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return std::nullopt;  // EPERM without CAP_DAC_READ_SEARCH, ESTALE when gone
  auto target = detail::read_link(AT_FDCWD, "/proc/self/fd/" + std::to_string(fd.get()));
  if (!target) return std::nullopt;
  std::string_view t = *target;
  if (t == mount_) return std::string("/");
  if (mount_ == "/") return t.starts_with('/') ? std::optional<std::string>(std::string(t)) : std::nullopt;
  if (!t.starts_with(mount_) || t.size() <= mount_.size() || t[mount_.size()] != '/') return std::nullopt;
  t.remove_prefix(mount_.size());
  if (t.ends_with(" (deleted)")) return std::nullopt;
  return std::string(t);
}

std::size_t CgroupMap::size() const {
  std::shared_lock lock(mu_);
  return paths_.size();
}

CgroupMap::Stats CgroupMap::stats() const {
  Stats s;
  s.walks = walks_.load(std::memory_order_relaxed);
  s.events = events_.load(std::memory_order_relaxed);
  s.misses = misses_.load(std::memory_order_relaxed);
  s.refreshes = refreshes_.load(std::memory_order_relaxed);
  s.overflows = overflows_.load(std::memory_order_relaxed);
  s.handle_lookups = handle_lookups_.load(std::memory_order_relaxed);
  s.watch_failures = watch_failures_.load(std::memory_order_relaxed);
  s.dropped = dropped_.load(std::memory_order_relaxed);
  s.inotify = complete_watch_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace splitd::cgroup
