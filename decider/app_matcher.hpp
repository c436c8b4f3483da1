#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace splitd::decider {

// One [[split.apps]] rule. A flow matches if any non-empty field matches the flow's app:
//  - cgroup: glob_match() on the cgroup v2 path;
//  - comm: exactly (/proc/PID/comm); path: exactly (/proc/PID/exe);
//  - unit: glob_match() on any systemd unit of the cgroup path (every component ending in
//    .service, .scope or .slice: "transmission-daemon.service", "app-gnome-firefox-*.scope");
//  - app_id: the desktop application id systemd put in the unit's name (firefox for
//    app-gnome-firefox-1234.scope and snap.firefox.firefox-….scope, org.mozilla.firefox for
//    app-flatpak-org.mozilla.firefox-1234.scope), case-insensitively, whole or its last
//    dot-separated label ("firefox" matches org.mozilla.firefox), '*' and '?' allowed;
//  - user: the socket's owner; `user` is the text as configured (a name or a uid),
//    `uid` what it resolved to when the rule set was made (unset: the rule has no user).
struct AppSpec {
  std::string name;
  std::string cgroup;
  std::string comm;
  std::string path;
  std::string unit;
  std::string app_id;
  std::string user;
  std::optional<std::uint32_t> uid;
  // Whether matching needs the process (comm or path), not only the socket and its cgroup.
  bool needs_process() const { return !comm.empty() || !path.empty(); }
};

// What is known of a flow's app (empty / unset when not known). Views into the caller's
// strings; valid for the call.
struct AppView {
  std::string_view cgroup_path;  // "/user.slice/user-1000.slice/.../app-slack-1.scope"
  std::string_view comm;
  std::string_view exe;
  std::string_view app_id;       // "org.mozilla.firefox", as found (any case)
  std::optional<std::uint32_t> uid;
  bool empty() const {
    return cgroup_path.empty() && comm.empty() && exe.empty() && app_id.empty() && !uid;
  }
};

// fnmatch-like glob for cgroup v2 paths: "*" is any run of characters within one path
// segment (it does not cross '/'), "**" any run including '/', "?" one character other
// than '/'; everything else matches itself. A leading '/' on either side is ignored, so
// "user.slice/*/app.slice/app-slack-*.scope" matches
// "/user.slice/user-1000.slice/app.slice/app-slack-1234.scope". Does not allocate.
bool glob_match(std::string_view pattern, std::string_view text);

// Whether a cgroup path component names a systemd unit: it ends in ".service", ".scope" or
// ".slice" and has something before the suffix.
bool is_unit_component(std::string_view component);

// Calls f(component) for every systemd unit of a cgroup path, deepest first; stops when f
// returns true and returns whether it did. Does not allocate.
template <typename F>
bool for_each_unit(std::string_view cgroup_path, F&& f) {
  while (!cgroup_path.empty()) {
    const std::size_t slash = cgroup_path.rfind('/');
    const std::string_view c =
        slash == std::string_view::npos ? cgroup_path : cgroup_path.substr(slash + 1);
    if (is_unit_component(c) && f(c)) return true;
    if (slash == std::string_view::npos) break;
    cgroup_path = cgroup_path.substr(0, slash);
  }
  return false;
}

// Whether an app id matches an app_id pattern (see AppSpec). Does not allocate.
bool app_id_matches(std::string_view pattern, std::string_view app_id);

// Whether a flow's app matches the rule.
bool app_matches(const AppSpec& rule, const AppView& app);

}  // namespace splitd::decider
