#include "sniff/http.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sniff/sniff.hpp"

namespace splitd::sniff {
namespace {

// curl 7.88.1's request, captured once with a python3 listener on 127.0.0.1 that dumped
// what it read up to the empty line:
//   curl -s --resolve www.example.com:36747:127.0.0.1 http://www.example.com:36747/
constexpr std::string_view kCurlRequest =
    "GET / HTTP/1.1\r\n"
    "Host: www.example.com:36747\r\n"
    "User-Agent: curl/7.88.1\r\n"
    "Accept: */*\r\n"
    "\r\n";

std::span<const std::uint8_t> bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

Result sniff(std::string_view s) { return sniff_http(bytes(s)); }

// A request with the given header lines (each without its CRLF).
std::string request(std::string_view line, std::initializer_list<std::string_view> headers) {
  std::string out(line);
  out += "\r\n";
  for (const std::string_view h : headers) {
    out += h;
    out += "\r\n";
  }
  out += "\r\n";
  return out;
}

void expect_name(std::string_view req, std::string_view name) {
  const Result r = sniff(req);
  EXPECT_EQ(r.outcome, Outcome::kName) << to_string(r.outcome) << " for " << req;
  EXPECT_EQ(r.source, Source::kHost);
  EXPECT_EQ(r.name, name);
}

void expect_outcome(std::string_view req, Outcome want) {
  const Result r = sniff(req);
  EXPECT_EQ(r.outcome, want) << to_string(r.outcome) << " for " << req;
  EXPECT_TRUE(r.name.empty());
}

TEST(SniffHttp, CurlRequestGivesItsHost) { expect_name(kCurlRequest, "www.example.com"); }

TEST(SniffHttp, EveryPrefixNeedsMore) {
  for (std::size_t n = 0; n < kCurlRequest.size(); ++n) {
    const Result r = sniff(kCurlRequest.substr(0, n));
    ASSERT_EQ(r.outcome, Outcome::kNeedMore) << n << ": " << to_string(r.outcome);
    // The protocol is known once the request line is complete, not before.
    ASSERT_EQ(r.source, n >= 16 ? Source::kHost : Source::kNone) << n;
  }
}

TEST(SniffHttp, HostForms) {
  expect_name(request("GET / HTTP/1.1", {"Host: example.org"}), "example.org");
  expect_name(request("GET / HTTP/1.1", {"Host: example.org:8080"}), "example.org");
  expect_name(request("GET / HTTP/1.1", {"Host: example.org:"}), "example.org");
  expect_name(request("GET / HTTP/1.1", {"HOST:WWW.Example.ORG.  "}), "www.example.org");
  expect_name(request("GET / HTTP/1.1", {"hOsT:\t a-b_c.example.org\t"}), "a-b_c.example.org");
  expect_name(request("POST /x?y=1 HTTP/1.0", {"Accept: */*", "Host: api.test", "X: y"}),
              "api.test");
}

TEST(SniffHttp, IpLiteralHostsNameNothing) {
  for (const std::string_view h : {"Host: 192.0.2.1", "Host: 192.0.2.1:80", "Host: [2001:db8::1]",
                                   "Host: [2001:db8::1]:8080", "Host: [::ffff:192.0.2.1]:80",
                                   "Host: 192.0.2.1."}) {
    const Result r = sniff(request("GET / HTTP/1.1", {h}));
    EXPECT_EQ(r.outcome, Outcome::kNoName) << h << ": " << to_string(r.outcome);
    EXPECT_EQ(r.source, Source::kHost);
  }
  // An empty Host (allowed for a target without authority) names nothing either.
  expect_outcome(request("GET / HTTP/1.1", {"Host:"}), Outcome::kNoName);
  expect_outcome(request("GET / HTTP/1.1", {"Host:   "}), Outcome::kNoName);
}

TEST(SniffHttp, InvalidHostsAreMalformed) {
  for (const std::string_view h :
       {"Host: www example.org", "Host: a..b", "Host: ex@mple.org", "Host: example.org:80:80",
        "Host: example.org:http", "Host: example.org:65536", "Host: example.org:123456",
        "Host: :80",
        "Host: [2001:db8::1", "Host: []", "Host: [v1.x]", "Host: [::1]x", "Host: 2001:db8::1",
        "Host: caf\xc3\xa9.test", "Host: .", "Host: ..", "Host: ...:80", "Host: a\x01" "b"}) {
    expect_outcome(request("GET / HTTP/1.1", {h}), Outcome::kMalformed);
  }
}

TEST(SniffHttp, AbsoluteFormWithoutHost) {
  expect_name(request("GET http://Proxy.Example.net/path HTTP/1.1", {"Accept: */*"}),
              "proxy.example.net");
  expect_name(request("GET HTTPS://example.net:8443?q HTTP/1.1", {}), "example.net");
  expect_name(request("GET http://example.net#frag HTTP/1.0", {}), "example.net");
  expect_outcome(request("GET http://192.0.2.1:80/ HTTP/1.1", {}), Outcome::kNoName);
  expect_outcome(request("GET http://user@example.net/ HTTP/1.1", {}), Outcome::kMalformed);
  expect_outcome(request("GET ftp://example.net/ HTTP/1.1", {}), Outcome::kNoName);
  // A Host field is what names the server when both are there.
  expect_name(request("GET http://target.test/ HTTP/1.1", {"Host: field.test"}), "field.test");
}

TEST(SniffHttp, NoHostNamesNothing) {
  expect_outcome(request("GET / HTTP/1.0", {"User-Agent: old"}), Outcome::kNoName);
  expect_outcome(request("GET / HTTP/1.0", {}), Outcome::kNoName);
  expect_outcome(request("OPTIONS * HTTP/1.1", {}), Outcome::kNoName);
  EXPECT_EQ(sniff(request("GET / HTTP/1.0", {})).source, Source::kHost);
}

TEST(SniffHttp, TwoHostsAreMalformed) {
  expect_outcome(request("GET / HTTP/1.1", {"Host: a.test", "Host: a.test"}), Outcome::kMalformed);
  expect_outcome(request("GET / HTTP/1.1", {"Host: a.test", "X: 1", "hOST: b.test"}),
                 Outcome::kMalformed);
  // The second one is only seen later: the first alone is not reported early.
  const std::string req = request("GET / HTTP/1.1", {"Host: a.test", "Host: b.test"});
  EXPECT_EQ(sniff(std::string_view(req).substr(0, req.find("Host: b"))).outcome,
            Outcome::kNeedMore);
}

TEST(SniffHttp, LineFoldingIsMalformed) {
  expect_outcome(request("GET / HTTP/1.1", {"Host: a.test", "X-Long: one", " two"}),
                 Outcome::kMalformed);
  expect_outcome(request("GET / HTTP/1.1", {"\tHost: a.test"}), Outcome::kMalformed);
}

TEST(SniffHttp, BrokenHeaderLinesAreMalformed) {
  const std::string_view lines[] = {"Host : a.test", "No colon here", ": empty-name", "X\x01: y",
                                    "X: a\x7f" "b", std::string_view("X: nul\0here", 11)};
  for (const std::string_view h : lines) {
    expect_outcome(request("GET / HTTP/1.1", {"Host: a.test", h}), Outcome::kMalformed);
  }
  // A CR that does not end a line.
  expect_outcome("GET / HTTP/1.1\r\nHost: a.test\rX: y\r\n\r\n", Outcome::kMalformed);
  expect_outcome("GET / HTTP/1.1\r\nHost: a.test\r\n\rx", Outcome::kMalformed);
}

TEST(SniffHttp, BareLineFeedsAreAccepted) {
  expect_name("GET / HTTP/1.1\nHost: lf.test\nAccept: */*\n\n", "lf.test");
  expect_name("GET / HTTP/1.1\r\nHost: mixed.test\n\r\n", "mixed.test");
  EXPECT_EQ(sniff("GET / HTTP/1.1\nHost: lf.test\n").outcome, Outcome::kNeedMore);
}

TEST(SniffHttp, SshIsLetGoAfterItsFirstBytes) {
  constexpr std::string_view kSsh = "SSH-2.0-OpenSSH_9.2\r\n";
  EXPECT_EQ(sniff(kSsh).outcome, Outcome::kNotThis);
  EXPECT_EQ(sniff(kSsh).source, Source::kNone);
  // Every byte of "SSH-2.0-OpenSSH_" is a tchar, so the method bound (16) decides.
  std::size_t decided = 0;
  while (decided < kSsh.size() && sniff(kSsh.substr(0, decided)).outcome == Outcome::kNeedMore) {
    ++decided;
  }
  EXPECT_EQ(decided, 17u);
  EXPECT_EQ(sniff(kSsh.substr(0, 17)).outcome, Outcome::kNotThis);
}

TEST(SniffHttp, Http2PrefaceIsNotThis) {
  constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  EXPECT_EQ(sniff(kPreface).outcome, Outcome::kNotThis);
  EXPECT_EQ(sniff(kPreface.substr(0, 12)).outcome, Outcome::kNotThis);  // at the '2'
  EXPECT_EQ(sniff(kPreface.substr(0, 11)).outcome, Outcome::kNeedMore);
}

TEST(SniffHttp, RequestLineMustBeHttp1) {
  const std::string_view lines[] = {
        " GET / HTTP/1.1\r\n", "GET  / HTTP/1.1\r\n", "GET / HTTP/1.2\r\n", "GET / HTTP/1.1 \r\n",
        "GET / http/1.1\r\n", "GET / HTTP/1.1\rX", "G(T / HTTP/1.1\r\n", "GET /\x01 HTTP/1.1\r\n",
        "GET /caf\xc3\xa9 HTTP/1.1\r\n", "ABCDEFGHIJKLMNOPQ / HTTP/1.1\r\n",
        std::string_view("\x00\x01\x02", 3),
        "GET\t/ HTTP/1.1\r\n"};
  for (const std::string_view bad : lines) {
    const Result r = sniff(bad);
    EXPECT_EQ(r.outcome, Outcome::kNotThis) << bad << ": " << to_string(r.outcome);
    EXPECT_EQ(r.source, Source::kNone);
  }
  // A method of 16 characters, the bound, is still one.
  expect_name(request("ABCDEFGHIJKLMNOP / HTTP/1.1", {"Host: m.test"}), "m.test");
  expect_name(request("m-search * HTTP/1.1", {"Host: ssdp.test"}), "ssdp.test");
}

TEST(SniffHttp, HeadBound) {
  // A head of exactly kMaxHttpHead bytes is read; one more byte and it is given up on.
  const std::string head = request("GET / HTTP/1.1", {"Host: big.test", "X-Pad: "});
  std::string exact = head.substr(0, head.size() - 4);
  exact += std::string(kMaxHttpHead - head.size(), 'p') + "\r\n\r\n";
  ASSERT_EQ(exact.size(), kMaxHttpHead);
  expect_name(exact, "big.test");
  std::string over = exact;
  over.insert(over.size() - 4, "p");
  expect_outcome(over, Outcome::kMalformed);
  EXPECT_EQ(sniff(std::string_view(over).substr(0, kMaxHttpHead)).outcome, Outcome::kNeedMore);
  // The bound holds however the bytes after it look, and for a huge request line too.
  expect_outcome(std::string_view(over).substr(0, kMaxHttpHead + 1), Outcome::kMalformed);
  const std::string long_target = "GET /" + std::string(kMaxHttpHead, 'a');
  EXPECT_EQ(sniff(long_target).outcome, Outcome::kMalformed);
  EXPECT_EQ(sniff(std::string_view(long_target).substr(0, kMaxHttpHead)).outcome,
            Outcome::kNeedMore);
}

TEST(SniffHttp, BodyAfterTheHeadIsNotRead) {
  const std::string head = request("POST / HTTP/1.1", {"Host: body.test", "Content-Length: 5"});
  expect_name(head + "\x01\x02\r\n\n", "body.test");
}

TEST(SniffStream, DispatchesHttp) {
  const Result r = sniff_stream(bytes(kCurlRequest));
  EXPECT_EQ(r.outcome, Outcome::kName);
  EXPECT_EQ(r.source, Source::kHost);
  EXPECT_EQ(r.name, "www.example.com");
  EXPECT_EQ(sniff_stream(bytes("GE")).outcome, Outcome::kNeedMore);
  EXPECT_EQ(sniff_stream(bytes("SSH-2.0-OpenSSH_9.2\r\n")).outcome, Outcome::kNotThis);
  EXPECT_EQ(sniff_stream(bytes("\x17\x03\x03")).outcome, Outcome::kNotThis);
}

TEST(NormalizeHostName, AcceptsAndLowercases) {
  const std::pair<std::string_view, std::string_view> good[] = {
      {"www.example.com", "www.example.com"},
      {"WWW.Example.COM.", "www.example.com"},
      {"a", "a"},
      {"_dmarc.Example-1.org", "_dmarc.example-1.org"},
      {"1.2.3.4a", "1.2.3.4a"},
      {"xn--caf-dma.example", "xn--caf-dma.example"},
  };
  for (const auto& [in, want] : good) {
    std::string s(in);
    EXPECT_TRUE(normalize_host_name(s)) << in;
    EXPECT_EQ(s, want);
  }
  const std::string label63(63, 'x');
  std::string max = label63 + "." + label63 + "." + label63 + "." + std::string(61, 'y');
  ASSERT_EQ(max.size(), 253u);
  std::string copy = max;
  EXPECT_TRUE(normalize_host_name(copy));
  EXPECT_EQ(copy, max);
  copy = max + ".";
  EXPECT_TRUE(normalize_host_name(copy));  // 254 with the root dot: still 253
  EXPECT_EQ(copy, max);
}

TEST(NormalizeHostName, RejectsWhatIsNoHostName) {
  const std::string label64(64, 'x');
  const std::string long_name =
      std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
      std::string(62, 'd');  // 254
  const std::string nul("a\0b", 3);
  const std::string_view names[] = {
      "", ".", "..", "a..", ".a", "a..b", label64, long_name, "1.2.3.4", "1.2.3.4.", "123",
      "::1", "a:80", "a b", nul, "caf\xc3\xa9", "a/b", "[::1]"};
  for (const std::string_view bad : names) {
    std::string s(bad);
    EXPECT_FALSE(normalize_host_name(s)) << bad;
  }
}

TEST(SniffNames, ToString) {
  EXPECT_STREQ(to_string(Source::kNone), "");
  EXPECT_STREQ(to_string(Source::kDns), "dns");
  EXPECT_STREQ(to_string(Source::kSni), "sni");
  EXPECT_STREQ(to_string(Source::kHost), "host");
  EXPECT_STREQ(to_string(Source::kQuic), "quic");
  EXPECT_STREQ(to_string(Outcome::kNeedMore), "need_more");
  EXPECT_STREQ(to_string(Outcome::kName), "name");
  EXPECT_STREQ(to_string(Outcome::kNoName), "no_name");
  EXPECT_STREQ(to_string(Outcome::kEch), "ech");
  EXPECT_STREQ(to_string(Outcome::kNotThis), "not_this");
  EXPECT_STREQ(to_string(Outcome::kMalformed), "malformed");
}

}  // namespace
}  // namespace splitd::sniff
