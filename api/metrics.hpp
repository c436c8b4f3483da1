#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "api/backend.hpp"

namespace splitd::api {

// What the API server counts about itself, for /metrics. Owned by the Server and written
// on its one thread (plain integers: no other thread reads them).
struct ApiStats {
  // The status codes the API answers with; anything else counts as "other" (bounded labels).
  static constexpr std::array<int, 14> kCodes = {200, 201, 400, 401, 403, 404, 405,
                                                 409, 413, 415, 431, 500, 503, 0};
  std::array<std::uint64_t, kCodes.size()> requests{};  // by kCodes index; 0 = "other"
  std::uint64_t connections = 0;          // open now (watch streams included)
  std::uint64_t connections_refused = 0;  // over the connection cap
  std::uint64_t watchers = 0;             // watch streams open now
  std::uint64_t watchers_dropped = 0;     // disconnected for not reading

  void count(int status);
};

// The Prometheus text exposition (format 0.0.4) of the daemon's figures and the API's own:
// HELP and TYPE for every family, every label combination present from the start (except
// splitd_dns_queries_total: the combinations seen, plus answered for tunnel and direct).
// The splitd_dns_* families other than splitd_dns_enabled appear only while capture is on.
std::string metrics_text(const MetricsSnapshot& m, const ApiStats& api);

}  // namespace splitd::api
