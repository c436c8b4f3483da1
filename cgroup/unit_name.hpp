#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "decider/app_matcher.hpp"

namespace splitd::cgroup {

// What systemd (and desktops through it) encoded in a cgroup v2 path. Plain value.
struct Units {
  std::string unit;      // the deepest component ending in .service or .scope, "" if none
  std::string app_id;    // the desktop application id ("firefox", "org.mozilla.firefox"), "" if none
  std::string launcher;  // who started it: "gnome", "flatpak", "kde", "snap", "dbus", "" if unknown
  std::optional<std::uint32_t> user_slice_uid;  // 1000 from "user-1000.slice"
  friend bool operator==(const Units&, const Units&) = default;
};

// The application id and launcher one unit name carries.
struct AppName {
  std::string app_id;
  std::string launcher;
  friend bool operator==(const AppName&, const AppName&) = default;
};

// Parses a cgroup v2 path ("/user.slice/user-1000.slice/user@1000.service/app.slice/
// app-gnome-firefox-1234.scope"). Pure, never fails: what cannot be recognised stays empty.
//
// The app id comes from the deepest unit that names one (see parse_app_unit), searching from
// the deepest component up: a unit without one (vte-spawn-<uuid>.scope, a plain service)
// inherits it from an enclosing app slice, so a shell in GNOME Terminal
// (app-org.gnome.Terminal.slice/vte-spawn-….scope) has app id "org.gnome.Terminal" and
// launcher "". System services (/system.slice/x.service), login sessions (session-3.scope)
// and containers (docker-<id>.scope) have no app id: rules match their unit.
Units parse_units(std::string_view cgroup_path);

// The app id of one unit name, following systemd's XDG naming
// (https://systemd.io/DESKTOP_ENVIRONMENTS):
//   app[-<launcher>]-<ApplicationID>[@<RANDOM>].service
//   app[-<launcher>]-<ApplicationID>-<RANDOM>.scope   (RANDOM: the last '-' part)
//   app[-<launcher>]-<ApplicationID>.slice            (only reverse-DNS ids: "app-gnome.slice"
//                                                       and "app-graphical.slice" are groupings)
//   snap.<snap>.<app>-<uuid>.scope, snap.<snap>.<app>.service  → <app>, launcher "snap"
//   dbus-:<bus>-<ApplicationID>@<n>.service                   → launcher "dbus"
// An unescaped '-' inside <launcher>-<ApplicationID> separates the launcher (systemd escapes
// '-' in ids as \x2d). \xNN escapes are decoded when they give a printable character other
// than '/'. nullopt for any other name.
std::optional<AppName> parse_app_unit(std::string_view unit_name);

// Decodes systemd's \xNN unit-name escapes (printable results other than '/' only).
std::string unescape_unit_name(std::string_view text);

// The unit components of a path: decider/app_matcher.hpp has the one walk (app rules match
// units there too).
using decider::for_each_unit;
using decider::is_unit_component;

// Every unit component of a cgroup path, in path order (outermost first). Views into `path`.
std::vector<std::string_view> unit_components(std::string_view cgroup_path);

}  // namespace splitd::cgroup
