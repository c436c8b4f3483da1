// The rule engine of SPEC "Routing semantics" through RuleDecider: a table of decisions,
// each run in both modes.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "decider/decider.hpp"
#include "fakes/interface_fixtures.hpp"

namespace splitd::decider {
namespace {

using fakes::ip;

// Every destination resolves to the names the test sets, visited in the order given.
class FakeNames final : public IpNames {
 public:
  void visit_names(const IpAddress& a, NameVisitor& visitor) const override {
    last_asked = a;
    for (const std::string& n : names) {
      if (visitor(n)) return;
    }
  }
  std::vector<std::string> names;
  mutable IpAddress last_asked;
};

// Heap allocations made on this thread, counted by the replaced global operator new below
// (to prove that a decision allocates only its rule text).
thread_local std::size_t allocations = 0;

RuleSpec main_spec(Mode mode) {
  RuleSpec s;
  s.mode = mode;
  for (const char* c : {"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.0.2.0/24",
                        "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::1/128"}) {
    s.ips.push_back(*Cidr::parse(c));
  }
  s.domains = {"example.com",         "*.example.com", "*.x.com",       "exact.org",
               "*.cdn.*.example.net", "a.*.example.io", "Upper.COM.",   "xn--bcher-kva.example"};
  const auto app = [](const char* name, const char* cgroup, const char* comm, const char* path) {
    AppSpec a;
    a.name = name;
    a.cgroup = cgroup;
    a.comm = comm;
    a.path = path;
    return a;
  };
  s.apps = {app("Slack", "user.slice/*/app.slice/app-slack-*.scope", "slack", "/usr/lib/slack/slack"),
            app("Firefox", "", "firefox", ""), app("Deep", "system.slice/**/deep.scope", "", "")};
  return s;
}

RuleSpec slash_zero_spec(Mode mode) {
  RuleSpec s;
  s.mode = mode;
  for (const char* c : {"0.0.0.0/0", "::/0", "10.0.0.0/8"}) s.ips.push_back(*Cidr::parse(c));
  return s;
}

struct Row {
  const char* what;
  int set;  // 0 main_spec, 1 slash_zero_spec
  const char* dst;
  std::vector<std::string> names;
  const char* cgroup;
  const char* comm;
  const char* exe;
  const char* rule;  // "default" = no rule matches
};

constexpr const char* kName = "198.51.100.7";  // in no IP rule

const std::vector<Row>& rows() {
  static const std::vector<Row> r = {
      // IPv4, longest prefix among overlapping blocks
      {"v4 /8", 0, "10.9.9.9", {}, "", "", "", "ip 10.0.0.0/8"},
      {"v4 /16 in /8", 0, "10.1.9.9", {}, "", "", "", "ip 10.1.0.0/16"},
      {"v4 /24 in /16", 0, "10.1.2.9", {}, "", "", "", "ip 10.1.2.0/24"},
      {"v4 /32", 0, "10.1.2.3", {}, "", "", "", "ip 10.1.2.3/32"},
      {"v4 next to /32", 0, "10.1.2.4", {}, "", "", "", "ip 10.1.2.0/24"},
      {"v4 outside", 0, "11.0.0.1", {}, "", "", "", "default"},
      {"v4 just below", 0, "9.255.255.255", {}, "", "", "", "default"},
      {"v4 last of /8", 0, "10.255.255.255", {}, "", "", "", "ip 10.0.0.0/8"},
      {"v4 last of /24", 0, "192.0.2.255", {}, "", "", "", "ip 192.0.2.0/24"},
      {"mapped /32", 0, "::ffff:10.1.2.3", {}, "", "", "", "ip 10.1.2.3/32"},
      {"mapped outside", 0, "::ffff:11.0.0.1", {}, "", "", "", "default"},
      // IPv6
      {"v6 /32", 0, "2001:db8::5", {}, "", "", "", "ip 2001:db8::/32"},
      {"v6 /48 in /32", 0, "2001:db8:1::5", {}, "", "", "", "ip 2001:db8:1::/48"},
      {"v6 /128", 0, "2001:db8:1::1", {}, "", "", "", "ip 2001:db8:1::1/128"},
      {"v6 next to /128", 0, "2001:db8:1::2", {}, "", "", "", "ip 2001:db8:1::/48"},
      {"v6 outside", 0, "2001:db9::1", {}, "", "", "", "default"},
      {"v6 last of /32", 0, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", {}, "", "", "", "ip 2001:db8::/32"},
      {"v4-compatible is not v4", 0, "::10.1.2.3", {}, "", "", "", "default"},
      // /0
      {"v4 /0", 1, "8.8.8.8", {}, "", "", "", "ip 0.0.0.0/0"},
      {"v4 /8 beats /0", 1, "10.0.0.1", {}, "", "", "", "ip 10.0.0.0/8"},
      {"v6 /0", 1, "2606:4700::1", {}, "", "", "", "ip ::/0"},
      {"mapped under v4 /0", 1, "::ffff:8.8.8.8", {}, "", "", "", "ip 0.0.0.0/0"},
      // Domains
      {"exact", 0, kName, {"example.com"}, "", "", "", "domain example.com (example.com)"},
      {"wildcard one deep", 0, kName, {"www.example.com"}, "", "", "", "domain *.example.com (www.example.com)"},
      {"wildcard any depth", 0, kName, {"a.b.c.example.com"}, "", "", "", "domain *.example.com (a.b.c.example.com)"},
      {"*.x.com is not x.com", 0, kName, {"x.com"}, "", "", "", "default"},
      {"*.x.com", 0, kName, {"a.x.com"}, "", "", "", "domain *.x.com (a.x.com)"},
      {"*.x.com deep", 0, kName, {"deep.a.x.com"}, "", "", "", "domain *.x.com (deep.a.x.com)"},
      {"label boundary", 0, kName, {"notx.com"}, "", "", "", "default"},
      {"suffix elsewhere", 0, kName, {"x.com.evil.net"}, "", "", "", "default"},
      {"name case and dot", 0, kName, {"WWW.Example.COM."}, "", "", "", "domain *.example.com (www.example.com)"},
      {"pattern case and dot", 0, kName, {"upper.com"}, "", "", "", "domain upper.com (upper.com)"},
      {"exact with dot", 0, kName, {"exact.org."}, "", "", "", "domain exact.org (exact.org)"},
      {"exact is not below", 0, kName, {"sub.exact.org"}, "", "", "", "default"},
      {"multi wildcard", 0, kName, {"img.cdn.eu.example.net"}, "", "", "", "domain *.cdn.*.example.net (img.cdn.eu.example.net)"},
      {"multi wildcard deep lead", 0, kName, {"a.b.cdn.eu.example.net"}, "", "", "", "domain *.cdn.*.example.net (a.b.cdn.eu.example.net)"},
      {"leading * needs a label", 0, kName, {"cdn.eu.example.net"}, "", "", "", "default"},
      {"inner * is one label", 0, kName, {"img.cdn.eu.us.example.net"}, "", "", "", "default"},
      {"inner only", 0, kName, {"a.zz.example.io"}, "", "", "", "domain a.*.example.io (a.zz.example.io)"},
      {"inner only, two labels", 0, kName, {"a.zz.yy.example.io"}, "", "", "", "default"},
      {"inner only, no lead", 0, kName, {"b.a.zz.example.io"}, "", "", "", "default"},
      {"no names known", 0, kName, {}, "", "", "", "default"},
      {"several names", 0, kName, {"other.net", "www.example.com"}, "", "", "", "domain *.example.com (www.example.com; 1 of 2 names)"},
      {"smallest matching name", 0, kName, {"b.x.com", "zz.example.com", "a.x.com"}, "", "", "", "domain *.x.com (a.x.com; 1 of 3 names)"},
      {"match beats smaller unmatched", 0, kName, {"aaa.other.net", "www.example.com", "b.other.org"}, "", "", "", "domain *.example.com (www.example.com; 1 of 3 names)"},
      {"smallest as displayed", 0, kName, {"b.x.com", "A.X.COM."}, "", "", "", "domain *.x.com (a.x.com; 1 of 2 names)"},
      {"none of several match", 0, kName, {"a.other.net", "b.other.net"}, "", "", "", "default"},
      {"none of several, ip", 0, "10.1.2.3", {"a.other.net", "b.other.net"}, "", "", "", "ip 10.1.2.3/32"},
      {"punycode", 0, kName, {"xn--bcher-kva.example"}, "", "", "", "domain xn--bcher-kva.example (xn--bcher-kva.example)"},
      {"non-ASCII never", 0, kName, {"b\xc3\xbc" "cher.example"}, "", "", "", "default"},
      {"domain beats ip", 0, "10.1.2.3", {"www.example.com"}, "", "", "", "domain *.example.com (www.example.com)"},
      {"ip when no name matches", 0, "10.1.2.3", {"nomatch.net"}, "", "", "", "ip 10.1.2.3/32"},
      {"domain on v6", 0, "2001:db9::1", {"v6.example.com"}, "", "", "", "domain *.example.com (v6.example.com)"},
      // Apps
      {"cgroup glob", 0, kName, {}, "/user.slice/user-1000.slice/app.slice/app-slack-1234.scope", "", "", "app Slack"},
      {"* does not cross /", 0, kName, {}, "/user.slice/user-1000.slice/x/app.slice/app-slack-1.scope", "", "", "default"},
      {"comm", 0, kName, {}, "", "slack", "", "app Slack"},
      {"exe", 0, kName, {}, "", "", "/usr/lib/slack/slack", "app Slack"},
      {"exe exact", 0, kName, {}, "", "", "/usr/lib/slack/slack2", "default"},
      {"comm exact", 0, kName, {}, "", "Slack", "", "default"},
      {"comm only rule", 0, kName, {}, "", "firefox", "", "app Firefox"},
      {"** crosses /", 0, kName, {}, "/system.slice/a/b/c/deep.scope", "", "", "app Deep"},
      {"app beats domain and ip", 0, "10.1.2.3", {"www.example.com"}, "", "slack", "", "app Slack"},
      {"any field matches", 0, kName, {}, "/user.slice/user-1000.slice/app.slice/app-signal-1.scope", "firefox", "", "app Firefox"},
      {"app on v6", 0, "2001:db8:1::1", {}, "", "firefox", "", "app Firefox"},
      {"first app wins", 0, kName, {}, "", "firefox", "/usr/lib/slack/slack", "app Slack"},
  };
  return r;
}

TEST(RuleEngine, DecisionTable) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  FakeNames names;
  int decisions = 0;
  for (Mode mode : {Mode::kExclude, Mode::kInclude}) {
    RuleDecider main(source, build_rules(main_spec(mode)), &names);
    RuleDecider zero(source, build_rules(slash_zero_spec(mode)), &names);
    for (const Row& row : rows()) {
      SCOPED_TRACE(std::string(to_string(mode)) + ": " + row.what + " (" + row.dst + ")");
      names.names = row.names;
      SessionInfo s;
      s.dst = ip(row.dst);
      s.dst_port = 443;
      s.cgroup_path = row.cgroup;
      s.comm = row.comm;
      s.exe = row.exe;
      const Route r = (row.set == 0 ? main : zero).decide(s);
      const bool matched = std::string(row.rule) != "default";
      const bool tunnel = (mode == Mode::kExclude) != matched;
      const bool v4 = s.dst.unmapped().is_v4();
      EXPECT_EQ(r.rule, row.rule);
      EXPECT_EQ(r.kind, tunnel ? RouteKind::kTunnel : RouteKind::kDirect);
      EXPECT_EQ(r.interface, tunnel ? "tun0" : "phys0");
      ASSERT_TRUE(r.source.has_value());
      EXPECT_EQ(r.source->to_string(), tunnel ? (v4 ? "198.18.2.2" : "2001:db8:ff:2::2")
                                              : (v4 ? "198.18.1.2" : "2001:db8:ff:1::2"));
      EXPECT_EQ(r.matched == MatchKind::kNone, !matched);
      ++decisions;
    }
  }
  EXPECT_GE(decisions, 120);
}

TEST(RuleEngine, NamesAreAskedForTheUnmappedAddress) {
  FakeNames names;
  names.names = {"www.example.com"};
  const auto rules = build_rules(main_spec(Mode::kExclude));
  SessionInfo s;
  s.dst = ip("::ffff:198.51.100.7");
  EXPECT_EQ(rules->match(s, &names).kind, MatchKind::kDomain);
  EXPECT_EQ(names.last_asked, ip("198.51.100.7"));
  EXPECT_EQ(rules->match(s, nullptr).kind, MatchKind::kNone);  // no names known
}

// The choice among several names does not depend on the order the store keeps them in.
TEST(RuleEngine, SeveralNamesAreOrderIndependent) {
  const auto rules = build_rules(main_spec(Mode::kExclude));
  FakeNames names;
  names.names = {"b.x.com", "nomatch.net", "www.example.com", "a.x.com", "x.com"};
  std::sort(names.names.begin(), names.names.end());
  SessionInfo s;
  s.dst = ip(kName);
  int orders = 0;
  do {
    const RuleMatch m = rules->match(s, &names);
    EXPECT_EQ(m.kind, MatchKind::kDomain);
    ASSERT_EQ(m.rule, "domain *.x.com (a.x.com; 1 of 5 names)");
    ++orders;
  } while (std::next_permutation(names.names.begin(), names.names.end()));
  EXPECT_EQ(orders, 120);
}

// A decision visits the names without copying them: the rule text and the matched name
// (which the session keeps for the listing) are its only allocations, and a decision
// that no name decides allocates nothing.
TEST(RuleEngine, NameMatchAllocatesOnlyTheRuleTextAndTheName) {
  const auto rules = build_rules(main_spec(Mode::kExclude));
  FakeNames names;
  names.names = {"a-long-name-beyond-any-small-string.other.net", "b.x.com",
                 "a-long-name-beyond-any-small-string.x.com"};
  SessionInfo s;
  s.dst = ip(kName);
  std::size_t before = allocations;
  RuleMatch m = rules->match(s, &names);
  EXPECT_EQ(allocations - before, 2u);
  EXPECT_EQ(m.rule, "domain *.x.com (a-long-name-beyond-any-small-string.x.com; 1 of 3 names)");
  EXPECT_EQ(m.domain, "a-long-name-beyond-any-small-string.x.com");
  names.names = {"a-long-name-beyond-any-small-string.other.net", "nomatch.example.org"};
  s.dst = ip("10.1.2.3");
  before = allocations;
  m = rules->match(s, &names);
  EXPECT_EQ(allocations - before, 0u);
  EXPECT_EQ(m.rule, "ip 10.1.2.3/32");
}

// A name sniffed from the flow (SNI, Host, QUIC) is the name the app asked for: it is
// matched before the names of captured DNS, after the app rules, and says where it came
// from; one that matches nothing leaves the decision to the DNS names and the IPs.
TEST(RuleEngine, SniffedNameComesAfterAppsBeforeDnsNames) {
  const auto rules = build_rules(main_spec(Mode::kExclude));
  FakeNames names;
  names.names = {"a.x.com"};
  SessionInfo s;
  s.dst = ip("10.1.2.3");
  s.sniffed_name = "www.example.com";
  s.sniffed_from = "sni";
  RuleMatch m = rules->match(s, &names);
  EXPECT_EQ(m.kind, MatchKind::kDomain);
  EXPECT_EQ(m.rule, "domain *.example.com (www.example.com, sni)");
  EXPECT_EQ(m.domain, "www.example.com");
  s.sniffed_name = "nothing.matches.this";  // the DNS name decides
  m = rules->match(s, &names);
  EXPECT_EQ(m.rule, "domain *.x.com (a.x.com)");
  EXPECT_EQ(rules->match(s, nullptr).rule, "ip 10.1.2.3/32");  // then the IP rules
  s.sniffed_name = "www.example.com";
  s.comm = "firefox";  // an app rule comes first
  EXPECT_EQ(rules->match(s, &names).kind, MatchKind::kApp);
}

// ECH: the decider is told why the name was not used, and says so in the rule text.
TEST(RuleEngine, SniffNoteIsAddedToTheRuleText) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  RuleDecider d(source, build_rules(main_spec(Mode::kExclude)));
  SessionInfo s;
  s.dst = ip("10.1.2.3");
  s.sniff_note = "ECH: outer SNI cloudflare-ech.com not used";
  const Route r = d.decide(s);
  EXPECT_EQ(r.kind, RouteKind::kDirect);
  EXPECT_EQ(r.rule, "ip 10.1.2.3/32; ECH: outer SNI cloudflare-ech.com not used");
  s.dst = ip("198.51.100.1");
  EXPECT_EQ(d.decide(s).rule, "default; ECH: outer SNI cloudflare-ech.com not used");
}

TEST(RuleEngine, MatchKindsAndInvalidPatterns) {
  RuleSpec spec = main_spec(Mode::kInclude);
  spec.domains.push_back("bad..name");
  spec.domains.push_back("w*w.example.com");
  const auto rules = build_rules(spec);
  EXPECT_EQ(rules->invalid_domains, 2u);
  EXPECT_EQ(rules->domains.size(), spec.domains.size());  // as given, for the API
  EXPECT_EQ(std::string(to_string(MatchKind::kApp)), "app");
  EXPECT_EQ(std::string(to_string(MatchKind::kNone)), "default");
}

TEST(RuleEngine, KillSwitchAppliesToDomainMatchesInIncludeMode) {
  auto state = fakes::lab_host_state(true);
  state.apply(fakes::link(3, "tun0", "tun", IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));  // down
  fakes::FakeInterfaceSource source(state);
  FakeNames names;
  names.names = {"a.x.com"};
  RuleDecider d(source, build_rules(main_spec(Mode::kInclude)), &names);
  SessionInfo s;
  s.dst = ip(kName);
  const Route r = d.decide(s);
  EXPECT_EQ(r.kind, RouteKind::kBlock);
  EXPECT_EQ(r.rule, "domain *.x.com (a.x.com); kill switch: tunnel down");
  EXPECT_EQ(r.matched, MatchKind::kDomain);
  names.names = {"unrelated.net"};
  EXPECT_EQ(d.decide(s).kind, RouteKind::kDirect);
}

TEST(RuleEngine, EmptyRulesAreDefault) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  FakeNames names;
  names.names = {"example.com"};
  RuleDecider d(source, build_rules(RuleSpec{}), &names);
  SessionInfo s;
  s.dst = ip("10.0.0.1");
  s.comm = "slack";
  const Route r = d.decide(s);
  EXPECT_EQ(r.kind, RouteKind::kTunnel);
  EXPECT_EQ(r.rule, "default");
}

// Decisions on other threads while the rules are swapped: each sees one whole snapshot.
TEST(RuleEngine, DecideWhileSwapping) {
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  const auto exclude = build_rules(main_spec(Mode::kExclude));
  const auto include = build_rules(main_spec(Mode::kInclude));
  RuleDecider d(source, exclude);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      SessionInfo s;
      s.dst = ip("10.1.2.3");
      for (int i = 0; i < 20000; ++i) {
        const Route r = d.decide(s);
        // Both modes send a match through a different route, but always with the rule.
        if (r.rule != "ip 10.1.2.3/32" || r.kind == RouteKind::kBlock) ++wrong;
      }
    });
  }
  for (int i = 0; i < 2000; ++i) d.set_rules(i % 2 ? exclude : include);
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

}  // namespace
}  // namespace splitd::decider

// Counting replacements of the global allocation functions (see `allocations`). The array
// and sized forms forward to these by default.
void* operator new(std::size_t size) {
  ++splitd::decider::allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// Out of line: inlined into a delete-expression, free() would make GCC report a
// mismatched new/delete pair it cannot see is a matching replacement.
[[gnu::noinline]] void release(void* p) noexcept { std::free(p); }
void operator delete(void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
