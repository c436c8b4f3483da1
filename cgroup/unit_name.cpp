#include "cgroup/unit_name.hpp"

#include "cgroup/file_util.hpp"

namespace splitd::cgroup {
namespace {

constexpr std::string_view kService = ".service";
constexpr std::string_view kScope = ".scope";
constexpr std::string_view kSlice = ".slice";

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// 8-4-4-4-12 hex digits.
bool is_uuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return false;
    } else if (hex_value(s[i]) < 0) {
      return false;
    }
  }
  return true;
}

// "<launcher>-<id>" or "<id>" → AppName; nullopt when the id is empty.
std::optional<AppName> split_launcher(std::string_view head) {
  AppName out;
  const std::size_t dash = head.find('-');
  if (dash != std::string_view::npos) {
    if (dash == 0) return std::nullopt;  // "app--x": an empty launcher is no name systemd makes
    out.launcher = unescape_unit_name(head.substr(0, dash));
    head.remove_prefix(dash + 1);
  }
  if (head.empty() || head.front() == '-' || head.back() == '-') return std::nullopt;
  out.app_id = unescape_unit_name(head);
  return out;
}

std::optional<AppName> parse_snap(std::string_view rest, bool scope) {
  // rest: "<snap>.<app>-<uuid>" (scope; older snapd: "<snap>.<app>.<uuid>") or "<snap>.<app>"
  // (service). Snap and app names may hold '-', a UUID holds four.
  if (scope) {
    if (rest.size() > 37 && is_uuid(rest.substr(rest.size() - 36)) &&
        (rest[rest.size() - 37] == '-' || rest[rest.size() - 37] == '.')) {
      rest = rest.substr(0, rest.size() - 37);
    } else if (const std::size_t dash = rest.rfind('-'); dash != std::string_view::npos) {
      rest = rest.substr(0, dash);
    }
  }
  const std::size_t dot = rest.find('.');
  const std::string_view app = dot == std::string_view::npos ? rest : rest.substr(dot + 1);
  if (app.empty()) return std::nullopt;
  return AppName{unescape_unit_name(app), "snap"};
}

}  // namespace

std::string unescape_unit_name(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 3 < text.size() && text[i + 1] == 'x') {
      const int hi = hex_value(text[i + 2]);
      const int lo = hex_value(text[i + 3]);
      if (hi >= 0 && lo >= 0) {
        const int v = hi * 16 + lo;
        if (v >= 0x20 && v < 0x7f && v != '/') {
          out.push_back(static_cast<char>(v));
          i += 3;
          continue;
        }
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

std::optional<AppName> parse_app_unit(std::string_view name) {
  if (name.size() > kScope.size() && name.ends_with(kScope)) {
    std::string_view stem = name.substr(0, name.size() - kScope.size());
    if (stem.starts_with("snap.")) return parse_snap(stem.substr(5), true);
    if (!stem.starts_with("app-")) return std::nullopt;
    stem.remove_prefix(4);
    const std::size_t dash = stem.rfind('-');
    if (dash != std::string_view::npos) stem = stem.substr(0, dash);  // the RANDOM part
    return split_launcher(stem);
  }
  if (name.size() > kService.size() && name.ends_with(kService)) {
    std::string_view stem = name.substr(0, name.size() - kService.size());
    const std::size_t at = stem.find('@');
    if (stem.starts_with("snap.")) {
      return parse_snap(at == std::string_view::npos ? stem.substr(5) : stem.substr(5, at - 5), false);
    }
    if (at != std::string_view::npos) stem = stem.substr(0, at);
    if (stem.starts_with("dbus-:")) {
      // dbus-:1.14-org.freedesktop.portal.Documents@0.service (dbus-broker's activations)
      const std::size_t dash = stem.find('-', 6);
      if (dash == std::string_view::npos || dash + 1 >= stem.size()) return std::nullopt;
      return AppName{unescape_unit_name(stem.substr(dash + 1)), "dbus"};
    }
    if (!stem.starts_with("app-")) return std::nullopt;
    return split_launcher(stem.substr(4));
  }
  if (name.size() > kSlice.size() && name.ends_with(kSlice)) {
    std::string_view stem = name.substr(0, name.size() - kSlice.size());
    if (!stem.starts_with("app-")) return std::nullopt;
    auto app = split_launcher(stem.substr(4));
    if (!app || app->app_id.find('.') == std::string::npos) return std::nullopt;
    return app;
  }
  return std::nullopt;
}

std::vector<std::string_view> unit_components(std::string_view path) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < path.size()) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    const std::string_view c = path.substr(i, j - i);
    if (is_unit_component(c)) out.push_back(c);
    i = j + 1;
  }
  return out;
}

Units parse_units(std::string_view path) {
  Units out;
  // Forward pass: the uid of user-N.slice (outermost wins; there is only one in practice).
  for (std::size_t i = 0; i < path.size();) {
    std::size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    const std::string_view c = path.substr(i, j - i);
    if (!out.user_slice_uid && c.starts_with("user-") && c.ends_with(kSlice) &&
        c.size() > 5 + kSlice.size()) {
      out.user_slice_uid =
          detail::parse_unsigned<std::uint32_t>(c.substr(5, c.size() - 5 - kSlice.size()));
    }
    i = j + 1;
  }
  // Backward pass: the deepest service/scope, and the deepest unit naming an app.
  bool have_app = false;
  for_each_unit(path, [&](std::string_view c) {
    if (out.unit.empty() && !c.ends_with(kSlice)) out.unit = std::string(c);
    if (!have_app) {
      if (auto app = parse_app_unit(c)) {
        out.app_id = std::move(app->app_id);
        out.launcher = std::move(app->launcher);
        have_app = true;
      }
    }
    return have_app && !out.unit.empty();
  });
  return out;
}

}  // namespace splitd::cgroup
