#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "common/expected.hpp"

namespace splitd::config {
struct Config;
}

namespace splitd::daemon {

// What the running daemon still does after setup, which decides the capabilities it keeps.
struct PrivilegeNeeds {
  bool identification = false;  // a cgroup2 hierarchy: app rules read /proc/PID/{exe,fd}
  bool exec_cgroups = false;    // splitd's exec cgroups exist (`splitctl exec` moves processes)
  bool switch_user = false;     // daemon.user exists and splitd runs as root
  bool old_kernel = false;      // Linux < 5.7: SO_BINDTODEVICE still needs CAP_NET_RAW
};

// The capabilities (bit n = capability n) the daemon keeps for `needs`:
//   CAP_NET_ADMIN         always: nftables and policy-rule repairs, SO_MARK, IP_TRANSPARENT and
//                         SO_RCVBUFFORCE on every new flow's sockets, rp_filter writes.
//   CAP_NET_BIND_SERVICE  always: UDP and DNS reply sockets bind (transparently) to the
//                         original destination's port, 53, 123 or 443 more often than not.
//                         The listeners themselves are bound once at setup; reload never
//                         rebinds them.
//   CAP_NET_RAW           old_kernel only (SO_BINDTODEVICE before Linux 5.7; since then an
//                         unbound socket may bind to a device without it).
//   CAP_SYS_PTRACE        identification: readlink of /proc/PID/exe and /proc/PID/fd/N passes
//                         ptrace_may_access(), which other users' and fully privileged root's
//                         processes grant only with it (CAP_DAC_READ_SEARCH does not).
//   CAP_DAC_READ_SEARCH   identification: listing /proc/PID/fd (mode 0500, owned by the
//                         process's user) of any other user's process, as root too; and
//                         CgroupMap::resolve_by_handle (open_by_handle_at, the fallback after
//                         inotify and the rewalk), which asks for this capability by name
//                         (CAP_DAC_OVERRIDE does not stand in for it there).
//   CAP_DAC_OVERRIDE      exec_cgroups: moving a process needs write access to cgroup.procs of
//                         the common ancestor of its old and new cgroup (the root cgroup's,
//                         owned by root), which chowning splitd's own cgroups cannot give; and
//                         removing them at stop writes their parent, which for a base right
//                         below the hierarchy's root (mode 0555) even uid 0 may only with it.
//                         So root and the user keep the same set.
std::uint64_t kept_capabilities(const PrivilegeNeeds& needs);


// Drops every privilege the running daemon no longer uses; called once by run() after
// Runtime::start(), when the table, policy routing, listeners, API socket and state dir
// exist. With the user daemon.user (default `splitd`) existing and uid 0: gives state_dir and the API socket's directory (when
// it is splitd's own, e.g. /run/splitd) to that user and switches to it. Then, in every thread
// of the process (capabilities are per thread, and the workers already run): clears the
// bounding set of everything not kept, sets permitted = effective = kept, inheritable and
// ambient empty, and no_new_privs. Verifies each thread in /proc/self/task and logs one line.
// An error means splitd must stop (the caller stops the Runtime, removing the footprint); a
// process already without CAP_SETPCAP keeps its bounding set with a warning.
Expected<void, std::string> drop_privileges(const config::Config& cfg);

}  // namespace splitd::daemon
