#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "api/backend.hpp"

namespace splitd::api {

// The API's JSON documents (docs/api.md), built from Backend values. Pure functions, safe
// from any thread. Strings from the system (comm, exe, cgroup) may hold any bytes: dump()
// replaces invalid UTF-8 instead of throwing.

// "2026-12-02T09:54:32.120Z"
std::string format_time(std::chrono::system_clock::time_point t);

nlohmann::json connection_json(const proxy::SessionView& s);
nlohmann::json connections_json(const std::vector<proxy::SessionView>& sessions);
// The same document as dump(connection_json(s)) (keys in the docs' order), written
// straight into `out`: the listing of 100,000 sessions is the API's one large answer,
// and building a JSON tree for it cost ~7 µs per session on the control thread.
void append_connection(std::string& out, const proxy::SessionView& s);
// A JSON string literal of any bytes (invalid UTF-8 becomes U+FFFD, as dump() does).
void append_json_string(std::string& out, std::string_view text);
// The counters a watch stream's "updated" entries carry.
nlohmann::json connection_update_json(const proxy::SessionView& s);
nlohmann::json status_json(const Status& status, std::chrono::system_clock::time_point now);
// GET /api/v1/dns/cache's entry {ip, names, expires_at, source}, and the same document
// written straight into `out` (the cache holds up to dns.max_names = 200,000 entries).
nlohmann::json dns_entry_json(const DnsEntry& e);
void append_dns_entry(std::string& out, const DnsEntry& e);
nlohmann::json rules_json(const Rules& rules);
nlohmann::json error_json(const ApiError& error);

// One line, invalid UTF-8 replaced (U+FFFD), never throws.
std::string dump(const nlohmann::json& j);

}  // namespace splitd::api
