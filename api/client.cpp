#include "api/client.hpp"

#include <algorithm>
#include <array>
#include <variant>

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include "common/asio.hpp"
#include "common/version.hpp"

namespace splitd::api {
namespace {

namespace asio = net::asio;
namespace http = boost::beast::http;
using net::error_code;
using Clock = std::chrono::steady_clock;
using LocalSocket = asio::local::stream_protocol::socket;
using TcpSocket = net::tcp::socket;

// Whole answers are read into memory: a listing of 100000 sessions is ~40 MiB.
constexpr std::uint64_t kMaxBody = 256u << 20;
constexpr std::uint64_t kMaxErrorBody = 1u << 20;
constexpr std::uint32_t kMaxHeader = 64u << 10;
// How often a wait looks at the cancel flag: Ctrl-C ends a watch within this.
constexpr auto kSlice = std::chrono::milliseconds(100);

bool is_http_error(const error_code& ec) {
  return ec.category() == make_error_code(http::error::end_of_stream).category();
}

ClientErrorKind kind_of(const error_code& ec) {
  namespace errc = boost::system::errc;
  if (ec == errc::no_such_file_or_directory) return ClientErrorKind::kNoSocket;
  if (ec == errc::permission_denied) return ClientErrorKind::kPermissionDenied;
  if (ec == errc::connection_refused) return ClientErrorKind::kNotListening;
  if (ec == errc::timed_out) return ClientErrorKind::kTimeout;
  if (is_http_error(ec) || ec == asio::error::eof) return ClientErrorKind::kProtocol;
  return ClientErrorKind::kOther;
}

std::string describe(const error_code& ec) {
  if (ec == http::error::end_of_stream || ec == asio::error::eof) {
    return "the connection was closed before an answer arrived";
  }
  if (ec == http::error::partial_message) return "the connection was closed in the middle of the answer";
  if (is_http_error(ec)) return "not an HTTP answer (" + ec.message() + ")";
  return ec.message();
}

// "ADDR:PORT" or "[V6]:PORT" split in two; false when it is neither.
bool split_host_port(std::string_view text, std::string& host, std::string& port) {
  std::size_t colon;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') return false;
    host = std::string(text.substr(1, close - 1));
    colon = close + 1;
  } else {
    colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) return false;  // bare IPv6
    host = std::string(text.substr(0, colon));
  }
  port = std::string(text.substr(colon + 1));
  return !host.empty() && !port.empty() &&
         std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// One connection and the io_context that drives it. Every operation is started
// asynchronously and waited for with a deadline; on a timeout or a cancel the socket is
// closed and the aborted handler is run before returning, so no handler outlives the
// locals it refers to.
class Connection {
 public:
  explicit Connection(const ClientOptions& options) : options_(options) {}

  std::string endpoint() const { return options_.tcp.empty() ? options_.socket_path : options_.tcp; }

  Expected<void, ClientError> connect(Clock::time_point deadline) {
    if (options_.tcp.empty()) return connect_local(deadline);
    return connect_tcp(deadline);
  }

  // Starts `op(stream, handler)` and waits for the handler. `doing` names the step in
  // a timeout message.
  template <typename Op>
  Expected<void, ClientError> run(Op&& op, Clock::time_point deadline, std::string_view doing) {
    auto result = run_ec(std::forward<Op>(op), deadline, doing);
    if (!result) return unexpected(result.error());
    if (*result) return fail(*result);
    return {};
  }

  // The step's own error code is handed back (run() maps it to a ClientError).
  template <typename Op>
  Expected<error_code, ClientError> run_ec(Op&& op, Clock::time_point deadline, std::string_view doing) {
    bool done = false;
    error_code result;
    auto handler = [&done, &result](const error_code& ec, auto&&...) {
      result = ec;
      done = true;
    };
    std::visit([&](auto& socket) { op(socket, handler); }, socket_);
    if (auto waited = wait(done, deadline, doing); !waited) return unexpected(waited.error());
    return result;
  }

  void close() {
    std::visit([](auto& socket) {
      error_code ignored;
      socket.close(ignored);
    }, socket_);
    io_.restart();
    io_.run();
  }

  Unexpected<ClientError> fail(const error_code& ec) const {
    return unexpected(ClientError{kind_of(ec), endpoint(), describe(ec)});
  }
  Unexpected<ClientError> fail(ClientErrorKind kind, std::string message) const {
    return unexpected(ClientError{kind, endpoint(), std::move(message)});
  }

 private:
  Expected<void, ClientError> wait(bool& done, Clock::time_point deadline, std::string_view doing) {
    while (!done) {
      if (options_.cancel != nullptr && options_.cancel->load(std::memory_order_relaxed)) {
        close();
        return fail(ClientErrorKind::kInterrupted, "interrupted");
      }
      const auto now = Clock::now();
      if (now >= deadline) {
        close();
        return fail(ClientErrorKind::kTimeout, "no answer in time while " + std::string(doing));
      }
      io_.run_one_for(std::min<Clock::duration>(deadline - now, kSlice));
      if (io_.stopped()) io_.restart();
    }
    return {};
  }

  Expected<void, ClientError> connect_local(Clock::time_point deadline) {
    asio::local::stream_protocol::endpoint ep;
    try {
      ep = asio::local::stream_protocol::endpoint(options_.socket_path);
    } catch (const boost::system::system_error& e) {  // path longer than sun_path
      return fail(ClientErrorKind::kOther, "bad socket path: " + e.code().message());
    }
    socket_.emplace<LocalSocket>(io_);
    return run([&](auto& socket, auto handler) {
      if constexpr (std::is_same_v<std::decay_t<decltype(socket)>, LocalSocket>) {
        socket.async_connect(ep, std::move(handler));
      }
    }, deadline, "connecting");
  }

  Expected<void, ClientError> connect_tcp(Clock::time_point deadline) {
    std::string host, port;
    if (!split_host_port(options_.tcp, host, port)) {
      return fail(ClientErrorKind::kOther, "not ADDR:PORT (write IPv6 as [ADDR]:PORT)");
    }
    socket_.emplace<TcpSocket>(io_);
    error_code numeric;
    const auto addr = asio::ip::make_address(host, numeric);
    if (!numeric) {
      if (port.size() > 5 || std::stoul(port) > 65535) {
        return fail(ClientErrorKind::kOther, "port " + port + " out of range");
      }
      const auto port_number = static_cast<std::uint16_t>(std::stoul(port));
      const net::tcp::endpoint ep(addr, port_number);
      return run([&](auto& socket, auto handler) {
        if constexpr (std::is_same_v<std::decay_t<decltype(socket)>, TcpSocket>) {
          socket.async_connect(ep, std::move(handler));
        }
      }, deadline, "connecting");
    }
    // A name: resolved on Asio's resolver thread (a timeout here waits for getaddrinfo to
    // give up before returning; a numeric address never takes this path).
    net::tcp::resolver resolver(io_);
    net::tcp::resolver::results_type results;
    auto resolved = run([&](auto&, auto handler) {
      resolver.async_resolve(host, port, [&results, handler](const error_code& ec, auto r) mutable {
        results = std::move(r);
        handler(ec);
      });
    }, deadline, "resolving the address");
    if (!resolved) {
      resolver.cancel();
      return resolved;
    }
    return run([&](auto& socket, auto handler) {
      if constexpr (std::is_same_v<std::decay_t<decltype(socket)>, TcpSocket>) {
        asio::async_connect(socket, results, std::move(handler));
      }
    }, deadline, "connecting");
  }

  const ClientOptions& options_;
  asio::io_context io_{1};
  std::variant<LocalSocket, TcpSocket> socket_{std::in_place_type<LocalSocket>, io_};
};

http::request<http::string_body> make_request(const ClientOptions& options, http::verb verb,
                                              std::string_view target,
                                              const std::optional<std::string>& body,
                                              std::string_view accept) {
  http::request<http::string_body> req{verb, std::string(target), 11};
  req.set(http::field::host, options.tcp.empty() ? std::string("localhost") : options.tcp);
  req.set(http::field::user_agent, std::string("splitctl/") + kVersion);
  req.set(http::field::accept, accept);
  req.set(http::field::connection, "close");
  if (!options.tcp.empty() && !options.token.empty()) {
    req.set(http::field::authorization, "Bearer " + options.token);
  }
  if (body) {
    req.set(http::field::content_type, "application/json");
    req.body() = *body;
  }
  req.prepare_payload();
  return req;
}

template <typename Message>
std::string content_type_of(const Message& m) {
  return std::string(m[http::field::content_type]);
}

}  // namespace

std::string_view to_string(ClientErrorKind kind) {
  switch (kind) {
    case ClientErrorKind::kNoSocket: return "no socket";
    case ClientErrorKind::kPermissionDenied: return "permission denied";
    case ClientErrorKind::kNotListening: return "nothing listening";
    case ClientErrorKind::kTimeout: return "timeout";
    case ClientErrorKind::kProtocol: return "protocol error";
    case ClientErrorKind::kInterrupted: return "interrupted";
    case ClientErrorKind::kOther: return "error";
  }
  return "error";
}

std::string percent_encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                            c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xF];
    }
  }
  return out;
}

SseParser::Result SseParser::feed(std::string_view bytes, const Handler& on_event) {
  if (bytes.empty()) return Result::kContinue;  // keeps after_cr_ for the next bytes
  std::size_t pos = 0;
  if (after_cr_ && bytes.front() == '\n') pos = 1;  // the LF of a CRLF split across feeds
  after_cr_ = false;
  while (pos < bytes.size()) {
    const auto end = bytes.find_first_of("\r\n", pos);
    if (end == std::string_view::npos) {
      partial_.append(bytes.substr(pos));
      if (partial_.size() + data_.size() > max_event_) return Result::kTooLarge;
      return Result::kContinue;
    }
    bool keep_going;
    if (partial_.empty()) {
      keep_going = line(bytes.substr(pos, end - pos), on_event);
    } else {
      partial_.append(bytes.substr(pos, end - pos));
      const std::string text = std::move(partial_);
      partial_.clear();
      keep_going = line(text, on_event);
    }
    pos = end + 1;
    if (bytes[end] == '\r') {
      if (pos < bytes.size() && bytes[pos] == '\n') ++pos;
      else if (pos == bytes.size()) after_cr_ = true;
    }
    if (!keep_going) return Result::kStopped;
    if (data_.size() > max_event_) return Result::kTooLarge;
  }
  return Result::kContinue;
}

bool SseParser::line(std::string_view text, const Handler& on_event) {
  if (text.empty()) {  // the end of an event; one without data is not dispatched
    bool keep_going = true;
    if (has_data_) keep_going = on_event(event_.empty() ? std::string_view("message") : event_, data_);
    event_.clear();
    data_.clear();
    has_data_ = false;
    return keep_going;
  }
  if (text.front() == ':') return true;  // a comment (": keepalive")
  const auto colon = text.find(':');
  const std::string_view field = text.substr(0, colon);
  std::string_view value;
  if (colon != std::string_view::npos) {
    value = text.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "event") {
    event_ = std::string(value);
  } else if (field == "data") {
    if (has_data_) data_ += '\n';
    data_.append(value);
    has_data_ = true;
  }
  return true;
}

Expected<Response, ClientError> HttpClient::request(std::string_view method, std::string_view target,
                                                    const std::optional<std::string>& json_body) {
  Connection conn(options_);
  const auto verb = http::string_to_verb(method);
  if (verb == http::verb::unknown) return conn.fail(ClientErrorKind::kOther, "unknown method " + std::string(method));
  const auto deadline = Clock::now() + options_.timeout;
  if (auto c = conn.connect(deadline); !c) return unexpected(c.error());

  auto req = make_request(options_, verb, target, json_body, "application/json");
  auto written = conn.run([&](auto& socket, auto handler) {
    http::async_write(socket, req, std::move(handler));
  }, deadline, "sending the request");
  if (!written) return unexpected(written.error());

  boost::beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.header_limit(kMaxHeader);
  parser.body_limit(kMaxBody);
  auto read = conn.run([&](auto& socket, auto handler) {
    http::async_read(socket, buffer, parser, std::move(handler));
  }, deadline, "waiting for the answer");
  if (!read) return unexpected(read.error());

  auto& msg = parser.get();
  Response out{msg.result_int(), std::move(msg.body()), content_type_of(msg)};
  conn.close();
  return out;
}

Expected<WatchResult, ClientError> HttpClient::watch(std::string_view target, const EventHandler& on_event) {
  Connection conn(options_);
  const auto deadline = Clock::now() + options_.timeout;
  if (auto c = conn.connect(deadline); !c) return unexpected(c.error());

  auto req = make_request(options_, http::verb::get, target, std::nullopt, "text/event-stream");
  req.set(http::field::cache_control, "no-cache");
  auto written = conn.run([&](auto& socket, auto handler) {
    http::async_write(socket, req, std::move(handler));
  }, deadline, "sending the request");
  if (!written) return unexpected(written.error());

  boost::beast::flat_buffer buffer;
  http::response_parser<http::empty_body> head;
  head.header_limit(kMaxHeader);
  auto header = conn.run([&](auto& socket, auto handler) {
    http::async_read_header(socket, buffer, head, std::move(handler));
  }, deadline, "waiting for the answer");
  if (!header) return unexpected(header.error());

  const unsigned status = head.get().result_int();
  const std::string content_type = content_type_of(head.get());
  if (status / 100 != 2) {  // an error document: read it whole
    http::response_parser<http::string_body> rest(std::move(head));
    rest.body_limit(kMaxErrorBody);
    auto read = conn.run([&](auto& socket, auto handler) {
      http::async_read(socket, buffer, rest, std::move(handler));
    }, deadline, "reading the answer");
    if (!read) return unexpected(read.error());
    WatchResult out{Response{status, std::move(rest.get().body()), content_type}, false};
    conn.close();
    return out;
  }
  if (content_type.rfind("text/event-stream", 0) != 0) {
    conn.close();
    return conn.fail(ClientErrorKind::kProtocol,
                     "expected a text/event-stream, got " + (content_type.empty() ? "no content type" : content_type));
  }

  http::response_parser<http::buffer_body> stream(std::move(head));
  stream.body_limit(boost::none);  // a stream has no end in sight
  std::array<char, 16384> chunk;
  SseParser sse;
  WatchResult out{Response{status, "", content_type}, false};
  while (!stream.is_done()) {
    stream.get().body().data = chunk.data();
    stream.get().body().size = chunk.size();
    auto ec = conn.run_ec([&](auto& socket, auto handler) {
      http::async_read_some(socket, buffer, stream, std::move(handler));
    }, Clock::now() + options_.watch_idle, "waiting for the next event (the stream went silent)");
    if (!ec) {
      if (ec.error().kind == ClientErrorKind::kInterrupted) {  // Ctrl-C: an ordinary end
        out.stopped = true;
        return out;
      }
      return unexpected(ec.error());
    }
    const std::size_t got = chunk.size() - stream.get().body().size;
    const auto fed = sse.feed(std::string_view(chunk.data(), got), on_event);
    if (fed == SseParser::Result::kStopped) {
      out.stopped = true;
      break;
    }
    if (fed == SseParser::Result::kTooLarge) {
      conn.close();
      return conn.fail(ClientErrorKind::kProtocol, "an event larger than the limit");
    }
    const error_code& e = *ec;
    if (!e || e == http::error::need_buffer) continue;
    // The server ended the stream (closed, or cut a chunked body short): the end of the
    // watch, not a failure to read an answer.
    if (e == http::error::partial_message || e == http::error::end_of_stream || e == asio::error::eof ||
        e == asio::error::connection_reset) {
      break;
    }
    conn.close();
    return conn.fail(e);
  }
  conn.close();
  return out;
}

}  // namespace splitd::api
