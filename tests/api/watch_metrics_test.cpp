// The watch stream's diffs and the /metrics text (checked by promtool).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "api/metrics.hpp"
#include "api/watch.hpp"
#include "tests/api/fake_backend.hpp"

namespace splitd::api {
namespace {

using nlohmann::json;
using testing::session;

std::pair<std::string, json> parse_event(const std::string& ev) {
  const auto nl = ev.find('\n');
  EXPECT_EQ(ev.rfind("event: ", 0), 0u) << ev;
  EXPECT_EQ(ev.substr(nl + 1, 6), "data: ") << ev;
  EXPECT_EQ(ev.substr(ev.size() - 2), "\n\n");
  return {ev.substr(7, nl - 7), json::parse(ev.substr(nl + 7, ev.size() - nl - 9))};
}

TEST(WatchState, SnapshotThenChanges) {
  WatchState w;
  auto [name, data] = parse_event(w.next({session(1), session(2)}));
  EXPECT_EQ(name, "snapshot");
  ASSERT_EQ(data.size(), 2u);
  EXPECT_EQ(data[1]["id"], 2);

  EXPECT_EQ(w.next({session(1), session(2)}), "");  // nothing changed (idle alone is no change)

  auto s2 = session(2);
  s2.bytes_sent = 80;
  s2.idle = std::chrono::milliseconds(10);
  std::tie(name, data) = parse_event(w.next({s2, session(3)}));
  EXPECT_EQ(name, "changes");
  EXPECT_EQ(data["closed"], json::array({1}));
  ASSERT_EQ(data["new"].size(), 1u);
  EXPECT_EQ(data["new"][0]["id"], 3);
  EXPECT_EQ(data["new"][0]["route"], "tunnel");
  ASSERT_EQ(data["updated"].size(), 1u);
  EXPECT_EQ(data["updated"][0],
            json({{"id", 2}, {"bytes_sent", 80}, {"bytes_received", 512}, {"packets_sent", 0}, {"packets_received", 0},
                  {"idle_ms", 10}}));

  std::tie(name, data) = parse_event(w.next({}));
  EXPECT_EQ(data["closed"], json::array({2, 3}));
  EXPECT_EQ(w.next({}), "");
}

TEST(WatchState, UnsortedInputStillDiffs) {
  WatchState w;
  w.next({session(5), session(2)});
  auto [name, data] = parse_event(w.next({session(9), session(2)}));
  EXPECT_EQ(data["closed"], json::array({5}));
  EXPECT_EQ(data["new"][0]["id"], 9);
}

TEST(Metrics, PromtoolAccepts) {
  constexpr const char* kPromtool = "/usr/bin/promtool";
  if (::access(kPromtool, X_OK) != 0) GTEST_SKIP() << kPromtool << " is not installed";
  testing::FakeBackend backend;
  ApiStats stats;
  stats.count(200);
  const std::string text = metrics_text(backend.metrics(), stats);
  char path[] = "/tmp/splitd-metrics-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  ::close(fd);
  const std::string cmd = std::string(kPromtool) + " check metrics < " + path + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = ::pclose(p);
  ::unlink(path);
  EXPECT_EQ(rc, 0) << out << "\n--- metrics ---\n" << text;
  EXPECT_EQ(out, "") << out;
}

TEST(Metrics, EveryFamilyHasHelpAndType) {
  testing::FakeBackend backend;
  const std::string text = metrics_text(backend.metrics(), ApiStats{});
  for (const char* family :
       {"splitd_build_info", "splitd_enabled", "splitd_tunnel_up", "splitd_start_time_seconds", "splitd_sessions_active",
        "splitd_sessions_started_total", "splitd_sessions_ended_total", "splitd_sessions_refused_total",
        "splitd_decisions_total", "splitd_flow_failures_total", "splitd_bytes_total", "splitd_packets_total",
        "splitd_firewall_repairs_total", "splitd_firewall_repair_failures_total", "splitd_reloads_total",
        "splitd_reload_failures_total", "splitd_rule_edits_total", "splitd_rules", "splitd_vpn_servers",
        "splitd_api_requests_total"}) {
    EXPECT_NE(text.find(std::string("# HELP ") + family + " "), std::string::npos) << family;
    EXPECT_NE(text.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }
  // 2 protocols × 3 routes × 4 match kinds, zeros included.
  std::size_t n = 0;
  for (std::size_t pos = 0; (pos = text.find("\nsplitd_decisions_total{", pos)) != std::string::npos; ++pos) ++n;
  EXPECT_EQ(n, 24u);
}

}  // namespace
}  // namespace splitd::api
