#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "cgroup/error.hpp"
#include "common/expected.hpp"

namespace splitd::cgroup {

enum class Route { kDirect, kTunnel };

const char* to_string(Route r);

// splitd's own cgroups for `splitctl exec`: <base>/direct and <base>/tunnel below the cgroup2
// mount. A process moved into one of them (and every child it forks, which stays there) is
// routed that way. Existing cgroups are adopted, so processes started before a daemon restart
// keep their route.
//
// Owned by the daemon's Runtime. Immutable after create() except remove(); the const members
// are safe from any thread, remove() must not race with them.
class ExecCgroups {
 public:
  // `base`: a path relative to `mount` ("/system.slice/splitd.service/splitd-exec"; the daemon
  // passes its own cgroup + "/splitd-exec", or "/splitd-exec" when that is "/"). Creates the
  // missing components (mkdir -p), then direct/ and tunnel/.
  static Expected<std::unique_ptr<ExecCgroups>, Error> create(std::string mount, std::string base);

  // The cgroup id (inode) of the route's cgroup, as sock_diag and nft report it.
  std::uint64_t id(Route r) const;
  // Which exec cgroup a socket's cgroup is: by id, or by path for a descendant (a process
  // with the rights to may create child cgroups below ours). nullopt: neither.
  std::optional<Route> route_of(std::uint64_t cgroup_id, std::string_view path) const;

  // Moves process `pid` (all its threads) into the route's cgroup by writing cgroup.procs.
  // Errors: kNoSuchProcess (ESRCH), kBusy, kPermission (EACCES/EPERM), kInvalid (pid <= 0,
  // or the kernel's EINVAL), kNotFound (the cgroup was removed), kIo.
  Expected<void, Error> move(pid_t pid, Route r) const;

  // Whether the route's cgroup (or a descendant) has processes ("populated 1" in cgroup.events).
  bool populated(Route r) const;

  // Removes both cgroups (and empty child cgroups below them) and base when it is empty.
  // kBusy when processes remain: those cgroups are left in place, with the message naming them.
  Expected<void, Error> remove();

  // Paths relative to the mount ("/splitd-exec/direct") and absolute ones, for display.
  const std::string& base() const { return base_; }
  std::string path(Route r) const;
  std::string absolute_path(Route r) const;
  const std::string& mount() const { return mount_; }

 private:
  ExecCgroups(std::string mount, std::string base, std::uint64_t direct_id, std::uint64_t tunnel_id);

  std::string mount_;
  std::string base_;
  std::uint64_t direct_id_;
  std::uint64_t tunnel_id_;
};

}  // namespace splitd::cgroup
