// Randomized HTTP and JSON input, through handle() and through a real Server: nothing
// crashes, nothing hangs, and the server still answers afterwards.
#include <gtest/gtest.h>

#include <random>

#include <nlohmann/json.hpp>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "tests/api/test_client.hpp"

namespace splitd::api::testing {
namespace {

using nlohmann::json;

class Gen {
 public:
  explicit Gen(std::uint64_t seed) : rng_(seed) {}
  std::size_t below(std::size_t n) { return n == 0 ? 0 : std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_); }
  bool chance(int percent) { return below(100) < static_cast<std::size_t>(percent); }
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
  std::string bytes(std::size_t max) {
    std::string s(below(max + 1), '\0');
    for (char& c : s) c = static_cast<char>(below(256));
    return s;
  }

  std::string target() {
    static const std::vector<std::string> kPaths = {
        "/api/v1/status", "/api/v1/enable", "/api/v1/disable", "/api/v1/connections", "/api/v1/connections/1",
        "/api/v1/connections/abc", "/api/v1/split/rules", "/api/v1/split/mode", "/api/v1/split/apps",
        "/api/v1/split/apps/Slack", "/api/v1/split/domains", "/api/v1/split/domains/*.local", "/api/v1/split/ips",
        "/api/v1/split/ips/10.0.0.0%2F8", "/api/v1/interfaces", "/metrics", "/", "/api/v1/dns/cache", "*", "",
        "http://x/api/v1/status"};
    static const std::vector<std::string> kQueries = {
        "",         "?route=tunnel", "?protocol=udp&app=firefox", "?all=true", "?watch=abc", "?watch=5",
        "?%zz=1",   "?a&b&&c=",      "?route=%",                  "?app=%00",  "?token=x",   "?route=block&route=direct",
        "?ip=203.0.113.10", "?ip=::ffff:1.2.3.4&name=lab", "?name=", "?ip=1.2.3.0%2F24"};
    std::string t = pick(kPaths) + pick(kQueries);
    if (chance(20)) mutate(t);
    return t;
  }

  json value(int depth = 0) {
    switch (below(depth > 3 ? 5 : 7)) {
      case 0: return nullptr;
      case 1: return chance(50);
      case 2: return static_cast<std::int64_t>(below(1000000)) - 500000;
      case 3: return 3.25;
      case 4: {
        static const std::vector<std::string> kStrings = {
            "198.51.100.0/24", "1.2.3.4/33", "*.example.com", "include", "exclude", "Slack", "/usr/bin/x", "",
            "x", std::string(100, 'a'), "\xff\xfe", "::/0", "..", "*"};
        return chance(80) ? json(pick(kStrings)) : json(bytes(8));
      }
      case 5: {
        json a = json::array();
        for (std::size_t i = below(4); i > 0; --i) a.push_back(value(depth + 1));
        return a;
      }
      default: {
        static const std::vector<std::string> kKeys = {"cidr", "pattern", "name", "comm", "path", "cgroup", "mode",
                                                       "x"};
        json o = json::object();
        for (std::size_t i = below(5); i > 0; --i) o[pick(kKeys)] = value(depth + 1);
        return o;
      }
    }
  }

  std::string body() {
    switch (below(5)) {
      case 0: return "";
      case 1: return bytes(64);
      default: {
        std::string s = value().dump(-1, ' ', false, json::error_handler_t::replace);
        if (chance(20)) mutate(s);
        return s;
      }
    }
  }

  void mutate(std::string& s) {
    for (std::size_t n = 1 + below(4); n > 0; --n) {
      switch (below(4)) {
        case 0:
          if (!s.empty()) s[below(s.size())] = static_cast<char>(below(256));
          break;
        case 1:
          if (!s.empty()) s.erase(below(s.size()), 1 + below(8));
          break;
        case 2: s.insert(below(s.size() + 1), bytes(8)); break;
        default:
          if (!s.empty()) s.resize(below(s.size()));
          break;
      }
    }
  }

  // A whole request as bytes: mostly well-formed, sometimes broken.
  std::string raw_request() {
    static const std::vector<std::string> kMethods = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                                                      "BREW", "get", ""};
    if (chance(5)) return bytes(512);
    std::string t = target();
    if (t.empty() || t.find_first_of(" \r\n") != std::string::npos) t = "/x";
    const std::string b = body();
    std::string req = pick(kMethods) + " " + t + " HTTP/1." + (chance(90) ? "1" : "0") + "\r\nHost: x\r\n";
    if (chance(70)) req += std::string("Content-Type: ") + (chance(80) ? "application/json" : "text/plain") + "\r\n";
    if (chance(5)) req += "X-Huge: " + std::string(below(20000), 'h') + "\r\n";
    if (chance(5)) req += "Transfer-Encoding: chunked\r\n";
    if (chance(5)) req += "Expect: 100-continue\r\n";
    if (chance(90)) req += "Content-Length: " + std::to_string(chance(95) ? b.size() : below(100000)) + "\r\n";
    req += "\r\n" + b;
    if (chance(15)) mutate(req);
    return req;
  }

 private:
  std::mt19937_64 rng_;
};

bool plausible_status(int s) {
  static const std::vector<int> kCodes = {200, 201, 400, 401, 403, 404, 405, 409, 413, 415, 431, 503};
  return std::find(kCodes.begin(), kCodes.end(), s) != kCodes.end();
}

TEST(Randomized, HandleNeverThrowsAndAlwaysAnswersJson) {
  Gen g(12345);
  FakeBackend backend;
  backend.set_sessions({session(1), session(2, decider::Protocol::kUdp)});
  const std::string token(64, 'a');
  static const std::vector<http::verb> kVerbs = {http::verb::get, http::verb::post, http::verb::put,
                                                 http::verb::delete_, http::verb::patch, http::verb::head};
  for (int i = 0; i < 20000; ++i) {
    Request req{g.pick(kVerbs), g.target(), 11};
    if (g.chance(70)) req.set(http::field::content_type, g.chance(80) ? "application/json" : "text/html");
    req.body() = g.body();
    RequestContext ctx;
    ctx.caller.may_change = g.chance(80);
    ctx.ready = g.chance(95);
    if (g.chance(10)) {
      ctx.caller.transport = Caller::Transport::kTcp;
      ctx.token = &token;
      if (g.chance(50)) req.set(http::field::authorization, "Bearer " + token);
    }
    Reply r;
    ASSERT_NO_THROW(r = handle(req, ctx, backend)) << req.target();
    if (r.watch) continue;
    const int s = static_cast<int>(r.response.result_int());
    ASSERT_TRUE(plausible_status(s)) << s << " for " << req.method_string() << " " << req.target();
    if (req.target() == "/metrics" && s == 200) continue;
    if (req.target() == "/api/v1/interfaces" && s == 200) continue;
    json j;
    ASSERT_NO_THROW(j = json::parse(r.response.body())) << r.response.body();
    if (s >= 400) {
      ASSERT_TRUE(j.contains("error") && j.contains("detail")) << r.response.body();
    }
  }
}

TEST(Randomized, ServerSurvivesGarbage) {
  ServerOptions o;
  o.request_deadline = 300ms;
  o.keepalive_idle = 300ms;
  ServerHarness h(o);
  h.backend.set_sessions({session(1)});
  ASSERT_TRUE(h.start());
  Gen g(777);
  const auto start = std::chrono::steady_clock::now();
  int answered = 0, closed = 0;
  for (int i = 0; i < 3000; ++i) {
    auto c = h.client();
    ASSERT_TRUE(c.connected()) << "iteration " << i;
    const std::string req = g.raw_request();
    c.send(req, 1000ms);  // the server may close before all of it is sent
    // Most clients finish sending; some stop mid-request and rely on the deadline.
    if (i % 100 != 0) ::shutdown(c.fd(), SHUT_WR);
    const auto t0 = std::chrono::steady_clock::now();
    bool saw_data = false;
    for (;;) {
      bool eof = false;
      std::string got = c.read_some(2000ms, &eof);
      if (eof) {
        ++closed;
        break;
      }
      ASSERT_FALSE(got.empty()) << "iteration " << i << ": neither answered nor closed within 2 s; request: "
                                << ::testing::PrintToString(req.substr(0, 200));
      saw_data = true;
    }
    answered += saw_data ? 1 : 0;
    ASSERT_LT(std::chrono::steady_clock::now() - t0, 2500ms);
  }
  std::printf("%d connections, %d answered, %d closed, %lld ms\n", 3000, answered, closed,
              static_cast<long long>(
                  std::chrono::duration_cast<Ms>(std::chrono::steady_clock::now() - start).count()));
  auto c = h.client();
  ASSERT_TRUE(c.send(get("/api/v1/status")));
  auto r = c.read_response();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->result_int(), 200u);
  for (int i = 0; i < 100 && h.connections() > 1; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.connections(), 1u) << "connections leaked";
}

}  // namespace
}  // namespace splitd::api::testing
