#include "cgroup/error.hpp"

#include <cerrno>
#include <cstring>

namespace splitd::cgroup {

const char* to_string(Errc e) {
  switch (e) {
    case Errc::kNoCgroup2: return "no cgroup2 filesystem mounted";
    case Errc::kNotFound: return "not found";
    case Errc::kNoSuchProcess: return "no such process";
    case Errc::kBusy: return "busy (processes or child cgroups remain)";
    case Errc::kPermission: return "permission denied";
    case Errc::kInvalid: return "invalid argument";
    case Errc::kIo: return "system call failed";
  }
  return "unknown error";
}

std::string Error::message() const {
  std::string out = detail;
  if (!out.empty()) out += ": ";
  out += to_string(code);
  if (sys_errno != 0) {
    out += " (";
    out += std::strerror(sys_errno);
    out += ')';
  }
  return out;
}

Errc errc_from_errno(int err) {
  switch (err) {
    case ENOENT: case ENOTDIR: return Errc::kNotFound;
    case ESRCH: return Errc::kNoSuchProcess;
    case EBUSY: case ENOTEMPTY: return Errc::kBusy;
    case EACCES: case EPERM: case EROFS: return Errc::kPermission;
    case EINVAL: return Errc::kInvalid;
    default: return Errc::kIo;
  }
}

Error make_error(int err, std::string what) {
  return Error{errc_from_errno(err), err, std::move(what)};
}

}  // namespace splitd::cgroup
