#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "api/backend.hpp"
#include "api/metrics.hpp"

namespace splitd::api {

namespace http = boost::beast::http;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;

// The connection filters of GET/DELETE /api/v1/connections (combined with AND).
struct Filter {
  std::optional<decider::RouteKind> route;
  std::optional<decider::Protocol> protocol;
  std::string app;  // "" = any; else equal to comm or exe basename, or inside a cgroup component
  bool empty() const { return !route && !protocol && app.empty(); }
  bool matches(const proxy::SessionView& s) const;
};

// What a watch request asked for; the server runs the stream.
struct WatchRequest {
  Filter filter;
  std::chrono::milliseconds interval{1000};
};

// Everything about a request that is not in the request itself.
struct RequestContext {
  Caller caller;
  bool ready = true;                   // false: every request gets 503 "starting"
  const std::string* token = nullptr;  // the TCP listener's bearer token (every request needs it)
  std::chrono::system_clock::time_point now = std::chrono::system_clock::now();
  const ApiStats* stats = nullptr;     // the server's own figures for /metrics (null: zeros)
};

struct Reply {
  Response response;
  std::optional<WatchRequest> watch;  // set: answer with an event stream instead
};

// The whole API as a pure function: no I/O, no clock (ctx.now), Backend calls only.
// Never throws for any input. The response's keep-alive and payload size are the caller's.
Reply handle(const Request& request, const RequestContext& ctx, Backend& backend);

// An error response with the {error, detail} body.
Response error_response(int status, std::string detail, unsigned version = 11);

}  // namespace splitd::api
