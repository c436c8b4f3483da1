#include "config/config.hpp"

#include <pwd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <tuple>

#define TOML_EXCEPTIONS 0
#include <sys/stat.h>

#include <toml++/toml.h>

namespace splitd::config {
namespace {

using namespace std::chrono_literals;

std::vector<Cidr> cidrs(std::initializer_list<const char*> list) {
  std::vector<Cidr> out;
  for (const char* c : list) out.push_back(*Cidr::parse(c));
  return out;
}

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time: return "a date/time";
    default: return "nothing";
  }
}

// Walks the document and collects every problem with its position.
class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  void error(const toml::source_region& at, std::string message) {
    diags_.push_back({file_, at.begin.line, at.begin.column, std::move(message)});
  }
  Diagnostics take() { return std::move(diags_); }
  bool ok() const { return diags_.empty(); }

  using Handler = std::function<void(const toml::node&, const std::string& key)>;

  // Dispatches each key of `table` to its handler; unknown keys are errors.
  void table(const toml::table& t, const std::string& prefix,
             const std::map<std::string, Handler>& handlers) {
    for (const auto& [key, node] : t) {
      const std::string name(key.str());
      const std::string full = prefix.empty() ? name : prefix + "." + name;
      auto it = handlers.find(name);
      if (it == handlers.end()) {
        std::string known;
        for (const auto& [k, h] : handlers) known += (known.empty() ? "" : ", ") + k;
        error(key.source(), "unknown key '" + full + "'" +
                                (prefix.empty() ? "; sections are: " : "; allowed here: ") + known);
        continue;
      }
      it->second(node, full);
    }
  }

  void section(const toml::node& n, const std::string& key,
               const std::map<std::string, Handler>& handlers) {
    if (const auto* t = n.as_table()) return table(*t, key, handlers);
    error(n.source(), "'" + key + "' must be a table ([" + key + "]), got " + type_name(n));
  }

  Handler string(std::string& out, std::function<std::string(const std::string&)> check = {}) {
    return [this, &out, check](const toml::node& n, const std::string& key) {
      const auto* s = n.as_string();
      if (s == nullptr) return error(n.source(), key + ": expected a string, got " + type_name(n));
      if (check) {
        if (std::string why = check(s->get()); !why.empty()) {
          return error(n.source(), key + ": " + why);
        }
      }
      out = s->get();
    };
  }

  template <typename Int>
  Handler integer(Int& out, std::int64_t min, std::int64_t max, bool hex = false) {
    return [this, &out, min, max, hex](const toml::node& n, const std::string& key) {
      const auto* i = n.as_integer();
      const auto range = [&] {
        std::ostringstream s;
        if (hex) s << std::hex << "0x" << min << " to 0x" << max;
        else s << min << " to " << max;
        return s.str();
      };
      if (i == nullptr) {
        return error(n.source(), key + ": expected an integer from " + range() + ", got " + type_name(n));
      }
      if (i->get() < min || i->get() > max) {
        return error(n.source(), key + ": " + std::to_string(i->get()) + " is out of range (" + range() + ")");
      }
      out = static_cast<Int>(i->get());
    };
  }

  Handler boolean(bool& out) {
    return [this, &out](const toml::node& n, const std::string& key) {
      const auto* b = n.as_boolean();
      if (b == nullptr) return error(n.source(), key + ": expected true or false, got " + type_name(n));
      out = b->get();
    };
  }

  Handler duration(Duration& out, Duration min, Duration max) {
    return [this, &out, min, max](const toml::node& n, const std::string& key) {
      const auto* s = n.as_string();
      const std::string allowed = "a duration like \"500ms\", \"10s\", \"5m\", \"1h\" from " +
                                  format_duration(min) + " to " + format_duration(max);
      if (s == nullptr) return error(n.source(), key + ": expected " + allowed + ", got " + type_name(n));
      auto d = parse_duration(s->get());
      if (!d) return error(n.source(), key + ": '" + s->get() + "' is not " + allowed);
      if (*d < min || *d > max) {
        return error(n.source(), key + ": " + s->get() + " is out of range (" + format_duration(min) +
                                     " to " + format_duration(max) + ")");
      }
      out = *d;
    };
  }

  template <typename Enum>
  Handler choice(Enum& out, std::vector<std::pair<const char*, Enum>> options) {
    return [this, &out, options](const toml::node& n, const std::string& key) {
      std::string names;
      for (const auto& [name, v] : options) names += (names.empty() ? "\"" : ", \"") + std::string(name) + "\"";
      const auto* s = n.as_string();
      if (s == nullptr) return error(n.source(), key + ": expected one of " + names + ", got " + type_name(n));
      for (const auto& [name, v] : options) {
        if (s->get() == name) {
          out = v;
          return;
        }
      }
      error(n.source(), key + ": '" + s->get() + "' is not one of " + names);
    };
  }

  // An array of distinct ports (integers 1-65535), at most `max_items`.
  Handler ports(std::vector<std::uint16_t>& out, std::size_t max_items) {
    return [this, &out, max_items](const toml::node& n, const std::string& key) {
      const auto* a = n.as_array();
      if (a == nullptr) return error(n.source(), key + ": expected an array of ports (1 to 65535), got " + type_name(n));
      if (a->size() > max_items) {
        return error(n.source(), key + ": " + std::to_string(a->size()) + " ports, at most " +
                                     std::to_string(max_items) + " are allowed");
      }
      std::vector<std::uint16_t> values;
      for (std::size_t i = 0; i < a->size(); ++i) {
        const toml::node& item = *a->get(i);
        const std::string where = key + "[" + std::to_string(i) + "]";
        const auto* v = item.as_integer();
        if (v == nullptr) {
          error(item.source(), where + ": expected a port (an integer from 1 to 65535), got " + type_name(item));
        } else if (v->get() < 1 || v->get() > 65535) {
          error(item.source(), where + ": " + std::to_string(v->get()) + " is out of range (1 to 65535)");
        } else if (std::find(values.begin(), values.end(), v->get()) != values.end()) {
          error(item.source(), where + ": port " + std::to_string(v->get()) + " is listed twice");
        } else {
          values.push_back(static_cast<std::uint16_t>(v->get()));
        }
      }
      out = std::move(values);
    };
  }

  // An array of strings, each converted (or rejected with a reason) by `convert`.
  template <typename T>
  Handler list(std::vector<T>& out, std::function<std::optional<T>(const std::string&, std::string&)> convert) {
    return [this, &out, convert](const toml::node& n, const std::string& key) {
      const auto* a = n.as_array();
      if (a == nullptr) return error(n.source(), key + ": expected an array of strings, got " + type_name(n));
      std::vector<T> values;
      for (std::size_t i = 0; i < a->size(); ++i) {
        const toml::node& item = *a->get(i);
        const std::string where = key + "[" + std::to_string(i) + "]";
        const auto* s = item.as_string();
        if (s == nullptr) {
          error(item.source(), where + ": expected a string, got " + type_name(item));
          continue;
        }
        std::string why;
        if (auto v = convert(s->get(), why)) values.push_back(std::move(*v));
        else error(item.source(), where + ": " + why);
      }
      out = std::move(values);
    };
  }

 private:
  std::string file_;
  Diagnostics diags_;
};

std::string check_interface(const std::string& name) {
  if (name == "auto") return "";
  if (name.empty() || name.size() > 15) return "'" + name + "' is not an interface name (1 to 15 characters, or \"auto\")";
  for (char c : name) {
    if (c == '/' || c == ':' || c == ' ' || c == '\t' || c == '\n' || c == '\0') {
      return "'" + name + "' is not an interface name (no '/', ':' or spaces)";
    }
  }
  return "";
}

std::string check_comm(const std::string& s) {
  return s.empty() || s.size() > 15
             ? "'" + s + "' is not a process name (1 to 15 characters, as in /proc/PID/comm)"
             : "";
}

// The fields of an app rule that match something; a rule needs one.
constexpr const char* kAppMatchKeys[] = {"cgroup", "comm", "path", "unit", "app_id", "user"};
constexpr const char* kAppMatchHint = "give at least one of 'cgroup', 'comm', 'path', 'unit', 'app_id', 'user'";

std::string check_pattern(const std::string& s) {
  if (s.empty() || s.size() > 4096) return "'" + s + "' is not a pattern (1 to 4096 characters)";
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20) return "a pattern has no control characters";
  }
  return "";
}

std::string check_unit(const std::string& s) {
  if (auto why = check_pattern(s); !why.empty()) return why;
  if (s.find('/') != std::string::npos) {
    return "'" + s + "' is a path: a unit is one name such as \"transmission-daemon.service\" (use 'cgroup' for paths)";
  }
  return "";
}

std::string check_cgroup_path(const std::string& s) {
  if (s.empty()) return "";
  if (s.front() != '/' || s.size() > 1024 || s.find("/..") != std::string::npos ||
      s.find("//") != std::string::npos || s == "/") {
    return "'" + s + "' is not a cgroup path below the cgroup2 mount (such as \"/splitd-exec\")";
  }
  return "";
}

std::string check_user(const std::string& s) {
  auto uid = resolve_user(s);
  return uid ? "" : uid.error();
}

std::string check_app_name(const std::string& s) {
  if (s.empty() || s.size() > 64) return "'" + s + "' is not an app rule name (1 to 64 characters)";
  for (char c : s) {
    if (c == '/' || static_cast<unsigned char>(c) < 0x20) {
      return "'" + s + "': an app rule name has no '/' or control characters";
    }
  }
  return "";
}

std::string check_user_name(const std::string& name) {
  if (name.size() > 32) return "'" + name + "' is longer than 32 characters, not a user name";
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (i > 0 && ((c >= '0' && c <= '9') || c == '-' || c == '.'));
    if (!ok) return "'" + name + "' is not a user name (letters, digits, '_', '-', '.'; not a digit or '-' first)";
  }
  return "";
}

std::string check_absolute_path(const std::string& path) {
  return !path.empty() && path.front() == '/' ? "" : "'" + path + "' must be an absolute path";
}

std::string check_listen(const std::string& text) {
  if (text.empty()) return "";
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos) return "'" + text + "' must be ADDRESS:PORT, e.g. \"127.0.0.1:7070\"";
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  const std::string p = text.substr(colon + 1);
  auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
  if (!IpAddress::parse(host) || ec != std::errc() || ptr != p.data() + p.size() || port == 0 || port > 65535) {
    return "'" + text + "' must be ADDRESS:PORT, e.g. \"127.0.0.1:7070\" or \"[::1]:7070\"";
  }
  return "";
}

// Domain patterns: labels of letters, digits, '-', '_' (punycode for IDN) or a whole-label
// '*'; a trailing dot is allowed. Case is not significant.
std::optional<std::string> domain_pattern(const std::string& text, std::string& why) {
  std::string p = text;
  if (!p.empty() && p.back() == '.') p.pop_back();
  if (p.empty() || p.size() > 253) {
    why = "'" + text + "' is not a domain pattern";
    return std::nullopt;
  }
  std::size_t start = 0;
  while (start <= p.size()) {
    const std::size_t dot = std::min(p.find('.', start), p.size());
    const std::string label = p.substr(start, dot - start);
    if (label.empty() || label.size() > 63) {
      why = "'" + text + "' has an empty or overlong label";
      return std::nullopt;
    }
    if (label != "*") {
      for (char c : label) {
        const bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_';
        if (!ok) {
          why = c == '*' ? "'" + text + "': '*' must be a whole label, as in \"*.example.com\""
                         : "'" + text + "' has a character that is not allowed in a domain ('" +
                               std::string(1, c) + "'); write IDNs in punycode (xn--…)";
          return std::nullopt;
        }
      }
    }
    start = dot + 1;
  }
  for (char& c : p) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return p;
}

}  // namespace

Config::Config() {
  firewall.never_intercept = cidrs({"127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10",
                                    "224.0.0.0/4", "ff00::/8"});
  split.domains = {"*.local", "localhost"};
  split.ips = cidrs({"192.168.0.0/16", "10.0.0.0/8"});
  dns.servers = {*IpAddress::parse("1.1.1.1"), *IpAddress::parse("8.8.8.8")};
}

std::string Diagnostic::to_string() const {
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": error: " + message;
}

std::optional<Duration> parse_duration(std::string_view text) {
  std::uint64_t value = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ec != std::errc() || ptr == text.data() || value > 1'000'000'000) return std::nullopt;
  const std::string_view unit(ptr, static_cast<std::size_t>(end - ptr));
  std::uint64_t ms_per_unit = 0;
  if (unit == "ms") ms_per_unit = 1;
  else if (unit == "s") ms_per_unit = 1000;
  else if (unit == "m") ms_per_unit = 60'000;
  else if (unit == "h") ms_per_unit = 3'600'000;
  else if (unit == "d") ms_per_unit = 86'400'000;
  else return std::nullopt;
  return Duration(static_cast<Duration::rep>(value * ms_per_unit));
}

std::string format_duration(Duration d) {
  const auto ms = d.count();
  if (ms % 86'400'000 == 0 && ms != 0) return std::to_string(ms / 86'400'000) + "d";
  if (ms % 3'600'000 == 0 && ms != 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0 && ms != 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0 && ms != 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

Expected<Config, Diagnostics> parse(std::string_view text, std::string_view file_name) {
  const std::string file(file_name);
  toml::parse_result parsed = toml::parse(text, file);
  if (!parsed) {
    const auto& err = parsed.error();
    return unexpected(Diagnostics{{file, err.source().begin.line, err.source().begin.column,
                                   "TOML syntax: " + std::string(err.description())}});
  }
  Config c;
  c.source = file;
  Parser p(file);
  using H = Parser::Handler;

  const auto cidr = [](const std::string& s, std::string& why) { return Cidr::parse(s, &why); };
  // An upstream that is this host (a stub such as 127.0.0.53, or splitd itself) would
  // loop: its queries come back into the capture. Unspecified and multicast go nowhere.
  const auto server = [](const std::string& s, std::string& why) -> std::optional<IpAddress> {
    auto ip = IpAddress::parse(s);
    if (!ip) {
      why = "'" + s + "' is not an IPv4 or IPv6 address";
    } else if (ip->unmapped().is_loopback()) {
      why = "'" + s + "' is this host: a local stub or splitd itself would receive its own "
            "captured queries again (a loop); give the servers the stub forwards to";
      ip.reset();
    } else if (ip->is_unspecified() || ip->unmapped().is_multicast()) {
      why = "'" + s + "' is not a unicast server address";
      ip.reset();
    }
    return ip;
  };

  const std::map<std::string, H> daemon = {
      {"api_socket", p.string(c.daemon.api_socket, check_absolute_path)},
      {"api_listen", p.string(c.daemon.api_listen, check_listen)},
      {"api_token_file", p.string(c.daemon.api_token_file, check_absolute_path)},
      {"state_dir", p.string(c.daemon.state_dir, check_absolute_path)},
      {"exec_cgroup", p.string(c.daemon.exec_cgroup, check_cgroup_path)},
      {"user", p.string(c.daemon.user, check_user_name)},
      {"log_level", p.choice(c.daemon.log_level, std::vector<std::pair<const char*, log::Level>>{
                                                     {"trace", log::Level::kTrace},
                                                     {"debug", log::Level::kDebug},
                                                     {"info", log::Level::kInfo},
                                                     {"warn", log::Level::kWarn},
                                                     {"error", log::Level::kError}})},
  };
  const std::map<std::string, H> interfaces = {
      {"physical", p.string(c.interfaces.physical, check_interface)},
      {"tunnel", p.string(c.interfaces.tunnel, check_interface)},
  };
  const std::map<std::string, H> proxy = {
      {"port", p.integer(c.proxy.port, 1, 65535)},
      {"max_sessions", p.integer(c.proxy.max_sessions, 1, 10'000'000)},
      {"connect_timeout", p.duration(c.proxy.connect_timeout, 100ms, std::chrono::minutes(5))},
      {"idle_timeout", p.duration(c.proxy.idle_timeout, 100ms, std::chrono::hours(24 * 7))},
      {"udp_idle_timeout", p.duration(c.proxy.udp_idle_timeout, 100ms, std::chrono::hours(24))},
  };
  const std::map<std::string, H> firewall = {
      {"mark", p.integer(c.firewall.mark, 1, 0xffffffff, true)},
      {"bypass_mark", p.integer(c.firewall.bypass_mark, 1, 0xffffffff, true)},
      {"route_table", p.integer(c.firewall.route_table, 1, 0x7fffffff)},
      {"ipv6", p.boolean(c.firewall.ipv6)},
      {"never_intercept", p.list<Cidr>(c.firewall.never_intercept, cidr)},
      {"on_tunnel_down", p.choice(c.firewall.on_tunnel_down,
                                  std::vector<std::pair<const char*, decider::OnTunnelDown>>{
                                      {"block", decider::OnTunnelDown::kBlock},
                                      {"direct", decider::OnTunnelDown::kDirect}})},
      {"table_owner", p.boolean(c.firewall.table_owner)},
  };
  const H apps = [&p, &c](const toml::node& n, const std::string& key) {
    const auto* a = n.as_array();
    if (a == nullptr || !a->is_array_of_tables()) {
      return p.error(n.source(), key + ": expected [[split.apps]] tables, got " + type_name(n));
    }
    c.split.apps.clear();
    for (std::size_t i = 0; i < a->size(); ++i) {
      const auto& t = *a->get(i)->as_table();
      AppRule app;
      const std::string where = key + "[" + std::to_string(i) + "]";
      p.table(t, where, {{"name", p.string(app.name, check_app_name)},
                         {"cgroup", p.string(app.cgroup, check_pattern)},
                         {"comm", p.string(app.comm, check_comm)},
                         {"path", p.string(app.path, check_absolute_path)},
                         {"unit", p.string(app.unit, check_unit)},
                         {"app_id", p.string(app.app_id, check_pattern)},
                         {"user", p.string(app.user, check_user)}});
      if (app.name.empty() && !t.contains("name")) p.error(t.source(), where + ": 'name' is required");
      bool any = false;
      for (const char* k : kAppMatchKeys) any = any || t.contains(k);
      if (!any) p.error(t.source(), where + ": " + kAppMatchHint);
      c.split.apps.push_back(std::move(app));
    }
  };
  const std::map<std::string, H> split = {
      {"mode", p.choice(c.split.mode, std::vector<std::pair<const char*, decider::Mode>>{
                                          {"exclude", decider::Mode::kExclude},
                                          {"include", decider::Mode::kInclude}})},
      {"domains", p.list<std::string>(c.split.domains, domain_pattern)},
      {"ips", p.list<Cidr>(c.split.ips, cidr)},
      {"apps", apps},
  };
  const std::map<std::string, H> dns = {
      {"enabled", p.boolean(c.dns.enabled)},
      {"servers", p.list<IpAddress>(c.dns.servers, server)},
      {"direct_servers", p.list<IpAddress>(c.dns.direct_servers, server)},
      {"cache_ttl", p.duration(c.dns.cache_ttl, 0s, std::chrono::hours(24 * 7))},
      {"intercept_port", p.integer(c.dns.intercept_port, 1, 65535)},
      {"forwarder_port", p.integer(c.dns.forwarder_port, 1, 65535)},
      {"timeout", p.duration(c.dns.timeout, 50ms, std::chrono::seconds(30))},
      {"grace", p.duration(c.dns.grace, 0s, std::chrono::hours(24 * 7))},
      {"ttl_floor", p.duration(c.dns.ttl_floor, 0s, std::chrono::hours(24))},
      {"max_names", p.integer(c.dns.max_names, 1, 10'000'000)},
      {"doh_canary", p.boolean(c.dns.doh_canary)},
      {"block_dot", p.boolean(c.dns.block_dot)},
      {"threads", p.integer(c.dns.threads, 0, 64)},
      {"sniff", p.choice(c.dns.sniff, std::vector<std::pair<const char*, decider::SniffMode>>{
                                          {"unknown", decider::SniffMode::kUnknown},
                                          {"always", decider::SniffMode::kAlways},
                                          {"off", decider::SniffMode::kOff}})},
      {"sniff_ports", p.ports(c.dns.sniff_ports, 64)},
      {"sniff_timeout", p.duration(c.dns.sniff_timeout, 10ms, std::chrono::seconds(10))},
      {"ech_public_names", p.list<std::string>(c.dns.ech_public_names, domain_pattern)},
  };
  p.table(parsed.table(), "",
          {{"daemon", [&](const toml::node& n, const std::string& k) { p.section(n, k, daemon); }},
           {"interfaces", [&](const toml::node& n, const std::string& k) { p.section(n, k, interfaces); }},
           {"proxy", [&](const toml::node& n, const std::string& k) { p.section(n, k, proxy); }},
           {"firewall", [&](const toml::node& n, const std::string& k) { p.section(n, k, firewall); }},
           {"split", [&](const toml::node& n, const std::string& k) { p.section(n, k, split); }},
           {"dns", [&](const toml::node& n, const std::string& k) { p.section(n, k, dns); }}});

  // Relations between keys.
  const auto at = [&](const char* path) {
    const auto node = parsed.table().at_path(path);
    return node ? node.node()->source() : toml::source_region{{1, 1}, {1, 1}, nullptr};
  };
  if (c.firewall.mark == c.firewall.bypass_mark) {
    p.error(at("firewall.bypass_mark"), "firewall.bypass_mark: must differ from firewall.mark (" +
                                            std::to_string(c.firewall.mark) + ")");
  }
  // 252 (compat) to 255 are the kernel's own tables, refused by the firewall at run time.
  if (c.firewall.route_table >= 252 && c.firewall.route_table <= 255) {
    p.error(at("firewall.route_table"),
            "firewall.route_table: " + std::to_string(c.firewall.route_table) +
                " is a system table (compat, default, main, local); pick another, e.g. 1501");
  }
  if (c.dns.enabled && c.dns.forwarder_port == c.proxy.port) {
    p.error(at("dns.forwarder_port"), "dns.forwarder_port: must differ from proxy.port (" +
                                          std::to_string(c.proxy.port) + ")");
  }
  if (!p.ok()) return unexpected(p.take());
  return c;
}

Expected<Config, Diagnostics> load_file(const std::string& path) {
  // A directory opens as a stream that reads nothing, which would parse as an empty
  // (valid) config.
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    return unexpected(Diagnostics{{path, 0, 0, S_ISDIR(st.st_mode) ? "cannot read: is a directory, not a config file"
                                                                   : "cannot read: not a regular file"}});
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return unexpected(Diagnostics{{path, 0, 0, std::string("cannot read: ") + std::strerror(errno)}});
  }
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), path);
}

Expected<std::string, std::string> check_domain_pattern(const std::string& text) {
  std::string why;
  if (auto p = domain_pattern(text, why)) return *p;
  return unexpected(why);
}

Expected<Cidr, std::string> check_cidr(const std::string& text) {
  std::string why;
  if (auto c = Cidr::parse(text, &why)) return *c;
  return unexpected(why);
}

Expected<AppRule, std::string> check_app(const AppRule& app) {
  if (auto why = check_app_name(app.name); !why.empty()) return unexpected("name: " + why);
  if (app.cgroup.empty() && app.comm.empty() && app.path.empty() && app.unit.empty() &&
      app.app_id.empty() && app.user.empty()) {
    return unexpected(std::string(kAppMatchHint));
  }
  for (const auto& [key, value, check] :
       {std::tuple{"cgroup", &app.cgroup, &check_pattern}, std::tuple{"unit", &app.unit, &check_unit},
        std::tuple{"app_id", &app.app_id, &check_pattern}, std::tuple{"user", &app.user, &check_user}}) {
    if (value->empty()) continue;
    if (auto why = check(*value); !why.empty()) return unexpected(std::string(key) + ": " + why);
  }
  if (!app.comm.empty()) {
    if (auto why = check_comm(app.comm); !why.empty()) return unexpected("comm: " + why);
  }
  if (!app.path.empty()) {
    if (auto why = check_absolute_path(app.path); !why.empty()) return unexpected("path: " + why);
  }
  return app;
}

Expected<std::uint32_t, std::string> resolve_user(const std::string& user) {
  if (user.empty() || user.size() > 256) return unexpected("'" + user + "' is not a user name or uid");
  if (user.find_first_not_of("0123456789") == std::string::npos) {
    if (user.size() > 10) return unexpected("'" + user + "' is not a uid");
    const unsigned long long v = std::stoull(user);
    if (v >= 0xffffffffull) return unexpected("'" + user + "' is not a uid");
    return static_cast<std::uint32_t>(v);
  }
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return unexpected("no user '" + user + "' on this system (give a user name or a uid)");
  }
  return static_cast<std::uint32_t>(found->pw_uid);
}

Expected<decider::Mode, std::string> parse_mode(const std::string& text) {
  if (text == "exclude") return decider::Mode::kExclude;
  if (text == "include") return decider::Mode::kInclude;
  return unexpected("'" + text + "' is not one of \"exclude\", \"include\"");
}

std::string summary(const Config& c) {
  std::ostringstream s;
  s << "mode " << decider::to_string(c.split.mode) << ", " << c.split.ips.size() << " ip rules, "
    << c.split.domains.size() << " domain rules, " << c.split.apps.size() << " app rules; physical "
    << c.interfaces.physical << ", tunnel " << c.interfaces.tunnel << ", on_tunnel_down "
    << decider::to_string(c.firewall.on_tunnel_down) << "; proxy port " << c.proxy.port
    << ", ipv6 " << (c.firewall.ipv6 ? "on" : "off");
  return s.str();
}

}  // namespace splitd::config

namespace splitd::config {
namespace {

struct KeyRule {
  const char* key;
  Apply apply;
  bool (*same)(const Config&, const Config&);
};

#define SPLITD_KEY(name, how, field) \
  KeyRule { name, Apply::how, [](const Config& a, const Config& b) { return a.field == b.field; } }

// Every key of the config and how a change of it applies. The proxy's port and bypass mark
// stay at reload: live sockets carry them (the footprint keeps the running values).
const KeyRule kKeys[] = {
    SPLITD_KEY("daemon.api_socket", kRestart, daemon.api_socket),
    SPLITD_KEY("daemon.api_listen", kRestart, daemon.api_listen),
    SPLITD_KEY("daemon.api_token_file", kRestart, daemon.api_token_file),
    SPLITD_KEY("daemon.state_dir", kRestart, daemon.state_dir),
    SPLITD_KEY("daemon.exec_cgroup", kRestart, daemon.exec_cgroup),
    SPLITD_KEY("daemon.user", kRestart, daemon.user),
    SPLITD_KEY("daemon.log_level", kRestart, daemon.log_level),
    SPLITD_KEY("interfaces.physical", kRestart, interfaces.physical),
    SPLITD_KEY("interfaces.tunnel", kRestart, interfaces.tunnel),
    SPLITD_KEY("proxy.port", kRestart, proxy.port),
    SPLITD_KEY("proxy.max_sessions", kRestart, proxy.max_sessions),
    SPLITD_KEY("proxy.connect_timeout", kRestart, proxy.connect_timeout),
    SPLITD_KEY("proxy.idle_timeout", kRestart, proxy.idle_timeout),
    SPLITD_KEY("proxy.udp_idle_timeout", kRestart, proxy.udp_idle_timeout),
    SPLITD_KEY("firewall.mark", kFootprint, firewall.mark),
    SPLITD_KEY("firewall.bypass_mark", kRestart, firewall.bypass_mark),
    SPLITD_KEY("firewall.route_table", kFootprint, firewall.route_table),
    SPLITD_KEY("firewall.ipv6", kFootprint, firewall.ipv6),
    SPLITD_KEY("firewall.never_intercept", kFootprint, firewall.never_intercept),
    SPLITD_KEY("firewall.on_tunnel_down", kRules, firewall.on_tunnel_down),
    SPLITD_KEY("firewall.table_owner", kFootprint, firewall.table_owner),
    SPLITD_KEY("split.mode", kRules, split.mode),
    SPLITD_KEY("split.domains", kRules, split.domains),
    SPLITD_KEY("split.ips", kRules, split.ips),
    SPLITD_KEY("split.apps", kRules, split.apps),
    SPLITD_KEY("dns.enabled", kRestart, dns.enabled),
    SPLITD_KEY("dns.servers", kRestart, dns.servers),
    SPLITD_KEY("dns.direct_servers", kRestart, dns.direct_servers),
    SPLITD_KEY("dns.cache_ttl", kRestart, dns.cache_ttl),
    SPLITD_KEY("dns.intercept_port", kRestart, dns.intercept_port),
    SPLITD_KEY("dns.forwarder_port", kRestart, dns.forwarder_port),
    SPLITD_KEY("dns.timeout", kRestart, dns.timeout),
    SPLITD_KEY("dns.grace", kRestart, dns.grace),
    SPLITD_KEY("dns.ttl_floor", kRestart, dns.ttl_floor),
    SPLITD_KEY("dns.max_names", kRestart, dns.max_names),
    SPLITD_KEY("dns.doh_canary", kRestart, dns.doh_canary),
    SPLITD_KEY("dns.block_dot", kFootprint, dns.block_dot),
    SPLITD_KEY("dns.threads", kRestart, dns.threads),
    SPLITD_KEY("dns.sniff", kRestart, dns.sniff),
    SPLITD_KEY("dns.sniff_ports", kRestart, dns.sniff_ports),
    SPLITD_KEY("dns.sniff_timeout", kRestart, dns.sniff_timeout),
    SPLITD_KEY("dns.ech_public_names", kRestart, dns.ech_public_names),
};

#undef SPLITD_KEY

}  // namespace

ConfigChanges changes(const Config& running, const Config& next) {
  ConfigChanges c;
  for (const KeyRule& k : kKeys) {
    if (k.same(running, next)) continue;
    switch (k.apply) {
      case Apply::kRules: c.rules = true; break;
      case Apply::kFootprint: c.footprint = true; break;
      case Apply::kRestart: c.restart.emplace_back(k.key); break;
    }
  }
  return c;
}

std::vector<std::string> known_keys() {
  std::vector<std::string> keys;
  for (const KeyRule& k : kKeys) keys.emplace_back(k.key);
  return keys;
}

}  // namespace splitd::config
