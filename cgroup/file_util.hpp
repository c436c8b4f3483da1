#pragma once

// Small bounded file helpers shared by cgroup/'s sources (not part of its public API).

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace splitd::cgroup::detail {

// Reads at most `max_bytes` of a file (proc and cgroupfs files report size 0, so this reads
// until EOF or the bound). `dir_fd` may be AT_FDCWD. nullopt if it cannot be opened or read;
// `*err` (if given) gets the errno.
std::optional<std::string> read_bounded(int dir_fd, const std::string& path, std::size_t max_bytes,
                                        int* err = nullptr);

// readlinkat() into a string; nullopt on failure or when the target is longer than
// `max_bytes`.
std::optional<std::string> read_link(int dir_fd, const std::string& path, std::size_t max_bytes = 4096);

// Parses a decimal unsigned integer that fills all of `text`.
template <typename T>
std::optional<T> parse_unsigned(std::string_view text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  T value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const T digit = static_cast<T>(c - '0');
    if (value > (static_cast<T>(~T{0}) - digit) / 10) return std::nullopt;
    value = static_cast<T>(value * 10 + digit);
  }
  return value;
}

// Whether a cgroup path relative to the mount is safe to append to it: starts with '/',
// no "." or ".." component, no NUL.
bool is_safe_relative_path(std::string_view path);

}  // namespace splitd::cgroup::detail
