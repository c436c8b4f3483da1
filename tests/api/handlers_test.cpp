// handle() in memory: every endpoint's success and error paths.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "api/handlers.hpp"
#include "tests/api/fake_backend.hpp"

namespace splitd::api {
namespace {

using nlohmann::json;
using testing::dns_entry;
using testing::FakeBackend;
using testing::session;
using http::verb;

Caller root() {
  Caller c;
  c.uid = 0;
  c.may_change = true;
  return c;
}
Caller nobody() {
  Caller c;
  c.uid = 1000;
  c.gid = 1000;
  return c;
}

class HandlersTest : public ::testing::Test {
 protected:
  Reply call(verb method, std::string target, std::string body = "", std::string content_type = "application/json",
             Caller caller = root()) {
    Request req{method, target, 11};
    if (!body.empty()) req.set(http::field::content_type, content_type);
    req.body() = std::move(body);
    req.prepare_payload();
    ctx.caller = caller;
    return handle(req, ctx, backend);
  }
  static json body(const Reply& r) { return json::parse(r.response.body()); }
  static int code(const Reply& r) { return static_cast<int>(r.response.result_int()); }
  static std::string detail(const Reply& r) { return body(r).value("detail", ""); }

  FakeBackend backend;
  RequestContext ctx;
};

TEST_F(HandlersTest, StatusDocument) {
  ctx.now = backend.st_.started_at + std::chrono::seconds(61);
  auto r = call(verb::get, "/api/v1/status");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(r.response[http::field::content_type], "application/json");
  const json j = body(r);
  EXPECT_EQ(j["status"], "running");
  EXPECT_EQ(j["mode"], "exclude");
  EXPECT_EQ(j["tunnel_interface"], "tun0");
  EXPECT_TRUE(j["physical_interface6"].is_null());
  EXPECT_EQ(j["dns_enabled"], true);
  EXPECT_EQ(j["dns_servers"], json::array({"1.1.1.1"}));
  EXPECT_EQ(j["dns_direct_servers"], json::array({"192.0.2.53"}));
  EXPECT_EQ(j["uptime_seconds"], 61);
  EXPECT_EQ(j["started_at"], "2026-12-02T09:54:32.000Z");
  EXPECT_EQ(j["git_revision"], "d863c34");
  backend.st_.warnings = {"state file set aside"};
  EXPECT_EQ(body(call(verb::get, "/api/v1/status"))["status"], "degraded");
  backend.st_.enabled = false;
  EXPECT_EQ(body(call(verb::get, "/api/v1/status"))["status"], "disabled");
}

TEST_F(HandlersTest, EnableDisable) {
  auto r = call(verb::post, "/api/v1/disable");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r)["enabled"], false);
  EXPECT_EQ(body(call(verb::post, "/api/v1/enable", "{}"))["enabled"], true);
  EXPECT_EQ(code(call(verb::post, "/api/v1/enable", "{\"x\":1}")), 400);
  EXPECT_EQ(code(call(verb::post, "/api/v1/enable", "{}", "text/plain")), 415);
}

TEST_F(HandlersTest, Forbidden) {
  auto r = call(verb::post, "/api/v1/disable", "", "", nobody());
  EXPECT_EQ(code(r), 403);
  EXPECT_EQ(body(r)["error"], "forbidden");
  EXPECT_TRUE(backend.st_.enabled);
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/ips", "{\"cidr\":\"1.2.3.0/24\"}", "application/json", nobody())), 403);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/connections?all=true", "", "", nobody())), 403);
  // Reading is for everyone.
  EXPECT_EQ(code(call(verb::get, "/api/v1/status", "", "", nobody())), 200);
  EXPECT_EQ(code(call(verb::get, "/metrics", "", "", nobody())), 200);
}

TEST_F(HandlersTest, NotReady) {
  ctx.ready = false;
  for (auto target : {"/api/v1/status", "/metrics", "/nope"}) {
    auto r = call(verb::get, target);
    EXPECT_EQ(code(r), 503) << target;
    EXPECT_EQ(body(r)["error"], "starting");
  }
}

TEST_F(HandlersTest, NotFoundAndMethodNotAllowed) {
  for (auto t : {"/", "/api", "/api/v1", "/api/v1/", "/api/v1/status/", "/api/v2/status", "/api/v1/dns",
                 "/api/v1/dns/cache/x", "/api/v1/dns/names", "/api/v1/exec/x", "/api/v1/split", "/api/v1/split/ips/"}) {
    auto r = call(verb::get, t);
    EXPECT_EQ(code(r), 404) << t;
    EXPECT_EQ(body(r)["error"], "not found");
  }
  auto r = call(verb::post, "/api/v1/status");
  EXPECT_EQ(code(r), 405);
  EXPECT_EQ(r.response[http::field::allow], "GET");
  r = call(verb::put, "/api/v1/connections");
  EXPECT_EQ(code(r), 405);
  EXPECT_EQ(r.response[http::field::allow], "GET, DELETE");
  r = call(verb::get, "/api/v1/split/mode");
  EXPECT_EQ(r.response[http::field::allow], "PUT");
  EXPECT_EQ(code(call(verb::get, "/api/v1/connections/5")), 405);
  EXPECT_EQ(code(call(verb::patch, "/api/v1/split/ips/1.2.3.4")), 405);
  // 405 before 403: a reader learns nothing it could not learn from the docs.
  EXPECT_EQ(code(call(verb::put, "/api/v1/status", "", "", nobody())), 405);
}

TEST_F(HandlersTest, UnknownQueryParameters) {
  auto r = call(verb::get, "/api/v1/status?token=abc");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("'token'"), std::string::npos) << detail(r);
  r = call(verb::get, "/api/v1/connections?rout=tunnel&x=1");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("'rout', 'x'"), std::string::npos) << detail(r);
  r = call(verb::get, "/api/v1/connections?route=tunnel&route=direct");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("more than once"), std::string::npos);
  EXPECT_EQ(code(call(verb::get, "/api/v1/connections?route=%zz")), 400);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/connections?watch=1000")), 400);
}

TEST_F(HandlersTest, ConnectionsListAndFilters) {
  auto a = session(1);
  a.app.pid = 1234;
  a.app.comm = "firefox";
  a.app.exe = "/usr/lib/firefox/firefox-bin";
  a.app.cgroup = "/user.slice/user-1000.slice/app-Firefox-123.scope";
  a.domain = "example.com";
  a.domain_source = sniff::Source::kSni;
  auto b = session(2, decider::Protocol::kUdp, decider::RouteKind::kDirect);
  b.app.pid = 99;
  b.app.comm = "curl";
  b.app.exe = "/usr/bin/curl";
  auto c = session(3, decider::Protocol::kTcp, decider::RouteKind::kBlock);
  c.route.matched = decider::MatchKind::kIp;
  c.route.rule = "ip 10.0.0.0/8";
  backend.set_sessions({a, b, c});

  auto r = call(verb::get, "/api/v1/connections");
  ASSERT_EQ(code(r), 200);
  json j = body(r);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[0]["id"], 1);
  EXPECT_EQ(j[0]["protocol"], "tcp");
  EXPECT_EQ(j[0]["local_addr"], "198.18.2.2:40001");
  EXPECT_EQ(j[0]["remote_addr"], "203.0.113.10:80");
  EXPECT_EQ(j[0]["domain"], "example.com");
  EXPECT_EQ(j[0]["domain_source"], "sni");
  EXPECT_EQ(j[0]["interface"], "tun0");
  EXPECT_EQ(j[0]["match"], "default");
  EXPECT_EQ(j[0]["app"]["comm"], "firefox");
  EXPECT_EQ(j[0]["app"]["path"], "/usr/lib/firefox/firefox-bin");
  EXPECT_EQ(j[0]["started_at"], "2026-12-02T09:55:01.003Z");
  EXPECT_EQ(j[0]["idle_ms"], 120);
  EXPECT_EQ(j[0]["bytes_received"], 512);
  EXPECT_TRUE(j[1]["domain"].is_null());
  EXPECT_TRUE(j[1]["domain_source"].is_null());
  EXPECT_TRUE(j[2]["interface"].is_null());
  EXPECT_TRUE(j[2]["app"].is_null());
  EXPECT_EQ(j[2]["match"], "ip");
  EXPECT_EQ(j[2]["rule"], "ip 10.0.0.0/8");

  auto ids = [&](const std::string& q) {
    std::vector<int> out;
    for (const auto& e : body(call(verb::get, "/api/v1/connections?" + q))) out.push_back(e["id"]);
    return out;
  };
  EXPECT_EQ(ids("route=direct"), std::vector<int>({2}));
  EXPECT_EQ(ids("protocol=tcp"), std::vector<int>({1, 3}));
  EXPECT_EQ(ids("protocol=tcp&route=block"), std::vector<int>({3}));
  EXPECT_EQ(ids("app=FIREFOX"), std::vector<int>({1}));         // comm, any case
  EXPECT_EQ(ids("app=firefox-bin"), std::vector<int>({1}));     // exe basename
  EXPECT_EQ(ids("app=user-1000.slice"), std::vector<int>({1}));  // a cgroup component
  EXPECT_EQ(ids("app=curl"), std::vector<int>({2}));
  EXPECT_EQ(ids("app=usr"), std::vector<int>({}));  // not a path component of the exe
  EXPECT_EQ(code(call(verb::get, "/api/v1/connections?route=sideways")), 400);
  EXPECT_EQ(code(call(verb::get, "/api/v1/connections?protocol=icmp")), 400);
  EXPECT_EQ(code(call(verb::get, "/api/v1/connections?app=")), 400);
}

TEST_F(HandlersTest, WatchRequest) {
  auto r = call(verb::get, "/api/v1/connections?watch=250&route=tunnel");
  ASSERT_TRUE(r.watch.has_value());
  EXPECT_EQ(r.watch->interval, std::chrono::milliseconds(250));
  EXPECT_EQ(r.watch->filter.route, decider::RouteKind::kTunnel);
  for (auto bad : {"50", "60001", "abc", "", "100x", "-100"}) {
    auto e = call(verb::get, std::string("/api/v1/connections?watch=") + bad);
    EXPECT_FALSE(e.watch.has_value()) << bad;
    EXPECT_EQ(code(e), 400) << bad;
  }
}

TEST_F(HandlersTest, KillOne) {
  backend.set_sessions({session(17), session(18)});
  auto r = call(verb::delete_, "/api/v1/connections/17");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r), json({{"killed", 1}}));
  EXPECT_EQ(backend.killed(), std::vector<std::uint64_t>({17}));
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/connections/17")), 404);
  r = call(verb::delete_, "/api/v1/connections/seventeen");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("id:"), std::string::npos);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/connections/99999999999999999999999")), 400);
}

TEST_F(HandlersTest, KillByFilter) {
  backend.set_sessions({session(1), session(2, decider::Protocol::kUdp), session(3, decider::Protocol::kTcp,
                                                                                decider::RouteKind::kDirect)});
  auto r = call(verb::delete_, "/api/v1/connections");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("at least one filter"), std::string::npos);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/connections?all=maybe")), 400);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/connections?all=false")), 400);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/connections?all=true&route=direct")), 400);
  r = call(verb::delete_, "/api/v1/connections?protocol=tcp&route=tunnel");
  EXPECT_EQ(body(r), json({{"killed", 1}}));
  r = call(verb::delete_, "/api/v1/connections?all=true");
  EXPECT_EQ(body(r), json({{"killed", 2}}));
  EXPECT_EQ(backend.killed(), std::vector<std::uint64_t>({1, 2, 3}));
}

TEST_F(HandlersTest, RulesAndMode) {
  auto r = call(verb::get, "/api/v1/split/rules");
  ASSERT_EQ(code(r), 200);
  json j = body(r);
  EXPECT_EQ(j["mode"], "exclude");
  EXPECT_EQ(j["mode_source"], "config");
  EXPECT_EQ(j["ips"], json::array({"10.0.0.0/8"}));
  EXPECT_EQ(j["added"]["apps"], json::array());

  r = call(verb::put, "/api/v1/split/mode", R"({"mode":"include"})");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r)["mode"], "include");
  EXPECT_EQ(body(r)["mode_source"], "api");
  r = call(verb::put, "/api/v1/split/mode", R"({"mode":"sideways"})");
  EXPECT_EQ(code(r), 400);
  EXPECT_EQ(detail(r), "mode: 'sideways' is not one of \"exclude\", \"include\"");
  r = call(verb::put, "/api/v1/split/mode", R"({"mode":1})");
  EXPECT_EQ(detail(r), "mode: expected a string, got a number");
  r = call(verb::put, "/api/v1/split/mode", R"({})");
  EXPECT_EQ(detail(r), "'mode' is required");
}

TEST_F(HandlersTest, Ips) {
  auto r = call(verb::post, "/api/v1/split/ips", R"({"cidr":"198.51.100.0/24"})");
  ASSERT_EQ(code(r), 201);
  EXPECT_EQ(body(r)["added"]["ips"], json::array({"198.51.100.0/24"}));
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/ips", R"({"cidr":"198.51.100.0/24"})")), 409);
  r = call(verb::post, "/api/v1/split/ips", R"({"cidr":"1.2.3.0/33"})");
  EXPECT_EQ(code(r), 400);
  EXPECT_EQ(detail(r), "cidr: prefix length 33 exceeds 32");
  r = call(verb::post, "/api/v1/split/ips", R"({"cidr":5})");
  EXPECT_EQ(detail(r), "cidr: expected a string, got a number");
  r = call(verb::post, "/api/v1/split/ips", R"({"cidr":"1.2.3.4","note":"x","z":1})");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("unknown fields 'note', 'z'"), std::string::npos) << detail(r);
  r = call(verb::post, "/api/v1/split/ips", R"(["1.2.3.4"])");
  EXPECT_EQ(detail(r), "body: expected a JSON object, got an array");
  r = call(verb::post, "/api/v1/split/ips", R"({"cidr":)");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("line 1, column 9"), std::string::npos) << detail(r);
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/ips", R"({"cidr":"1.2.3.4"})", "text/plain")), 415);
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/ips", R"({"cidr":"1.2.3.4"})", "application/json; charset=utf-8")), 201);
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/ips")), 400);

  r = call(verb::delete_, "/api/v1/split/ips/198.51.100.0%2F24");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r)["ips"], json::array({"10.0.0.0/8", "1.2.3.4/32"}));
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/split/ips/198.51.100.0%2F24")), 404);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/split/ips/10.0.0.0%2f8")), 200);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/split/ips/10.0.0.0%2")), 400);
  r = call(verb::delete_, "/api/v1/split/ips/nonsense");
  EXPECT_EQ(code(r), 400);
  EXPECT_EQ(detail(r).rfind("cidr: ", 0), 0u);
}

TEST_F(HandlersTest, Domains) {
  auto r = call(verb::post, "/api/v1/split/domains", R"({"pattern":"*.Example.COM."})");
  ASSERT_EQ(code(r), 201);
  EXPECT_EQ(body(r)["added"]["domains"], json::array({"*.example.com"}));
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/domains", R"({"pattern":"*.example.com"})")), 409);
  r = call(verb::post, "/api/v1/split/domains", R"({"pattern":"bad domain"})");
  EXPECT_EQ(code(r), 400);
  EXPECT_EQ(detail(r).rfind("pattern: ", 0), 0u) << detail(r);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/split/domains/*.EXAMPLE.com")), 200);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/split/domains/*.example.com")), 404);
}

TEST_F(HandlersTest, Exec) {
  Caller me = nobody();
  me.pid = 4321;
  auto r = call(verb::post, "/api/v1/exec", R"({"route":"direct"})", "application/json", me);
  ASSERT_EQ(code(r), 200) << detail(r);  // not a member of splitd: exec moves only its own processes
  EXPECT_EQ(body(r)["cgroup"], "/splitd-exec/direct");
  EXPECT_EQ(body(r)["pid"], 4321);
  EXPECT_EQ(backend.last_exec().pid, 4321);
  EXPECT_EQ(backend.last_exec().route, decider::RouteKind::kDirect);
  r = call(verb::post, "/api/v1/exec", R"({"route":"tunnel","pid":"1"})", "application/json", me);
  EXPECT_EQ(code(r), 403);
  EXPECT_EQ(code(call(verb::post, "/api/v1/exec", R"({"route":"block"})", "application/json", me)), 400);
  EXPECT_EQ(code(call(verb::post, "/api/v1/exec", R"({"route":"direct","pid":"-1"})", "application/json", me)), 400);
  EXPECT_EQ(code(call(verb::post, "/api/v1/exec", R"({"route":"direct","pid":"x1"})", "application/json", me)), 400);
  EXPECT_EQ(code(call(verb::post, "/api/v1/exec", R"({"route":"direct","pid":"99999999999"})", "application/json", me)), 400);
  EXPECT_EQ(code(call(verb::post, "/api/v1/exec", R"({"pid":"1"})", "application/json", me)), 400);
  EXPECT_EQ(code(call(verb::get, "/api/v1/exec")), 405);
  // Other rules still need root or group splitd.
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/ips", R"({"cidr":"1.2.3.0/24"})", "application/json", me)), 403);
  // Over TCP (with the token) there is no caller process to move.
  const std::string token = "0123456789abcdef0123456789abcdef";
  ctx.token = &token;
  Caller tcp = root();
  tcp.transport = Caller::Transport::kTcp;
  ctx.caller = tcp;
  Request req{verb::post, "/api/v1/exec", 11};
  req.set(http::field::authorization, "Bearer " + token);
  req.set(http::field::content_type, "application/json");
  req.body() = R"({"route":"direct"})";
  req.prepare_payload();
  EXPECT_EQ(code(handle(req, ctx, backend)), 403);
}

TEST_F(HandlersTest, Apps) {
  auto r = call(verb::post, "/api/v1/split/apps", R"({"name":"Slack","comm":"slack"})");
  ASSERT_EQ(code(r), 201);
  EXPECT_EQ(body(r)["apps"][0], json({{"name", "Slack"}, {"cgroup", ""}, {"comm", "slack"}, {"path", ""},
                                       {"unit", ""}, {"app_id", ""}, {"user", ""}}));
  r = call(verb::post, "/api/v1/split/apps", R"({"name":"Torrents","unit":"transmission-daemon.service","user":"root"})");
  ASSERT_EQ(code(r), 201) << detail(r);
  r = call(verb::post, "/api/v1/split/apps", R"({"name":"U","unit":"system.slice/x.service"})");
  EXPECT_EQ(detail(r).rfind("unit: ", 0), 0u) << detail(r);
  r = call(verb::post, "/api/v1/split/apps", R"({"name":"U","user":"no-such-user-splitd"})");
  EXPECT_EQ(detail(r).rfind("user: no user", 0), 0u) << detail(r);
  EXPECT_EQ(code(call(verb::post, "/api/v1/split/apps", R"({"name":"Slack","comm":"slack"})")), 409);
  r = call(verb::post, "/api/v1/split/apps", R"({"name":"X"})");
  EXPECT_EQ(detail(r), "give at least one of 'cgroup', 'comm', 'path', 'unit', 'app_id', 'user'");
  r = call(verb::post, "/api/v1/split/apps", R"({"name":"X","path":"relative"})");
  EXPECT_EQ(detail(r).rfind("path: ", 0), 0u);
  r = call(verb::post, "/api/v1/split/apps", R"({"comm":"x"})");
  EXPECT_EQ(detail(r), "'name' is required");
  r = call(verb::post, "/api/v1/split/apps", R"({"name":"X","comm":["x"]})");
  EXPECT_EQ(detail(r), "comm: expected a string, got an array");
  r = call(verb::post, "/api/v1/split/apps", R"({"name":null,"comm":"x"})");
  EXPECT_EQ(detail(r), "name: expected a string, got null");
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/split/apps/Slack")), 200);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/split/apps/Slack")), 404);
}

TEST_F(HandlersTest, Interfaces) {
  auto r = call(verb::get, "/api/v1/interfaces");
  ASSERT_EQ(code(r), 200);
  EXPECT_TRUE(body(r).is_object());
}

TEST_F(HandlersTest, MetricsLabels) {
  ApiStats stats;
  stats.count(200);
  stats.count(299);
  ctx.stats = &stats;
  auto r = call(verb::get, "/metrics");
  ASSERT_EQ(code(r), 200);
  const std::string& t = r.response.body();
  EXPECT_NE(r.response[http::field::content_type].find("version=0.0.4"), std::string::npos);
  EXPECT_NE(t.find("splitd_build_info{version=\"0.1.0\",revision=\"d863c34\\\"x\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_decisions_total{protocol=\"tcp\",route=\"tunnel\",match=\"domain\"} 3\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_decisions_total{protocol=\"udp\",route=\"block\",match=\"default\"} 0\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_flow_failures_total{protocol=\"udp\",reason=\"connect_timeout\"} 0\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_sessions_active{protocol=\"tcp\"} 2\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_api_requests_total{code=\"200\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_api_requests_total{code=\"other\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_rules{kind=\"ip\"} 1\n"), std::string::npos);
  EXPECT_NE(t.find("splitd_start_time_seconds 1796205272.000\n"), std::string::npos);
}

// 2026-12-02T09:58:00.250Z
constexpr std::int64_t kExpires = 1'796'205'480'250;

TEST_F(HandlersTest, DnsCacheSortedByAddress) {
  backend.set_dns_entries({dns_entry("2001:db8::10", {"v6.lab.test"}, kExpires),
                           dns_entry("203.0.113.10", {"whoami.lab.test", "alias.lab.test"}, kExpires),
                           dns_entry("198.51.100.7", {"www.Example.com"}, kExpires + 1000, "state"),
                           dns_entry("10.0.0.9", {}, kExpires)});
  auto r = call(verb::get, "/api/v1/dns/cache", "", "", nobody());  // reading is for everyone
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(r.response[http::field::content_type], "application/json");
  const json j = body(r);
  EXPECT_EQ(j["count"], 4);
  ASSERT_EQ(j["entries"].size(), 4u);
  std::vector<std::string> ips;
  for (const auto& e : j["entries"]) ips.push_back(e["ip"]);
  EXPECT_EQ(ips, (std::vector<std::string>{"10.0.0.9", "198.51.100.7", "203.0.113.10", "2001:db8::10"}));
  EXPECT_EQ(j["entries"][2], json({{"ip", "203.0.113.10"},
                                   {"names", {"whoami.lab.test", "alias.lab.test"}},
                                   {"expires_at", "2026-12-02T09:58:00.250Z"},
                                   {"source", "dns"}}));
  EXPECT_EQ(j["entries"][1]["source"], "state");
  EXPECT_EQ(j["entries"][0]["names"], json::array());
  EXPECT_EQ(r.response.body().back(), '\n');

  backend.set_dns_entries({});
  EXPECT_EQ(body(call(verb::get, "/api/v1/dns/cache")), json({{"entries", json::array()}, {"count", 0}}));
}

TEST_F(HandlersTest, DnsCacheFilters) {
  backend.set_dns_entries({dns_entry("203.0.113.10", {"whoami.lab.test"}, kExpires),
                           dns_entry("203.0.113.11", {"cdn.example.net", "www.LAB.test"}, kExpires),
                           dns_entry("2001:db8::10", {"v6.example.net"}, kExpires)});
  auto ips = [&](const std::string& q) {
    const auto r = call(verb::get, "/api/v1/dns/cache?" + q);
    EXPECT_EQ(code(r), 200) << q << ": " << r.response.body();
    std::vector<std::string> out;
    const json j = body(r);
    for (const auto& e : j["entries"]) out.push_back(e["ip"]);
    EXPECT_EQ(j["count"], out.size());
    return out;
  };
  using Ips = std::vector<std::string>;
  EXPECT_EQ(ips("ip=203.0.113.11"), Ips({"203.0.113.11"}));
  EXPECT_EQ(ips("ip=::ffff:203.0.113.10"), Ips({"203.0.113.10"}));  // v4-mapped is the IPv4 address
  EXPECT_EQ(ips("ip=2001:db8:0::10"), Ips({"2001:db8::10"}));
  EXPECT_EQ(ips("ip=192.0.2.1"), Ips({}));
  EXPECT_EQ(ips("name=lab.test"), Ips({"203.0.113.10", "203.0.113.11"}));  // any of the names, any case
  EXPECT_EQ(ips("name=EXAMPLE"), Ips({"203.0.113.11", "2001:db8::10"}));
  EXPECT_EQ(ips("name=whoami.lab.test.extra"), Ips({}));
  EXPECT_EQ(ips("ip=203.0.113.11&name=cdn"), Ips({"203.0.113.11"}));
  EXPECT_EQ(ips("ip=203.0.113.10&name=cdn"), Ips({}));
  // A filtered entry keeps all its names.
  EXPECT_EQ(body(call(verb::get, "/api/v1/dns/cache?name=cdn"))["entries"][0]["names"],
            json::array({"cdn.example.net", "www.LAB.test"}));

  auto r = call(verb::get, "/api/v1/dns/cache?ip=whoami.lab.test");
  EXPECT_EQ(code(r), 400);
  EXPECT_EQ(detail(r), "ip: 'whoami.lab.test' is not an IPv4 or IPv6 address");
  r = call(verb::get, "/api/v1/dns/cache?ip=203.0.113.0%2F24");
  EXPECT_EQ(code(r), 400);
  EXPECT_EQ(detail(r), "ip: '203.0.113.0/24' is not an IPv4 or IPv6 address (give one address, not a prefix)");
  EXPECT_EQ(code(call(verb::get, "/api/v1/dns/cache?ip=")), 400);
  r = call(verb::get, "/api/v1/dns/cache?name=");
  EXPECT_EQ(code(r), 400);
  EXPECT_EQ(detail(r).rfind("name: ", 0), 0u) << detail(r);
  EXPECT_EQ(code(call(verb::get, "/api/v1/dns/cache?name=" + std::string(257, 'a'))), 400);
  r = call(verb::get, "/api/v1/dns/cache?domain=x");
  EXPECT_EQ(code(r), 400);
  EXPECT_NE(detail(r).find("'domain' (known: ip, name)"), std::string::npos) << detail(r);
  EXPECT_EQ(code(call(verb::get, "/api/v1/dns/cache?ip=203.0.113.10&ip=203.0.113.11")), 400);
}

TEST_F(HandlersTest, DnsCacheFlushNeedsChangePermission) {
  backend.set_dns_entries({dns_entry("203.0.113.10", {"a.lab.test"}, kExpires),
                           dns_entry("203.0.113.11", {"b.lab.test"}, kExpires)});
  auto r = call(verb::delete_, "/api/v1/dns/cache", "", "", nobody());
  EXPECT_EQ(code(r), 403);
  EXPECT_EQ(body(r)["error"], "forbidden");
  EXPECT_EQ(backend.dns_flushes(), 0);
  EXPECT_EQ(code(call(verb::delete_, "/api/v1/dns/cache?ip=203.0.113.10")), 400);  // flushes all or nothing
  EXPECT_EQ(backend.dns_flushes(), 0);

  r = call(verb::delete_, "/api/v1/dns/cache");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r), json({{"flushed", 2}}));
  EXPECT_EQ(body(call(verb::get, "/api/v1/dns/cache"))["count"], 0);
  EXPECT_EQ(body(call(verb::delete_, "/api/v1/dns/cache")), json({{"flushed", 0}}));

  r = call(verb::post, "/api/v1/dns/cache");
  EXPECT_EQ(code(r), 405);
  EXPECT_EQ(r.response[http::field::allow], "GET, DELETE");
  EXPECT_EQ(code(call(verb::put, "/api/v1/dns/cache", "", "", nobody())), 405);
}

TEST_F(HandlersTest, DnsCacheWhileCaptureIsOff) {
  backend.set_dns_entries({dns_entry("203.0.113.10", {"a.lab.test"}, kExpires)});
  backend.st_.dns_enabled = false;
  auto r = call(verb::get, "/api/v1/dns/cache");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r), json({{"entries", json::array()}, {"count", 0}}));
  EXPECT_EQ(code(call(verb::get, "/api/v1/dns/cache?ip=nonsense")), 400);  // still checked
  r = call(verb::delete_, "/api/v1/dns/cache");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r), json({{"flushed", 0}}));
  EXPECT_EQ(backend.dns_cache_calls(), 0);
  EXPECT_EQ(backend.dns_flushes(), 0);
  EXPECT_EQ(body(call(verb::get, "/api/v1/status"))["dns_enabled"], false);
}

TEST_F(HandlersTest, DnsNamesWithInvalidUtf8AreReplaced) {
  backend.set_dns_entries({dns_entry("203.0.113.10", {"bad\xff.lab.test", "quote\".lab"}, kExpires, "d\xc3")});
  auto r = call(verb::get, "/api/v1/dns/cache?name=LAB");
  ASSERT_EQ(code(r), 200);
  const json j = body(r);
  EXPECT_EQ(j["entries"][0]["names"], json::array({"bad\xEF\xBF\xBD.lab.test", "quote\".lab"}));
  EXPECT_EQ(j["entries"][0]["source"], "d\xEF\xBF\xBD");
}

TEST_F(HandlersTest, TcpNeedsToken) {
  const std::string token = "0123456789abcdef0123456789abcdef";
  ctx.token = &token;
  Caller tcp;
  tcp.transport = Caller::Transport::kTcp;
  tcp.may_change = true;
  ctx.caller = tcp;
  auto send = [&](const char* target, const char* auth) {
    Request req{verb::get, target, 11};
    if (auth) req.set(http::field::authorization, auth);
    return handle(req, ctx, backend);
  };
  EXPECT_EQ(code(send("/api/v1/status", nullptr)), 401);
  EXPECT_EQ(code(send("/api/v1/nothing", nullptr)), 401);  // not even a 404 without the token
  EXPECT_EQ(code(send("/api/v1/status", "Bearer 0123456789abcdef0123456789abcdee")), 401);
  EXPECT_EQ(code(send("/api/v1/status", "Basic 0123456789abcdef0123456789abcdef")), 401);
  EXPECT_EQ(code(send(("/api/v1/status?token=" + token).c_str(), nullptr)), 401);
  EXPECT_EQ(code(send(("/api/v1/status?access_token=" + token).c_str(), nullptr)), 401);
  EXPECT_EQ(send("/api/v1/status", nullptr).response[http::field::www_authenticate], "Bearer");
  EXPECT_EQ(code(send("/api/v1/status", "Bearer 0123456789abcdef0123456789abcdef")), 200);
  EXPECT_EQ(code(send("/api/v1/status", "bearer  0123456789abcdef0123456789abcdef ")), 200);
  // With the token in the header and in the URL, the URL's is an unknown parameter.
  EXPECT_EQ(code(send(("/api/v1/status?token=" + token).c_str(), "Bearer 0123456789abcdef0123456789abcdef")), 400);
  ctx.ready = false;
  EXPECT_EQ(code(send("/api/v1/status", nullptr)), 401);  // 401 before 503
}

TEST_F(HandlersTest, InvalidUtf8IsReplacedNotThrown) {
  auto s = session(1);
  s.app.pid = 1;
  s.app.comm = "\xff\xfe";
  s.app.exe = "/bin/\xc3";
  s.app.cgroup = "/x";
  backend.set_sessions({s});
  auto r = call(verb::get, "/api/v1/connections");
  ASSERT_EQ(code(r), 200);
  EXPECT_EQ(body(r)[0]["app"]["comm"], "\xEF\xBF\xBD\xEF\xBF\xBD");
  r = call(verb::delete_, "/api/v1/split/apps/%ff%fe");
  EXPECT_EQ(code(r), 404);
  EXPECT_NO_THROW(body(r));
}

}  // namespace
}  // namespace splitd::api
