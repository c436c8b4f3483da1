#include "api/handlers.hpp"

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/beast/http/field.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/verb.hpp>
#include <nlohmann/json.hpp>

#include "api/auth.hpp"
#include "api/interfaces_json.hpp"
#include "api/json.hpp"
#include "config/config.hpp"

namespace splitd::api {
namespace {

using nlohmann::json;
using http::verb;

constexpr std::size_t kMaxSegments = 16;
constexpr std::size_t kMaxQueryParams = 16;
constexpr long kMinWatchMs = 100;
constexpr long kMaxWatchMs = 60000;

const char* reason_of(int status) {
  switch (status) {
    case 400: return "bad request";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not found";
    case 405: return "method not allowed";
    case 409: return "conflict";
    case 413: return "payload too large";
    case 415: return "unsupported media type";
    case 431: return "request header fields too large";
    case 503: return "starting";
    default: return status >= 500 ? "internal error" : "error";
  }
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string to_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lower(c);
  return out;
}

// `needle` (already lower case) inside `hay`, ASCII case-insensitively; no allocation (it
// runs once per learned name).
bool icontains(std::string_view hay, std::string_view needle) {
  return std::search(hay.begin(), hay.end(), needle.begin(), needle.end(),
                     [](char h, char n) { return lower(h) == n; }) != hay.end();
}

std::string in_quotes(std::string_view s) {
  // For messages only: keep them short and on one line.
  std::string out = "'";
  for (char c : s.substr(0, 100)) out += (static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  if (s.size() > 100) out += "...";
  return out + "'";
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decoding; `plus_is_space` in query strings. nullopt for a broken escape.
std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      const int hi = hex_value(s[i + 1]);
      const int lo = hex_value(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

struct Target {
  std::vector<std::string> segments;
  std::vector<std::pair<std::string, std::string>> query;  // in order, decoded
};

Expected<Target, std::string> parse_target(std::string_view target) {
  if (target.empty() || target.front() != '/') {
    return unexpected(std::string("the request target must be a path starting with '/'"));
  }
  std::string_view path = target;
  std::string_view query;
  if (const auto q = target.find('?'); q != std::string_view::npos) {
    path = target.substr(0, q);
    query = target.substr(q + 1);
  }
  if (const auto f = path.find('#'); f != std::string_view::npos) path = path.substr(0, f);
  Target t;
  path.remove_prefix(1);
  for (;;) {
    const auto slash = path.find('/');
    const std::string_view raw = path.substr(0, slash);
    auto seg = percent_decode(raw, false);
    if (!seg) return unexpected("bad percent-encoding in the path segment " + in_quotes(raw));
    t.segments.push_back(std::move(*seg));
    if (t.segments.size() > kMaxSegments) return unexpected(std::string("the path has too many segments"));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (item.empty()) continue;
    const auto eq = item.find('=');
    auto key = percent_decode(item.substr(0, eq), true);
    auto value = percent_decode(eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1), true);
    if (!key || !value) return unexpected("bad percent-encoding in the query parameter " + in_quotes(item));
    t.query.emplace_back(std::move(*key), std::move(*value));
    if (t.query.size() > kMaxQueryParams) return unexpected(std::string("too many query parameters"));
  }
  return t;
}

// The endpoints, by path shape. `arg` is the last segment for /{id}, /{name}, ...
enum class Endpoint {
  kMetrics,
  kStatus,
  kEnable,
  kDisable,
  kConnections,
  kConnection,
  kRules,
  kMode,
  kApps,
  kApp,
  kDomains,
  kDomain,
  kIps,
  kIp,
  kInterfaces,
  kDnsCache,
  kExec,
};

struct Match {
  Endpoint endpoint;
  std::vector<verb> methods;
};

std::optional<Match> route(const std::vector<std::string>& s) {
  const std::size_t n = s.size();
  if (n == 1 && s[0] == "metrics") return Match{Endpoint::kMetrics, {verb::get}};
  if (n < 3 || s[0] != "api" || s[1] != "v1") return std::nullopt;
  const std::string& a = s[2];
  if (n == 3) {
    if (a == "status") return Match{Endpoint::kStatus, {verb::get}};
    if (a == "enable") return Match{Endpoint::kEnable, {verb::post}};
    if (a == "disable") return Match{Endpoint::kDisable, {verb::post}};
    if (a == "connections") return Match{Endpoint::kConnections, {verb::get, verb::delete_}};
    if (a == "interfaces") return Match{Endpoint::kInterfaces, {verb::get}};
    if (a == "exec") return Match{Endpoint::kExec, {verb::post}};
    return std::nullopt;
  }
  if (n == 4 && a == "connections") return Match{Endpoint::kConnection, {verb::delete_}};
  if (n == 4 && a == "dns" && s[3] == "cache") return Match{Endpoint::kDnsCache, {verb::get, verb::delete_}};
  if (a != "split") return std::nullopt;
  const std::string& b = s[3];
  if (n == 4) {
    if (b == "rules") return Match{Endpoint::kRules, {verb::get}};
    if (b == "mode") return Match{Endpoint::kMode, {verb::put}};
    if (b == "apps") return Match{Endpoint::kApps, {verb::post}};
    if (b == "domains") return Match{Endpoint::kDomains, {verb::post}};
    if (b == "ips") return Match{Endpoint::kIps, {verb::post}};
    return std::nullopt;
  }
  if (n == 5 && !s[4].empty()) {
    if (b == "apps") return Match{Endpoint::kApp, {verb::delete_}};
    if (b == "domains") return Match{Endpoint::kDomain, {verb::delete_}};
    if (b == "ips") return Match{Endpoint::kIp, {verb::delete_}};
  }
  return std::nullopt;
}

std::string allow_header(const std::vector<verb>& methods) {
  std::string out;
  for (verb v : methods) {
    if (!out.empty()) out += ", ";
    out += std::string(http::to_string(v));
  }
  return out;
}

ApiError bad(std::string detail) { return ApiError{400, "bad request", std::move(detail)}; }

Response json_response(int status, const json& body, unsigned version) {
  Response res{static_cast<http::status>(status), version};
  res.set(http::field::content_type, "application/json");
  res.set(http::field::cache_control, "no-store");
  res.body() = dump(body) + "\n";
  return res;
}

Response error_of(const ApiError& e, unsigned version) {
  ApiError copy = e;
  if (copy.error.empty()) copy.error = reason_of(copy.status);
  if (copy.status < 400 || copy.status > 599) copy.status = 500;
  return json_response(copy.status, error_json(copy), version);
}

// --- query parameters -------------------------------------------------------------------

using Query = std::vector<std::pair<std::string, std::string>>;

// Checks that only `allowed` keys appear, each at most once; returns the first error.
std::optional<ApiError> check_query(const Query& q, std::initializer_list<std::string_view> allowed) {
  std::vector<std::string> unknown;
  for (std::size_t i = 0; i < q.size(); ++i) {
    const auto& key = q[i].first;
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      unknown.push_back(in_quotes(key));
      continue;
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (q[j].first == key) return bad(key + ": given more than once");
    }
  }
  if (unknown.empty()) return std::nullopt;
  std::string detail = unknown.size() == 1 ? "unknown query parameter " : "unknown query parameters ";
  for (std::size_t i = 0; i < unknown.size(); ++i) detail += (i ? ", " : "") + unknown[i];
  if (allowed.size() == 0) {
    detail += " (this endpoint takes none)";
  } else {
    detail += " (known: ";
    bool first = true;
    for (auto a : allowed) {
      detail += (first ? "" : ", ") + std::string(a);
      first = false;
    }
    detail += ")";
  }
  return bad(detail);
}

const std::string* query_value(const Query& q, std::string_view key) {
  for (const auto& [k, v] : q) {
    if (k == key) return &v;
  }
  return nullptr;
}

Result<Filter> parse_filter(const Query& q) {
  Filter f;
  if (const auto* v = query_value(q, "route")) {
    if (*v == "tunnel") {
      f.route = decider::RouteKind::kTunnel;
    } else if (*v == "direct") {
      f.route = decider::RouteKind::kDirect;
    } else if (*v == "block") {
      f.route = decider::RouteKind::kBlock;
    } else {
      return unexpected(bad("route: " + in_quotes(*v) + " is not one of \"tunnel\", \"direct\", \"block\""));
    }
  }
  if (const auto* v = query_value(q, "protocol")) {
    if (*v == "tcp") {
      f.protocol = decider::Protocol::kTcp;
    } else if (*v == "udp") {
      f.protocol = decider::Protocol::kUdp;
    } else {
      return unexpected(bad("protocol: " + in_quotes(*v) + " is not one of \"tcp\", \"udp\""));
    }
  }
  if (const auto* v = query_value(q, "app")) {
    if (v->empty() || v->size() > 256) return unexpected(bad("app: give a name of 1 to 256 characters"));
    f.app = *v;
  }
  return f;
}

// "a number", "an array", "null": for "expected a string, got a number".
std::string kind_of(const json& j) {
  if (j.is_null()) return "null";
  const std::string name = j.type_name();
  return (name == "array" || name == "object" ? "an " : "a ") + name;
}

// --- JSON bodies ------------------------------------------------------------------------

bool is_json_media_type(std::string_view ct) {
  const auto semi = ct.find(';');
  std::string_view type = ct.substr(0, semi);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  return iequals(type, "application/json");
}

// A body that must be a JSON object with string fields among `fields`. `required` fields
// must be present; every present field is a string. An empty body with `body_optional`
// gives an empty object.
struct FieldSpec {
  const char* name;
  bool required;
  std::string* out;
};

std::optional<ApiError> parse_body(const Request& req, std::initializer_list<FieldSpec> fields,
                                   bool body_optional = false) {
  const std::string& body = req.body();
  if (body.empty()) {
    if (body_optional) return std::nullopt;
    return bad("a JSON object body is required (Content-Type: application/json)");
  }
  const auto ct = req[http::field::content_type];
  if (!is_json_media_type(ct)) {
    return ApiError{415, "unsupported media type",
                    ct.empty() ? "the body needs Content-Type: application/json"
                               : "Content-Type " + in_quotes(ct) + " is not application/json"};
  }
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    std::string what = e.what();
    if (what.size() > 0 && what.front() == '[') {
      if (const auto close = what.find("] "); close != std::string::npos) what.erase(0, close + 2);
    }
    return bad("body: invalid JSON: " + what);
  }
  if (!j.is_object()) return bad("body: expected a JSON object, got " + kind_of(j));
  std::vector<std::string> unknown;
  for (auto item = j.begin(); item != j.end(); ++item) {
    const std::string& key = item.key();
    const json& value = item.value();
    const auto it = std::find_if(fields.begin(), fields.end(), [&key](const FieldSpec& f) { return key == f.name; });
    if (it == fields.end()) {
      unknown.push_back(in_quotes(key));
      continue;
    }
    if (!value.is_string()) {
      return bad(std::string(it->name) + ": expected a string, got " + kind_of(value));
    }
    *it->out = value.get<std::string>();
  }
  if (!unknown.empty()) {
    std::string detail = unknown.size() == 1 ? "unknown field " : "unknown fields ";
    for (std::size_t i = 0; i < unknown.size(); ++i) detail += (i ? ", " : "") + unknown[i];
    if (fields.size() == 0) {
      detail += " (this request takes no fields)";
    } else {
      detail += " (known: ";
      bool first = true;
      for (const auto& f : fields) {
        detail += (first ? "" : ", ") + std::string(f.name);
        first = false;
      }
      detail += ")";
    }
    return bad(detail);
  }
  for (const auto& f : fields) {
    if (f.required && !j.contains(f.name)) return bad("'" + std::string(f.name) + "' is required");
  }
  return std::nullopt;
}

// --- the endpoints ------------------------------------------------------------------------

// One request being answered: the parsed target plus what every endpoint needs. Lives for
// one handle() call.
struct Handler {
  const Request& req;
  const RequestContext& ctx;
  Backend& backend;
  const Query& query;
  const std::string& arg;  // last path segment, decoded
  unsigned version;

  Reply ok(int status, const json& body) const { return {json_response(status, body, version), std::nullopt}; }
  Reply fail(const ApiError& e) const { return {error_of(e, version), std::nullopt}; }
  Reply no_query_or(Reply (Handler::*next)() const) const {
    if (auto e = check_query(query, {})) return fail(*e);
    return (this->*next)();
  }

  Reply status() const { return ok(200, status_json(backend.status(), ctx.now)); }

  Reply set_enabled(bool on) const {
    if (auto e = parse_body(req, {}, true)) return fail(*e);
    if (auto r = backend.set_enabled(on); !r) return fail(r.error());
    return status();
  }
  Reply enable() const { return set_enabled(true); }
  Reply disable() const { return set_enabled(false); }

  Reply connections_get() const {
    if (auto e = check_query(query, {"route", "protocol", "app", "watch"})) return fail(*e);
    auto filter = parse_filter(query);
    if (!filter) return fail(filter.error());
    if (const auto* w = query_value(query, "watch")) {
      long ms = 0;
      const auto [ptr, ec] = std::from_chars(w->data(), w->data() + w->size(), ms);
      if (ec != std::errc() || ptr != w->data() + w->size() || ms < kMinWatchMs || ms > kMaxWatchMs) {
        return fail(bad("watch: " + in_quotes(*w) + " is not an interval in milliseconds from 100 to 60000"));
      }
      return {Response{}, WatchRequest{*filter, std::chrono::milliseconds(ms)}};
    }
    const auto sessions = backend.connections();
    std::string body;
    body.reserve(64 + sessions.size() * 400);
    body += '[';
    for (const auto& s : sessions) {
      if (!filter->matches(s)) continue;
      if (body.size() > 1) body += ',';
      append_connection(body, s);
    }
    body += "]\n";
    Response res{http::status::ok, version};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::cache_control, "no-store");
    res.body() = std::move(body);
    return {std::move(res), std::nullopt};
  }

  Reply connections_delete() const {
    if (auto e = check_query(query, {"route", "protocol", "app", "all"})) return fail(*e);
    auto filter = parse_filter(query);
    if (!filter) return fail(filter.error());
    bool all = false;
    if (const auto* a = query_value(query, "all")) {
      if (*a == "true") {
        all = true;
      } else if (*a != "false") {
        return fail(bad("all: " + in_quotes(*a) + " is not one of \"true\", \"false\""));
      }
    }
    if (all && !filter->empty()) return fail(bad("all=true ends every session; give it without filters"));
    if (!all && filter->empty()) {
      return fail(bad("give at least one filter (route, protocol, app), or all=true to end every session"));
    }
    std::uint64_t killed = 0;
    for (const auto& s : backend.connections()) {
      if (filter->matches(s) && backend.kill(s.id)) ++killed;
    }
    return ok(200, {{"killed", killed}});
  }

  Reply connection_delete() const {
    if (auto e = check_query(query, {})) return fail(*e);
    std::uint64_t id = 0;
    const auto [ptr, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), id);
    if (ec != std::errc() || ptr != arg.data() + arg.size()) {
      return fail(bad("id: " + in_quotes(arg) + " is not a connection id (a decimal number)"));
    }
    if (!backend.kill(id)) return fail({404, "not found", "no live connection has id " + std::to_string(id)});
    return ok(200, {{"killed", 1}});
  }

  Reply rules() const { return ok(200, rules_json(backend.rules())); }

  Reply edited(const Result<Ok>& r, int status) const {
    if (!r) return fail(r.error());
    return ok(status, rules_json(backend.rules()));
  }

  Reply mode() const {
    std::string text;
    if (auto e = parse_body(req, {{"mode", true, &text}})) return fail(*e);
    auto mode = config::parse_mode(text);
    if (!mode) return fail(bad("mode: " + mode.error()));
    return edited(backend.set_mode(*mode), 200);
  }

  Reply exec() const {
    std::string route_text, pid_text;
    if (auto e = parse_body(req, {{"route", true, &route_text}, {"pid", false, &pid_text}})) return fail(*e);
    decider::RouteKind route;
    if (route_text == "direct") {
      route = decider::RouteKind::kDirect;
    } else if (route_text == "tunnel") {
      route = decider::RouteKind::kTunnel;
    } else {
      return fail(bad("route: " + in_quotes(route_text) + " is not one of \"direct\", \"tunnel\""));
    }
    std::int64_t pid = 0;
    if (!pid_text.empty()) {
      if (pid_text.size() > 10 || pid_text.find_first_not_of("0123456789") != std::string::npos ||
          (pid = std::stoll(pid_text)) <= 0 || pid > 0x7fffffff) {
        return fail(bad("pid: " + in_quotes(pid_text) + " is not a process id"));
      }
    }
    auto moved = backend.exec(ctx.caller, pid, route);
    if (!moved) return fail(moved.error());
    return ok(200, {{"pid", pid != 0 ? pid : ctx.caller.pid}, {"route", route_text}, {"cgroup", *moved}});
  }

  Reply app_add() const {
    config::AppRule app;
    if (auto e = parse_body(req, {{"name", true, &app.name},
                                  {"cgroup", false, &app.cgroup},
                                  {"comm", false, &app.comm},
                                  {"path", false, &app.path},
                                  {"unit", false, &app.unit},
                                  {"app_id", false, &app.app_id},
                                  {"user", false, &app.user}})) {
      return fail(*e);
    }
    auto checked = config::check_app(app);
    if (!checked) return fail(bad(checked.error()));
    return edited(backend.add_app(*checked), 201);
  }
  Reply app_remove() const { return edited(backend.remove_app(arg), 200); }

  Reply domain_add() const {
    std::string pattern;
    if (auto e = parse_body(req, {{"pattern", true, &pattern}})) return fail(*e);
    auto p = config::check_domain_pattern(pattern);
    if (!p) return fail(bad("pattern: " + p.error()));
    return edited(backend.add_domain(*p), 201);
  }
  Reply domain_remove() const {
    auto p = config::check_domain_pattern(arg);
    if (!p) return fail(bad("pattern: " + p.error()));
    return edited(backend.remove_domain(*p), 200);
  }

  Reply ip_add() const {
    std::string text;
    if (auto e = parse_body(req, {{"cidr", true, &text}})) return fail(*e);
    auto c = config::check_cidr(text);
    if (!c) return fail(bad("cidr: " + c.error()));
    return edited(backend.add_ip(*c), 201);
  }
  Reply ip_remove() const {
    auto c = config::check_cidr(arg);
    if (!c) return fail(bad("cidr: " + c.error()));
    return edited(backend.remove_ip(*c), 200);
  }

  Reply interfaces() const {
    const auto snap = backend.interfaces();
    Response res{http::status::ok, version};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::cache_control, "no-store");
    res.body() = snap ? interfaces_json(*snap, -1) + "\n" : "null\n";
    return {std::move(res), std::nullopt};
  }

  // GET /api/v1/dns/cache[?ip=ADDR][&name=TEXT]: sorted by address. Written straight into
  // the body like the connections: the store holds up to dns.max_names entries.
  Reply dns_cache_get() const {
    if (auto e = check_query(query, {"ip", "name"})) return fail(*e);
    std::optional<IpAddress> ip;
    if (const auto* v = query_value(query, "ip")) {
      ip = IpAddress::parse(*v);
      if (!ip) {
        return fail(bad("ip: " + in_quotes(*v) + " is not an IPv4 or IPv6 address" +
                        (v->find('/') != std::string::npos ? " (give one address, not a prefix)" : "")));
      }
      ip = ip->unmapped();
    }
    std::string name;
    if (const auto* v = query_value(query, "name")) {
      if (v->empty() || v->size() > 256) return fail(bad("name: give a part of a name, 1 to 256 characters"));
      name = to_lower(*v);
    }
    std::vector<DnsEntry> entries;
    if (backend.status().dns_enabled) entries = backend.dns_cache();
    std::vector<const DnsEntry*> shown;
    shown.reserve(entries.size());
    for (const auto& e : entries) {
      if (ip && e.ip.unmapped() != *ip) continue;
      if (!name.empty() && std::none_of(e.names.begin(), e.names.end(), [&name](const std::string& n) {
            return icontains(n, name);
          })) {
        continue;
      }
      shown.push_back(&e);
    }
    std::sort(shown.begin(), shown.end(), [](const DnsEntry* a, const DnsEntry* b) { return a->ip < b->ip; });
    std::string body;
    body.reserve(64 + shown.size() * 120);
    body += "{\"entries\":[";
    for (std::size_t i = 0; i < shown.size(); ++i) {
      if (i > 0) body += ',';
      append_dns_entry(body, *shown[i]);
    }
    body += "],\"count\":";
    body += std::to_string(shown.size());
    body += "}\n";
    Response res{http::status::ok, version};
    res.set(http::field::content_type, "application/json");
    res.set(http::field::cache_control, "no-store");
    res.body() = std::move(body);
    return {std::move(res), std::nullopt};
  }

  // DELETE /api/v1/dns/cache: forgets every learned name. Running flows keep their route;
  // new ones to those addresses are decided without a name until an answer names them again.
  Reply dns_cache_delete() const {
    if (auto e = check_query(query, {})) return fail(*e);
    const std::uint64_t flushed = backend.status().dns_enabled ? backend.flush_dns_cache() : 0;
    return ok(200, {{"flushed", flushed}});
  }

  Reply metrics() const {
    static const ApiStats kNone{};
    Response res{http::status::ok, version};
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    res.set(http::field::cache_control, "no-store");
    res.body() = metrics_text(backend.metrics(), ctx.stats ? *ctx.stats : kNone);
    return {std::move(res), std::nullopt};
  }
};

Reply dispatch(const Request& req, const RequestContext& ctx, Backend& backend) {
  const unsigned version = req.version() == 10 ? 10 : 11;
  const auto fail = [version](int status, std::string detail) {
    return Reply{error_response(status, std::move(detail), version), std::nullopt};
  };
  // The TCP listener answers nobody without the token, not even with 404 or 503.
  if (ctx.caller.transport == Caller::Transport::kTcp) {
    const auto given = bearer_token(req[http::field::authorization]);
    if (ctx.token == nullptr || !given || !token_matches(*given, *ctx.token)) {
      Reply r = fail(401, given ? "the bearer token is wrong"
                                : "this listener needs Authorization: Bearer TOKEN (the token is in daemon.api_token_file)");
      r.response.set(http::field::www_authenticate, "Bearer");
      return r;
    }
  }
  if (!ctx.ready) {
    Reply r = fail(503, "splitd is starting; try again in a moment");
    r.response.set(http::field::retry_after, "1");
    return r;
  }
  auto target = parse_target(req.target());
  if (!target) return fail(400, target.error());
  const auto match = route(target->segments);
  if (!match) return fail(404, "no such endpoint: " + in_quotes(req.target().substr(0, req.target().find('?'))));
  const verb method = req.method();
  if (std::find(match->methods.begin(), match->methods.end(), method) == match->methods.end()) {
    Reply r = fail(405, std::string(req.method_string()).substr(0, 32) + " is not allowed here; use " +
                            allow_header(match->methods));
    r.response.set(http::field::allow, allow_header(match->methods));
    return r;
  }
  // exec moves only the caller's own processes (checked by the backend), so any caller
  // who can reach the unix socket may use it; over TCP there is no process to move.
  if (match->endpoint == Endpoint::kExec && ctx.caller.transport != Caller::Transport::kUnix) {
    return fail(403, "exec works only over the unix socket (the caller's process is moved)");
  }
  if (method != verb::get && !ctx.caller.may_change && match->endpoint != Endpoint::kExec) {
    return fail(403, ctx.caller.transport == Caller::Transport::kUnix
                         ? "changes need root or membership of group splitd (uid " + std::to_string(ctx.caller.uid) + ")"
                         : "this caller may not change anything");
  }

  const Handler h{req, ctx, backend, target->query, target->segments.back(), version};
  switch (match->endpoint) {
    case Endpoint::kMetrics: return h.no_query_or(&Handler::metrics);
    case Endpoint::kStatus: return h.no_query_or(&Handler::status);
    case Endpoint::kEnable: return h.no_query_or(&Handler::enable);
    case Endpoint::kDisable: return h.no_query_or(&Handler::disable);
    case Endpoint::kConnections: return method == verb::get ? h.connections_get() : h.connections_delete();
    case Endpoint::kConnection: return h.connection_delete();
    case Endpoint::kRules: return h.no_query_or(&Handler::rules);
    case Endpoint::kMode: return h.no_query_or(&Handler::mode);
    case Endpoint::kApps: return h.no_query_or(&Handler::app_add);
    case Endpoint::kApp: return h.no_query_or(&Handler::app_remove);
    case Endpoint::kDomains: return h.no_query_or(&Handler::domain_add);
    case Endpoint::kDomain: return h.no_query_or(&Handler::domain_remove);
    case Endpoint::kIps: return h.no_query_or(&Handler::ip_add);
    case Endpoint::kIp: return h.no_query_or(&Handler::ip_remove);
    case Endpoint::kInterfaces: return h.no_query_or(&Handler::interfaces);
    case Endpoint::kDnsCache: return method == verb::get ? h.dns_cache_get() : h.dns_cache_delete();
    case Endpoint::kExec: return h.no_query_or(&Handler::exec);
  }
  return fail(404, "no such endpoint");
}

}  // namespace

bool Filter::matches(const proxy::SessionView& s) const {
  if (route && s.route.kind != *route) return false;
  if (protocol && s.protocol != *protocol) return false;
  if (app.empty()) return true;
  if (iequals(s.app.comm, app)) return true;
  // The app rule that routed it ("kill --app Slack" after the rule Slack moved), or its
  // desktop app id.
  if (s.route.matched == decider::MatchKind::kApp && s.route.rule.size() == 4 + app.size() &&
      s.route.rule.starts_with("app ") && iequals(std::string_view(s.route.rule).substr(4), app)) {
    return true;
  }
  if (!s.app.app_id.empty() && decider::app_id_matches(app, s.app.app_id)) return true;
  const auto slash = s.app.exe.rfind('/');
  const std::string_view base = slash == std::string::npos ? std::string_view(s.app.exe)
                                                            : std::string_view(s.app.exe).substr(slash + 1);
  if (!base.empty() && iequals(base, app)) return true;
  // Inside one component of the cgroup path: "firefox" matches ".../app-firefox-123.scope".
  if (app.find('/') != std::string::npos || s.app.cgroup.empty()) return false;
  return to_lower(s.app.cgroup).find(to_lower(app)) != std::string::npos;
}

Response error_response(int status, std::string detail, unsigned version) {
  return error_of(ApiError{status, reason_of(status), std::move(detail)}, version);
}

Reply handle(const Request& req, const RequestContext& ctx, Backend& backend) {
  // Backends and nlohmann::json report programming errors by exception; none may reach the
  // server's I/O loop.
  try {
    return dispatch(req, ctx, backend);
  } catch (const std::exception& e) {
    return {error_response(500, std::string("internal error: ") + e.what(), req.version() == 10 ? 10 : 11),
            std::nullopt};
  }
}

}  // namespace splitd::api
