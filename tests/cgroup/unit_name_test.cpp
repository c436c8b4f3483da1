#include "cgroup/unit_name.hpp"

#include <gtest/gtest.h>

namespace splitd::cgroup {
namespace {

constexpr std::string_view kUserApp = "/user.slice/user-1000.slice/user@1000.service/app.slice/";

Units units(std::string unit, std::string app_id, std::string launcher, std::optional<std::uint32_t> uid) {
  return Units{std::move(unit), std::move(app_id), std::move(launcher), uid};
}

TEST(ParseUnits, GnomeScope) {
  const std::string p = std::string(kUserApp) + "app-gnome-firefox-1234.scope";
  EXPECT_EQ(parse_units(p), units("app-gnome-firefox-1234.scope", "firefox", "gnome", 1000));
}

TEST(ParseUnits, FlatpakScope) {
  const std::string p = std::string(kUserApp) + "app-flatpak-org.mozilla.firefox-1234.scope";
  EXPECT_EQ(parse_units(p), units("app-flatpak-org.mozilla.firefox-1234.scope", "org.mozilla.firefox", "flatpak", 1000));
}

TEST(ParseUnits, SnapScope) {
  const std::string p =
      "/user.slice/user-1000.slice/user@1000.service/app.slice/"
      "snap.firefox.firefox-8e6a2f2a-1111-2222-3333-444455556666.scope";
  EXPECT_EQ(parse_units(p),
            units("snap.firefox.firefox-8e6a2f2a-1111-2222-3333-444455556666.scope", "firefox", "snap", 1000));
  EXPECT_EQ(parse_units("/user.slice/user-1000.slice/snap.spotify.spotify-1d2c3b4a.scope").app_id, "spotify");
  // The app id is the snap's app name, not the snap's name.
  EXPECT_EQ(parse_units("/x/snap.firefox.geckodriver-1d2c.scope").app_id, "geckodriver");
  // Dashes in snap and app names; the older '.' before the UUID.
  EXPECT_EQ(parse_units("/x/snap.my-snap.my-app-8e6a2f2a-1111-2222-3333-444455556666.scope").app_id, "my-app");
  EXPECT_EQ(parse_units("/x/snap.code.code.8e6a2f2a-1111-2222-3333-444455556666.scope").app_id, "code");
}

TEST(ParseUnits, SnapService) {
  EXPECT_EQ(parse_units("/system.slice/snap.lxd.daemon.service"),
            units("snap.lxd.daemon.service", "daemon", "snap", std::nullopt));
}

TEST(ParseUnits, ScopeWithoutLauncher) {
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-org.kde.konsole-1234.scope"),
            units("app-org.kde.konsole-1234.scope", "org.kde.konsole", "", 1000));
}

TEST(ParseUnits, ServiceWithRandom) {
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-firefox@f1d2c3.service"),
            units("app-firefox@f1d2c3.service", "firefox", "", 1000));
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-gnome-org.gnome.Evince@12345.service"),
            units("app-gnome-org.gnome.Evince@12345.service", "org.gnome.Evince", "gnome", 1000));
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-org.gnome.Weather.service").app_id, "org.gnome.Weather");
}

TEST(ParseUnits, EscapedDashInAppId) {
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-gnome-firefox\\x2desr-4242.scope"),
            units("app-gnome-firefox\\x2desr-4242.scope", "firefox-esr", "gnome", 1000));
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-my\\x2dapp@0.service").app_id, "my-app");
  // Escapes of '/', control characters or bad hex stay as written.
  EXPECT_EQ(parse_units("/app-a\\x2fb-1.scope").app_id, "a\\x2fb");
  EXPECT_EQ(parse_units("/app-a\\x01b-1.scope").app_id, "a\\x01b");
  EXPECT_EQ(parse_units("/app-a\\xzzb-1.scope").app_id, "a\\xzzb");
  EXPECT_EQ(parse_units("/app-ab\\x2-1.scope").app_id, "ab\\x2");
}

TEST(ParseUnits, GnomeTerminal) {
  const std::string scope = std::string(kUserApp) + "app-gnome-org.gnome.Terminal-5678.scope";
  EXPECT_EQ(parse_units(scope), units("app-gnome-org.gnome.Terminal-5678.scope", "org.gnome.Terminal", "gnome", 1000));
  // A shell in a terminal tab: the unit is its own scope, the app id the terminal's slice's.
  const std::string vte = std::string(kUserApp) +
                          "app-org.gnome.Terminal.slice/vte-spawn-0f3c6b1e-8a2d-4e8b-9c1a-2b3c4d5e6f70.scope";
  EXPECT_EQ(parse_units(vte), units("vte-spawn-0f3c6b1e-8a2d-4e8b-9c1a-2b3c4d5e6f70.scope", "org.gnome.Terminal", "", 1000));
}

TEST(ParseUnits, GroupingSlicesNameNoApp) {
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-gnome.slice/foo.service"),
            units("foo.service", "", "", 1000));
  EXPECT_EQ(parse_units("/user.slice/user-1000.slice/user@1000.service/app.slice/app-graphical.slice/x.scope").app_id, "");
}

TEST(ParseUnits, SystemService) {
  EXPECT_EQ(parse_units("/system.slice/transmission-daemon.service"),
            units("transmission-daemon.service", "", "", std::nullopt));
}

TEST(ParseUnits, DockerScope) {
  const std::string id(64, 'a');
  EXPECT_EQ(parse_units("/system.slice/docker-" + id + ".scope"),
            units("docker-" + id + ".scope", "", "", std::nullopt));
}

TEST(ParseUnits, Session) {
  EXPECT_EQ(parse_units("/user.slice/user-1000.slice/session-3.scope"), units("session-3.scope", "", "", 1000));
}

TEST(ParseUnits, DbusActivated) {
  EXPECT_EQ(parse_units(std::string(kUserApp) + "dbus-:1.14-org.freedesktop.portal.Documents@0.service"),
            units("dbus-:1.14-org.freedesktop.portal.Documents@0.service", "org.freedesktop.portal.Documents",
                  "dbus", 1000));
}

TEST(ParseUnits, UserManagerAndSubcgroups) {
  EXPECT_EQ(parse_units("/user.slice/user-1000.slice/user@1000.service/init.scope"),
            units("init.scope", "", "", 1000));
  // A cgroup an app made inside its own scope: still that app's.
  EXPECT_EQ(parse_units(std::string(kUserApp) + "app-gnome-firefox-1234.scope/content"),
            units("app-gnome-firefox-1234.scope", "firefox", "gnome", 1000));
}

TEST(ParseUnits, Empty) {
  EXPECT_EQ(parse_units("/"), Units{});
  EXPECT_EQ(parse_units(""), Units{});
  EXPECT_EQ(parse_units("///"), Units{});
  EXPECT_EQ(parse_units("/user.slice"), Units{});
}

TEST(ParseUnits, Garbage) {
  EXPECT_EQ(parse_units("app-"), Units{});
  EXPECT_EQ(parse_units("/app-"), Units{});
  EXPECT_EQ(parse_units("/-.scope"), units("-.scope", "", "", std::nullopt));
  EXPECT_EQ(parse_units("/.scope"), Units{});  // nothing before the suffix
  EXPECT_EQ(parse_units("/app-.scope"), units("app-.scope", "", "", std::nullopt));
  EXPECT_EQ(parse_units("/app--1.scope"), units("app--1.scope", "", "", std::nullopt));
  EXPECT_EQ(parse_units("/app-@x.service"), units("app-@x.service", "", "", std::nullopt));
  EXPECT_EQ(parse_units("/snap..scope").app_id, "");
  EXPECT_EQ(parse_units("/dbus-:1.2.service").app_id, "");
  EXPECT_EQ(parse_units("//a//b.service//"), units("b.service", "", "", std::nullopt));
  EXPECT_EQ(parse_units("/user-.slice").user_slice_uid, std::nullopt);
  EXPECT_EQ(parse_units("/user-99999999999.slice").user_slice_uid, std::nullopt);  // > uint32
  EXPECT_EQ(parse_units("/user-12x.slice").user_slice_uid, std::nullopt);
  EXPECT_EQ(parse_units(std::string("/a\0b.scope", 10)).unit, std::string("a\0b.scope", 9));
}

TEST(ParseUnits, VeryLongPaths) {
  std::string p;
  for (int i = 0; i < 20000; ++i) p += "/x" + std::to_string(i) + ".slice";
  p += "/app-gnome-" + std::string(100000, 'a') + "-1.scope";
  const Units u = parse_units(p);
  EXPECT_EQ(u.app_id.size(), 100000u);
  EXPECT_EQ(u.launcher, "gnome");
  EXPECT_EQ(unit_components(p).size(), 20001u);
  const std::string slashes(1 << 20, '/');
  EXPECT_EQ(parse_units(slashes), Units{});
  const std::string dashes = "/app" + std::string(1 << 20, '-') + ".scope";
  EXPECT_EQ(parse_units(dashes).app_id, "");
}

TEST(ParseAppUnit, Direct) {
  EXPECT_EQ(parse_app_unit("app-gnome-firefox-1234.scope"), (AppName{"firefox", "gnome"}));
  EXPECT_EQ(parse_app_unit("app-kde-org.kde.dolphin-1.scope"), (AppName{"org.kde.dolphin", "kde"}));
  EXPECT_EQ(parse_app_unit("app-firefox.scope"), (AppName{"firefox", ""}));  // no RANDOM: lenient
  EXPECT_EQ(parse_app_unit("app.slice"), std::nullopt);
  EXPECT_EQ(parse_app_unit("app-org.gnome.Terminal.slice"), (AppName{"org.gnome.Terminal", ""}));
  EXPECT_EQ(parse_app_unit("firefox"), std::nullopt);
  EXPECT_EQ(parse_app_unit(""), std::nullopt);
}

TEST(UnitComponents, PathOrder) {
  const std::string p = std::string(kUserApp) + "app-gnome-firefox-1234.scope/sub";
  const std::vector<std::string_view> want = {"user.slice", "user-1000.slice", "user@1000.service", "app.slice",
                                              "app-gnome-firefox-1234.scope"};
  EXPECT_EQ(unit_components(p), want);
  EXPECT_TRUE(unit_components("/").empty());
  EXPECT_TRUE(unit_components("/a/.slice/b").empty());
}

TEST(ForEachUnit, DeepestFirstAndStops) {
  std::vector<std::string_view> seen;
  EXPECT_FALSE(for_each_unit("/a.slice/b/c.service", [&](std::string_view c) {
    seen.push_back(c);
    return false;
  }));
  EXPECT_EQ(seen, (std::vector<std::string_view>{"c.service", "a.slice"}));
  EXPECT_TRUE(for_each_unit("/a.slice/c.service", [](std::string_view c) { return c == "c.service"; }));
}

}  // namespace
}  // namespace splitd::cgroup
