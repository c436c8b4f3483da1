#include "decider/app_matcher.hpp"

#include <string_view>
#include <utility>
#include <vector>

namespace splitd::decider {
namespace {

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Globs are matched by dynamic programming over (pattern token, text position): time
// O(pattern x text) whatever the stars, where trying every split point at every star
// (backtracking) is exponential in their number ("*a*a*a*a*a*a*b" against 30 a's took
// 20 ms, four times longer per extra "*a"). Patterns come from config and the API, and
// are matched per flow.
enum class Tok : unsigned char { kLit, kAny, kStar, kStarStar };
struct Token {
  Tok kind;
  char c;
};

// `cross_marks`: "**" is a token of its own ("*" stops at '/'); else every run of stars
// is one star that crosses everything.
std::vector<Token> tokens(std::string_view p, bool cross_marks) {
  std::vector<Token> out;
  for (std::size_t i = 0; i < p.size();) {
    if (p[i] == '*') {
      std::size_t run = 0;
      while (i < p.size() && p[i] == '*') ++i, ++run;
      out.push_back({cross_marks && run == 1 ? Tok::kStar : Tok::kStarStar, 0});
      continue;
    }
    out.push_back({p[i] == '?' ? Tok::kAny : Tok::kLit, p[i]});
    ++i;
  }
  return out;
}

// `slash`: '?' and '*' do not match '/'; `fold`: case-insensitive.
bool match(std::string_view pattern, std::string_view t, bool slash, bool fold) {
  const auto toks = tokens(pattern, slash);
  const std::size_t n = t.size();
  // next[j]: the tokens after the current one match t[j..].
  std::vector<char> next(n + 1, 0), cur(n + 1, 0);
  next[n] = 1;
  for (std::size_t k = toks.size(); k-- > 0;) {
    const Token tok = toks[k];
    for (std::size_t j = n + 1; j-- > 0;) {
      const bool more = j < n;
      switch (tok.kind) {
        case Tok::kLit:
          cur[j] = more && (fold ? lower(t[j]) == lower(tok.c) : t[j] == tok.c) && next[j + 1];
          break;
        case Tok::kAny: cur[j] = more && !(slash && t[j] == '/') && next[j + 1]; break;
        case Tok::kStar: cur[j] = next[j] || (more && t[j] != '/' && cur[j + 1]); break;
        case Tok::kStarStar: cur[j] = next[j] || (more && cur[j + 1]); break;
      }
    }
    std::swap(cur, next);
  }
  return next[0] != 0;
}

// A glob without '/' semantics, case-insensitive: for app ids.
bool iglob(std::string_view p, std::string_view t) { return match(p, t, false, true); }

// '*' within a path segment, '**' across them, '?' one character but '/'.
bool glob(std::string_view p, std::string_view t) { return match(p, t, true, false); }

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
