#include "api/metrics.hpp"

#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <string_view>
#include <utility>

#include "decider/decider.hpp"
#include "dns/forwarder.hpp"
#include "proxy/counters.hpp"
#include "sniff/sniff.hpp"

namespace splitd::api {
namespace {

using Label = std::pair<std::string_view, std::string_view>;

// Label values escaped as the text format wants (backslash, quote, newline).
void append_escaped(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

class Writer {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void sample(std::string_view name, std::initializer_list<Label> labels, std::uint64_t v) {
    head(name, labels);
    out_ += std::to_string(v);
    out_ += '\n';
  }
  void sample(std::string_view name, std::initializer_list<Label> labels, double v, int decimals = 3) {
    head(name, labels);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    out_ += buf;
    out_ += '\n';
  }
  std::string take() { return std::move(out_); }

 private:
  void head(std::string_view name, std::initializer_list<Label> labels) {
    out_ += name;
    if (labels.size() != 0) {
      out_ += '{';
      bool first = true;
      for (const auto& [k, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += k;
        out_ += "=\"";
        append_escaped(out_, v);
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
  }
  std::string out_;
};

constexpr decider::Protocol kProtocols[] = {decider::Protocol::kTcp, decider::Protocol::kUdp};

const proxy::ProtocolCounters& of(const proxy::CounterTotals& t, decider::Protocol p) {
  return p == decider::Protocol::kTcp ? t.tcp : t.udp;
}

template <typename Get>
void per_protocol(Writer& w, std::string_view name, std::string_view type, std::string_view help,
                  const proxy::CounterTotals& t, Get get) {
  w.family(name, type, help);
  for (auto p : kProtocols) w.sample(name, {{"protocol", decider::to_string(p)}}, std::uint64_t{get(of(t, p), p)});
}

void scalar(Writer& w, std::string_view name, std::string_view type, std::string_view help, std::uint64_t v) {
  w.family(name, type, help);
  w.sample(name, {}, v);
}

// Microseconds as seconds without float noise or trailing zeros: 250 -> "0.00025".
std::string seconds_of_us(std::uint32_t us) {
  std::string out = std::to_string(us / 1'000'000);
  std::string frac = std::to_string(us % 1'000'000);
  frac.insert(0, 6 - frac.size(), '0');
  while (!frac.empty() && frac.back() == '0') frac.pop_back();
  if (!frac.empty()) out += "." + frac;
  return out;
}

// App identification (cgroup/): what finding each flow's app found.
void app_metrics(Writer& w, const AppMetrics& a) {
  scalar(w, "splitd_apps_enabled", "gauge", "1 while apps can be identified (a cgroup2 hierarchy was found).",
         a.enabled ? 1 : 0);
  if (!a.enabled) return;
  w.family("splitd_app_identifications_total", "counter",
           "Flows and DNS queries whose app was looked up (sock_diag), by outcome.");
  for (const auto& [result, v] : {std::pair{"found", a.identified}, {"socket_gone", a.socket_gone}, {"failed", a.failed}}) {
    w.sample("splitd_app_identifications_total", {{"result", result}}, v);
  }
  scalar(w, "splitd_app_cgroup_unknown_total", "counter", "Sockets found whose cgroup id had no known path.", a.no_path);
  w.family("splitd_app_process_lookups_total", "counter", "Lookups of a flow's process (comm/path rules, listings).");
  w.sample("splitd_app_process_lookups_total", {{"result", "found"}}, a.processes);
  w.sample("splitd_app_process_lookups_total", {{"result", "not_found"}}, a.no_process);
  scalar(w, "splitd_app_cgroups", "gauge", "cgroups in splitd's map of the cgroup2 hierarchy.", a.cgroups);
  scalar(w, "splitd_app_execs_total", "counter", "Processes moved into an exec cgroup (POST /api/v1/exec).", a.execs);
}

// The DNS capture's families; all but splitd_dns_enabled only while it is on.
void dns_metrics(Writer& w, const DnsMetrics& d) {
  scalar(w, "splitd_dns_enabled", "gauge", "1 while DNS capture is on (dns.enabled).", d.enabled ? 1 : 0);
  if (!d.enabled) return;
  const auto& f = d.forwarder;

  // 4 routes x 7 results would be 28 series, most of them zero forever: only those that
  // happened, plus the two that every working setup has.
  w.family("splitd_dns_queries_total", "counter", "Captured DNS queries, by the route of the name and what became of them.");
  for (std::size_t r = 0; r < dns::kQueryRoutes; ++r) {
    for (std::size_t q = 0; q < dns::kQueryResults; ++q) {
      const auto route = static_cast<dns::QueryRoute>(r);
      const auto result = static_cast<dns::QueryResult>(q);
      const bool always = result == dns::QueryResult::kAnswered &&
                          (route == dns::QueryRoute::kTunnel || route == dns::QueryRoute::kDirect);
      if (f.queries[r][q] == 0 && !always) continue;
      w.sample("splitd_dns_queries_total", {{"route", dns::to_string(route)}, {"result", dns::to_string(result)}},
               f.queries[r][q]);
    }
  }
  w.family("splitd_dns_malformed_total", "counter", "DNS messages that did not parse: client queries, upstream answers.");
  w.sample("splitd_dns_malformed_total", {{"what", "query"}}, f.malformed_queries);
  w.sample("splitd_dns_malformed_total", {{"what", "answer"}}, f.malformed_answers);
  scalar(w, "splitd_dns_upstream_timeouts_total", "counter", "Upstream DNS tries that timed out.", f.upstream_timeouts);
  scalar(w, "splitd_dns_upstream_errors_total", "counter",
         "Upstream DNS tries that failed (send, connect or read error, SERVFAIL, REFUSED).", f.upstream_errors);
  scalar(w, "splitd_dns_tcp_retries_total", "counter", "Truncated UDP answers asked again over TCP.", f.tcp_retries);
  scalar(w, "splitd_dns_tcp_clients_total", "counter", "DNS client connections accepted over TCP.", f.tcp_clients);

  // The struct counts per bucket; the text format wants cumulative `le` buckets. _count is
  // the +Inf bucket, so the two agree even if the figures were read mid-update.
  constexpr std::string_view kLatency = "splitd_dns_upstream_latency_seconds";
  w.family(kLatency, "histogram", "Time from sending a query upstream to its answer.");
  const std::string bucket = std::string(kLatency) + "_bucket";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < f.latency_buckets.size(); ++i) {
    cumulative += f.latency_buckets[i];
    const std::string le = i < dns::kLatencyBoundsUs.size() ? seconds_of_us(dns::kLatencyBoundsUs[i]) : "+Inf";
    w.sample(bucket, {{"le", le}}, cumulative);
  }
  w.sample(std::string(kLatency) + "_sum", {}, f.latency_sum_seconds, 6);
  w.sample(std::string(kLatency) + "_count", {}, cumulative);

  scalar(w, "splitd_dns_cache_entries", "gauge", "Answers in the DNS answer cache.", f.cache_entries);
  scalar(w, "splitd_dns_names", "gauge", "Addresses with learned names (ip -> names entries).", d.names);
  scalar(w, "splitd_dns_names_bytes", "gauge", "Memory the learned names hold.", d.names_bytes);
}

}  // namespace

void ApiStats::count(int status) {
  for (std::size_t i = 0; i + 1 < kCodes.size(); ++i) {
    if (kCodes[i] == status) {
      ++requests[i];
      return;
    }
  }
  ++requests[kCodes.size() - 1];
}

std::string metrics_text(const MetricsSnapshot& m, const ApiStats& api) {
  Writer w;
  const auto& t = m.sessions;

  w.family("splitd_build_info", "gauge", "splitd's version and git revision (always 1).");
  w.sample("splitd_build_info", {{"version", m.version}, {"revision", m.git_revision}}, std::uint64_t{1});
  scalar(w, "splitd_enabled", "gauge", "1 while interception is installed (POST /api/v1/disable removes it).",
         m.enabled ? 1 : 0);
  scalar(w, "splitd_tunnel_up", "gauge", "1 while a tunnel interface is up.", m.tunnel_up ? 1 : 0);
  w.family("splitd_start_time_seconds", "gauge", "When splitd started, seconds since the Unix epoch.");
  w.sample("splitd_start_time_seconds", {},
           std::chrono::duration<double>(m.started_at.time_since_epoch()).count());

  per_protocol(w, "splitd_sessions_active", "gauge", "Live proxied sessions.", t,
               [&t](const proxy::ProtocolCounters&, decider::Protocol p) {
                 return p == decider::Protocol::kTcp ? t.active_tcp : t.active_udp;
               });
  per_protocol(w, "splitd_sessions_started_total", "counter", "Sessions that entered the table, blocked ones included.",
               t, [](const proxy::ProtocolCounters& c, decider::Protocol) { return c.started; });
  per_protocol(w, "splitd_sessions_ended_total", "counter", "Sessions that ended.", t,
               [](const proxy::ProtocolCounters& c, decider::Protocol) { return c.ended; });
  per_protocol(w, "splitd_sessions_refused_total", "counter", "Sessions refused over proxy.max_sessions.", t,
               [](const proxy::ProtocolCounters& c, decider::Protocol) { return c.refused; });

  w.family("splitd_decisions_total", "counter", "Routing decisions by route and by the kind of rule that decided.");
  for (auto p : kProtocols) {
    for (std::size_t r = 0; r < proxy::kRouteKinds; ++r) {
      for (std::size_t k = 0; k < proxy::kMatchKinds; ++k) {
        w.sample("splitd_decisions_total",
                 {{"protocol", decider::to_string(p)},
                  {"route", decider::to_string(static_cast<decider::RouteKind>(r))},
                  {"match", decider::to_string(static_cast<decider::MatchKind>(k))}},
                 of(t, p).decisions[r][k]);
      }
    }
  }

  w.family("splitd_flow_failures_total", "counter", "Flows whose upstream connection failed, by reason.");
  for (auto p : kProtocols) {
    for (std::size_t f = 0; f < proxy::kFailReasons; ++f) {
      w.sample("splitd_flow_failures_total",
               {{"protocol", decider::to_string(p)}, {"reason", proxy::to_string(static_cast<proxy::FailReason>(f))}},
               of(t, p).failures[f]);
    }
  }

  w.family("splitd_flow_names_total", "counter",
           "Flows by where their name came from: captured DNS, TLS SNI, HTTP Host, QUIC Initial, or none.");
  for (auto p : kProtocols) {
    for (std::size_t n = 0; n < proxy::kNameSources; ++n) {
      const auto source = static_cast<sniff::Source>(n);
      w.sample("splitd_flow_names_total",
               {{"protocol", decider::to_string(p)}, {"source", source == sniff::Source::kNone ? "none" : sniff::to_string(source)}},
               of(t, p).named[n]);
    }
  }
  w.family("splitd_sniff_total", "counter",
           "Flows whose first bytes were read for a name, by what the parser made of them (need_more: it gave up).");
  for (auto p : kProtocols) {
    for (std::size_t o = 0; o < proxy::kSniffOutcomes; ++o) {
      w.sample("splitd_sniff_total",
               {{"protocol", decider::to_string(p)}, {"outcome", sniff::to_string(static_cast<sniff::Outcome>(o))}},
               of(t, p).sniffed[o]);
    }
  }
  per_protocol(w, "splitd_sniff_timeouts_total", "counter",
               "Sniffed flows decided at dns.sniff_timeout without a complete ClientHello or request.", t,
               [](const proxy::ProtocolCounters& c, decider::Protocol) { return c.sniff_timeouts; });

  w.family("splitd_bytes_total", "counter", "Payload bytes proxied; sent is app to remote.");
  for (auto p : kProtocols) {
    w.sample("splitd_bytes_total", {{"protocol", decider::to_string(p)}, {"direction", "sent"}}, of(t, p).bytes_sent);
    w.sample("splitd_bytes_total", {{"protocol", decider::to_string(p)}, {"direction", "received"}},
             of(t, p).bytes_received);
  }
  w.family("splitd_packets_total", "counter", "Packets proxied; sent is app to remote.");
  for (auto p : kProtocols) {
    w.sample("splitd_packets_total", {{"protocol", decider::to_string(p)}, {"direction", "sent"}},
             of(t, p).packets_sent);
    w.sample("splitd_packets_total", {{"protocol", decider::to_string(p)}, {"direction", "received"}},
             of(t, p).packets_received);
  }

  const auto& d = m.daemon;
  scalar(w, "splitd_firewall_repairs_total", "counter",
         "Times the firewall footprint was restored after another program changed it.", d.firewall_repairs);
  scalar(w, "splitd_firewall_repair_failures_total", "counter", "Firewall repairs that failed.",
         d.firewall_repair_failures);
  scalar(w, "splitd_firewall_repair_backoffs_total", "counter",
         "Repairs delayed because another program kept undoing splitd's footprint.", d.firewall_repair_backoffs);
  w.family("splitd_firewall_repair_last_seconds", "gauge", "How long the last firewall repair took.");
  w.sample("splitd_firewall_repair_last_seconds", {}, static_cast<double>(d.firewall_last_repair_us) / 1e6, 6);
  w.family("splitd_firewall_changes_total", "counter",
           "Changes by other programs the kernel reported, by what they touched.");
  w.sample("splitd_firewall_changes_total", {{"what", "nftables"}}, d.firewall_changes_nftables);
  w.sample("splitd_firewall_changes_total", {{"what", "policy_rule"}}, d.firewall_changes_policy);
  w.sample("splitd_firewall_changes_total", {{"what", "route"}}, d.firewall_changes_route);
  scalar(w, "splitd_firewall_events_lost_total", "counter",
         "Kernel event bursts lost (ENOBUFS); each causes a full check.", d.firewall_events_lost);
  scalar(w, "splitd_firewall_table_owned", "gauge",
         "1 while table inet splitd is owned by splitd (other programs cannot change it).",
         d.firewall_table_owned ? 1 : 0);
  scalar(w, "splitd_firewall_table_persistent", "gauge",
         "1 when table inet splitd outlives a crash of splitd (the kill switch stays closed).",
         d.firewall_table_persistent ? 1 : 0);
  scalar(w, "splitd_reloads_total", "counter", "Configuration reloads applied (SIGHUP).", d.reloads);
  scalar(w, "splitd_reload_failures_total", "counter", "Reloads refused because of a bad configuration.",
         d.reload_failures);
  scalar(w, "splitd_rule_edits_total", "counter", "Rule changes applied through the API.", d.rule_edits);

  w.family("splitd_rules", "gauge", "Split rules in force, by kind.");
  w.sample("splitd_rules", {{"kind", "app"}}, m.rules_apps);
  w.sample("splitd_rules", {{"kind", "domain"}}, m.rules_domains);
  w.sample("splitd_rules", {{"kind", "ip"}}, m.rules_ips);
  scalar(w, "splitd_vpn_servers", "gauge", "VPN servers whose traffic is never intercepted.", d.vpn_servers);

  dns_metrics(w, m.dns);

  app_metrics(w, m.apps);

  w.family("splitd_api_requests_total", "counter", "API requests answered, by status code.");
  for (std::size_t i = 0; i < ApiStats::kCodes.size(); ++i) {
    const int code = ApiStats::kCodes[i];
    const std::string label = code == 0 ? "other" : std::to_string(code);
    w.sample("splitd_api_requests_total", {{"code", label}}, api.requests[i]);
  }
  scalar(w, "splitd_api_connections", "gauge", "Open API connections, watch streams included.", api.connections);
  scalar(w, "splitd_api_connections_refused_total", "counter", "API connections closed at once over the cap.",
         api.connections_refused);
  scalar(w, "splitd_api_watchers", "gauge", "Open watch streams.", api.watchers);
  scalar(w, "splitd_api_watchers_dropped_total", "counter", "Watch streams dropped because the client did not read.",
         api.watchers_dropped);
  return w.take();
}

}  // namespace splitd::api
