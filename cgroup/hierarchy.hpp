#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/expected.hpp"
#include "cgroup/error.hpp"

namespace splitd::cgroup {

// Free functions: where the cgroup2 hierarchy is mounted, which cgroup a process is in, and
// the id of a cgroup. All are thread-safe (no shared state).

// The mount point of the first cgroup2 filesystem in /proc/self/mountinfo text
// ("/sys/fs/cgroup", or "/sys/fs/cgroup/unified" on a hybrid hierarchy). Handles optional
// fields before " - " and octal escapes (\040) in the mount point. Malformed lines are skipped.
std::optional<std::string> find_cgroup2_mount(std::string_view mountinfo_text);

// find_cgroup2_mount() of /proc/self/mountinfo (read with a 4 MiB bound).
Expected<std::string, Error> cgroup2_mount();

// The path of the "0::/path" line of /proc/PID/cgroup text ("/" for the root); nullopt if
// there is no such line or its path does not start with '/'.
std::optional<std::string> own_cgroup(std::string_view proc_pid_cgroup_text);

// own_cgroup() of /proc/self/cgroup.
Expected<std::string, Error> own_cgroup();

// The cgroup id of a cgroup2 directory (absolute path): its inode number, which is what
// INET_DIAG_CGROUP_ID, bpf_get_current_cgroup_id() and nft's "socket cgroupv2" compare.
// nullopt if it cannot be stat'ed or is not a directory.
std::optional<std::uint64_t> cgroup_id_of(const std::string& path);

// Joins the mount and a path relative to it ("/" → the mount itself).
std::string join_mount(std::string_view mount, std::string_view relative);

}  // namespace splitd::cgroup
