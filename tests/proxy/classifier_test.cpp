// The Classifier's part of sniffing: which flows wait for their first bytes, and how a
// sniffed name decides a flow, shows in the listing and is counted.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "decider/decider.hpp"
#include "fakes/interface_fixtures.hpp"
#include "proxy/classifier.hpp"
#include "proxy/session_table.hpp"
#include "sniff/sniff.hpp"

namespace splitd::proxy {
namespace {

using fakes::ip;

// Destinations in `known` resolve to `names`, others to nothing.
class FakeNames final : public decider::IpNames {
 public:
  void visit_names(const IpAddress& a, decider::NameVisitor& visitor) const override {
    if (a != known) return;
    for (const std::string& n : names) {
      if (visitor(n)) return;
    }
  }
  IpAddress known = ip("203.0.113.10");
  std::vector<std::string> names = {"www.dns-named.example"};
};

// Exclude mode: a match goes direct, all else through the tunnel.
std::shared_ptr<const decider::RuleSet> test_rules() {
  decider::RuleSpec spec;
  spec.domains = {"*.direct.example", "www.dns-named.example"};
  spec.ips = {*Cidr::parse("192.0.2.0/24")};
  return decider::build_rules(spec);
}

struct Fixture {
  fakes::FakeInterfaceSource source{fakes::lab_host_state(true)};
  std::shared_ptr<const decider::RuleSet> rules = test_rules();
  FakeNames names;
  decider::RuleDecider decider{source, rules, &names};
  Classifier classifier{decider, &names};
};

FlowFacts tcp_to(const char* dst, std::uint16_t port, const sniff::Result* sniffed = nullptr) {
  return {decider::Protocol::kTcp, {ip("198.18.1.2"), 40000}, {ip(dst), port}, {}, sniffed};
}

TEST(Classifier, WhichFlowsWaitForTheirFirstBytes) {
  Fixture fx;
  const Endpoint unnamed{ip("198.51.100.7"), 443}, named{ip("203.0.113.10"), 443};
  // The default: only ports 80 and 443, only when DNS named no destination.
  EXPECT_TRUE(fx.classifier.should_sniff(unnamed));
  EXPECT_TRUE(fx.classifier.should_sniff({ip("198.51.100.7"), 80}));
  EXPECT_FALSE(fx.classifier.should_sniff(named));
  EXPECT_FALSE(fx.classifier.should_sniff({ip("198.51.100.7"), 22}));  // server-first: never waits
  EXPECT_FALSE(fx.classifier.should_sniff({ip("198.51.100.7"), 25}));
  EXPECT_FALSE(fx.classifier.should_sniff({ip("::ffff:203.0.113.10"), 443}));  // names of the unmapped address
  SniffOptions o;
  o.mode = decider::SniffMode::kAlways;
  o.ports = {443, 8443};
  fx.classifier.set_sniff(o);
  EXPECT_TRUE(fx.classifier.should_sniff(named));
  EXPECT_TRUE(fx.classifier.should_sniff({ip("198.51.100.7"), 8443}));
  EXPECT_FALSE(fx.classifier.should_sniff({ip("198.51.100.7"), 80}));
  o.mode = decider::SniffMode::kOff;
  fx.classifier.set_sniff(o);
  EXPECT_FALSE(fx.classifier.should_sniff(unnamed));
  EXPECT_EQ(fx.classifier.sniff_timeout(), std::chrono::milliseconds(300));
  // Without a name store (dns.enabled = false) every flow to a sniff port waits.
  Classifier no_dns(fx.decider);
  EXPECT_TRUE(no_dns.should_sniff(named));
}

TEST(Classifier, ASniffedNameDecidesAndIsListedWithItsSource) {
  Fixture fx;
  sniff::Result r{sniff::Outcome::kName, sniff::Source::kSni, "www.direct.example"};
  SessionSpec s = fx.classifier.classify(tcp_to("198.51.100.7", 443, &r));
  EXPECT_EQ(s.route.kind, decider::RouteKind::kDirect);
  EXPECT_EQ(s.route.rule, "domain *.direct.example (www.direct.example, sni)");
  EXPECT_EQ(s.domain, "www.direct.example");
  EXPECT_EQ(s.domain_source, sniff::Source::kSni);
  EXPECT_EQ(s.destination.address, ip("198.51.100.7"));  // the original destination, always

  // A name no rule matches: the default route, and the listing still shows the name.
  r = {sniff::Outcome::kName, sniff::Source::kHost, "www.elsewhere.example"};
  s = fx.classifier.classify(tcp_to("198.51.100.7", 80, &r));
  EXPECT_EQ(s.route.kind, decider::RouteKind::kTunnel);
  EXPECT_EQ(s.route.rule, "default");
  EXPECT_EQ(s.domain, "www.elsewhere.example");
  EXPECT_EQ(s.domain_source, sniff::Source::kHost);

  // "always": the sniffed name is matched first; one that matches nothing leaves the
  // decision to the DNS name.
  r = {sniff::Outcome::kName, sniff::Source::kQuic, "www.elsewhere.example"};
  FlowFacts f = tcp_to("203.0.113.10", 443, &r);
  f.protocol = decider::Protocol::kUdp;
  s = fx.classifier.classify(f);
  EXPECT_EQ(s.route.rule, "domain www.dns-named.example (www.dns-named.example)");
  EXPECT_EQ(s.domain_source, sniff::Source::kDns);
}

TEST(Classifier, EchAndNoNameFallBackToTheIpRules) {
  Fixture fx;
  // A real Encrypted Client Hello: its outer SNI is a provider's public name.
  sniff::Result r{sniff::Outcome::kEch, sniff::Source::kSni, "cloudflare-ech.com"};
  SessionSpec s = fx.classifier.classify(tcp_to("192.0.2.1", 443, &r));
  EXPECT_EQ(s.route.kind, decider::RouteKind::kDirect);
  EXPECT_EQ(s.route.rule, "ip 192.0.2.0/24; ECH: outer SNI cloudflare-ech.com is a provider's public name, not used");
  EXPECT_EQ(s.domain, "");  // the public name is not the flow's name
  EXPECT_EQ(s.domain_source, sniff::Source::kNone);
  // Configured public names, a wildcard among them.
  SniffOptions o;
  o.ech_public_names = {"*.ech.example", "public.example"};
  fx.classifier.set_sniff(o);
  r = {sniff::Outcome::kEch, sniff::Source::kQuic, "www.direct.ech.example"};
  s = fx.classifier.classify(tcp_to("198.51.100.7", 443, &r));
  EXPECT_EQ(s.route.rule, "default; ECH: outer SNI www.direct.ech.example is a provider's public name, not used");
  // Any other outer SNI with the ECH extension: browsers' GREASE, the real name.
  r = {sniff::Outcome::kEch, sniff::Source::kSni, "www.direct.example"};
  s = fx.classifier.classify(tcp_to("198.51.100.7", 443, &r));
  EXPECT_EQ(s.route.kind, decider::RouteKind::kDirect);
  EXPECT_EQ(s.route.rule,
            "domain *.direct.example (www.direct.example, sni); ECH extension, outer SNI not a known public name (GREASE)");
  EXPECT_EQ(s.domain, "www.direct.example");
  EXPECT_EQ(s.domain_source, sniff::Source::kSni);
  r = {sniff::Outcome::kEch, sniff::Source::kSni, ""};
  EXPECT_EQ(fx.classifier.classify(tcp_to("198.51.100.7", 443, &r)).route.rule, "default; ECH, no name to route by");
  for (auto o : {sniff::Outcome::kNoName, sniff::Outcome::kNotThis, sniff::Outcome::kMalformed,
                 sniff::Outcome::kNeedMore}) {
    r = {o, sniff::Source::kSni, ""};
    s = fx.classifier.classify(tcp_to("198.51.100.7", 443, &r));
    EXPECT_EQ(s.route.rule, "default") << sniff::to_string(o);
    EXPECT_EQ(s.domain, "");
  }
  s = fx.classifier.classify(tcp_to("203.0.113.10", 443));  // not sniffed: the DNS name
  EXPECT_EQ(s.domain, "www.dns-named.example");
  EXPECT_EQ(s.domain_source, sniff::Source::kDns);
}

TEST(Classifier, FlowsAreCountedByTheSourceOfTheirName) {
  Fixture fx;
  SessionTable t;
  WorkerCounters& w = t.register_worker();
  sniff::Result sni{sniff::Outcome::kName, sniff::Source::kSni, "www.direct.example"};
  t.add(fx.classifier.classify(tcp_to("198.51.100.7", 443, &sni)), w, nullptr);
  t.add(fx.classifier.classify(tcp_to("203.0.113.10", 443)), w, nullptr);
  t.add(fx.classifier.classify(tcp_to("198.51.100.8", 443)), w, nullptr);
  w.sniffed(decider::Protocol::kTcp, static_cast<std::size_t>(sniff::Outcome::kName));
  w.add(decider::Protocol::kTcp, WorkerCounters::kSniffTimeouts);
  const CounterTotals k = t.counters();
  EXPECT_EQ(k.tcp.named[static_cast<std::size_t>(sniff::Source::kSni)], 1u);
  EXPECT_EQ(k.tcp.named[static_cast<std::size_t>(sniff::Source::kDns)], 1u);
  EXPECT_EQ(k.tcp.named[static_cast<std::size_t>(sniff::Source::kNone)], 1u);
  EXPECT_EQ(k.tcp.sniffed[static_cast<std::size_t>(sniff::Outcome::kName)], 1u);
  EXPECT_EQ(k.tcp.sniff_timeouts, 1u);
  EXPECT_EQ(k.udp.sniff_timeouts, 0u);
}

}  // namespace
}  // namespace splitd::proxy
