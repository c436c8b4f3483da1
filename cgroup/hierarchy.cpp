#include "cgroup/hierarchy.hpp"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <vector>

#include "cgroup/file_util.hpp"

namespace splitd::cgroup {
namespace {

constexpr std::size_t kMaxMountinfo = 4u << 20;
constexpr std::size_t kMaxProcCgroup = 64u << 10;

// The next ' '-separated field of `line` from `pos` (mountinfo fields are separated by one
// space; spaces inside paths are escaped as \040).
std::string_view next_field(std::string_view line, std::size_t& pos) {
  while (pos < line.size() && line[pos] == ' ') ++pos;
  const std::size_t start = pos;
  while (pos < line.size() && line[pos] != ' ') ++pos;
  return line.substr(start, pos - start);
}

bool is_octal(char c) { return c >= '0' && c <= '7'; }

// Decodes the \ooo escapes the kernel writes for ' ', '\t', '\n' and '\\' (seq_file's
// mangle_path); anything else is kept as is.
std::string unescape_octal(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && is_octal(s[i + 1]) && is_octal(s[i + 2]) &&
        is_octal(s[i + 3])) {
      const int v = (s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0');
      if (v > 0 && v < 256) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

template <typename F>
void for_each_line(std::string_view text, F&& f) {
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    const std::string_view line = nl == std::string_view::npos ? text : text.substr(0, nl);
    if (f(line)) return;
    if (nl == std::string_view::npos) return;
    text.remove_prefix(nl + 1);
  }
}

}  // namespace

std::optional<std::string> find_cgroup2_mount(std::string_view mountinfo_text) {
  std::optional<std::string> found;
  for_each_line(mountinfo_text, [&](std::string_view line) {
    // id parent major:minor root mount_point options [optional...] - fstype source super
    std::size_t pos = 0;
    std::string_view fields[5];
    for (auto& f : fields) f = next_field(line, pos);
    if (fields[4].empty() || fields[4].front() != '/') return false;
    // Optional fields run until a lone "-".
    for (int guard = 0; guard < 64; ++guard) {
      const std::string_view f = next_field(line, pos);
      if (f.empty()) return false;
      if (f == "-") {
        if (next_field(line, pos) == "cgroup2") {
          found = unescape_octal(fields[4]);
          return true;
        }
        return false;
      }
    }
    return false;
  });
  return found;
}

Expected<std::string, Error> cgroup2_mount() {
  int err = 0;
  auto text = detail::read_bounded(AT_FDCWD, "/proc/self/mountinfo", kMaxMountinfo, &err);
  if (!text) return unexpected(make_error(err, "read /proc/self/mountinfo"));
  auto mount = find_cgroup2_mount(*text);
  if (!mount) return unexpected(Error{Errc::kNoCgroup2, 0, "/proc/self/mountinfo"});
  return std::move(*mount);
}

std::optional<std::string> own_cgroup(std::string_view proc_pid_cgroup_text) {
  std::optional<std::string> found;
  for_each_line(proc_pid_cgroup_text, [&](std::string_view line) {
    if (!line.starts_with("0::")) return false;
    line.remove_prefix(3);
    if (line.empty() || line.front() != '/') return false;
    found = std::string(line);
    return true;
  });
  return found;
}

Expected<std::string, Error> own_cgroup() {
  int err = 0;
  auto text = detail::read_bounded(AT_FDCWD, "/proc/self/cgroup", kMaxProcCgroup, &err);
  if (!text) return unexpected(make_error(err, "read /proc/self/cgroup"));
  auto path = own_cgroup(*text);
  if (!path) return unexpected(Error{Errc::kNoCgroup2, 0, "/proc/self/cgroup has no 0:: line"});
  return std::move(*path);
}

std::optional<std::uint64_t> cgroup_id_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return std::nullopt;
  return static_cast<std::uint64_t>(st.st_ino);
}

std::string join_mount(std::string_view mount, std::string_view relative) {
  std::string out(mount);
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (relative.empty() || relative == "/") return out;
  if (relative.front() != '/' && (out.empty() || out.back() != '/')) out.push_back('/');
  if (out == "/" && relative.front() == '/') relative.remove_prefix(1);
  out.append(relative);
  return out;
}

}  // namespace splitd::cgroup
