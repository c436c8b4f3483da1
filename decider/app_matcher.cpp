#include "decider/app_matcher.hpp"

namespace splitd::decider {
namespace {

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// A glob without '/' semantics, case-insensitive: for app ids.
bool iglob(std::string_view p, std::string_view t) {
  while (!p.empty()) {
    if (p[0] == '*') {
      while (!p.empty() && p[0] == '*') p.remove_prefix(1);
      if (p.empty()) return true;
      for (std::size_t i = 0; i <= t.size(); ++i) {
        if (iglob(p, t.substr(i))) return true;
      }
      return false;
    }
    if (t.empty()) return false;
    if (p[0] != '?' && lower(p[0]) != lower(t[0])) return false;
    p.remove_prefix(1);
    t.remove_prefix(1);
  }
  return t.empty();
}

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

bool is_unit_component(std::string_view c) {
  for (std::string_view suffix : {".service", ".scope", ".slice"}) {
    if (c.size() > suffix.size() && c.ends_with(suffix)) return true;
  }
  return false;
}

bool app_id_matches(std::string_view pattern, std::string_view app_id) {
  if (pattern.empty() || app_id.empty()) return false;
  if (iglob(pattern, app_id)) return true;
  // "firefox" for org.mozilla.firefox: the last label of a reverse-DNS id.
  const std::size_t dot = app_id.rfind('.');
  return dot != std::string_view::npos && dot + 1 < app_id.size() &&
         iglob(pattern, app_id.substr(dot + 1));
}

bool app_matches(const AppSpec& rule, const AppView& app) {
  if (!rule.cgroup.empty() && !app.cgroup_path.empty() && glob_match(rule.cgroup, app.cgroup_path)) {
    return true;
  }
  if (!rule.comm.empty() && rule.comm == app.comm) return true;
  if (!rule.path.empty() && rule.path == app.exe) return true;
  if (!rule.unit.empty() && !app.cgroup_path.empty() &&
      for_each_unit(app.cgroup_path, [&](std::string_view u) { return glob(rule.unit, u); })) {
    return true;
  }
  if (!rule.app_id.empty() && app_id_matches(rule.app_id, app.app_id)) return true;
  return rule.uid && app.uid && *rule.uid == *app.uid;
}

}  // namespace splitd::decider
