#include "cgroup/exec_cgroups.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

#include "cgroup/file_util.hpp"
#include "cgroup/hierarchy.hpp"
#include "common/fd.hpp"

namespace splitd::cgroup {
namespace {

constexpr int kMaxRemoveDepth = 32;

const char* leaf(Route r) { return r == Route::kDirect ? "direct" : "tunnel"; }

// mkdir -p of `rel` below the mount; every component must be (or become) a directory.
Expected<void, Error> make_dirs(const std::string& mount, std::string_view rel) {
  std::size_t i = 1;
  while (i <= rel.size()) {
    std::size_t j = rel.find('/', i);
    if (j == std::string_view::npos) j = rel.size();
    if (j > i) {
      const std::string abs = join_mount(mount, rel.substr(0, j));
      if (::mkdir(abs.c_str(), 0755) != 0 && errno != EEXIST) return unexpected(make_error(errno, "mkdir " + abs));
      struct stat st {};
      if (::lstat(abs.c_str(), &st) != 0) return unexpected(make_error(errno, "stat " + abs));
      if (!S_ISDIR(st.st_mode)) return unexpected(Error{Errc::kInvalid, ENOTDIR, abs + " is not a directory"});
    }
    i = j + 1;
  }
  return {};
}

// rmdir of `abs` after its child cgroups (deepest first). Returns the errno of the first
// failure, 0 on success.
int remove_tree(const std::string& abs, int depth) {
  if (depth < kMaxRemoveDepth) {
    Fd fd(::open(abs.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!fd) return errno == ENOENT ? 0 : errno;  // removed already
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(fd.get()), &::closedir);
    if (dir) {
      fd.release();
      while (dirent* e = ::readdir(dir.get())) {
        const std::string_view n = e->d_name;
        if (n == "." || n == ".." || e->d_type != DT_DIR) continue;
        remove_tree(abs + "/" + e->d_name, depth + 1);  // failures show in the rmdir below
      }
    }
  }
  if (::rmdir(abs.c_str()) != 0 && errno != ENOENT) return errno;
  return 0;
}

}  // namespace

const char* to_string(Route r) { return r == Route::kDirect ? "direct" : "tunnel"; }

Expected<std::unique_ptr<ExecCgroups>, Error> ExecCgroups::create(std::string mount, std::string base) {
  while (mount.size() > 1 && mount.back() == '/') mount.pop_back();
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (!detail::is_safe_relative_path(base) || base == "/") {
    return unexpected(Error{Errc::kInvalid, 0, "exec cgroup base \"" + base + "\" must be a path below the mount"});
  }
  if (auto r = make_dirs(mount, base); !r) return unexpected(r.error());
  std::uint64_t ids[2] = {0, 0};
  for (Route r : {Route::kDirect, Route::kTunnel}) {
    const std::string abs = join_mount(mount, base + "/" + leaf(r));
    if (::mkdir(abs.c_str(), 0755) != 0 && errno != EEXIST) return unexpected(make_error(errno, "mkdir " + abs));
    const auto id = cgroup_id_of(abs);
    if (!id) return unexpected(Error{Errc::kInvalid, ENOTDIR, abs + " is not a directory"});
    // A cgroup directory has cgroup.procs; anything else (a plain directory) is no cgroup.
    if (::access((abs + "/cgroup.procs").c_str(), F_OK) != 0) {
      return unexpected(Error{Errc::kNoCgroup2, errno, abs + " is not a cgroup2 directory"});
    }
    ids[r == Route::kDirect ? 0 : 1] = *id;
  }
  return std::unique_ptr<ExecCgroups>(new ExecCgroups(std::move(mount), std::move(base), ids[0], ids[1]));
}

ExecCgroups::ExecCgroups(std::string mount, std::string base, std::uint64_t direct_id, std::uint64_t tunnel_id)
    : mount_(std::move(mount)), base_(std::move(base)), direct_id_(direct_id), tunnel_id_(tunnel_id) {}

std::uint64_t ExecCgroups::id(Route r) const { return r == Route::kDirect ? direct_id_ : tunnel_id_; }

std::string ExecCgroups::path(Route r) const { return base_ + "/" + leaf(r); }

std::string ExecCgroups::absolute_path(Route r) const { return join_mount(mount_, path(r)); }

std::optional<Route> ExecCgroups::route_of(std::uint64_t cgroup_id, std::string_view p) const {
  if (cgroup_id != 0) {
    if (cgroup_id == direct_id_) return Route::kDirect;
    if (cgroup_id == tunnel_id_) return Route::kTunnel;
  }
  for (Route r : {Route::kDirect, Route::kTunnel}) {
    const std::string mine = path(r);
    if (p == mine || (p.size() > mine.size() && p.starts_with(mine) && p[mine.size()] == '/')) return r;
  }
  return std::nullopt;
}

Expected<void, Error> ExecCgroups::move(pid_t pid, Route r) const {
  // Writing 0 would move the writer itself: never what a caller means.
  if (pid <= 0) return unexpected(Error{Errc::kInvalid, 0, "move pid " + std::to_string(pid)});
  const std::string procs = absolute_path(r) + "/cgroup.procs";
  const std::string what = "move pid " + std::to_string(pid) + " to " + procs;
  Fd fd(::open(procs.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd) return unexpected(make_error(errno, what));
  const std::string text = std::to_string(pid) + "\n";
  ssize_t n;
  do {
    n = ::write(fd.get(), text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  if (n < 0) return unexpected(make_error(errno, what));
  if (static_cast<std::size_t>(n) != text.size()) return unexpected(Error{Errc::kIo, 0, what + ": short write"});
  return {};
}

bool ExecCgroups::populated(Route r) const {
  const auto text = detail::read_bounded(AT_FDCWD, absolute_path(r) + "/cgroup.events", 4096);
  if (!text) return false;
  std::string_view t = *text;
  while (!t.empty()) {
    const std::size_t nl = t.find('\n');
    const std::string_view line = t.substr(0, nl);
    if (line.starts_with("populated ")) return line.substr(10) == "1";
    if (nl == std::string_view::npos) break;
    t.remove_prefix(nl + 1);
  }
  return false;
}

Expected<void, Error> ExecCgroups::remove() {
  std::string busy;
  int first_err = 0;
  for (Route r : {Route::kDirect, Route::kTunnel}) {
    const int err = remove_tree(absolute_path(r), 0);
    if (err == 0) continue;
    if (first_err == 0) first_err = err;
    if (!busy.empty()) busy += ", ";
    busy += absolute_path(r);
  }
  if (first_err != 0) {
    const bool is_busy = first_err == EBUSY || first_err == ENOTEMPTY;
    return unexpected(Error{is_busy ? Errc::kBusy : errc_from_errno(first_err), first_err,
                            "remove " + busy + (is_busy ? " (processes remain there; left in place)" : "")});
  }
  const std::string base_abs = join_mount(mount_, base_);
  if (::rmdir(base_abs.c_str()) != 0 && errno != ENOENT && errno != EBUSY && errno != ENOTEMPTY) {
    return unexpected(make_error(errno, "rmdir " + base_abs));
  }  // EBUSY: something else lives in base (another child cgroup); it stays
  return {};
}

}  // namespace splitd::cgroup
