#include "api/server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <functional>
#include <optional>
#include <unordered_map>
#include <utility>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "api/auth.hpp"
#include "api/handlers.hpp"
#include "api/metrics.hpp"
#include "api/watch.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"

namespace splitd::api {

namespace asio = net::asio;
namespace beast = boost::beast;
using local = asio::local::stream_protocol;
using net::awaitable;
using net::error_code;
using net::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTuple = asio::as_tuple(asio::use_awaitable);
// After an error answer the client may still be sending; reading on for a moment before
// closing keeps the kernel from resetting the connection before the answer is read.
constexpr std::chrono::milliseconds kLinger{500};
constexpr std::size_t kLingerBytes = 64 * 1024;

std::string errno_text(int err) { return std::strerror(err); }

std::string describe(const Caller& c) {
  if (c.transport == Caller::Transport::kTcp) return "tcp client";
  return "uid " + std::to_string(c.uid) + " pid " + std::to_string(c.pid);
}

// Request text for the log: bounded, control bytes and non-ASCII as '?'.
std::string printable(std::string_view s) {
  std::string out(s.substr(0, 200));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  return out;
}

std::optional<tcp::endpoint> parse_listen(const std::string& text) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const auto ip = IpAddress::parse(host);
  unsigned port = 0;
  const std::string p = text.substr(colon + 1);
  const auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
  if (!ip || p.empty() || ec != std::errc() || ptr != p.data() + p.size() || port > 65535) return std::nullopt;
  return tcp::endpoint(net::to_asio(*ip), static_cast<std::uint16_t>(port));
}

// Whether a process accepts connections on the unix socket at `path` (a non-blocking
// connect: a full backlog counts as alive; no permission counts as alive, to be safe).
bool someone_answers(const std::string& path) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return false;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0) return true;
  return errno == EAGAIN || errno == EINPROGRESS || errno == EACCES || errno == EPERM;
}

}  // namespace

// The server's state, shared by the Server and every coroutine and watcher it started, so
// that those may finish (with operation_aborted) after the Server object is gone. Lives on
// the server's thread only.
struct Server::Core {
  Core(asio::io_context& c, Backend& b, ServerOptions o) : ctx(c), backend(&b), opts(std::move(o)) {}

  asio::io_context& ctx;
  Backend* backend;  // null once stopped: nothing calls it after stop()
  ServerOptions opts;
  bool ready = false;
  bool started = false;
  bool stopped = false;
  std::optional<gid_t> group;
  std::string token;
  std::optional<local::acceptor> unix_acceptor;
  std::optional<tcp::acceptor> tcp_acceptor;
  std::uint16_t tcp_port = 0;
  bool own_socket = false;  // the socket file is ours to remove (same inode as bound)
  dev_t socket_dev = 0;
  ino_t socket_ino = 0;
  ApiStats stats;
  // How to close each live connection or watch stream, for stop().
  std::unordered_map<std::uint64_t, std::function<void()>> live;
  std::uint64_t next_id = 1;

  std::uint64_t track(std::function<void()> close) {
    const std::uint64_t id = next_id++;
    live.emplace(id, std::move(close));
    stats.connections = live.size();
    return id;
  }
  void untrack(std::uint64_t id) {
    live.erase(id);
    stats.connections = live.size();
  }
};

namespace {

using Core = Server::Core;

// One watch stream (GET /connections?watch=MS) after its response header: a timer diffs
// the sessions each interval, a writer drains the queue, a reader notices the client
// leaving. Event-driven rather than a coroutine so writing and producing overlap and the
// queue can be measured. Owned by its pending handlers; the Core's `live` map closes it.
// Runs on the server's thread only.
template <typename Socket>
class Watcher : public std::enable_shared_from_this<Watcher<Socket>> {
 public:
  Watcher(std::shared_ptr<Core> core, Socket socket, WatchRequest request, Caller caller, unsigned version)
      : core_(std::move(core)),
        socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        request_(std::move(request)),
        caller_(std::move(caller)),
        version_(version) {}

  void start() {
    id_ = core_->track([weak = this->weak_from_this()] {
      if (auto self = weak.lock()) self->close();
    });
    ++core_->stats.watchers;
    pending_ = std::string(version_ == 10 ? "HTTP/1.0" : "HTTP/1.1") +
               " 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
               "Connection: close\r\n\r\n";
    last_event_ = Clock::now();
    read();
    tick();
  }

 private:
  void tick() {
    if (closed_) return;
    if (core_->stopped || core_->backend == nullptr) return close();
    const auto now = Clock::now();
    if (writing_ && now - write_progress_ > core_->opts.watch_write_stall) return drop("its socket accepted nothing");
    if (unsent() > core_->opts.watch_max_unsent) return drop("it fell more than the unsent limit behind");
    std::vector<proxy::SessionView> sessions = core_->backend->connections();
    std::erase_if(sessions, [this](const proxy::SessionView& s) { return !request_.filter.matches(s); });
    std::string ev = state_.next(sessions);
    if (ev.empty() && now - last_event_ >= core_->opts.watch_keepalive) ev = ": keepalive\n\n";
    if (!ev.empty()) {
      pending_ += ev;
      last_event_ = now;
      write();
    }
    timer_.expires_after(request_.interval);
    timer_.async_wait([self = this->shared_from_this()](error_code ec) {
      if (!ec) self->tick();
    });
  }

  std::size_t unsent() const { return (out_.size() - out_off_) + pending_.size(); }

  void write() {
    if (writing_ || closed_) return;
    if (out_off_ == out_.size()) {
      out_.clear();
      out_off_ = 0;
      if (pending_.empty()) return;
      out_.swap(pending_);
    }
    writing_ = true;
    write_progress_ = Clock::now();
    socket_.async_write_some(asio::buffer(out_.data() + out_off_, out_.size() - out_off_),
                             [self = this->shared_from_this()](error_code ec, std::size_t n) {
                               self->writing_ = false;
                               if (ec || self->closed_) return self->close();
                               self->out_off_ += n;
                               self->write_progress_ = Clock::now();
                               self->write();
                             });
  }

  // The client sends nothing more; anything it sends is discarded, EOF ends the stream.
  void read() {
    socket_.async_read_some(asio::buffer(sink_), [self = this->shared_from_this()](error_code ec, std::size_t) {
      if (ec || self->closed_) return self->close();
      self->read();
    });
  }

  void drop(const char* why) {
    ++core_->stats.watchers_dropped;
    log::info("api: watch stream of ", describe(caller_), " dropped: ", why, " (", unsent(), " bytes unsent)");
    close();
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    error_code ec;
    socket_.shutdown(asio::socket_base::shutdown_both, ec);
    socket_.close(ec);
    timer_.cancel();
    core_->untrack(id_);
    --core_->stats.watchers;
  }

  std::shared_ptr<Core> core_;
  Socket socket_;
  asio::steady_timer timer_;
  WatchRequest request_;
  Caller caller_;
  unsigned version_;
  WatchState state_;
  std::uint64_t id_ = 0;
  bool closed_ = false;
  bool writing_ = false;
  std::string out_;  // being written, from out_off_
  std::size_t out_off_ = 0;
  std::string pending_;  // queued behind out_
  Clock::time_point last_event_, write_progress_;
  std::array<char, 512> sink_{};
};

struct Untrack {
  Core& core;
  std::uint64_t id;
  ~Untrack() { core.untrack(id); }
};

// Shuts down sending, reads (and discards) what the client still sends for a moment, closes.
template <typename Stream>
awaitable<void> linger_close(Stream& stream) {
  error_code ec;
  stream.socket().shutdown(asio::socket_base::shutdown_send, ec);
  stream.expires_after(kLinger);
  std::array<char, 4096> sink{};
  std::size_t total = 0;
  while (total < kLingerBytes) {
    auto [rec, n] = co_await stream.async_read_some(asio::buffer(sink), kTuple);
    if (rec) break;
    total += n;
  }
  stream.close();
}

bool is_disconnect(const error_code& ec) {
  return ec == beast::error::timeout || ec == http::error::end_of_stream || ec == http::error::partial_message ||
         ec == asio::error::eof || ec == asio::error::operation_aborted || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::error::bad_descriptor;
}

// The answer to a request the parser refused; nullopt: just close.
std::optional<Response> parse_failure(const error_code& ec, const ServerOptions& o) {
  if (is_disconnect(ec)) return std::nullopt;
  if (ec == http::error::header_limit) {
    return error_response(431, "the request header is over " + std::to_string(o.header_limit) + " bytes");
  }
  if (ec == http::error::body_limit) {
    return error_response(413, "the body is over " + std::to_string(o.body_limit) + " bytes");
  }
  return error_response(400, "malformed HTTP request: " + ec.message());
}

// One connection: requests in order (keep-alive), each under the request deadline.
template <typename Stream>
awaitable<void> serve(std::shared_ptr<Core> core, Stream stream, Caller caller) {
  const Untrack untrack{*core, core->track([&stream] { stream.close(); })};
  const ServerOptions& o = core->opts;
  beast::flat_buffer buffer;
  bool first = true;
  for (;;) {
    // Waiting for a request: the first gets the request deadline, later ones the idle time.
    if (buffer.size() == 0) {
      stream.expires_after(first ? o.request_deadline : o.keepalive_idle);
      auto [ec, n] = co_await stream.async_read_some(buffer.prepare(4096), kTuple);
      if (ec || core->stopped) co_return;
      buffer.commit(n);
    }
    first = false;
    stream.expires_after(o.request_deadline);  // covers the whole request from its first byte
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(o.header_limit));
    parser.body_limit(o.body_limit);
    auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, kTuple);
    if (core->stopped) co_return;
    error_code ec = hec;
    if (!ec && !parser.is_done()) {
      const auto expect = parser.get()[http::field::expect];
      if (beast::iequals(expect, "100-continue")) {
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        auto [cec, cn] = co_await asio::async_write(stream, asio::buffer(kContinue), kTuple);
        if (cec || core->stopped) co_return;
      }
      auto [bec, bn] = co_await http::async_read(stream, buffer, parser, kTuple);
      if (core->stopped) co_return;
      ec = bec;
    }
    if (ec) {
      auto res = parse_failure(ec, o);
      if (!res) co_return;
      core->stats.count(static_cast<int>(res->result_int()));
      res->keep_alive(false);
      res->prepare_payload();
      stream.expires_after(o.request_deadline);
      auto [wec, wn] = co_await http::async_write(stream, *res, kTuple);
      if (!wec && !core->stopped) co_await linger_close(stream);
      co_return;
    }

    Request req = parser.release();
    RequestContext ctx;
    ctx.caller = caller;
    ctx.ready = core->ready;
    ctx.token = caller.transport == Caller::Transport::kTcp ? &core->token : nullptr;
    ctx.now = std::chrono::system_clock::now();
    ctx.stats = &core->stats;
    Reply reply = handle(req, ctx, *core->backend);
    const int status = reply.watch ? 200 : static_cast<int>(reply.response.result_int());
    core->stats.count(status);
    if (req.method() != http::verb::get && status < 300) {  // a change: one line for the operator
      log::info("api: ", describe(caller), " ", printable(req.method_string()), " ", printable(req.target()), " -> ",
                status);
    }
    if (reply.watch) {
      using Socket = typename Stream::socket_type;
      auto w = std::make_shared<Watcher<Socket>>(core, stream.release_socket(), std::move(*reply.watch), caller,
                                                 req.version());
      w->start();
      co_return;
    }
    const bool keep = req.keep_alive() && !core->stopped;
    reply.response.keep_alive(keep);
    reply.response.prepare_payload();
    stream.expires_after(o.request_deadline);
    auto [wec, wn] = co_await http::async_write(stream, reply.response, kTuple);
    if (wec || core->stopped) co_return;
    if (!keep) {
      error_code sec;
      stream.socket().shutdown(asio::socket_base::shutdown_send, sec);
      co_return;
    }
  }
}

// Accept loop for either listener. Over the cap, a connection is closed at once.
template <typename Acceptor, typename MakeCaller>
awaitable<void> accept_loop(std::shared_ptr<Core> core, Acceptor& acceptor, MakeCaller make_caller) {
  asio::steady_timer backoff(core->ctx);
  for (;;) {
    auto [ec, socket] = co_await acceptor.async_accept(kTuple);
    if (core->stopped) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends: wait a little instead of spinning on the error.
      log::warn("api: accept failed: ", ec.message());
      backoff.expires_after(std::chrono::milliseconds(100));
      co_await backoff.async_wait(kTuple);
      if (core->stopped) co_return;
      continue;
    }
    if (core->live.size() >= core->opts.max_connections) {
      const std::uint64_t n = ++core->stats.connections_refused;
      if ((n & (n - 1)) == 0) {  // 1, 2, 4, 8, ...: a flood does not flood the log
        log::warn("api: ", core->opts.max_connections, " connections open, closing a new one (", n, " so far)");
      }
      error_code cec;
      socket.close(cec);
      continue;
    }
    using Socket = std::decay_t<decltype(socket)>;
    using Stream = beast::basic_stream<typename Socket::protocol_type>;
    Caller caller = make_caller(socket);
    asio::co_spawn(core->ctx, serve(core, Stream(std::move(socket)), std::move(caller)), asio::detached);
  }
}

Expected<void, std::string> bind_unix(Core& c) {
  const std::string& path = c.opts.unix_path;
  if (path.empty()) return unexpected(std::string("no unix socket path (daemon.api_socket)"));
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return unexpected(path + ": too long for a unix socket path (at most " +
                      std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes)");
  }
  if (auto made = make_parent_dirs(path); !made) return unexpected(made.error());
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return unexpected(path + " exists and is not a socket; not removing it");
    if (someone_answers(path)) return unexpected("another process answers on " + path + " (is splitd already running?)");
    if (::unlink(path.c_str()) != 0) return unexpected("cannot remove the stale socket " + path + ": " + errno_text(errno));
    log::info("api: removed the stale socket ", path);
  } else if (errno != ENOENT) {
    return unexpected("cannot check " + path + ": " + errno_text(errno));
  }
  local::acceptor acc(c.ctx);
  error_code ec;
  acc.open(local(), ec);
  if (!ec) acc.bind(local::endpoint(path), ec);
  if (ec) return unexpected("cannot bind " + path + ": " + ec.message());
  acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return unexpected("cannot listen on " + path + ": " + ec.message());
  if (::chmod(path.c_str(), 0660) != 0) return unexpected("cannot chmod " + path + ": " + errno_text(errno));
  if (c.group && ::chown(path.c_str(), static_cast<uid_t>(-1), *c.group) != 0) {
    log::warn("api: cannot give ", path, " to group ", c.opts.group_name, ": ", errno_text(errno),
              "; only root may change things");
  }
  if (::lstat(path.c_str(), &st) == 0) {
    c.own_socket = true;
    c.socket_dev = st.st_dev;
    c.socket_ino = st.st_ino;
  }
  c.unix_acceptor.emplace(std::move(acc));
  return {};
}

Expected<void, std::string> bind_tcp(Core& c) {
  const auto ep = parse_listen(c.opts.tcp_listen);
  if (!ep) {
    return unexpected("api_listen '" + c.opts.tcp_listen + "' must be ADDRESS:PORT, e.g. \"127.0.0.1:7070\" or \"[::1]:7070\"");
  }
  tcp::acceptor acc(c.ctx);
  error_code ec;
  acc.open(ep->protocol(), ec);
  if (!ec) acc.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acc.bind(*ep, ec);
  if (ec) return unexpected("cannot bind " + c.opts.tcp_listen + ": " + ec.message());
  acc.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return unexpected("cannot listen on " + c.opts.tcp_listen + ": " + ec.message());
  c.tcp_port = acc.local_endpoint(ec).port();
  c.tcp_acceptor.emplace(std::move(acc));
  return {};
}

void remove_socket_file(Core& c) {
  if (!c.own_socket) return;
  c.own_socket = false;
  struct stat st {};
  // Only our own socket: another process may have replaced it since.
  if (::lstat(c.opts.unix_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == c.socket_dev &&
      st.st_ino == c.socket_ino) {
    ::unlink(c.opts.unix_path.c_str());
  }
}

}  // namespace

Server::Server(net::asio::io_context& ctx, Backend& backend, ServerOptions opts)
    : core_(std::make_shared<Core>(ctx, backend, std::move(opts))) {}

Server::~Server() { stop(); }

Expected<void, std::string> Server::start() {
  Core& c = *core_;
  if (c.started || c.stopped) return unexpected(std::string("the API server was started before"));
  if (!c.opts.group_name.empty()) c.group = find_group(c.opts.group_name);
  // The token first: a bad token file fails start() before any socket exists.
  if (!c.opts.tcp_listen.empty()) {
    auto token = load_or_create_token(c.opts.token_file);
    if (!token) return unexpected(token.error());
    c.token = std::move(*token);
  }
  if (auto r = bind_unix(c); !r) return r;
  if (!c.opts.tcp_listen.empty()) {
    if (auto r = bind_tcp(c); !r) {
      c.unix_acceptor.reset();
      remove_socket_file(c);
      return r;
    }
  }
  c.started = true;
  const std::optional<gid_t> group = c.group;
  asio::co_spawn(c.ctx,
                 accept_loop(core_, *c.unix_acceptor,
                             [group](local::socket& s) { return unix_caller(s.native_handle(), group); }),
                 asio::detached);
  log::info("api: listening on ", c.opts.unix_path,
            c.group ? " (changes: root and group " + c.opts.group_name + ")" : " (changes: root only; no group " + c.opts.group_name + ")");
  if (c.tcp_acceptor) {
    asio::co_spawn(c.ctx, accept_loop(core_, *c.tcp_acceptor, [](tcp::socket&) {
                     Caller caller;
                     caller.transport = Caller::Transport::kTcp;
                     caller.may_change = true;  // handle() checks the token on every request first
                     return caller;
                   }),
                   asio::detached);
    log::info("api: listening on ", c.opts.tcp_listen, " (port ", c.tcp_port, ", bearer token from ",
              c.opts.token_file, ")");
  }
  return {};
}

void Server::stop() {
  Core& c = *core_;
  if (c.stopped) return;
  c.stopped = true;
  c.backend = nullptr;
  error_code ec;
  if (c.unix_acceptor) c.unix_acceptor->close(ec);
  if (c.tcp_acceptor) c.tcp_acceptor->close(ec);
  auto live = std::move(c.live);
  c.live.clear();
  for (auto& [id, close] : live) close();
  c.stats.connections = 0;
  remove_socket_file(c);
}

void Server::set_ready(bool ready) { core_->ready = ready; }
std::uint16_t Server::tcp_port() const { return core_->tcp_port; }
std::size_t Server::connections() const { return core_->live.size(); }

}  // namespace splitd::api
