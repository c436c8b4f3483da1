#include "api/metrics.hpp"

#include <chrono>
#include <cstdio>
#include <initializer_list>
#include <string_view>
#include <utility>

#include "decider/decider.hpp"
#include "proxy/counters.hpp"

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
  void sample(std::string_view name, std::initializer_list<Label> labels, double v) {
    head(name, labels);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.3f", v);
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
  scalar(w, "splitd_reloads_total", "counter", "Configuration reloads applied (SIGHUP).", d.reloads);
  scalar(w, "splitd_reload_failures_total", "counter", "Reloads refused because of a bad configuration.",
         d.reload_failures);
  scalar(w, "splitd_rule_edits_total", "counter", "Rule changes applied through the API.", d.rule_edits);

  w.family("splitd_rules", "gauge", "Split rules in force, by kind.");
  w.sample("splitd_rules", {{"kind", "app"}}, m.rules_apps);
  w.sample("splitd_rules", {{"kind", "domain"}}, m.rules_domains);
  w.sample("splitd_rules", {{"kind", "ip"}}, m.rules_ips);
  scalar(w, "splitd_vpn_servers", "gauge", "VPN servers whose traffic is never intercepted.", d.vpn_servers);

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
