#include "api/json.hpp"

#include <gtest/gtest.h>

#include <random>

namespace splitd::api {
namespace {

using nlohmann::json;

proxy::SessionView view(std::mt19937& rng, const std::string& text) {
  proxy::SessionView s;
  s.id = rng();
  s.protocol = rng() % 2 ? decider::Protocol::kTcp : decider::Protocol::kUdp;
  s.client = {*IpAddress::parse(rng() % 2 ? "198.18.2.2" : "2001:db8:ff:2::2"), static_cast<std::uint16_t>(rng())};
  s.destination = {*IpAddress::parse(rng() % 2 ? "203.0.113.10" : "2001:db8::10"), 443};
  s.route.kind = static_cast<decider::RouteKind>(rng() % 3);
  s.route.interface = rng() % 4 ? "tun0" : "";
  s.route.rule = text;
  s.route.matched = static_cast<decider::MatchKind>(rng() % 4);
  s.domain = rng() % 2 ? text : "";
  s.domain_source = static_cast<sniff::Source>(rng() % 5);
  if (rng() % 2) {
    s.app.pid = static_cast<std::int32_t>(rng() % 100000);
    s.app.comm = text;
    s.app.exe = "/usr/bin/" + text;
    s.app.cgroup = "/user.slice/" + text;
    s.app.unit = text + ".scope";
    s.app.uid = static_cast<std::uint32_t>(rng());
    s.app.how = "sock_diag+cgroup";
  }
  s.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(1700000000000LL + rng() % 100000000));
  s.idle = std::chrono::milliseconds(rng() % 1000000);
  s.bytes_sent = (static_cast<std::uint64_t>(rng()) << 32) | rng();
  s.bytes_received = rng();
  s.packets_sent = rng() % 1000;
  s.packets_received = rng() % 1000;
  return s;
}

// The listing's direct writer must give the same document as the JSON tree does.
TEST(ConnectionJson, TheDirectWriterMatchesTheTree) {
  std::mt19937 rng(42);
  const std::vector<std::string> texts = {"default", "ip 10.0.0.0/8", "domain *.x.com (a.x.com)", "quote\" back\\slash",
                                          "tab\tnew\nline\x01\x1f", "ünïcødé ✓ 🎉", ""};
  for (int i = 0; i < 2000; ++i) {
    const auto s = view(rng, texts[i % texts.size()]);
    std::string out;
    append_connection(out, s);
    const json fast = json::parse(out, nullptr, false);
    ASSERT_FALSE(fast.is_discarded()) << out;
    EXPECT_EQ(fast, connection_json(s)) << out;
  }
}

// The cache listing's direct writer too.
TEST(DnsEntryJson, TheDirectWriterMatchesTheTree) {
  std::mt19937 rng(7);
  const std::vector<std::string> texts = {"whoami.lab.test", "quote\" back\\slash", "tab\tnew\nline\x01", "ünï.test", ""};
  for (int i = 0; i < 500; ++i) {
    DnsEntry e;
    e.ip = *IpAddress::parse(rng() % 2 ? "203.0.113.10" : "2001:db8::10");
    for (std::size_t n = rng() % 4; n > 0; --n) e.names.push_back(texts[rng() % texts.size()]);
    e.expires_at =
        std::chrono::system_clock::time_point(std::chrono::milliseconds(1700000000000LL + rng() % 100000000));
    e.source = texts[rng() % texts.size()];
    std::string out;
    append_dns_entry(out, e);
    const json fast = json::parse(out, nullptr, false);
    ASSERT_FALSE(fast.is_discarded()) << out;
    EXPECT_EQ(fast, dns_entry_json(e)) << out;
  }
  DnsEntry e{*IpAddress::parse("203.0.113.10"), {"whoami.lab.test"},
             std::chrono::system_clock::time_point(std::chrono::milliseconds(1'796'205'480'250)), "dns"};
  std::string out;
  append_dns_entry(out, e);
  EXPECT_EQ(out, R"({"ip":"203.0.113.10","names":["whoami.lab.test"],"expires_at":"2026-12-02T09:58:00.250Z",)"
                 R"("source":"dns"})");
}

TEST(ConnectionJson, InvalidUtf8BecomesReplacementCharacters) {
  for (const std::string& bad : {std::string("\xff"), std::string("a\xc0\xafz"), std::string("\xed\xa0\x80"),
                                std::string("\xf4\x90\x80\x80"), std::string("\xe2\x82"), std::string("ok\xe2")}) {
    std::string out;
    append_json_string(out, bad);
    const json parsed = json::parse(out, nullptr, false);
    ASSERT_FALSE(parsed.is_discarded()) << out;
    EXPECT_NE(parsed.get<std::string>().find("\xEF\xBF\xBD"), std::string::npos) << out;
  }
  std::string out;
  append_json_string(out, "\xf0\x9f\x8e\x89");  // valid 4-byte sequence kept as is
  EXPECT_EQ(out, "\"\xf0\x9f\x8e\x89\"");
}

}  // namespace
}  // namespace splitd::api
