#include "api/json.hpp"

#include "api/rule_edits_json.hpp"

#include <charconv>
#include <ctime>

namespace splitd::api {
namespace {

using nlohmann::json;

json string_or_null(const std::string& s) { return s.empty() ? json(nullptr) : json(s); }

json app_rules_json(const std::vector<config::AppRule>& apps) {
  json out = json::array();
  for (const auto& a : apps) out.push_back(app_rule_json(a));
  return out;
}

json cidrs_json(const std::vector<Cidr>& ips) {
  json out = json::array();
  for (const auto& c : ips) out.push_back(c.to_string());
  return out;
}

json strings_json(const std::vector<std::string>& v) {
  json out = json::array();
  for (const auto& s : v) out.push_back(s);
  return out;
}

json edits_json(const config::SplitSection& s) {
  return {{"apps", app_rules_json(s.apps)}, {"domains", strings_json(s.domains)}, {"ips", cidrs_json(s.ips)}};
}

}  // namespace

std::string format_time(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
  std::time_t secs = static_cast<std::time_t>(ms / 1000);
  long frac = static_cast<long>(ms % 1000);
  if (frac < 0) {
    frac += 1000;
    --secs;
  }
  std::tm tm{};
  ::gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

json connection_json(const proxy::SessionView& s) {
  json app = nullptr;
  if (s.app.known()) {
    app = {{"pid", s.app.pid != 0 ? json(s.app.pid) : json(nullptr)},
           {"comm", string_or_null(s.app.comm)},
           {"path", string_or_null(s.app.exe)},
           {"cgroup", string_or_null(s.app.cgroup)},
           {"unit", string_or_null(s.app.unit)},
           {"app_id", string_or_null(s.app.app_id)},
           {"uid", s.app.uid ? json(*s.app.uid) : json(nullptr)},
           {"found_by", s.app.how}};
  }
  const bool blocked = s.route.kind == decider::RouteKind::kBlock;
  return {{"id", s.id},
          {"protocol", decider::to_string(s.protocol)},
          {"local_addr", s.client.to_string()},
          {"remote_addr", s.destination.to_string()},
          {"domain", string_or_null(s.domain)},
          {"domain_source", string_or_null(sniff::to_string(s.domain_source))},
          {"route", decider::to_string(s.route.kind)},
          {"interface", blocked ? json(nullptr) : string_or_null(s.route.interface)},
          {"rule", s.route.rule},
          {"match", decider::to_string(s.route.matched)},
          {"app", std::move(app)},
          {"started_at", format_time(s.started_at)},
          {"idle_ms", s.idle.count()},
          {"bytes_sent", s.bytes_sent},
          {"bytes_received", s.bytes_received},
          {"packets_sent", s.packets_sent},
          {"packets_received", s.packets_received}};
}

namespace {

// Length of the valid UTF-8 sequence at p (1-4), or 0 when it is not one (RFC 3629:
// no overlongs, no surrogates, nothing above U+10FFFF).
std::size_t utf8_length(const unsigned char* p, std::size_t left) {
  const unsigned c = p[0];
  const auto cont = [&](std::size_t i) { return i < left && (p[i] & 0xC0) == 0x80; };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
    if (c == 0xED && p[1] > 0x9F) return 0;  // surrogates
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;  // overlong
    if (c == 0xF4 && p[1] > 0x8F) return 0;  // above U+10FFFF
    return 4;
  }
  return 0;
}

void append_uint(std::string& out, std::uint64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;
  out.append(buf, end);
}

void append_int(std::string& out, std::int64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  (void)ec;
  out.append(buf, end);
}

void append_string_or_null(std::string& out, const std::string& s) {
  if (s.empty()) out += "null";
  else append_json_string(out, s);
}

}  // namespace

void append_json_string(std::string& out, std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    const unsigned char c = p[i];
    if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; ++i; continue;
      case '\\': out += "\\\\"; ++i; continue;
      case '\n': out += "\\n"; ++i; continue;
      case '\r': out += "\\r"; ++i; continue;
      case '\t': out += "\\t"; ++i; continue;
      case '\b': out += "\\b"; ++i; continue;
      case '\f': out += "\\f"; ++i; continue;
      default: break;
    }
    if (c < 0x20) {
      out += "\\u00";
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
      ++i;
      continue;
    }
    const std::size_t len = utf8_length(p + i, n - i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD for the byte that starts no valid sequence
      ++i;
    } else {
      out.append(text.data() + i, len);
      i += len;
    }
  }
  out += '"';
}

void append_connection(std::string& out, const proxy::SessionView& s) {
  const bool blocked = s.route.kind == decider::RouteKind::kBlock;
  out += "{\"id\":";
  append_uint(out, s.id);
  out += ",\"protocol\":\"";
  out += decider::to_string(s.protocol);
  out += "\",\"local_addr\":\"";
  out += s.client.to_string();
  out += "\",\"remote_addr\":\"";
  out += s.destination.to_string();
  out += "\",\"domain\":";
  append_string_or_null(out, s.domain);
  out += ",\"domain_source\":";
  append_string_or_null(out, sniff::to_string(s.domain_source));
  out += ",\"route\":\"";
  out += decider::to_string(s.route.kind);
  out += "\",\"interface\":";
  if (blocked) out += "null";
  else append_string_or_null(out, s.route.interface);
  out += ",\"rule\":";
  append_json_string(out, s.route.rule);
  out += ",\"match\":\"";
  out += decider::to_string(s.route.matched);
  out += "\",\"app\":";
  if (s.app.known()) {
    out += "{\"pid\":";
    if (s.app.pid != 0) append_int(out, s.app.pid);
    else out += "null";
    out += ",\"comm\":";
    append_string_or_null(out, s.app.comm);
    out += ",\"path\":";
    append_string_or_null(out, s.app.exe);
    out += ",\"cgroup\":";
    append_string_or_null(out, s.app.cgroup);
    out += ",\"unit\":";
    append_string_or_null(out, s.app.unit);
    out += ",\"app_id\":";
    append_string_or_null(out, s.app.app_id);
    out += ",\"uid\":";
    if (s.app.uid) append_uint(out, *s.app.uid);
    else out += "null";
    out += ",\"found_by\":";
    append_json_string(out, s.app.how);
    out += '}';
  } else {
    out += "null";
  }
  out += ",\"started_at\":\"";
  out += format_time(s.started_at);
  out += "\",\"idle_ms\":";
  append_int(out, s.idle.count());
  out += ",\"bytes_sent\":";
  append_uint(out, s.bytes_sent);
  out += ",\"bytes_received\":";
  append_uint(out, s.bytes_received);
  out += ",\"packets_sent\":";
  append_uint(out, s.packets_sent);
  out += ",\"packets_received\":";
  append_uint(out, s.packets_received);
  out += '}';
}

json connections_json(const std::vector<proxy::SessionView>& sessions) {
  json out = json::array();
  for (const auto& s : sessions) out.push_back(connection_json(s));
  return out;
}

json connection_update_json(const proxy::SessionView& s) {
  return {{"id", s.id},
          {"bytes_sent", s.bytes_sent},
          {"bytes_received", s.bytes_received},
          {"packets_sent", s.packets_sent},
          {"packets_received", s.packets_received},
          {"idle_ms", s.idle.count()}};
}

json dns_entry_json(const DnsEntry& e) {
  return {{"ip", e.ip.to_string()},
          {"names", strings_json(e.names)},
          {"expires_at", format_time(e.expires_at)},
          {"source", e.source}};
}

void append_dns_entry(std::string& out, const DnsEntry& e) {
  out += "{\"ip\":\"";
  out += e.ip.to_string();
  out += "\",\"names\":[";
  for (std::size_t i = 0; i < e.names.size(); ++i) {
    if (i > 0) out += ',';
    append_json_string(out, e.names[i]);
  }
  out += "],\"expires_at\":\"";
  out += format_time(e.expires_at);
  out += "\",\"source\":";
  append_json_string(out, e.source);
  out += '}';
}

json status_json(const Status& st, std::chrono::system_clock::time_point now) {
  const char* state = !st.enabled ? "disabled" : !st.warnings.empty() ? "degraded" : "running";
  json dns = json::array();
  for (const auto& ip : st.dns_servers) dns.push_back(ip.to_string());
  json dns_direct = json::array();
  for (const auto& ip : st.dns_direct_servers) dns_direct.push_back(ip.to_string());
  const auto uptime = std::chrono::duration_cast<std::chrono::seconds>(now - st.started_at).count();
  return {{"status", state},
          {"enabled", st.enabled},
          {"mode", decider::to_string(st.mode)},
          {"tunnel_interface", string_or_null(st.tunnel_interface)},
          {"tunnel_up", st.tunnel_up},
          {"physical_interface", string_or_null(st.physical_interface)},
          {"physical_interface6", string_or_null(st.physical_interface6)},
          {"dns_enabled", st.dns_enabled},
          {"dns_servers", std::move(dns)},
          {"dns_direct_servers", std::move(dns_direct)},
          {"sessions_active", st.sessions_active},
          {"sessions_total", st.sessions_total},
          {"bytes_sent", st.bytes_sent},
          {"bytes_received", st.bytes_received},
          {"started_at", format_time(st.started_at)},
          {"uptime_seconds", uptime < 0 ? 0 : uptime},
          {"version", st.version},
          {"git_revision", st.git_revision},
          {"config_file", string_or_null(st.config_file)},
          {"state_file", st.state_file},
          {"warnings", strings_json(st.warnings)}};
}

json rules_json(const Rules& r) {
  return {{"mode", decider::to_string(r.effective.mode)},
          {"mode_source", r.mode_from_api ? "api" : "config"},
          {"apps", app_rules_json(r.effective.apps)},
          {"domains", strings_json(r.effective.domains)},
          {"ips", cidrs_json(r.effective.ips)},
          {"added", edits_json(r.added)},
          {"removed", edits_json(r.removed)}};
}

json error_json(const ApiError& e) { return {{"error", e.error}, {"detail", e.detail}}; }

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace splitd::api
