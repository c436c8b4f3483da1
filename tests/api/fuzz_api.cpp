// libFuzzer target: bytes → an HTTP request (Beast's parser, the server's limits) →
// handle(); or bytes → a JSON body for each endpoint that takes one. Build with clang
// (see tests/api/CMakeLists.txt); run: fuzz_api -max_total_time=60 [corpus dir].
#include <cstddef>
#include <cstdint>
#include <string>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/parser.hpp>
#include <nlohmann/json.hpp>

#include "api/handlers.hpp"
#include "tests/api/fake_backend.hpp"

using namespace splitd;
using namespace splitd::api;

namespace {

void check(const Reply& r) {
  const int s = static_cast<int>(r.response.result_int());
  if (s < 200 || s > 599 || s == 500) __builtin_trap();  // 500: an exception escaped a handler
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  static testing::FakeBackend backend;
  RequestContext ctx;
  ctx.caller.may_change = (data[0] & 1) != 0;
  ctx.ready = (data[0] & 2) == 0;
  const std::string rest(reinterpret_cast<const char*>(data + 1), size - 1);

  if ((data[0] & 4) == 0) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(8 * 1024);
    parser.body_limit(64 * 1024);
    parser.eager(true);
    boost::beast::error_code ec;
    parser.put(boost::asio::buffer(rest), ec);
    if (ec && ec != http::error::need_more) return 0;
    if (!parser.is_done()) {
      parser.put_eof(ec);
      if (ec || !parser.is_done()) return 0;
    }
    check(handle(parser.get(), ctx, backend));
    return 0;
  }
  static const char* kBodyTargets[][2] = {{"POST", "/api/v1/split/ips"}, {"POST", "/api/v1/split/domains"},
                                          {"POST", "/api/v1/split/apps"}, {"PUT", "/api/v1/split/mode"},
                                          {"POST", "/api/v1/enable"}};
  const auto& t = kBodyTargets[(data[0] >> 3) % 5];
  Request req{http::string_to_verb(t[0]), t[1], 11};
  req.set(http::field::content_type, "application/json");
  req.body() = rest;
  ctx.caller.may_change = true;
  ctx.ready = true;
  check(handle(req, ctx, backend));
  // Undo what an add changed, so the fake backend does not grow without end.
  backend.rules_ = testing::FakeBackend().rules_;
  return 0;
}
