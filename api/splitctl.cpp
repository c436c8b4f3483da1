#include "api/splitctl.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/version.hpp"

namespace splitd::ctl {
namespace {

using nlohmann::json;
using std::chrono::system_clock;
using Clock = system_clock;

constexpr std::string_view kDefaultSocket = "/run/splitd/api.sock";
constexpr std::string_view kEllipsis = "\u2026";
constexpr int kOk = 0;
constexpr int kUsage = 1;
constexpr int kRuntime = 2;
constexpr int kInterrupted = 130;

// ---------------------------------------------------------------------------------
// JSON access that tolerates a daemon newer or older than this splitctl.

std::string text_of(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_null()) return "";
  if (j.is_boolean()) return j.get<bool>() ? "true" : "false";
  if (j.is_number()) return j.dump();
  return j.dump();
}

std::string str(const json& obj, const char* key, std::string_view fallback = "-") {
  if (!obj.is_object()) return std::string(fallback);
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::string(fallback);
  std::string s = text_of(*it);
  return s.empty() ? std::string(fallback) : s;
}

std::optional<std::uint64_t> uint_of(const json& obj, const char* key) {
  if (!obj.is_object()) return std::nullopt;
  const auto it = obj.find(key);
  if (it == obj.end()) return std::nullopt;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  if (it->is_number_integer() && it->get<std::int64_t>() >= 0) {
    return static_cast<std::uint64_t>(it->get<std::int64_t>());
  }
  return std::nullopt;
}

bool bool_of(const json& obj, const char* key, bool fallback = false) {
  if (!obj.is_object()) return fallback;
  const auto it = obj.find(key);
  return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

json parse_json(std::string_view text) { return json::parse(text, nullptr, false); }

std::string basename_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ---------------------------------------------------------------------------------
// UTF-8 cutting, by code points.

bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

std::string utf8_prefix(std::string_view s, std::size_t points) {
  std::size_t i = 0, n = 0;
  while (i < s.size() && n < points) {
    ++i;
    while (i < s.size() && is_continuation(s[i])) ++i;
    ++n;
  }
  return std::string(s.substr(0, i));
}

std::string utf8_suffix(std::string_view s, std::size_t points) {
  std::size_t i = s.size(), n = 0;
  while (i > 0 && n < points) {
    --i;
    while (i > 0 && is_continuation(s[i])) --i;
    ++n;
  }
  return std::string(s.substr(i));
}

std::string fit(const std::string& cell, std::size_t width, bool keep_tail) {
  if (display_width(cell) <= width) return cell;
  if (width == 0) return "";
  if (keep_tail) return std::string(kEllipsis) + utf8_suffix(cell, width - 1);
  return utf8_prefix(cell, width - 1) + std::string(kEllipsis);
}

std::string plural(std::uint64_t n, std::string_view one, std::string_view many) {
  return std::to_string(n) + " " + std::string(n == 1 ? one : many);
}

// ---------------------------------------------------------------------------------
// Connections.

std::string app_of(const json& c) {
  const auto it = c.find("app");
  if (it == c.end() || !it->is_object()) return "-";
  const std::string comm = str(*it, "comm", "");
  if (!comm.empty()) return comm;
  const std::string path = str(*it, "path", "");
  if (!path.empty()) return basename_of(path);
  // Found by its cgroup only (no rule needed the process): the app id or the unit.
  for (const char* key : {"app_id", "unit"}) {
    if (std::string v = str(*it, key, ""); !v.empty()) return v;
  }
  if (std::string uid = str(*it, "uid", ""); !uid.empty()) return "uid " + uid;
  return "-";
}

std::string age_of(const json& c, Clock::time_point now) {
  const auto it = c.find("started_at");
  if (it == c.end() || !it->is_string()) return "-";
  const auto started = parse_timestamp(it->get<std::string>());
  if (!started) return "-";
  return format_duration(std::chrono::duration_cast<std::chrono::seconds>(now - *started));
}

std::string bytes_cell(const json& c, const char* key) {
  const auto v = uint_of(c, key);
  return v ? format_bytes(*v) : "-";
}

const std::vector<Column>& connection_columns() {
  static const std::vector<Column> kColumns = {
      {"ID", true, false, false},     {"PROTO", false, false, false}, {"LOCAL", false, false, false},
      {"REMOTE", false, false, false}, {"DOMAIN", false, true, true},  {"ROUTE", false, false, false},
      {"IFACE", false, false, false}, {"APP", false, true, false},     {"SENT", true, false, false},
      {"RECV", true, false, false},   {"AGE", true, false, false},     {"RULE", false, true, false}};
  return kColumns;
}

// The name, and where it came from when not from DNS: "www.x.com/sni" (one word: no
// host name has a slash, and the column stays one field for awk).
std::string domain_cell(const json& c) {
  std::string d = str(c, "domain");
  const std::string source = str(c, "domain_source", "");
  if (d != "-" && !source.empty() && source != "dns") d += "/" + source;
  return d;
}

std::vector<std::string> connection_row(const json& c, Clock::time_point now) {
  return {str(c, "id"),          str(c, "protocol"),  str(c, "local_addr"),        str(c, "remote_addr"),
          domain_cell(c),        str(c, "route"),     str(c, "interface"),         app_of(c),
          bytes_cell(c, "bytes_sent"), bytes_cell(c, "bytes_received"), age_of(c, now), str(c, "rule")};
}

// The table and the footer for connection objects in id order.
template <typename Range>
std::string connections_table(const Range& connections, Clock::time_point now, std::size_t max_width) {
  std::vector<std::vector<std::string>> rows;
  std::uint64_t tcp = 0, udp = 0;
  for (const json& c : connections) {
    rows.push_back(connection_row(c, now));
    const std::string proto = str(c, "protocol");
    if (proto == "tcp") ++tcp;
    else if (proto == "udp") ++udp;
  }
  std::string out = render_table(connection_columns(), rows, max_width);
  out += plural(rows.size(), "connection", "connections") + " (" + std::to_string(tcp) + " tcp, " +
         std::to_string(udp) + " udp)\n";
  return out;
}

std::optional<std::uint64_t> id_of(const json& c) {
  if (c.is_number_unsigned() || (c.is_number_integer() && c.get<std::int64_t>() >= 0)) return c.get<std::uint64_t>();
  return uint_of(c, "id");
}

std::string added_line(const json& c) {
  return "+ " + str(c, "id") + " " + str(c, "protocol") + " " + str(c, "local_addr") + " -> " +
         str(c, "remote_addr") + " domain=" + domain_cell(c) + " route=" + str(c, "route") +
         " iface=" + str(c, "interface") + " app=" + app_of(c) + " rule=" + str(c, "rule");
}

std::string counters_line(const json& c) {
  return "~ " + str(c, "id") + " sent " + bytes_cell(c, "bytes_sent") + " recv " + bytes_cell(c, "bytes_received");
}

// ---------------------------------------------------------------------------------
// Status, rules, interfaces.

std::string what_a_match_does(const std::string& mode) {
  if (mode == "exclude") return "go direct";
  if (mode == "include") return "go through the tunnel";
  return "";
}

std::string mode_summary(const std::string& mode) {
  if (mode == "exclude") return "matches go direct, all else through the tunnel";
  if (mode == "include") return "matches go through the tunnel, all else direct";
  return "";
}

std::string app_fields(const json& app) {
  std::string out;
  for (const char* key : {"cgroup", "comm", "path", "unit", "app_id", "user"}) {
    const std::string v = str(app, key, "");
    if (!v.empty()) out += (out.empty() ? "" : "  ") + std::string(key) + "=" + v;
  }
  return out;
}

// The names in added.KIND / removed.KIND (apps as objects or names).
std::set<std::string> names_in(const json& doc, const char* section, const char* kind) {
  std::set<std::string> out;
  if (!doc.is_object() || !doc.contains(section) || !doc[section].is_object()) return out;
  const json& s = doc[section];
  if (!s.contains(kind) || !s[kind].is_array()) return out;
  for (const auto& e : s[kind]) out.insert(e.is_object() ? str(e, "name", "") : text_of(e));
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------
// Formatting.

std::string format_bytes(std::uint64_t bytes) {
  if (bytes < 1024) return std::to_string(bytes) + "B";
  static constexpr const char* kUnits[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  // Rounded to one decimal, 1023.96 would show as 1024.0: move up a unit first.
  while (v >= 1023.95 && unit + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++unit;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%s", v, kUnits[unit]);
  return buf;
}

std::string format_duration(std::chrono::seconds d) {
  const std::int64_t s = std::max<std::int64_t>(0, d.count());
  char buf[48];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  } else if (s < 86400) {
    std::snprintf(buf, sizeof buf, "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s % 3600 / 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lldd%02lldh", static_cast<long long>(s / 86400),
                  static_cast<long long>(s % 86400 / 3600));
  }
  return buf;
}

std::optional<Clock::time_point> parse_timestamp(std::string_view text) {
  auto digits = [&](std::size_t pos, std::size_t n) -> std::optional<int> {
    if (pos + n > text.size()) return std::nullopt;
    int v = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
      if (text[i] < '0' || text[i] > '9') return std::nullopt;
      v = v * 10 + (text[i] - '0');
    }
    return v;
  };
  const auto year = digits(0, 4), month = digits(5, 2), day = digits(8, 2);
  const auto hour = digits(11, 2), minute = digits(14, 2), second = digits(17, 2);
  if (!year || !month || !day || !hour || !minute || !second || text[4] != '-' || text[7] != '-' ||
      (text[10] != 'T' && text[10] != 't' && text[10] != ' ') || text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  if (*month < 1 || *month > 12 || *day < 1 || *day > 31 || *hour > 23 || *minute > 59 || *second > 60) {
    return std::nullopt;
  }
  std::size_t pos = 19;
  std::chrono::nanoseconds fraction{0};
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    std::int64_t scale = 100'000'000, ns = 0;
    const std::size_t start = pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      ns += (text[pos] - '0') * scale;
      scale /= 10;
      ++pos;
    }
    if (pos == start) return std::nullopt;
    fraction = std::chrono::nanoseconds(ns);
  }
  std::int64_t offset = 0;
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    ++pos;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    const auto oh = digits(pos + 1, 2), om = digits(pos + 4, 2);
    if (!oh || !om || pos + 3 >= text.size() || text[pos + 3] != ':') return std::nullopt;
    offset = (text[pos] == '+' ? 1 : -1) * (*oh * 3600 + *om * 60);
    pos += 6;
  } else {
    return std::nullopt;
  }
  if (pos != text.size()) return std::nullopt;
  std::tm tm{};
  tm.tm_year = *year - 1900;
  tm.tm_mon = *month - 1;
  tm.tm_mday = *day;
  tm.tm_hour = *hour;
  tm.tm_min = *minute;
  tm.tm_sec = *second;
  const std::time_t t = timegm(&tm);
  return Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(t - offset) + fraction));
}

std::size_t display_width(std::string_view utf8) {
  return static_cast<std::size_t>(
      std::count_if(utf8.begin(), utf8.end(), [](char c) { return !is_continuation(c); }));
}

std::string render_table(const std::vector<Column>& columns, const std::vector<std::vector<std::string>>& rows,
                         std::size_t max_width) {
  const std::size_t n = columns.size();
  std::vector<std::size_t> width(n), floor(n);
  for (std::size_t i = 0; i < n; ++i) {
    width[i] = display_width(columns[i].title);
    floor[i] = std::max<std::size_t>(width[i], 6);
  }
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < n && i < row.size(); ++i) width[i] = std::max(width[i], display_width(row[i]));
  }
  auto total = [&](const std::vector<std::size_t>& w) {
    std::size_t t = 2 * (n - 1);
    for (std::size_t i = 0; i < n; ++i) t += w[i];
    return t;
  };
  std::vector<std::size_t> narrowest = width;
  for (std::size_t i = 0; i < n; ++i) {
    if (columns[i].shrinkable) narrowest[i] = std::min(width[i], floor[i]);
  }
  // Cut only when that makes rows fit: a row that wraps anyway had better stay whole.
  if (max_width > 0 && total(narrowest) <= max_width) {
    while (total(width) > max_width) {
      std::size_t widest = n;
      for (std::size_t i = 0; i < n; ++i) {
        if (columns[i].shrinkable && width[i] > floor[i] && (widest == n || width[i] > width[widest])) widest = i;
      }
      if (widest == n) break;
      --width[widest];
    }
  }
  std::string out;
  auto emit = [&](const std::vector<std::string>& cells, bool header) {
    std::string line;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string cell = i < cells.size() ? (header ? cells[i] : fit(cells[i], width[i], columns[i].keep_tail))
                                                : std::string();
      const std::size_t pad = width[i] > display_width(cell) ? width[i] - display_width(cell) : 0;
      if (i > 0) line += "  ";
      if (columns[i].right) line += std::string(pad, ' ') + cell;
      else line += cell + (i + 1 == n ? "" : std::string(pad, ' '));
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  };
  std::vector<std::string> titles;
  for (const auto& c : columns) titles.push_back(c.title);
  emit(titles, true);
  for (const auto& row : rows) emit(row, false);
  return out;
}

std::optional<std::string> connections_text(std::string_view text, Clock::time_point now, std::size_t max_width) {
  const json doc = parse_json(text);
  if (!doc.is_array()) return std::nullopt;
  return connections_table(doc, now, max_width);
}

std::optional<std::string> status_text(std::string_view text, Clock::time_point now) {
  const json s = parse_json(text);
  if (!s.is_object()) return std::nullopt;
  std::ostringstream out;
  const std::string status = str(s, "status", "unknown");
  const std::string mode = str(s, "mode", "?");
  if (status == "disabled" || !bool_of(s, "enabled", true)) {
    out << "splitd is running, interception DISABLED: traffic follows the system's routing"
           " (`splitctl enable` turns it back on)\n";
  } else if (status == "degraded") {
    out << "splitd is DEGRADED (" << mode << " mode): running, but see the warnings\n";
  } else {
    out << "splitd is " << status << " (" << mode << " mode: " << mode_summary(mode) << ")\n";
  }
  if (const auto it = s.find("warnings"); it != s.end() && it->is_array()) {
    for (const auto& w : *it) out << "WARNING: " << text_of(w) << "\n";
  }

  auto row = [&](std::string_view label, const std::string& value) {
    out << "  " << label << std::string(label.size() < 10 ? 10 - label.size() : 1, ' ') << value << "\n";
  };
  const std::string tunnel = str(s, "tunnel_interface", "");
  if (tunnel.empty()) row("tunnel", "none (no up interface of a tunnel kind)");
  else row("tunnel", tunnel + (bool_of(s, "tunnel_up") ? ", up" : ", DOWN"));

  const std::string p4 = str(s, "physical_interface", ""), p6 = str(s, "physical_interface6", "");
  if (p4.empty() && p6.empty()) row("physical", "none (no default route on a non-tunnel interface)");
  else if (p4 == p6) row("physical", p4 + " (IPv4 and IPv6)");
  else row("physical", (p4.empty() ? "none" : p4) + " (IPv4), " + (p6.empty() ? "none" : p6) + " (IPv6)");

  const auto active = uint_of(s, "sessions_active"), total = uint_of(s, "sessions_total");
  row("sessions", (active ? std::to_string(*active) : "?") + " active, " + (total ? std::to_string(*total) : "?") +
                      " since start");
  const auto sent = uint_of(s, "bytes_sent"), received = uint_of(s, "bytes_received");
  row("traffic", (sent ? format_bytes(*sent) : "?") + " sent, " + (received ? format_bytes(*received) : "?") +
                     " received");
  std::optional<std::chrono::seconds> uptime;
  if (const auto u = uint_of(s, "uptime_seconds")) {
    uptime = std::chrono::seconds(static_cast<std::int64_t>(*u));
  } else if (const auto started = parse_timestamp(str(s, "started_at", ""))) {
    uptime = std::chrono::duration_cast<std::chrono::seconds>(now - *started);
  }
  row("uptime", uptime ? format_duration(*uptime) : "?");
  auto servers_of = [&s](const char* key) -> std::optional<std::string> {
    const auto it = s.find(key);
    if (it == s.end() || !it->is_array()) return std::nullopt;
    std::string servers;
    for (const auto& d : *it) servers += (servers.empty() ? "" : ", ") + text_of(d);
    return servers;
  };
  const auto tunnel_dns = servers_of("dns_servers"), direct_dns = servers_of("dns_direct_servers");
  if (s.contains("dns_enabled") && !bool_of(s, "dns_enabled", true)) {
    row("dns", "capture off (dns.enabled = false)");
  } else if (direct_dns) {  // a daemon with DNS capture: both upstream sets
    row("dns", "tunnel " + (tunnel_dns && !tunnel_dns->empty() ? *tunnel_dns : std::string("none")) + "; direct " +
                   (direct_dns->empty() ? "none (no system resolver found)" : *direct_dns));
  } else if (tunnel_dns && !tunnel_dns->empty()) {
    row("dns", *tunnel_dns);
  }
  std::string version = str(s, "version", "?");
  if (const std::string rev = str(s, "git_revision", ""); !rev.empty()) version += " (git " + rev + ")";
  row("version", version);
  if (const std::string f = str(s, "config_file", ""); !f.empty()) row("config", f);
  if (const std::string f = str(s, "state_file", ""); !f.empty()) row("state", f);
  return out.str();
}

std::optional<std::string> rules_text(std::string_view text) {
  const json r = parse_json(text);
  if (!r.is_object()) return std::nullopt;
  std::ostringstream out;
  const std::string mode = str(r, "mode", "?");
  const std::string source = str(r, "mode_source", "");
  out << "mode " << mode;
  if (source == "config") out << " (from the config)";
  else if (source == "api") out << " (set over the API)";
  if (const std::string sum = mode_summary(mode); !sum.empty()) out << ": " << sum;
  out << "\n";

  constexpr std::string_view kAdded = "  (added over the API)";
  auto section = [&](const char* title, const char* kind, bool apps) {
    const auto it = r.find(kind);
    const std::size_t count = it != r.end() && it->is_array() ? it->size() : 0;
    out << "\n" << title << " (" << count << ")\n";
    if (count == 0) {
      out << "  none\n";
      return;
    }
    const auto added = names_in(r, "added", kind);
    if (apps) {
      std::vector<std::vector<std::string>> rows;
      for (const auto& a : *it) {
        const std::string name = str(a, "name", "?");
        std::string fields = app_fields(a);
        if (added.count(name) != 0) fields += std::string(kAdded);
        rows.push_back({name, fields});
      }
      std::string table = render_table({{""}, {""}}, rows);
      table.erase(0, table.find('\n') + 1);  // no titles
      std::istringstream lines(table);
      for (std::string line; std::getline(lines, line);) out << "  " << line << "\n";
      return;
    }
    std::size_t width = 0;
    for (const auto& e : *it) width = std::max(width, display_width(text_of(e)));
    for (const auto& e : *it) {
      const std::string v = text_of(e);
      out << "  " << v;
      if (added.count(v) != 0) out << std::string(width - display_width(v), ' ') << kAdded;
      out << "\n";
    }
  };
  section("apps", "apps", true);
  section("domains", "domains", false);
  section("ips", "ips", false);

  std::vector<std::string> removed;
  for (const auto& [kind, label] : {std::pair{"apps", "app"}, {"domains", "domain"}, {"ips", "ip"}}) {
    for (const auto& name : names_in(r, "removed", kind)) removed.push_back(std::string(label) + " " + name);
  }
  if (!removed.empty()) {
    out << "\nremoved over the API: config entries not in force (" << removed.size() << ")\n";
    for (const auto& line : removed) out << "  " << line << "\n";
  }
  return out.str();
}

std::optional<std::string> interfaces_text(std::string_view text) {
  const json doc = parse_json(text);
  if (!doc.is_object()) return std::nullopt;
  const json empty = json::array();
  const json& interfaces = doc.contains("interfaces") && doc["interfaces"].is_array() ? doc["interfaces"] : empty;
  auto find = [&](const std::string& name) -> const json* {
    for (const auto& i : interfaces) {
      if (str(i, "name", "") == name) return &i;
    }
    return nullptr;
  };
  const json physical = doc.contains("physical") ? doc["physical"] : json::object();
  const std::string p4 = str(physical, "ipv4", ""), p6 = str(physical, "ipv6", ""), tunnel = str(doc, "tunnel", "");

  std::ostringstream out;
  out << "Selected\n";
  for (const auto& [family, name] : {std::pair<std::string, std::string>{"ipv4", p4}, {"ipv6", p6}}) {
    const char* label = family == "ipv4" ? "IPv4" : "IPv6";
    if (name.empty()) {
      out << "  physical " << label << "  none (no default route on a non-tunnel interface)\n";
      continue;
    }
    const json* itf = find(name);
    out << "  physical " << label << "  " << name << "  " << (itf ? str(*itf, family.c_str()) : "-");
    const json* route = nullptr;
    if (doc.contains("default_routes") && doc["default_routes"].is_array()) {
      for (const auto& r : doc["default_routes"]) {
        if (str(r, "family", "") == family && str(r, "interface", "") == name) {
          route = &r;
          break;
        }
      }
    }
    if (route != nullptr) {
      out << "  (default";
      if (const std::string gw = str(*route, "gateway", ""); !gw.empty()) out << " via " << gw;
      out << ", metric " << str(*route, "metric", "?") << ")";
    } else {
      out << "  (configured)";
    }
    out << "\n";
  }
  if (tunnel.empty()) {
    out << "  tunnel         none (no up interface of a tunnel kind)\n";
  } else {
    const json* itf = find(tunnel);
    out << "  tunnel         " << tunnel << "  " << (itf ? str(*itf, "ipv4") : "-") << ", "
        << (itf ? str(*itf, "ipv6") : "-") << "  (" << (bool_of(doc, "tunnel_up") ? "up" : "DOWN") << ")\n";
  }
  out << "\n";

  std::vector<std::vector<std::string>> rows;
  for (const auto& itf : interfaces) {
    const std::string name = str(itf, "name", "?");
    std::vector<std::string> roles;
    if (name == p4 && name == p6) roles.push_back("physical");
    else if (name == p4) roles.push_back("physical(v4)");
    else if (name == p6) roles.push_back("physical(v6)");
    if (name == tunnel) roles.push_back("tunnel");
    std::string role;
    for (const auto& r : roles) role += (role.empty() ? "" : ",") + r;
    std::string kind = str(itf, "kind");
    if (const std::string driver = str(itf, "driver", ""); !driver.empty()) kind += "(" + driver + ")";
    const bool up = bool_of(itf, "up"), running = bool_of(itf, "running");
    std::string flags, addrs;
    if (itf.contains("flags") && itf["flags"].is_array()) {
      for (const auto& f : itf["flags"]) flags += (flags.empty() ? "" : ",") + text_of(f);
    }
    if (itf.contains("addresses") && itf["addresses"].is_array()) {
      for (const auto& a : itf["addresses"]) addrs += (addrs.empty() ? "" : " ") + text_of(a);
    }
    rows.push_back({str(itf, "index"), name, kind, role.empty() ? "-" : role,
                    up ? (running ? "up" : "up,no-carrier") : "down", str(itf, "mtu"), str(itf, "mac"),
                    flags.empty() ? "-" : flags, addrs.empty() ? "-" : addrs});
  }
  out << render_table({{"INDEX", true}, {"NAME"}, {"KIND"}, {"ROLE"}, {"STATE"}, {"MTU", true}, {"MAC"}, {"FLAGS"},
                       {"ADDRESSES"}},
                      rows);
  return out.str();
}

// ---------------------------------------------------------------------------------
// The watch view.

struct ConnectionsView::State {
  std::map<std::uint64_t, json> rows;
};

ConnectionsView::ConnectionsView() : state_(std::make_unique<State>()) {}
ConnectionsView::~ConnectionsView() = default;

std::size_t ConnectionsView::size() const { return state_->rows.size(); }

bool ConnectionsView::apply(std::string_view event, std::string_view data, std::vector<std::string>& lines) {
  const json doc = parse_json(data);
  auto& rows = state_->rows;
  if (event == "snapshot") {
    if (!doc.is_array()) return false;
    rows.clear();
    for (const auto& c : doc) {
      if (const auto id = id_of(c); id && c.is_object()) rows[*id] = c;
    }
    for (const auto& [id, c] : rows) lines.push_back(added_line(c));
    return true;
  }
  if (event != "changes") return true;  // an event this splitctl does not know: skip it
  if (!doc.is_object()) return false;
  if (const auto it = doc.find("new"); it != doc.end() && it->is_array()) {
    for (const auto& c : *it) {
      if (const auto id = id_of(c); id && c.is_object()) {
        rows[*id] = c;
        lines.push_back(added_line(c));
      }
    }
  }
  if (const auto it = doc.find("updated"); it != doc.end() && it->is_array()) {
    for (const auto& u : *it) {
      const auto id = id_of(u);
      if (!id || !u.is_object()) continue;
      const auto row = rows.find(*id);
      if (row == rows.end()) continue;  // closed meanwhile, or filtered out
      for (const auto& [key, value] : u.items()) row->second[key] = value;
      lines.push_back(counters_line(row->second));
    }
  }
  if (const auto it = doc.find("closed"); it != doc.end() && it->is_array()) {
    for (const auto& c : *it) {
      const auto id = id_of(c);
      if (id && rows.erase(*id) != 0) lines.push_back("- " + std::to_string(*id));
    }
  }
  return true;
}

std::string ConnectionsView::text(Clock::time_point now, std::size_t max_width) const {
  std::vector<json> list;
  list.reserve(state_->rows.size());
  for (const auto& [id, c] : state_->rows) list.push_back(c);
  return connections_table(list, now, max_width);
}

// ---------------------------------------------------------------------------------
// The commands.

namespace {

struct Globals {
  std::string socket;
  std::string tcp;
  std::string token_file;
  std::optional<std::chrono::milliseconds> timeout;
  bool json = false;
  bool help = false;
};

// An option a command takes.
enum class Arg { kFlag, kValue, kOptionalNumber };
using OptionSpec = std::map<std::string, Arg, std::less<>>;

struct Parsed {
  std::vector<std::string> positional;
  std::map<std::string, std::string, std::less<>> values;  // flags map to ""
  bool has(std::string_view name) const { return values.find(name) != values.end(); }
  std::string get(std::string_view name) const {
    const auto it = values.find(name);
    return it == values.end() ? std::string() : it->second;
  }
};

bool is_number(std::string_view s) {
  return !s.empty() && s.size() <= 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Expected<Parsed, std::string> parse_args(const std::vector<std::string>& args, const OptionSpec& spec) {
  Parsed out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") {
      out.positional.insert(out.positional.end(), args.begin() + static_cast<std::ptrdiff_t>(i) + 1, args.end());
      break;
    }
    if (a.size() < 2 || a[0] != '-' || is_number(a.substr(1))) {
      out.positional.push_back(a);
      continue;
    }
    const auto eq = a.find('=');
    const std::string name = a.substr(0, eq);
    const auto it = spec.find(name);
    if (it == spec.end()) return unexpected("unknown option " + name);
    switch (it->second) {
      case Arg::kFlag:
        if (eq != std::string::npos) return unexpected(name + " takes no value");
        out.values[name] = "";
        break;
      case Arg::kValue:
        if (eq != std::string::npos) {
          out.values[name] = a.substr(eq + 1);
        } else if (i + 1 < args.size()) {
          out.values[name] = args[++i];
        } else {
          return unexpected(name + " needs a value");
        }
        break;
      case Arg::kOptionalNumber:
        if (eq != std::string::npos) {
          out.values[name] = a.substr(eq + 1);
        } else if (i + 1 < args.size() && is_number(args[i + 1])) {
          out.values[name] = args[++i];
        } else {
          out.values[name] = "";
        }
        break;
    }
  }
  return out;
}

struct CommandInfo {
  const char* name;
  const char* synopsis;
  const char* summary;  // one line for the command list
  const char* help;
};

constexpr CommandInfo kCommands[] = {
    {"status", "status", "the daemon's state, interfaces, sessions, traffic, warnings",
     "The daemon's state: enabled or not, mode, tunnel and physical interfaces,\n"
     "sessions, traffic, uptime, the DNS upstreams (of tunnel-routed and of\n"
     "direct-routed names), version and any warnings."},
    {"connections", "connections [--route R] [--protocol P] [--app NAME] [--watch [MS]]",
     "live sessions as a table; --watch follows the changes",
     "The live sessions as a table. The filters are combined with AND:\n"
     "  --route tunnel|direct|block   --protocol tcp|udp   --app NAME (comm, exe or cgroup)\n"
     "--watch [MS] follows the changes every MS milliseconds (default 1000, 100 to 60000):\n"
     "on a terminal the table is redrawn in place; piped, one line per change\n"
     "(+ ID … a new session, - ID closed, ~ ID sent … recv … counters). Ctrl-C ends it.\n"
     "With --json: the array, or with --watch each event's data as one JSON line."},
    {"kill", "kill ID | kill [--route R] [--protocol P] [--app NAME] | kill --all",
     "end one session, the matching ones, or all",
     "Ends sessions: the one with that id, every one matching the filters, or all.\n"
     "TCP sessions get a reset on both sides; UDP flows are forgotten."},
    {"rules", "rules", "the split rules in force",
     "The split rules in force: the mode and where it came from, then the apps,\n"
     "domains and ips (marked when added over the API), then the config entries\n"
     "removed over the API."},
    {"add", "add app NAME [--cgroup GLOB] [--comm NAME] [--path EXE] [--unit GLOB] [--app-id ID] [--user U]"
            " | add domain PATTERN | add ip CIDR",
     "add a split rule",
     "Adds a split rule (kept by splitd across restarts). It applies to new flows: in\n"
     "exclude mode they go direct, in include mode through the tunnel. An app matches when\n"
     "any option matches: --unit a systemd unit (transmission-daemon.service), --app-id a\n"
     "desktop app (firefox: GNOME, KDE, Flatpak and snap scopes), --user a user name or uid.\n"
     "With none of them it matches the process name NAME (its first 15 bytes)."},
    {"remove", "remove app NAME | remove domain PATTERN | remove ip CIDR", "remove a split rule",
     "Removes a split rule in force (one from the config too: splitd remembers it)."},
    {"mode", "mode include|exclude", "set the split mode",
     "Sets the split mode: exclude sends matches direct and all else through the\n"
     "tunnel; include sends matches through the tunnel and all else direct."},
    {"enable", "enable", "install interception", "Installs interception again after `disable`."},
    {"disable", "disable", "remove interception (traffic follows the system's routing)",
     "Removes interception: new flows follow the system's routing; running\n"
     "sessions keep going."},
    {"interfaces", "interfaces", "the physical and tunnel interfaces splitd uses",
     "The physical interface per family and the tunnel splitd uses, then every\n"
     "interface with its kind, state, flags and addresses."},
    {"metrics", "metrics", "the Prometheus metrics text", "The Prometheus metrics text, unchanged."},
    {"version", "version", "splitctl's version and the daemon's",
     "splitctl's version, and the daemon's when it answers."},
    {"dns", "dns [--ip ADDR] [--name TEXT] | dns flush", "the names learned from DNS answers; flush forgets them",
     "The addresses splitd learned names for from the DNS answers it captured (what\n"
     "domain rules match a connection's destination against), sorted by address:\n"
     "when each expires (an expired one still matches for dns.grace), where it came\n"
     "from (dns: an answer, state: kept across a restart) and its names.\n"
     "  --ip ADDR    only that address      --name TEXT   only names containing TEXT\n"
     "`dns flush` forgets every learned name: new flows to those addresses are decided\n"
     "without a name until an answer names them again (running flows keep their route)."},
    {"exec", "exec --route direct|tunnel -- CMD [ARGS...]", "run a program (and its children) on one route",
     "Runs CMD on the given route, whatever the rules say: splitd moves this process into\n"
     "its cgroup for the route, then splitctl becomes CMD (no shell in between), so CMD and\n"
     "every process it starts stay there. The exit status is CMD's (127: not found, 126:\n"
     "not executable). Any user who can reach splitd's socket may use it for their own\n"
     "processes; the route wins over app, domain and IP rules."},
    {"help", "help [COMMAND]", "this text, or a command's", "This text, or a command's."},
};

const CommandInfo* command_info(std::string_view name) {
  for (const auto& c : kCommands) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

std::string usage() {
  std::string out =
      "Usage: splitctl [--socket PATH | --tcp ADDR:PORT --token-file FILE] [--json] COMMAND [ARGS]\n"
      "\nCommands:\n";
  constexpr std::size_t kColumn = 24;
  for (const auto& c : kCommands) {
    const std::string synopsis = c.synopsis;
    if (synopsis.size() < kColumn) {
      out += "  " + synopsis + std::string(kColumn - synopsis.size(), ' ') + c.summary + "\n";
    } else {
      out += "  " + synopsis + "\n" + std::string(kColumn + 2, ' ') + c.summary + "\n";
    }
  }
  out +=
      "\nOptions (anywhere on the line):\n"
      "  --socket PATH       the API socket (default: $SPLITD_SOCKET, else /run/splitd/api.sock)\n"
      "  --tcp ADDR:PORT     the API's TCP listener instead; needs --token-file\n"
      "  --token-file FILE   the bearer token for --tcp (daemon.api_token_file)\n"
      "  --json              print the API's JSON document unchanged\n"
      "  --timeout SECONDS   give up on an answer after this long (default 10)\n"
      "  -h, --help          usage (after a command: that command's)\n"
      "\nExit status: 0 ok, 1 usage error or a request splitd rejected, 2 splitd not\n"
      "reachable or failing (the message says what to do).\n";
  return out;
}

std::string command_usage(const CommandInfo& c) {
  return std::string("Usage: splitctl ") + c.synopsis + "\n\n" + c.help + "\n";
}

// One invocation: the globals, the output, and the client made on first use.
class Ctl {
 public:
  Ctl(Io& io, Globals globals) : io_(io), g_(std::move(globals)) {}

  Io& io() { return io_; }
  const Globals& globals() const { return g_; }

  int usage_error(const std::string& message, std::string_view command = {}) {
    io_.err << "splitctl: " << message << "\n";
    if (command.empty()) io_.err << "see `splitctl help`\n";
    else io_.err << "see `splitctl " << command << " --help`\n";
    return kUsage;
  }

  std::string endpoint() const { return g_.tcp.empty() ? socket_path() : g_.tcp; }

  // Makes the client; false (after saying why) when the token file cannot be read.
  bool ready(int& code) {
    if (client_) return true;
    api::ClientOptions o;
    o.socket_path = socket_path();
    o.tcp = g_.tcp;
    if (!g_.tcp.empty()) {
      std::ifstream f(g_.token_file);
      std::string token;
      if (!f || !std::getline(f, token)) {
        io_.err << "splitctl: cannot read the token file " << g_.token_file
                << " (--token-file); it is daemon.api_token_file on the daemon's host\n";
        code = kUsage;
        return false;
      }
      while (!token.empty() && (token.back() == '\r' || token.back() == ' ' || token.back() == '\t')) {
        token.pop_back();
      }
      if (token.empty()) {
        io_.err << "splitctl: the token file " << g_.token_file << " is empty\n";
        code = kUsage;
        return false;
      }
      o.token = token;
    }
    if (g_.timeout) o.timeout = *g_.timeout;
    o.cancel = io_.interrupted;
    client_ = io_.make_client ? io_.make_client(o) : std::make_unique<api::HttpClient>(o);
    return true;
  }

  // A request answered with 2xx; otherwise nullopt after printing what went wrong, with
  // the exit code in `code`.
  std::optional<api::Response> call(std::string_view method, std::string_view target, int& code,
                                    const std::optional<std::string>& body = {}) {
    if (!ready(code)) return std::nullopt;
    auto r = client_->request(method, target, body);
    if (!r) {
      code = report(r.error());
      return std::nullopt;
    }
    if (r->status / 100 != 2) {
      code = report(*r);
      return std::nullopt;
    }
    return std::move(*r);
  }

  api::ApiClient& client() { return *client_; }

  int report(const api::ClientError& e) {
    using K = api::ClientErrorKind;
    const std::string where = e.endpoint.empty() ? endpoint() : e.endpoint;
    const bool tcp = !g_.tcp.empty();
    io_.err << "splitctl: ";
    switch (e.kind) {
      case K::kNoSocket:
        io_.err << "splitd is not running (no API socket at " << where
                << "); start it: `sudo splitd run` (or `systemctl start splitd`)";
        break;
      case K::kPermissionDenied:
        io_.err << "cannot open " << where
                << ": permission denied; run as root, or join group splitd: `sudo usermod -aG splitd $USER`"
                   " and log in again";
        break;
      case K::kNotListening:
        if (tcp) {
          io_.err << "nothing answers on " << where << ": splitd is not running, or daemon.api_listen is not set";
        } else {
          io_.err << "nothing answers on " << where
                  << ": splitd is not running (a stale socket); start it: `sudo splitd run`"
                     " (or `systemctl start splitd`)";
        }
        break;
      case K::kTimeout:
        io_.err << "splitd did not answer in time on " << where << " (" << e.message
                << "); it may be overloaded or stuck: see `journalctl -u splitd`";
        break;
      case K::kProtocol:
        io_.err << "bad answer from " << where << ": " << e.message << " (is this splitd's API?)";
        break;
      case K::kInterrupted:
        io_.err << "interrupted\n";
        return kInterrupted;
      case K::kOther:
        io_.err << "cannot reach splitd at " << where << ": " << e.message;
        break;
    }
    io_.err << "\n";
    return kRuntime;
  }

  int report(const api::Response& r) {
    const json doc = parse_json(r.body);
    std::string detail = str(doc, "detail", "");
    if (detail.empty()) detail = str(doc, "error", "");
    io_.err << "splitctl: ";
    if (r.status == 401) {
      io_.err << "splitd refused the token (401): check --token-file (daemon.api_token_file on the daemon's host)\n";
      return kRuntime;
    }
    if (r.status == 403) {
      io_.err << "this change needs root or membership of group splitd: run it with sudo, or"
                 " `sudo usermod -aG splitd $USER` and log in again\n";
      return kRuntime;
    }
    if (r.status == 503) {
      io_.err << "splitd is starting; try again in a moment\n";
      return kRuntime;
    }
    if (r.status >= 500) {
      io_.err << "splitd failed (HTTP " << r.status << (detail.empty() ? "" : ": " + detail)
              << "); see `journalctl -u splitd`\n";
      return kRuntime;
    }
    if (r.status >= 400) {
      io_.err << (detail.empty() ? "splitd rejected the request (HTTP " + std::to_string(r.status) + ")" : detail)
              << "\n";
      return kUsage;
    }
    io_.err << "unexpected answer from splitd (HTTP " << r.status << ")\n";
    return kRuntime;
  }

  // Prints a body for --json: unchanged, with a final newline.
  void print_json(const std::string& body) {
    io_.out << body;
    if (body.empty() || body.back() != '\n') io_.out << "\n";
  }

  int bad_answer(std::string_view what) {
    io_.err << "splitctl: bad answer from " << endpoint() << ": " << what << " is not the expected JSON\n";
    return kRuntime;
  }

 private:
  std::string socket_path() const {
    if (!g_.socket.empty()) return g_.socket;
    std::optional<std::string> env;
    if (io_.getenv) {
      env = io_.getenv("SPLITD_SOCKET");
    } else if (const char* e = std::getenv("SPLITD_SOCKET")) {
      env = e;
    }
    return env && !env->empty() ? *env : std::string(kDefaultSocket);
  }

  Io& io_;
  Globals g_;
  std::unique_ptr<api::ApiClient> client_;
};

std::string query_of(const Parsed& p, std::initializer_list<const char*> names) {
  std::string q;
  for (const char* n : names) {
    const std::string opt = std::string("--") + n;
    if (!p.has(opt)) continue;
    q += (q.empty() ? "?" : "&") + std::string(n) + "=" + api::percent_encode(p.get(opt));
  }
  return q;
}

// The filters' values, checked here so a typo gets a clear message before any request.
std::optional<std::string> check_filters(const Parsed& p) {
  if (p.has("--route")) {
    const auto r = p.get("--route");
    if (r != "tunnel" && r != "direct" && r != "block") return "--route is tunnel, direct or block, not '" + r + "'";
  }
  if (p.has("--protocol")) {
    const auto pr = p.get("--protocol");
    if (pr != "tcp" && pr != "udp") return "--protocol is tcp or udp, not '" + pr + "'";
  }
  if (p.has("--app") && p.get("--app").empty()) return "--app needs a name";
  return std::nullopt;
}

int cmd_status(Ctl& ctl, const Parsed& p) {
  if (!p.positional.empty()) return ctl.usage_error("status takes no arguments", "status");
  int code = kOk;
  auto r = ctl.call("GET", "/api/v1/status", code);
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  const auto text = status_text(r->body, ctl.io().now());
  if (!text) return ctl.bad_answer("the status");
  ctl.io().out << *text;
  return kOk;
}

int watch_connections(Ctl& ctl, const std::string& target, const std::string& interval_ms) {
  Io& io = ctl.io();
  ConnectionsView view;
  int code = kOk;
  bool bad = false;
  const bool json_lines = ctl.globals().json;
  auto on_event = [&](std::string_view event, std::string_view data) {
    if (json_lines) {
      const json doc = parse_json(data);
      if (doc.is_discarded()) {
        std::string line(data);
        std::replace(line.begin(), line.end(), '\n', ' ');
        io.out << line << "\n";
      } else {
        io.out << doc.dump() << "\n";
      }
      io.out.flush();
      return true;
    }
    std::vector<std::string> lines;
    if (!view.apply(event, data, lines)) {
      bad = true;
      return false;
    }
    const std::size_t width = io.terminal_width();
    if (width > 0) {
      // Cursor home and clear, then the whole table: simple, and right after a resize.
      io.out << "\x1b[H\x1b[2J" << "splitctl connections: every " << interval_ms << " ms, Ctrl-C ends\n\n"
             << view.text(io.now(), width);
    } else {
      for (const auto& l : lines) io.out << l << "\n";
    }
    io.out.flush();
    return true;
  };
  if (!ctl.ready(code)) return code;
  auto r = ctl.client().watch(target, on_event);
  if (!r) return ctl.report(r.error());
  if (r->response.status / 100 != 2) return ctl.report(r->response);
  if (bad) return ctl.bad_answer("an event of the watch stream");
  if (r->stopped) return kOk;  // Ctrl-C
  io.err << "splitctl: splitd ended the watch stream (it stopped or restarted)\n";
  return kRuntime;
}

int cmd_connections(Ctl& ctl, const Parsed& p) {
  if (!p.positional.empty()) return ctl.usage_error("connections takes no arguments, only options", "connections");
  if (auto bad = check_filters(p)) return ctl.usage_error(*bad, "connections");
  std::string query = query_of(p, {"route", "protocol", "app"});
  if (p.has("--watch")) {
    std::string ms = p.get("--watch");
    if (ms.empty()) ms = "1000";
    if (!is_number(ms)) return ctl.usage_error("--watch takes milliseconds, not '" + ms + "'", "connections");
    const std::string target = "/api/v1/connections?watch=" + ms + (query.empty() ? "" : "&" + query.substr(1));
    return watch_connections(ctl, target, ms);
  }
  int code = kOk;
  auto r = ctl.call("GET", "/api/v1/connections" + query, code);
  if (!r) return code;
  if (p.has("--ids")) {  // for the shell completion
    const json doc = parse_json(r->body);
    if (!doc.is_array()) return ctl.bad_answer("the connections");
    for (const auto& c : doc) {
      if (const auto id = id_of(c)) ctl.io().out << *id << "\n";
    }
    return kOk;
  }
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  const auto text = connections_text(r->body, ctl.io().now(), ctl.io().terminal_width());
  if (!text) return ctl.bad_answer("the connections");
  ctl.io().out << *text;
  return kOk;
}

int cmd_kill(Ctl& ctl, const Parsed& p) {
  if (auto bad = check_filters(p)) return ctl.usage_error(*bad, "kill");
  const std::string query = query_of(p, {"route", "protocol", "app"});
  std::string target;
  if (p.positional.size() == 1) {
    if (!query.empty() || p.has("--all")) return ctl.usage_error("give an ID or filters, not both", "kill");
    if (!is_number(p.positional[0])) {
      return ctl.usage_error("'" + p.positional[0] + "' is not a connection id (see `splitctl connections`)", "kill");
    }
    target = "/api/v1/connections/" + p.positional[0];
  } else if (!p.positional.empty()) {
    return ctl.usage_error("kill takes one ID", "kill");
  } else if (p.has("--all")) {
    if (!query.empty()) return ctl.usage_error("--all ends every session; leave out the filters", "kill");
    target = "/api/v1/connections?all=true";
  } else if (!query.empty()) {
    target = "/api/v1/connections" + query;
  } else {
    return ctl.usage_error("kill needs an ID, filters (--route, --protocol, --app) or --all", "kill");
  }
  int code = kOk;
  auto r = ctl.call("DELETE", target, code);
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  const auto killed = uint_of(parse_json(r->body), "killed");
  if (!killed) return ctl.bad_answer("the kill answer");
  ctl.io().out << "killed " << *killed << " connection(s)\n";
  return kOk;
}

int cmd_rules(Ctl& ctl, const Parsed& p) {
  if (!p.positional.empty()) return ctl.usage_error("rules takes no arguments", "rules");
  int code = kOk;
  auto r = ctl.call("GET", "/api/v1/split/rules", code);
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  const auto text = rules_text(r->body);
  if (!text) return ctl.bad_answer("the rules");
  ctl.io().out << *text;
  return kOk;
}

// `add` and `remove`.
int cmd_rule_edit(Ctl& ctl, const Parsed& p, bool add) {
  const char* verb = add ? "add" : "remove";
  if (p.positional.size() != 2) {
    return ctl.usage_error(std::string(verb) + " needs a kind (app, domain, ip) and a value", verb);
  }
  const std::string& kind = p.positional[0];
  const std::string& value = p.positional[1];
  static constexpr std::pair<const char*, const char*> kAppOptions[] = {
      {"--cgroup", "cgroup"}, {"--comm", "comm"},     {"--path", "path"},
      {"--unit", "unit"},     {"--app-id", "app_id"}, {"--user", "user"}};
  bool app_options = false;
  for (const auto& [opt, key] : kAppOptions) app_options = app_options || p.has(opt);
  if (kind != "app" && kind != "domain" && kind != "ip") {
    return ctl.usage_error("'" + kind + "' is not a rule kind: app, domain or ip", verb);
  }
  if (app_options && (kind != "app" || !add)) {
    return ctl.usage_error("--cgroup, --comm, --path, --unit, --app-id and --user belong to `add app`", verb);
  }
  if (value.empty()) return ctl.usage_error("the value is empty", verb);
  const std::string collection = kind == "app" ? "apps" : kind == "domain" ? "domains" : "ips";
  std::string what = kind + " " + value;
  int code = kOk;
  std::optional<api::Response> r;
  if (add) {
    json body;
    if (kind == "app") {
      body["name"] = value;
      if (!app_options) {
        body["comm"] = value.substr(0, 15);  // the kernel keeps 15 bytes of a process name
        what += " (process name " + value.substr(0, 15) + ")";
      }
      for (const auto& [opt, key] : kAppOptions) {
        if (p.has(opt)) body[key] = p.get(opt);
      }
    } else {
      body[kind == "domain" ? "pattern" : "cidr"] = value;
    }
    r = ctl.call("POST", "/api/v1/split/" + collection, code, body.dump());
  } else {
    r = ctl.call("DELETE", "/api/v1/split/" + collection + "/" + api::percent_encode(value), code);
  }
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  const std::string mode = str(parse_json(r->body), "mode", "");
  const std::string does = what_a_match_does(mode);
  std::string line = std::string(add ? "added " : "removed ") + what;
  if (!does.empty()) {
    const std::string whose = kind == "app" ? "its new flows" : kind == "domain" ? "new flows to names it matches"
                                                                                 : "new flows to it";
    if (add) {
      line += ": " + whose + " " + does + " (" + mode + " mode)";
    } else {
      line += ": " + whose + " take the mode's default route again (" +
              (mode == "exclude" ? "the tunnel" : "direct") + ", " + mode + " mode)";
    }
  }
  ctl.io().out << line << "\n";
  return kOk;
}

int cmd_mode(Ctl& ctl, const Parsed& p) {
  if (p.positional.size() != 1 || (p.positional[0] != "include" && p.positional[0] != "exclude")) {
    return ctl.usage_error("mode is include or exclude", "mode");
  }
  const std::string& mode = p.positional[0];
  int code = kOk;
  auto r = ctl.call("PUT", "/api/v1/split/mode", code, json{{"mode", mode}}.dump());
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  ctl.io().out << "mode " << mode << ": " << mode_summary(mode) << " (new flows; running ones keep their route)\n";
  return kOk;
}

int cmd_enable(Ctl& ctl, const Parsed& p, bool enable) {
  const char* name = enable ? "enable" : "disable";
  if (!p.positional.empty()) return ctl.usage_error(std::string(name) + " takes no arguments", name);
  int code = kOk;
  auto r = ctl.call("POST", std::string("/api/v1/") + name, code);
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  ctl.io().out << (enable ? "interception enabled: new flows follow the split rules\n"
                          : "interception disabled: new flows follow the system's routing (running sessions keep"
                            " going)\n");
  return kOk;
}

int cmd_interfaces(Ctl& ctl, const Parsed& p) {
  if (!p.positional.empty()) return ctl.usage_error("interfaces takes no arguments", "interfaces");
  int code = kOk;
  auto r = ctl.call("GET", "/api/v1/interfaces", code);
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  const auto text = interfaces_text(r->body);
  if (!text) return ctl.bad_answer("the interfaces");
  ctl.io().out << *text;
  return kOk;
}

int cmd_metrics(Ctl& ctl, const Parsed& p) {
  if (!p.positional.empty()) return ctl.usage_error("metrics takes no arguments", "metrics");
  int code = kOk;
  auto r = ctl.call("GET", "/metrics", code);
  if (!r) return code;
  ctl.io().out << r->body;
  return kOk;
}

int cmd_version(Ctl& ctl, const Parsed& p) {
  if (!p.positional.empty()) return ctl.usage_error("version takes no arguments", "version");
  int code = kOk;
  std::optional<api::Response> r;
  std::string why;
  if (ctl.ready(code)) {
    auto got = ctl.client().request("GET", "/api/v1/status");
    if (!got) why = std::string(api::to_string(got.error().kind)) + ": " + got.error().message;
    else if (got->status / 100 != 2) why = "HTTP " + std::to_string(got->status);
    else r = std::move(*got);
  } else {
    why = "not asked";
  }
  const json status = r ? parse_json(r->body) : json();
  if (ctl.globals().json) {
    json out{{"splitctl", {{"version", kVersion}, {"git_revision", kGitRevision}}}};
    out["splitd"] = status.is_object() ? json{{"version", status.value("version", json())},
                                              {"git_revision", status.value("git_revision", json())}}
                                       : json();
    ctl.io().out << out.dump(2) << "\n";
    return kOk;
  }
  ctl.io().out << "splitctl " << kVersion << " (git " << kGitRevision << ")\n";
  if (status.is_object()) {
    ctl.io().out << "splitd   " << str(status, "version", "?");
    if (const std::string rev = str(status, "git_revision", ""); !rev.empty()) ctl.io().out << " (git " << rev << ")";
    ctl.io().out << " at " << ctl.endpoint() << "\n";
  } else {
    ctl.io().out << "splitd   not reachable at " << ctl.endpoint() << " (" << why << ")\n";
  }
  return kOk;
}

// "in 4m12s", or "expired 30s ago (grace)": the daemon keeps an expired entry only while
// it still matches (dns.grace).
std::string expires_cell(const json& e, Clock::time_point now) {
  const auto expires = parse_timestamp(str(e, "expires_at", ""));
  if (!expires) return "-";
  const auto left = std::chrono::duration_cast<std::chrono::seconds>(*expires - now);
  if (left.count() >= 0) return "in " + format_duration(left);
  return "expired " + format_duration(-left) + " ago (grace)";
}

std::string names_cell(const json& e) {
  const auto it = e.find("names");
  if (it == e.end() || !it->is_array() || it->empty()) return "-";
  std::string out;
  for (const auto& n : *it) out += (out.empty() ? "" : ", ") + text_of(n);
  return out;
}

int cmd_dns(Ctl& ctl, const Parsed& p) {
  const bool filtered = p.has("--ip") || p.has("--name");
  if (!p.positional.empty()) {
    if (p.positional[0] != "flush") {
      return ctl.usage_error("'" + p.positional[0] + "' is not a dns subcommand (only flush)", "dns");
    }
    if (p.positional.size() > 1 || filtered) return ctl.usage_error("dns flush takes no arguments", "dns");
    int code = kOk;
    auto r = ctl.call("DELETE", "/api/v1/dns/cache", code);
    if (!r) return code;
    if (ctl.globals().json) {
      ctl.print_json(r->body);
      return kOk;
    }
    const auto flushed = uint_of(parse_json(r->body), "flushed");
    if (!flushed) return ctl.bad_answer("the flush answer");
    ctl.io().out << "flushed " << plural(*flushed, "learned name", "learned names") << "\n";
    return kOk;
  }
  if (p.has("--ip") && p.get("--ip").empty()) return ctl.usage_error("--ip needs an address", "dns");
  if (p.has("--name") && p.get("--name").empty()) return ctl.usage_error("--name needs a part of a name", "dns");
  int code = kOk;
  auto r = ctl.call("GET", "/api/v1/dns/cache" + query_of(p, {"ip", "name"}), code);
  if (!r) return code;
  if (ctl.globals().json) {
    ctl.print_json(r->body);
    return kOk;
  }
  const json doc = parse_json(r->body);
  if (!doc.is_object() || !doc.contains("entries") || !doc["entries"].is_array()) {
    return ctl.bad_answer("the learned names");
  }
  const json& entries = doc["entries"];
  Io& io = ctl.io();
  io.out << plural(entries.size(), "learned address", "learned addresses") << "\n";
  if (entries.empty()) {
    if (filtered) {
      io.out << "none matches";
      if (p.has("--ip")) io.out << " --ip " << p.get("--ip");
      if (p.has("--name")) io.out << " --name " << p.get("--name");
      io.out << " (`splitctl dns` lists them all)\n";
      return kOk;
    }
    // Why nothing: capture off, or nothing resolved through splitd yet. One more request,
    // and its failure only costs the hint.
    auto st = ctl.client().request("GET", "/api/v1/status");
    if (!st && st.error().kind == api::ClientErrorKind::kInterrupted) return ctl.report(st.error());
    const json status = st && st->status / 100 == 2 ? parse_json(st->body) : json();
    if (status.is_object() && status.contains("dns_enabled") && !bool_of(status, "dns_enabled", true)) {
      io.out << "DNS capture is off (dns.enabled = false in splitd's config): no names are learned from"
                " DNS answers\n";
    } else if (status.is_object()) {
      io.out << "none learned yet: names come from the DNS answers splitd captures; an application that\n"
                "resolves over DNS-over-HTTPS or DNS-over-TLS bypasses it (see dns.doh_canary, dns.block_dot)\n";
    }
    return kOk;
  }
  std::vector<std::vector<std::string>> rows;
  rows.reserve(entries.size());
  const auto now = io.now();
  for (const auto& e : entries) {
    rows.push_back({str(e, "ip"), expires_cell(e, now), str(e, "source"), names_cell(e)});
  }
  io.out << render_table({{"IP"}, {"EXPIRES"}, {"SOURCE"}, {"NAMES", false, true, false}}, rows,
                         io.terminal_width());
  return kOk;
}

int exec_argv(const std::vector<std::string>& argv) {
  std::vector<char*> v;
  for (const auto& a : argv) v.push_back(const_cast<char*>(a.c_str()));
  v.push_back(nullptr);
  ::execvp(v[0], v.data());
  const int err = errno;
  std::fprintf(stderr, "splitctl: exec %s: %s\n", argv[0].c_str(), std::strerror(err));
  return err == ENOENT ? 127 : 126;
}

// `exec --route R -- CMD [ARGS...]`: splitd moves this very process (SO_PEERCRED tells it
// which) into the route's cgroup; then CMD replaces splitctl, so nothing runs before CMD
// outside that cgroup and CMD's exit status is splitctl's.
int cmd_exec(Ctl& ctl, const Parsed& p) {
  if (!p.has("--route")) return ctl.usage_error("exec needs --route direct or --route tunnel", "exec");
  const std::string route = p.get("--route");
  if (route != "direct" && route != "tunnel") {
    return ctl.usage_error("--route: '" + route + "' is not direct or tunnel", "exec");
  }
  if (p.positional.empty()) return ctl.usage_error("exec needs a command after --", "exec");
  int code = kOk;
  auto r = ctl.call("POST", "/api/v1/exec", code, json{{"route", route}}.dump());
  if (!r) return code;
  if (ctl.globals().json) ctl.print_json(r->body);
  std::fflush(stdout);
  ctl.io().out.flush();
  return ctl.io().exec ? ctl.io().exec(p.positional) : exec_argv(p.positional);
}

// The options each command takes.
const OptionSpec& options_of(std::string_view command) {
  static const OptionSpec kNone;
  static const OptionSpec kConnections = {{"--route", Arg::kValue},
                                          {"--protocol", Arg::kValue},
                                          {"--app", Arg::kValue},
                                          {"--watch", Arg::kOptionalNumber},
                                          {"--ids", Arg::kFlag}};
  static const OptionSpec kKill = {
      {"--route", Arg::kValue}, {"--protocol", Arg::kValue}, {"--app", Arg::kValue}, {"--all", Arg::kFlag}};
  static const OptionSpec kAdd = {{"--cgroup", Arg::kValue}, {"--comm", Arg::kValue}, {"--path", Arg::kValue},
                                  {"--unit", Arg::kValue},   {"--app-id", Arg::kValue}, {"--user", Arg::kValue}};
  static const OptionSpec kExec = {{"--route", Arg::kValue}};
  static const OptionSpec kDns = {{"--ip", Arg::kValue}, {"--name", Arg::kValue}};
  if (command == "connections") return kConnections;
  if (command == "kill") return kKill;
  if (command == "add") return kAdd;
  if (command == "exec") return kExec;
  if (command == "dns") return kDns;
  return kNone;
}

// Takes the global options out of `args` (anywhere before a "--").
Expected<Globals, std::string> take_globals(std::vector<std::string>& args) {
  Globals g;
  std::vector<std::string> rest;
  bool passthrough = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (passthrough || a == "--") {
      passthrough = true;
      rest.push_back(a);
      continue;
    }
    if (a == "--json") {
      g.json = true;
      continue;
    }
    if (a == "-h" || a == "--help") {
      g.help = true;
      continue;
    }
    const auto eq = a.find('=');
    const std::string name = a.substr(0, eq);
    if (name != "--socket" && name != "--tcp" && name != "--token-file" && name != "--timeout") {
      rest.push_back(a);
      continue;
    }
    std::string value;
    if (eq != std::string::npos) value = a.substr(eq + 1);
    else if (i + 1 < args.size()) value = args[++i];
    else return unexpected(name + " needs a value");
    if (value.empty()) return unexpected(name + " needs a value");
    if (name == "--socket") g.socket = value;
    else if (name == "--tcp") g.tcp = value;
    else if (name == "--token-file") g.token_file = value;
    else {
      char* end = nullptr;
      const double seconds = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0' || !(seconds > 0) || seconds > 86400) {
        return unexpected("--timeout takes seconds (e.g. 2 or 0.5), not '" + value + "'");
      }
      g.timeout = std::chrono::milliseconds(std::max<std::int64_t>(1, static_cast<std::int64_t>(seconds * 1000)));
    }
  }
  if (!g.socket.empty() && !g.tcp.empty()) return unexpected(std::string("--socket and --tcp exclude each other"));
  if (!g.tcp.empty() && g.token_file.empty()) {
    return unexpected(std::string("--tcp needs --token-file FILE (the bearer token)"));
  }
  if (g.tcp.empty() && !g.token_file.empty()) return unexpected(std::string("--token-file goes with --tcp"));
  args = std::move(rest);
  return g;
}

}  // namespace

int run_splitctl(std::vector<std::string> args, Io& io) {
  auto globals = take_globals(args);
  if (!globals) {
    io.err << "splitctl: " << globals.error() << "\nsee `splitctl help`\n";
    return kUsage;
  }
  if (args.empty()) {
    if (globals->help) {
      io.out << usage();
      return kOk;
    }
    io.err << usage();
    return kUsage;
  }
  const std::string command = args.front() == "--version" ? "version" : args.front();
  args.erase(args.begin());
  const CommandInfo* info = command_info(command);
  if (command == "help") {
    if (args.empty()) {
      io.out << usage();
      return kOk;
    }
    const CommandInfo* about = command_info(args.front());
    if (about == nullptr) {
      io.err << "splitctl: no command '" << args.front() << "'\nsee `splitctl help`\n";
      return kUsage;
    }
    io.out << command_usage(*about);
    return kOk;
  }
  if (info == nullptr) {
    io.err << "splitctl: no command '" << command << "'\nsee `splitctl help`\n";
    return kUsage;
  }
  if (globals->help) {
    io.out << command_usage(*info);
    return kOk;
  }
  Ctl ctl(io, std::move(*globals));
  auto parsed = parse_args(args, options_of(command));
  if (!parsed) return ctl.usage_error(parsed.error(), command);
  const Parsed& p = *parsed;
  if (command == "status") return cmd_status(ctl, p);
  if (command == "exec") return cmd_exec(ctl, p);
  if (command == "connections") return cmd_connections(ctl, p);
  if (command == "kill") return cmd_kill(ctl, p);
  if (command == "rules") return cmd_rules(ctl, p);
  if (command == "add") return cmd_rule_edit(ctl, p, true);
  if (command == "remove") return cmd_rule_edit(ctl, p, false);
  if (command == "mode") return cmd_mode(ctl, p);
  if (command == "enable") return cmd_enable(ctl, p, true);
  if (command == "disable") return cmd_enable(ctl, p, false);
  if (command == "interfaces") return cmd_interfaces(ctl, p);
  if (command == "metrics") return cmd_metrics(ctl, p);
  if (command == "version") return cmd_version(ctl, p);
  if (command == "dns") return cmd_dns(ctl, p);
  return ctl.usage_error("no command '" + command + "'");
}

}  // namespace splitd::ctl
