#pragma once

#include <string>

namespace splitd::cgroup {

// What went wrong in cgroup/ (hierarchy discovery, the id map, exec cgroups).
enum class Errc {
  kNoCgroup2,      // no cgroup2 filesystem is mounted
  kNotFound,       // a file or cgroup does not exist (ENOENT)
  kNoSuchProcess,  // ESRCH: the pid is gone (or never was)
  kBusy,           // EBUSY: the cgroup still has processes or children
  kPermission,     // EACCES / EPERM
  kInvalid,        // an argument that cannot be right (a path with "..", pid <= 0, ...)
  kIo,             // any other system call failure
};

const char* to_string(Errc e);

// An Errc, the errno behind it (0 if none) and what was being done.
struct Error {
  Errc code = Errc::kIo;
  int sys_errno = 0;
  std::string detail;  // "mkdir /sys/fs/cgroup/splitd-exec/direct"
  // "<detail>: <what the code means>[ (<strerror>)]"
  std::string message() const;
};

// Maps an errno to the Errc it means here.
Errc errc_from_errno(int err);
// An Error from errno-style failure `err` while doing `what`.
Error make_error(int err, std::string what);

}  // namespace splitd::cgroup
