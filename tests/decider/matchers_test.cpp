// The decider's indexes on their own: PrefixTrie, DomainMatcher, glob_match.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "decider/app_matcher.hpp"
#include "decider/domain_matcher.hpp"
#include "decider/prefix_trie.hpp"

namespace splitd::decider {
namespace {

Cidr cidr(const char* s) { return *Cidr::parse(s); }
IpAddress ip(const char* s) { return *IpAddress::parse(s); }

TEST(PrefixTrie, LongestPrefixWins) {
  PrefixTrie t;
  t.insert(cidr("10.0.0.0/8"), 0);
  t.insert(cidr("10.1.2.3/32"), 1);
  t.insert(cidr("10.1.0.0/16"), 2);
  t.insert(cidr("2001:db8::/32"), 3);
  t.insert(cidr("2001:db8::1/128"), 4);
  t.insert(cidr("10.0.0.0/8"), 9);  // duplicate keeps its first value
  EXPECT_EQ(t.size(), 5u);
  EXPECT_EQ(t.lookup(ip("10.200.0.1")), 0u);
  EXPECT_EQ(t.lookup(ip("10.1.2.3")), 1u);
  EXPECT_EQ(t.lookup(ip("10.1.2.4")), 2u);
  EXPECT_EQ(t.lookup(ip("::ffff:10.1.2.3")), 1u);
  EXPECT_EQ(t.lookup(ip("11.0.0.0")), PrefixTrie::kNone);
  EXPECT_EQ(t.lookup(ip("2001:db8::1")), 4u);
  EXPECT_EQ(t.lookup(ip("2001:db8::2")), 3u);
  EXPECT_EQ(t.lookup(ip("2001:db9::")), PrefixTrie::kNone);
  // Families do not mix: 10.0.0.0/8 says nothing about ::a00:0.
  EXPECT_EQ(t.lookup(ip("::a00:1")), PrefixTrie::kNone);
}

TEST(PrefixTrie, SlashZeroAndHostRoutes) {
  PrefixTrie t;
  EXPECT_EQ(t.lookup(ip("1.2.3.4")), PrefixTrie::kNone);
  t.insert(cidr("0.0.0.0/0"), 7);
  t.insert(cidr("255.255.255.255/32"), 8);
  t.insert(cidr("0.0.0.0/32"), 10);
  t.insert(cidr("::/0"), 11);
  t.insert(cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 12);
  t.insert(cidr("::ffff:192.0.2.0/120"), 13);  // mapped block, normalised to 192.0.2.0/24
  EXPECT_EQ(t.lookup(ip("1.2.3.4")), 7u);
  EXPECT_EQ(t.lookup(ip("255.255.255.255")), 8u);
  EXPECT_EQ(t.lookup(ip("255.255.255.254")), 7u);
  EXPECT_EQ(t.lookup(ip("0.0.0.0")), 10u);
  EXPECT_EQ(t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), 12u);
  EXPECT_EQ(t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")), 11u);
  EXPECT_EQ(t.lookup(ip("192.0.2.77")), 13u);
  EXPECT_EQ(t.lookup(ip("::ffff:192.0.2.77")), 13u);
  t.freeze();
  EXPECT_EQ(t.lookup(ip("1.2.3.4")), 7u);
  EXPECT_EQ(t.lookup(ip("0.0.0.0")), 10u);
  EXPECT_EQ(t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), 12u);
  EXPECT_EQ(t.lookup(ip("::1")), 11u);
  EXPECT_EQ(t.lookup(ip("::ffff:192.0.2.77")), 13u);
  t.insert(cidr("1.2.0.0/16"), 14);  // drops the jump table
  EXPECT_EQ(t.lookup(ip("1.2.3.4")), 14u);
}

// Against a linear scan of Cidr::contains, on random overlapping blocks and addresses
// drawn near them.
TEST(PrefixTrie, AgreesWithLinearScan) {
  std::mt19937_64 rng(42);
  std::vector<Cidr> blocks;
  PrefixTrie t;
  const auto random_ip = [&](bool v4) {
    std::array<std::uint8_t, 16> b{};
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    b[0] &= 0x0f;  // keep them in a few regions so blocks overlap
    return *IpAddress::from_bytes({b.data(), v4 ? 4u : 16u});
  };
  for (std::uint32_t i = 0; i < 3000; ++i) {
    const bool v4 = rng() % 2 == 0;
    const unsigned max = v4 ? 32 : 128;
    const auto len = static_cast<std::uint8_t>(rng() % 4 == 0 ? rng() % (max + 1) : rng() % 13);
    blocks.emplace_back(random_ip(v4), len);
    t.insert(blocks.back(), i);
  }
  for (int i = 0; i < 40000; ++i) {
    if (i == 20000) t.freeze();  // the same answers through the jump table
    const IpAddress a = i % 3 == 0 ? blocks[rng() % blocks.size()].network()
                                   : random_ip(rng() % 2 == 0);
    std::uint32_t want = PrefixTrie::kNone;
    for (std::uint32_t j = 0; j < blocks.size(); ++j) {
      if (!blocks[j].contains(a)) continue;
      if (want == PrefixTrie::kNone || blocks[j].prefix_len() > blocks[want].prefix_len()) want = j;
    }
    ASSERT_EQ(t.lookup(a), want) << a.to_string();
  }
  EXPECT_LE(t.node_count(), 2 * blocks.size() + 2);
}

TEST(DomainMatcher, NormalizesPatterns) {
  EXPECT_EQ(DomainMatcher::normalize_pattern("Example.COM."), "example.com");
  EXPECT_EQ(DomainMatcher::normalize_pattern("*.X.com"), "*.x.com");
  EXPECT_EQ(DomainMatcher::normalize_pattern("*"), "*");
  EXPECT_FALSE(DomainMatcher::normalize_pattern(""));
  EXPECT_FALSE(DomainMatcher::normalize_pattern("."));
  EXPECT_FALSE(DomainMatcher::normalize_pattern("a..b"));
  EXPECT_FALSE(DomainMatcher::normalize_pattern(".a.b"));
  EXPECT_FALSE(DomainMatcher::normalize_pattern("w*.b"));
  EXPECT_FALSE(DomainMatcher::normalize_pattern("b\xc3\xbc" "cher.de"));
  EXPECT_FALSE(DomainMatcher::normalize_pattern(std::string(254, 'a')));
}

TEST(DomainMatcher, Matches) {
  DomainMatcher m;
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.match("example.com"), nullptr);
  for (const char* p : {"example.com", "*.example.com", "*.sub.example.com", "*.cdn.*.x.net",
                        "a.*.y.org", "*.*.z.org"}) {
    ASSERT_TRUE(m.add(p)) << p;
  }
  EXPECT_FALSE(m.add("bad..pattern"));
  EXPECT_EQ(m.size(), 6u);
  const auto hit = [&](std::string_view name) {
    const std::string* p = m.match(name);
    return p ? *p : std::string("-");
  };
  EXPECT_EQ(hit("example.com"), "example.com");
  EXPECT_EQ(hit("EXAMPLE.com."), "example.com");
  EXPECT_EQ(hit("a.example.com"), "*.example.com");
  EXPECT_EQ(hit("a.sub.example.com"), "*.sub.example.com");  // the longest suffix
  EXPECT_EQ(hit("sub.example.com"), "*.example.com");
  EXPECT_EQ(hit("example.org"), "-");
  EXPECT_EQ(hit("com"), "-");
  EXPECT_EQ(hit(""), "-");
  EXPECT_EQ(hit("."), "-");
  EXPECT_EQ(hit("a..example.com"), "-");
  EXPECT_EQ(hit("i.cdn.q.x.net"), "*.cdn.*.x.net");
  EXPECT_EQ(hit("cdn.q.x.net"), "-");
  EXPECT_EQ(hit("i.cdn.x.net"), "-");
  EXPECT_EQ(hit("a.b.y.org"), "a.*.y.org");
  EXPECT_EQ(hit("b.b.y.org"), "-");
  EXPECT_EQ(hit("b.c.z.org"), "*.*.z.org");
  EXPECT_EQ(hit("a.b.c.z.org"), "*.*.z.org");
  EXPECT_EQ(hit("c.z.org"), "-");
  EXPECT_EQ(hit(std::string(300, 'a')), "-");
}

TEST(DomainMatcher, StarAloneMatchesAnyName) {
  DomainMatcher m;
  ASSERT_TRUE(m.add("*"));
  EXPECT_NE(m.match("localhost"), nullptr);
  EXPECT_NE(m.match("a.b.c"), nullptr);
  EXPECT_EQ(m.match(""), nullptr);
}

TEST(DomainMatcher, ManyPatterns) {
  DomainMatcher m;
  for (int i = 0; i < 20000; ++i) {
    ASSERT_TRUE(m.add((i % 2 ? "*.d" : "d") + std::to_string(i) + ".example"));
  }
  EXPECT_EQ(*m.match("d1234.example"), "d1234.example");
  EXPECT_EQ(m.match("x.d1234.example"), nullptr);
  EXPECT_EQ(*m.match("x.y.d1235.example"), "*.d1235.example");
  EXPECT_EQ(m.match("d1235.example"), nullptr);
}

// Many stars cost pattern x text steps, not text^stars: this pattern took 20 ms against
// 30 bytes with 6 stars when every split point was tried, 4 times more per star.
TEST(GlobMatch, ManyStarsDoNotBacktrackExponentially) {
  std::string pattern;
  for (int i = 0; i < 40; ++i) pattern += "*a";
  pattern += "*b";
  const std::string text(4000, 'a');
  EXPECT_FALSE(glob_match(pattern, text));
  EXPECT_FALSE(app_id_matches(pattern, text));
  EXPECT_TRUE(glob_match(pattern, text + "b"));
  EXPECT_TRUE(app_id_matches(pattern, text + "B"));
  // '*' stays within a segment, '**' crosses them.
  EXPECT_FALSE(glob_match("*a*a*b", "aa/ab"));
  EXPECT_TRUE(glob_match("**a*b", "aa/ab"));
  EXPECT_TRUE(glob_match("*/*a*b", "aa/ab"));
}

TEST(GlobMatch, Segments) {
  EXPECT_TRUE(glob_match("user.slice/*/app.slice/app-slack-*.scope",
                         "/user.slice/user-1000.slice/app.slice/app-slack-42.scope"));
  EXPECT_FALSE(glob_match("user.slice/*/app.slice/app-slack-*.scope",
                          "/user.slice/a/b/app.slice/app-slack-42.scope"));
  EXPECT_FALSE(glob_match("app-*.scope", "app-x/y.scope"));
  EXPECT_TRUE(glob_match("**/app-*.scope", "a/b/c/app-x.scope"));
  EXPECT_TRUE(glob_match("a/**", "a/b/c"));
  EXPECT_TRUE(glob_match("a/?/c", "a/b/c"));
  EXPECT_FALSE(glob_match("a?c", "a/c"));
  EXPECT_TRUE(glob_match("*", "anything"));
  EXPECT_FALSE(glob_match("*", "a/b"));
  EXPECT_TRUE(glob_match("exact.scope", "/exact.scope"));
  EXPECT_FALSE(glob_match("exact.scope", "exact.scope2"));
  EXPECT_TRUE(glob_match("a*b*c", "axxbyyc"));
  EXPECT_FALSE(glob_match("a*b*c", "axxbyy"));
}

AppSpec app_rule(std::string name, std::string cgroup, std::string comm, std::string path) {
  AppSpec a;
  a.name = std::move(name);
  a.cgroup = std::move(cgroup);
  a.comm = std::move(comm);
  a.path = std::move(path);
  return a;
}

bool matches(const AppSpec& rule, std::string_view cgroup, std::string_view comm, std::string_view exe,
             std::string_view app_id = {}, std::optional<std::uint32_t> uid = std::nullopt) {
  return app_matches(rule, AppView{cgroup, comm, exe, app_id, uid});
}

TEST(AppMatches, AnyGivenFieldMatches) {
  const AppSpec slack = app_rule("Slack", "user.slice/**/app-slack-*.scope", "slack", "/usr/lib/slack/slack");
  EXPECT_TRUE(matches(slack, "/user.slice/u/app.slice/app-slack-1.scope", "", ""));
  EXPECT_TRUE(matches(slack, "", "slack", ""));
  EXPECT_TRUE(matches(slack, "", "", "/usr/lib/slack/slack"));
  EXPECT_FALSE(matches(slack, "", "", ""));
  EXPECT_FALSE(matches(slack, "/system.slice/x.service", "bash", "/bin/bash"));
  const AppSpec empty = app_rule("Nothing", "", "", "");
  EXPECT_FALSE(matches(empty, "/a", "", ""));  // empty fields never match
  EXPECT_FALSE(matches(empty, "", "", "", "firefox", 1000u));
}

TEST(AppMatches, UnitGlobsAnyUnitOfThePath) {
  AppSpec t = app_rule("Torrents", "", "", "");
  t.unit = "transmission-daemon.service";
  EXPECT_TRUE(matches(t, "/system.slice/transmission-daemon.service", "", ""));
  EXPECT_FALSE(matches(t, "/system.slice/transmission-daemon.service.d", "", ""));
  EXPECT_FALSE(matches(t, "/system.slice/other.service", "", ""));
  AppSpec ff = app_rule("Firefox", "", "", "");
  ff.unit = "app-*firefox*.scope";
  EXPECT_TRUE(matches(ff, "/user.slice/user-1000.slice/user@1000.service/app.slice/app-gnome-firefox-1234.scope", "", ""));
  EXPECT_TRUE(matches(ff, "/user.slice/user-1000.slice/user@1000.service/app.slice/app-flatpak-org.mozilla.firefox-9.scope", "", ""));
  AppSpec user_manager = app_rule("UserManager", "", "", "");
  user_manager.unit = "user@*.service";  // an outer unit of the path matches too
  EXPECT_TRUE(matches(user_manager, "/user.slice/user-1000.slice/user@1000.service/app.slice/x.scope", "", ""));
  EXPECT_FALSE(matches(user_manager, "/system.slice/sshd.service", "", ""));
}

TEST(AppMatches, AppIdWholeOrLastLabelAnyCase) {
  AppSpec ff = app_rule("Firefox", "", "", "");
  ff.app_id = "firefox";
  EXPECT_TRUE(matches(ff, "", "", "", "firefox"));
  EXPECT_TRUE(matches(ff, "", "", "", "org.mozilla.firefox"));
  EXPECT_TRUE(matches(ff, "", "", "", "Firefox"));
  EXPECT_FALSE(matches(ff, "", "", "", "firefox-esr"));
  EXPECT_FALSE(matches(ff, "", "", "", "org.mozilla.thunderbird"));
  EXPECT_FALSE(matches(ff, "", "", "", ""));
  AppSpec gnome = app_rule("Gnome", "", "", "");
  gnome.app_id = "org.gnome.*";
  EXPECT_TRUE(matches(gnome, "", "", "", "org.gnome.Terminal"));
  EXPECT_FALSE(matches(gnome, "", "", "", "org.kde.konsole"));
  EXPECT_TRUE(app_id_matches("konsole", "org.kde.konsole"));
  EXPECT_FALSE(app_id_matches("", "org.kde.konsole"));
}

TEST(AppMatches, UserByUid) {
  AppSpec u = app_rule("Alice", "", "", "");
  u.user = "alice";
  u.uid = 1000;
  EXPECT_TRUE(matches(u, "", "", "", "", 1000u));
  EXPECT_FALSE(matches(u, "", "", "", "", 1001u));
  EXPECT_FALSE(matches(u, "", "", "", "", std::nullopt));  // the owner is not known
  AppSpec unresolved = app_rule("Gone", "", "", "");
  unresolved.user = "gone";  // a user removed since: matches nobody
  EXPECT_FALSE(matches(unresolved, "", "", "", "", 0u));
}

TEST(ForEachUnit, DeepestFirstAndOnlyUnits) {
  std::vector<std::string> seen;
  for_each_unit("/user.slice/user-1000.slice/user@1000.service/app.slice/app-x-1.scope/sub", [&](std::string_view u) {
    seen.emplace_back(u);
    return false;
  });
  EXPECT_EQ(seen, (std::vector<std::string>{"app-x-1.scope", "app.slice", "user@1000.service", "user-1000.slice",
                                            "user.slice"}));
  EXPECT_FALSE(is_unit_component(".scope"));
  EXPECT_TRUE(is_unit_component("a.scope"));
}

}  // namespace
}  // namespace splitd::decider
