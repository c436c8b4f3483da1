#include "decider/app_matcher.hpp"

namespace splitd::decider {
namespace {

bool glob(std::string_view p, std::string_view t) {
  while (!p.empty()) {
    if (p[0] == '*') {
      const bool cross = p.size() > 1 && p[1] == '*';
      while (!p.empty() && p[0] == '*') p.remove_prefix(1);
      if (cross && p.empty()) return true;
      // Try every split point; "*" stops at the end of its segment.
      for (std::size_t i = 0;; ++i) {
        if (glob(p, t.substr(i))) return true;
        if (i == t.size() || (!cross && t[i] == '/')) return false;
      }
    }
    if (t.empty()) return false;
    if (p[0] == '?' ? t[0] == '/' : p[0] != t[0]) return false;
    p.remove_prefix(1);
    t.remove_prefix(1);
  }
  return t.empty();
}

}  // namespace

bool glob_match(std::string_view pattern, std::string_view text) {
  if (pattern.starts_with('/')) pattern.remove_prefix(1);
  if (text.starts_with('/')) text.remove_prefix(1);
  return glob(pattern, text);
}

bool app_matches(const AppSpec& rule, std::string_view cgroup_path, std::string_view comm,
                 std::string_view exe) {
  if (!rule.cgroup.empty() && !cgroup_path.empty() && glob_match(rule.cgroup, cgroup_path)) {
    return true;
  }
  if (!rule.comm.empty() && rule.comm == comm) return true;
  return !rule.path.empty() && rule.path == exe;
}

}  // namespace splitd::decider
