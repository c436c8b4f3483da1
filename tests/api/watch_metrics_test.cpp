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

// A busy DNS capture's figures.
DnsMetrics busy_dns() {
  DnsMetrics d;
  d.enabled = true;
  auto& f = d.forwarder;
  f.queries[static_cast<std::size_t>(dns::QueryRoute::kTunnel)][static_cast<std::size_t>(dns::QueryResult::kAnswered)] = 40;
  f.queries[static_cast<std::size_t>(dns::QueryRoute::kTunnel)][static_cast<std::size_t>(dns::QueryResult::kCached)] = 7;
  f.queries[static_cast<std::size_t>(dns::QueryRoute::kBlock)][static_cast<std::size_t>(dns::QueryResult::kBlocked)] = 2;
  f.queries[static_cast<std::size_t>(dns::QueryRoute::kLocal)][static_cast<std::size_t>(dns::QueryResult::kCanary)] = 1;
  f.malformed_queries = 3;
  f.malformed_answers = 1;
  f.upstream_timeouts = 4;
  f.upstream_errors = 5;
  f.tcp_retries = 6;
  f.tcp_clients = 8;
  f.cache_entries = 12;
  f.latency_buckets[0] = 1;   // <= 250 us
  f.latency_buckets[3] = 10;  // (1 ms, 2 ms]
  f.latency_buckets[9] = 2;   // (100 ms, 500 ms]
  f.latency_buckets[11] = 1;  // over 1 s
  f.latency_sum_seconds = 2.0345675;
  f.latency_count = 14;
  d.names = 321;
  d.names_bytes = 45678;
  return d;
}

// promtool's verdict on a metrics text: "" when it passes.
std::string promtool_check(const std::string& text);

TEST(Metrics, PromtoolAccepts) {
  constexpr const char* kPromtool = "/usr/bin/promtool";
  if (::access(kPromtool, X_OK) != 0) GTEST_SKIP() << kPromtool << " is not installed";
  testing::FakeBackend backend;
  ApiStats stats;
  stats.count(200);
  EXPECT_EQ(promtool_check(metrics_text(backend.metrics(), stats)), "");
  backend.dns_metrics_ = busy_dns();
  EXPECT_EQ(promtool_check(metrics_text(backend.metrics(), stats)), "");
  backend.st_.dns_enabled = false;
  EXPECT_EQ(promtool_check(metrics_text(backend.metrics(), stats)), "");
}

std::string promtool_check(const std::string& text) {
  constexpr const char* kPromtool = "/usr/bin/promtool";
  char path[] = "/tmp/splitd-metrics-XXXXXX";
  const int fd = ::mkstemp(path);
  if (fd < 0) return "mkstemp failed";
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!written) return "write failed";
  const std::string cmd = std::string(kPromtool) + " check metrics < " + path + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return "popen failed";
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = ::pclose(p);
  ::unlink(path);
  if (rc != 0 || !out.empty()) return "rc " + std::to_string(rc) + ": " + out + "\n--- metrics ---\n" + text;
  return "";
}

std::vector<std::string> lines_starting(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const auto nl = text.find('\n', pos);
    const std::string line = text.substr(pos, nl - pos);
    if (line.rfind(prefix, 0) == 0) out.push_back(line);
    pos = nl == std::string::npos ? text.size() : nl + 1;
  }
  return out;
}

TEST(Metrics, DnsFamilies) {
  testing::FakeBackend backend;
  backend.dns_metrics_ = busy_dns();
  const std::string text = metrics_text(backend.metrics(), ApiStats{});
  for (const char* family :
       {"splitd_dns_enabled", "splitd_dns_queries_total", "splitd_dns_malformed_total",
        "splitd_dns_upstream_timeouts_total", "splitd_dns_upstream_errors_total", "splitd_dns_tcp_retries_total",
        "splitd_dns_tcp_clients_total", "splitd_dns_upstream_latency_seconds", "splitd_dns_cache_entries",
        "splitd_dns_names", "splitd_dns_names_bytes"}) {
    EXPECT_NE(text.find(std::string("# HELP ") + family + " "), std::string::npos) << family;
    EXPECT_NE(text.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }
  EXPECT_NE(text.find("# TYPE splitd_dns_upstream_latency_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_enabled 1\n"), std::string::npos);
  // The combinations that happened, and answered for tunnel and direct even at zero.
  EXPECT_EQ(lines_starting(text, "splitd_dns_queries_total{"),
            (std::vector<std::string>{"splitd_dns_queries_total{route=\"tunnel\",result=\"answered\"} 40",
                                      "splitd_dns_queries_total{route=\"tunnel\",result=\"cached\"} 7",
                                      "splitd_dns_queries_total{route=\"direct\",result=\"answered\"} 0",
                                      "splitd_dns_queries_total{route=\"block\",result=\"blocked\"} 2",
                                      "splitd_dns_queries_total{route=\"local\",result=\"canary\"} 1"}));
  EXPECT_NE(text.find("\nsplitd_dns_malformed_total{what=\"query\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_malformed_total{what=\"answer\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_upstream_timeouts_total 4\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_upstream_errors_total 5\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_tcp_retries_total 6\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_tcp_clients_total 8\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_cache_entries 12\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_names 321\n"), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_dns_names_bytes 45678\n"), std::string::npos);
  // Cumulative buckets in seconds, +Inf equal to _count.
  EXPECT_EQ(lines_starting(text, "splitd_dns_upstream_latency_seconds"),
            (std::vector<std::string>{
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.00025\"} 1",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.0005\"} 1",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.001\"} 1",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.002\"} 11",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.005\"} 11",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.01\"} 11",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.02\"} 11",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.05\"} 11",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.1\"} 11",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"0.5\"} 13",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"1\"} 13",
                "splitd_dns_upstream_latency_seconds_bucket{le=\"+Inf\"} 14",
                "splitd_dns_upstream_latency_seconds_sum 2.034568",
                "splitd_dns_upstream_latency_seconds_count 14",
            }));
}

TEST(Metrics, DnsFamiliesOnlyWhileCaptureIsOn) {
  testing::FakeBackend backend;
  backend.dns_metrics_ = busy_dns();
  backend.st_.dns_enabled = false;
  const std::string text = metrics_text(backend.metrics(), ApiStats{});
  EXPECT_EQ(lines_starting(text, "splitd_dns_"), std::vector<std::string>{"splitd_dns_enabled 0"});
  EXPECT_EQ(lines_starting(text, "# TYPE splitd_dns_"), std::vector<std::string>{"# TYPE splitd_dns_enabled gauge"});
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
        "splitd_api_requests_total", "splitd_flow_names_total", "splitd_sniff_total",
        "splitd_sniff_timeouts_total"}) {
    EXPECT_NE(text.find(std::string("# HELP ") + family + " "), std::string::npos) << family;
    EXPECT_NE(text.find(std::string("# TYPE ") + family + " "), std::string::npos) << family;
  }
  // 2 protocols × 3 routes × 4 match kinds, zeros included.
  std::size_t n = 0;
  for (std::size_t pos = 0; (pos = text.find("\nsplitd_decisions_total{", pos)) != std::string::npos; ++pos) ++n;
  EXPECT_EQ(n, 24u);
  // Every name source and sniff outcome, per protocol.
  n = 0;
  for (std::size_t pos = 0; (pos = text.find("\nsplitd_flow_names_total{", pos)) != std::string::npos; ++pos) ++n;
  EXPECT_EQ(n, 10u);
  EXPECT_NE(text.find("\nsplitd_flow_names_total{protocol=\"udp\",source=\"quic\"} "), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_flow_names_total{protocol=\"tcp\",source=\"none\"} "), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_sniff_total{protocol=\"tcp\",outcome=\"ech\"} "), std::string::npos);
  EXPECT_NE(text.find("\nsplitd_sniff_timeouts_total{protocol=\"udp\"} "), std::string::npos);
}

}  // namespace
}  // namespace splitd::api
