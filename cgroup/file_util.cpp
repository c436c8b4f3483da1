#include "cgroup/file_util.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/fd.hpp"

namespace splitd::cgroup::detail {

std::optional<std::string> read_bounded(int dir_fd, const std::string& path, std::size_t max_bytes,
                                        int* err) {
  Fd fd(::openat(dir_fd, path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd) {
    if (err != nullptr) *err = errno;
    return std::nullopt;
  }
  std::string out;
  std::size_t chunk = max_bytes < 4096 ? max_bytes : 4096;
  while (out.size() < max_bytes) {
    const std::size_t want = std::min(chunk, max_bytes - out.size());
    const std::size_t old = out.size();
    out.resize(old + want);
    const ssize_t n = ::read(fd.get(), out.data() + old, want);
    if (n < 0) {
      if (errno == EINTR) {
        out.resize(old);
        continue;
      }
      if (err != nullptr) *err = errno;
      return std::nullopt;
    }
    out.resize(old + static_cast<std::size_t>(n));
    if (n == 0) break;
    if (chunk < 65536) chunk *= 2;
  }
  return out;
}

std::optional<std::string> read_link(int dir_fd, const std::string& path, std::size_t max_bytes) {
  std::string out(max_bytes + 1, '\0');
  const ssize_t n = ::readlinkat(dir_fd, path.c_str(), out.data(), out.size());
  if (n < 0 || static_cast<std::size_t>(n) > max_bytes) return std::nullopt;
  out.resize(static_cast<std::size_t>(n));
  return out;
}

bool is_safe_relative_path(std::string_view path) {
  if (path.empty() || path.front() != '/') return false;
  if (path.find('\0') != std::string_view::npos) return false;
  std::size_t i = 1;
  while (i <= path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    const std::string_view c = path.substr(i, j - i);
    if (c == "." || c == "..") return false;
    i = j + 1;
  }
  return true;
}

}  // namespace splitd::cgroup::detail
