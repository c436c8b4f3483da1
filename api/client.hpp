#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/expected.hpp"

namespace splitd::api {

// Why a request did not get an answer. splitctl turns each into advice ("start splitd",
// "join group splitd", …), so the kinds follow what a user does about them.
enum class ClientErrorKind {
  kNoSocket,          // ENOENT: no socket file at the path (splitd not running)
  kPermissionDenied,  // EACCES: the socket (or its directory) is not open to this user
  kNotListening,      // ECONNREFUSED: a socket file nobody listens on (stale), or a closed TCP port
  kTimeout,           // no complete answer within the timeout
  kProtocol,          // the peer answered, but not with HTTP/SSE we can read
  kInterrupted,       // the cancel flag was raised (Ctrl-C)
  kOther,             // anything else (bad address, unresolvable host, reset, …)
};
std::string_view to_string(ClientErrorKind kind);

struct ClientError {
  ClientErrorKind kind = ClientErrorKind::kOther;
  std::string endpoint;  // the socket path or "ADDR:PORT"
  std::string message;   // what happened, for people (the system's text or the parser's)
};

struct Response {
  unsigned status = 0;
  std::string body;
  std::string content_type;
};

// How a watch ended when it was answered with a stream.
struct WatchResult {
  Response response;       // for a non-2xx answer: the whole error document
  bool stopped = false;    // true: the handler or the cancel flag ended it; false: the server did
};

struct ClientOptions {
  std::string socket_path = "/run/splitd/api.sock";
  std::string tcp;    // "ADDR:PORT" or "[V6]:PORT"; when set, used instead of the socket
  std::string token;  // the bearer token (TCP only)
  std::chrono::milliseconds timeout{10'000};       // connect + request + whole answer
  std::chrono::milliseconds watch_idle{60'000};    // a stream silent this long is dead
  const std::atomic<bool>* cancel = nullptr;       // checked every 100 ms while waiting
};

// A parser for text/event-stream (the subset the API uses): `event:` and `data:` fields
// (several data lines joined with "\n"), a blank line ends an event, lines starting with
// ':' are comments, other fields are ignored; lines end with LF, CRLF or CR. Bytes may be
// fed in any split. Not thread-safe.
class SseParser {
 public:
  // Return false to stop reading.
  using Handler = std::function<bool(std::string_view event, std::string_view data)>;
  enum class Result { kContinue, kStopped, kTooLarge };

  explicit SseParser(std::size_t max_event_bytes = 256u << 20) : max_event_(max_event_bytes) {}
  Result feed(std::string_view bytes, const Handler& on_event);

 private:
  bool line(std::string_view text, const Handler& on_event);  // false: handler said stop

  std::size_t max_event_;
  std::string partial_;  // an incomplete line
  std::string event_;
  std::string data_;
  bool has_data_ = false;
  bool after_cr_ = false;  // the last byte fed was CR: a following LF is part of that line end
};

// The API as splitctl uses it, so tests can put a fake in its place.
class ApiClient {
 public:
  using EventHandler = SseParser::Handler;
  virtual ~ApiClient() = default;

  // One request, one answer. `json_body` is sent as application/json.
  virtual Expected<Response, ClientError> request(std::string_view method, std::string_view target,
                                                  const std::optional<std::string>& json_body = {}) = 0;
  // GET `target` as a server-sent-events stream; calls `on_event` per event until it
  // returns false, the server ends the stream, or the cancel flag is raised.
  virtual Expected<WatchResult, ClientError> watch(std::string_view target,
                                                   const EventHandler& on_event) = 0;
};

// HTTP/1.1 over the unix socket, or over TCP with the bearer token, one connection per
// request (Connection: close). Synchronous: each call runs a private io_context until
// the answer, the timeout or the cancel flag. Not thread-safe; one call at a time.
class HttpClient final : public ApiClient {
 public:
  explicit HttpClient(ClientOptions options) : options_(std::move(options)) {}

  Expected<Response, ClientError> request(std::string_view method, std::string_view target,
                                          const std::optional<std::string>& json_body = {}) override;
  Expected<WatchResult, ClientError> watch(std::string_view target,
                                           const EventHandler& on_event) override;

  const ClientOptions& options() const { return options_; }
  std::string endpoint() const { return options_.tcp.empty() ? options_.socket_path : options_.tcp; }

 private:
  ClientOptions options_;
};

// Percent-encodes everything but RFC 3986's unreserved characters (A-Z a-z 0-9 - . _ ~),
// for a path segment or a query value: "198.51.100.0/24" -> "198.51.100.0%2F24".
std::string percent_encode(std::string_view text);

}  // namespace splitd::api
