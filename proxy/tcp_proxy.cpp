#include "proxy/tcp_proxy.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <csignal>
#include <cerrno>
#include <mutex>
#include <cstring>
#include <fstream>
#include <random>
#include <thread>
#include <tuple>
#include <unordered_map>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "proxy/asio.hpp"
#include "proxy/tcp_info.hpp"

namespace splitd::proxy {

using net::asio::ip::tcp;
using net::awaitable;
using net::error_code;
using namespace net::asio::experimental::awaitable_operators;
namespace asio = net::asio;

namespace {

constexpr std::size_t kSpliceChunk = 1 << 20;  // ask for up to the pipe's capacity
constexpr std::size_t kPipePoolMax = 64;
constexpr int kListenBacklog = 4096;
constexpr int kPortAttempts = 32;
constexpr std::size_t kCopyChunk = 64 * 1024;

Endpoint endpoint_of(const tcp::endpoint& ep) {
  return {net::to_ip(ep.address()).unmapped(), ep.port()};
}

// Closes with SO_LINGER 0: the peer gets a RST instead of a FIN.
void reset(tcp::socket& s) {
  if (!s.is_open()) return;
  error_code ec;
  s.set_option(asio::socket_base::linger(true, 0), ec);
  s.close(ec);
}

std::string errno_text(int err) { return std::strerror(err); }

// A pipe used by splice(2). Empty pipes go back to the worker's pool, so an idle session
// holds no pipe and no buffer.
struct Pipe {
  Fd read, write;
  static Pipe make() {
    int fds[2];
    Pipe p;
    if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0) {
      p.read.reset(fds[0]);
      p.write.reset(fds[1]);
    }
    return p;
  }
  bool valid() const { return read.valid() && write.valid(); }
};

}  // namespace

class TcpProxy::Worker {
 public:
  Worker(TcpProxy& proxy, unsigned index) : proxy_(proxy), index_(index) {}

  Expected<void, std::string> listen() {
    const auto add = [this](const tcp::endpoint& ep, bool v6) -> Expected<void, std::string> {
      tcp::acceptor acc(ctx_);
      error_code ec;
      acc.open(ep.protocol(), ec);
      if (ec == asio::error::address_family_not_supported && v6) {
        log::warn("tcp proxy: IPv6 is disabled on this host (", ec.message(), "); IPv4 only");
        return {};
      }
      if (ec) return unexpected("socket for " + ep.address().to_string() + ": " + ec.message());
      const int one = 1;
      acc.set_option(asio::socket_base::reuse_address(true), ec);
      ::setsockopt(acc.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
      if (v6) {
        ::setsockopt(acc.native_handle(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
      }
      const int rc = v6 ? ::setsockopt(acc.native_handle(), SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one)
                        : ::setsockopt(acc.native_handle(), SOL_IP, IP_TRANSPARENT, &one, sizeof one);
      if (rc != 0) {
        return unexpected(std::string("transparent listener: ") + errno_text(errno) +
                          (errno == EPERM ? " (splitd needs CAP_NET_ADMIN: run it as root or grant the capability)" : ""));
      }
      acc.bind(ep, ec);
      if (ec) {
        return unexpected("bind " + ep.address().to_string() + " port " + std::to_string(ep.port()) +
                          ": " + ec.message() +
                          (ec == asio::error::address_in_use ? " (is another splitd running? change proxy.port)" : ""));
      }
      acc.listen(kListenBacklog, ec);
      if (ec) return unexpected("listen: " + ec.message());
      acceptors_.push_back(std::move(acc));
      return {};
    };
    const auto port = proxy_.options_.port;
    if (auto r = add(tcp::endpoint(asio::ip::address_v4::loopback(), port), false); !r) return r;
    if (proxy_.options_.ipv6) {
      if (auto r = add(tcp::endpoint(asio::ip::address_v6::loopback(), port), true); !r) return r;
    }
    return {};
  }

  void start() {
    mailbox_->worker = this;
    for (auto& acc : acceptors_) asio::co_spawn(ctx_, accept_loop(acc), asio::detached);
    thread_ = std::thread([this] { ctx_.run(); });
  }

  // Called from the controlling thread, for every worker before any is joined: stop
  // accepting and end every flow with a reset (an app must see its connection fail, not
  // a clean EOF that truncates what it was receiving).
  void request_stop() {
    asio::post(ctx_, [this] {
      stopping_ = true;
      error_code ec;
      for (auto& acc : acceptors_) acc.close(ec);
      for (auto& [id, flow] : flows_) {
        reset(*flow.client);
        reset(*flow.upstream);
      }
    });
  }

  // Waits for the sessions to end; a worker still busy at the deadline is stopped hard.
  void join(std::chrono::steady_clock::time_point deadline) {
    while (!ctx_.stopped() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    {
      std::lock_guard lock(mailbox_->mu);
      mailbox_->worker = nullptr;  // kill hooks of sessions that outlive us become no-ops
    }
    ctx_.stop();
    if (thread_.joinable()) thread_.join();
  }

  // Lets Session::kill reach this worker while it exists, and do nothing afterwards.
  struct Mailbox {
    std::mutex mu;
    Worker* worker = nullptr;
  };

 private:
  struct Flow {
    tcp::socket* client;
    tcp::socket* upstream;
  };

  awaitable<void> accept_loop(tcp::acceptor& acc) {
    for (;;) {
      auto [ec, sock] = co_await acc.async_accept(asio::as_tuple(net::use_awaitable));
      if (ec == asio::error::operation_aborted || stopping_) co_return;
      if (ec) {
        // EMFILE and friends: back off briefly instead of spinning.
        log::warn("tcp proxy: accept: ", ec.message());
        asio::steady_timer t(ctx_, std::chrono::milliseconds(50));
        co_await t.async_wait(asio::as_tuple(net::use_awaitable));
        continue;
      }
      asio::co_spawn(ctx_, session(std::move(sock)), asio::detached);
    }
  }

  awaitable<void> session(tcp::socket client) {
    error_code ec;
    const tcp::endpoint local = client.local_endpoint(ec);
    const tcp::endpoint peer = ec ? tcp::endpoint() : client.remote_endpoint(ec);
    if (ec) co_return;
    // TPROXY never delivers flows to loopback destinations (they are not intercepted); a
    // local process connecting straight to the listener gets a reset, not a dial.
    if (local.address().is_loopback() || net::to_ip(local.address()).is_loopback()) {
      reset(client);
      co_return;
    }
    auto& opts = proxy_.options_;
    auto& table = proxy_.sessions_;

    // The count is taken before anything else so max_sessions holds under a burst.
    if (proxy_.active_.fetch_add(1, std::memory_order_relaxed) >= opts.max_sessions) {
      proxy_.active_.fetch_sub(1, std::memory_order_relaxed);
      table.count_refused();
      log::warn("tcp ", endpoint_of(peer).to_string(), " -> ", endpoint_of(local).to_string(),
                ": refused, max_sessions (", opts.max_sessions, ") reached");
      reset(client);
      co_return;
    }
    struct Release {
      std::atomic<std::size_t>& n;
      ~Release() { n.fetch_sub(1, std::memory_order_relaxed); }
    } release{proxy_.active_};

    decider::SessionInfo info;
    info.protocol = decider::Protocol::kTcp;
    info.src = net::to_ip(peer.address()).unmapped();
    info.src_port = peer.port();
    info.dst = net::to_ip(local.address()).unmapped();
    info.dst_port = local.port();
    const decider::Route route = proxy_.decider_.decide(info);

    // The kill hook is in place before the session is visible to other threads; it
    // reaches this worker only while the worker exists (see Mailbox).
    auto id_cell = std::make_shared<std::atomic<std::uint64_t>>(0);
    auto s = table.add(decider::Protocol::kTcp, endpoint_of(peer), endpoint_of(local), route,
                       [mailbox = mailbox_, id_cell] {
                         std::lock_guard lock(mailbox->mu);
                         if (Worker* w = mailbox->worker) {
                           asio::post(w->ctx_, [w, id = id_cell->load()] { w->kill_flow(id); });
                         }
                       });
    id_cell->store(s->id);
    struct Unregister {
      SessionTable& table;
      Session& s;
      ~Unregister() { table.remove(s); }
    } unregister{table, *s};
    const auto started = std::chrono::steady_clock::now();
    const auto finish = [&](const char* how) {
      if (!log::enabled(log::Level::kDebug)) return;
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now() - started).count();
      log::debug("tcp #", s->id, " ", s->client.to_string(), " -> ", s->destination.to_string(), " ",
                 decider::to_string(route.kind), route.interface.empty() ? "" : " via " + route.interface,
                 " rule '", route.rule, "' sent ", s->bytes_sent.load(), "B received ",
                 s->bytes_received.load(), "B in ", ms, "ms (", how, ")");
    };

    if (route.kind == decider::RouteKind::kBlock) {
      table.count_blocked();
      reset(client);
      finish("blocked");
      co_return;
    }

    const tcp::endpoint target(net::to_asio(info.dst), info.dst_port);
    asio::steady_timer timer(ctx_, opts.connect_timeout);
    tcp::socket upstream(ctx_);
    flows_.emplace(s->id, Flow{&client, &upstream});
    struct Forget {
      std::unordered_map<std::uint64_t, Flow>& flows;
      std::uint64_t id;
      ~Forget() { flows.erase(id); }
    } forget{flows_, s->id};

    // A source port can be taken (EADDRINUSE at bind) or its 4-tuple can be in use or in
    // TIME_WAIT (EADDRNOTAVAIL at connect): both are retried with the next port.
    std::string why;
    bool connected = false;
    for (int attempt = 0; attempt < kPortAttempts && !connected && why.empty(); ++attempt) {
      upstream.close(ec);
      const UpstreamResult opened = open_upstream(upstream, route, info.dst);
      if (opened == UpstreamResult::kPortBusy) continue;
      if (opened == UpstreamResult::kFailed) {
        why = upstream_error_;
        break;
      }
      auto result = co_await (upstream.async_connect(target, asio::as_tuple(net::use_awaitable)) ||
                              timer.async_wait(asio::as_tuple(net::use_awaitable)));
      if (result.index() == 1) {
        why = "connect timed out";
      } else if (const error_code cec = std::get<0>(std::get<0>(result)); !cec) {
        connected = true;
      } else if (cec.value() != EADDRNOTAVAIL) {
        why = "connect: " + cec.message();
      }
    }
    if (!connected) {
      if (why.empty()) {
        why = "no free source port after " + std::to_string(kPortAttempts) + " attempts";
        log::warn("tcp #", s->id, " ", s->destination.to_string(), ": ", why, " (range ",
                  opts.source_port_min, "-", opts.source_port_max, ")");
      }
      log::debug("tcp #", s->id, " ", s->destination.to_string(), " via ", route.interface, ": ", why);
      table.count_failed();
      reset(upstream);
      reset(client);
      finish(why.c_str());
      co_return;
    }
    client.set_option(tcp::no_delay(true), ec);
    upstream.set_option(tcp::no_delay(true), ec);
    // Urgent bytes stay in the stream (forwarded as data) instead of being dropped.
    client.set_option(asio::socket_base::out_of_band_inline(true), ec);
    upstream.set_option(asio::socket_base::out_of_band_inline(true), ec);
    client.non_blocking(true, ec);
    upstream.non_blocking(true, ec);
    s->touch();

    co_await ((pump(*s, client, upstream, true) && pump(*s, upstream, client, false)) ||
              watchdog(*s));
    refresh_packets(*s, client);
    finish(stopping_ ? "shutdown" : "closed");
  }

  void kill_flow(std::uint64_t id) {
    if (auto it = flows_.find(id); it != flows_.end()) {
      reset(*it->second.client);
      reset(*it->second.upstream);
    }
  }

  enum class UpstreamResult { kOpen, kPortBusy, kFailed };

  // SO_MARK so our own packets are never intercepted again; SO_BINDTODEVICE plus a bind
  // to the interface's address so no other policy routing can move the flow.
  //
  // The source port comes from our own range outside the system's ephemeral range. The
  // kernel's 4-tuple uniqueness check does not see a device-bound socket from an unbound
  // one: an app connecting later to the same server from the same address (the tunnel's,
  // under a VPN's default route) may be given our port, and then our replies go to the
  // app's socket and our connect stalls. Apps never get ports outside the ephemeral
  // range. SO_REUSEADDR lets flows to different servers share a port; connect() still
  // checks the whole 4-tuple: one in use is refused (EADDRNOTAVAIL, we retry with the
  // next port) and one in TIME_WAIT is recycled when the old connection used TCP
  // timestamps (tcp_twsk_unique), refused otherwise. Limits: per source address and
  // server ip:port, as many concurrent flows as the range has ports (4536 by default),
  // and against servers without timestamps that many per TIME_WAIT period (60 s).
  UpstreamResult open_upstream(tcp::socket& s, const decider::Route& route, const IpAddress& dst) {
    const auto failed = [this](std::string why) {
      upstream_error_ = std::move(why);
      return UpstreamResult::kFailed;
    };
    error_code ec;
    s.open(dst.is_v4() ? tcp::v4() : tcp::v6(), ec);
    if (ec) return failed("socket: " + ec.message());
    const int fd = s.native_handle();
    const int one = 1;
    const std::uint32_t mark = proxy_.options_.bypass_mark;
    if (::setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) {
      return failed("SO_MARK: " + errno_text(errno));
    }
    if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, route.interface.c_str(),
                     static_cast<socklen_t>(route.interface.size())) != 0) {
      return failed("bind to device " + route.interface + ": " + errno_text(errno));
    }
    if (!route.source) return failed("interface " + route.interface + " has no address for this family");
    std::uint16_t port = 0;
    const auto lo = proxy_.options_.source_port_min, hi = proxy_.options_.source_port_max;
    if (lo != 0 && hi >= lo) {
      const std::uint32_t span = hi - lo + 1u;
      port = static_cast<std::uint16_t>(lo + proxy_.next_port_.fetch_add(1, std::memory_order_relaxed) % span);
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    } else {
      // No room outside the ephemeral range: let connect() pick (may collide, see above).
      ::setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    }
    s.bind(tcp::endpoint(net::to_asio(*route.source), port), ec);
    if (ec == asio::error::address_in_use) return UpstreamResult::kPortBusy;
    if (ec) return failed("bind " + route.source->to_string() + ": " + ec.message());
    return UpstreamResult::kOpen;
  }

  // Packet counts come from the kernel (TCP_INFO of the client socket), read when a
  // direction goes quiet rather than per transfer.
  static void refresh_packets(Session& s, tcp::socket& client) {
    std::uint32_t in = 0, out = 0;
    if (tcp_segments(client.native_handle(), in, out)) {
      s.packets_sent.store(in, std::memory_order_relaxed);
      s.packets_received.store(out, std::memory_order_relaxed);
    }
  }

  Pipe take_pipe() {
    if (!pipes_.empty()) {
      Pipe p = std::move(pipes_.back());
      pipes_.pop_back();
      return p;
    }
    return Pipe::make();
  }
  void give_pipe(Pipe p) {
    if (p.valid() && pipes_.size() < kPipePoolMax) pipes_.push_back(std::move(p));
  }

  // Writes buf[0, len) to `to`, waiting for room as needed. Returns 0 or an errno.
  awaitable<int> write_all(Session& s, tcp::socket& to, const char* buf, std::size_t len) {
    while (len > 0) {
      const ssize_t m = ::send(to.native_handle(), buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (m > 0) {
        buf += m;
        len -= static_cast<std::size_t>(m);
        s.touch();
        continue;
      }
      if (m < 0 && (errno == EAGAIN || errno == EINTR)) {
        error_code ec;
        co_await to.async_wait(tcp::socket::wait_write, asio::redirect_error(net::use_awaitable, ec));
        if (ec) co_return ECANCELED;
        continue;
      }
      co_return m < 0 ? errno : EPIPE;
    }
    co_return 0;
  }

  // Moves bytes from `from` to `to` until EOF (then half-closes `to`) or an error (then
  // resets both: a reset must reach the other side, not turn into a clean close).
  awaitable<void> pump(Session& s, tcp::socket& from, tcp::socket& to, bool upstream_dir) {
    auto& bytes = upstream_dir ? s.bytes_sent : s.bytes_received;
    tcp::socket& client = upstream_dir ? from : to;
    std::int64_t last_refresh = 0;
    const auto finish_error = [&](int err) {
      log::debug("tcp #", s.id, ": ", upstream_dir ? "client" : "server", " side: ", errno_text(err));
      reset(from);
      reset(to);
    };
    for (;;) {
      error_code ec;
      co_await from.async_wait(tcp::socket::wait_read, asio::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;  // closed by the other direction, the watchdog or stop
      Pipe pipe = take_pipe();
      if (!pipe.valid()) {
        log::warn("tcp #", s.id, ": pipe: ", errno_text(errno));
        reset(from);
        reset(to);
        co_return;
      }
      std::size_t in_pipe = 0;
      std::size_t moved = 0;
      bool eof = false;
      bool stuck = false;
      int fail = 0;
      // Drain what is readable now, pushing it out as it comes.
      for (;;) {
        const ssize_t n = ::splice(from.native_handle(), nullptr, pipe.write.get(), nullptr,
                                   kSpliceChunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          in_pipe += static_cast<std::size_t>(n);
          moved += static_cast<std::size_t>(n);
          bytes.fetch_add(static_cast<std::uint64_t>(n), std::memory_order_relaxed);
        } else if (n == 0) {
          eof = true;
        } else if (errno == EAGAIN || errno == EINTR) {
          // Readable yet nothing to splice: TCP urgent data stops splice at its mark.
          stuck = moved == 0;
        } else {
          fail = errno;
        }
        while (in_pipe > 0) {
          const ssize_t m = ::splice(pipe.read.get(), nullptr, to.native_handle(), nullptr, in_pipe,
                                     SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
          if (m > 0) {
            in_pipe -= static_cast<std::size_t>(m);
            s.touch();  // progress in either direction keeps a slow reader's flow alive
            continue;
          }
          if (m < 0 && (errno == EAGAIN || errno == EINTR)) {
            co_await to.async_wait(tcp::socket::wait_write, asio::redirect_error(net::use_awaitable, ec));
            if (ec) co_return;  // the pipe holds data: it is dropped with the frame
            continue;
          }
          fail = m < 0 ? errno : EPIPE;
          break;
        }
        if (n <= 0 || fail != 0) break;
      }
      if (fail != 0) {
        finish_error(fail);
        co_return;
      }
      give_pipe(std::move(pipe));  // empty here
      if (stuck) {
        // Past the urgent mark with a plain read (SO_OOBINLINE keeps the byte in the
        // stream); the buffer exists only for this read.
        auto buf = std::make_unique<char[]>(kCopyChunk);
        const ssize_t r = ::recv(from.native_handle(), buf.get(), kCopyChunk, MSG_DONTWAIT);
        if (r > 0) {
          bytes.fetch_add(static_cast<std::uint64_t>(r), std::memory_order_relaxed);
          moved += static_cast<std::size_t>(r);
          if (const int err = co_await write_all(s, to, buf.get(), static_cast<std::size_t>(r)); err != 0) {
            if (err != ECANCELED) finish_error(err);
            co_return;
          }
        } else if (r == 0) {
          eof = true;
        } else if (errno != EAGAIN && errno != EINTR) {
          finish_error(errno);
          co_return;
        }
      }
      if (moved > 0) s.touch();
      const std::int64_t now = steady_ms();
      if (now - last_refresh >= 100) {
        refresh_packets(s, client);
        last_refresh = now;
      }
      if (eof) {
        to.shutdown(tcp::socket::shutdown_send, ec);
        co_return;
      }
    }
  }

  // Ends the flow after idle_timeout without traffic in either direction.
  awaitable<void> watchdog(Session& s) {
    const auto idle = proxy_.options_.idle_timeout;
    asio::steady_timer t(ctx_);
    for (;;) {
      const std::int64_t last = s.last_activity_ms.load(std::memory_order_relaxed);
      const std::int64_t left = last + idle.count() - steady_ms();
      if (left <= 0) {
        log::debug("tcp #", s.id, ": idle for ", idle.count(), "ms, closing");
        co_return;
      }
      t.expires_after(std::chrono::milliseconds(left));
      error_code ec;
      co_await t.async_wait(asio::redirect_error(net::use_awaitable, ec));
      if (ec) co_return;
    }
  }

  TcpProxy& proxy_;
  [[maybe_unused]] unsigned index_;
  // Declared before ctx_: destroying ctx_ destroys the frames of sessions still alive
  // at a hard stop, and their destructors touch these.
  std::unordered_map<std::uint64_t, Flow> flows_;
  std::vector<Pipe> pipes_;
  std::string upstream_error_;
  bool stopping_ = false;
  std::shared_ptr<Mailbox> mailbox_ = std::make_shared<Mailbox>();
  asio::io_context ctx_{1};
  std::vector<tcp::acceptor> acceptors_;  // after ctx_: they need it to close
  std::thread thread_;
};

TcpProxy::TcpProxy(TcpProxyOptions options, const decider::Decider& decider,
                   SessionTable& sessions)
    : options_(options), decider_(decider), sessions_(sessions) {}

TcpProxy::~TcpProxy() { stop(); }

std::pair<std::uint16_t, std::uint16_t> upstream_port_range(unsigned low, unsigned high) {
  constexpr unsigned kMinPorts = 1024;
  if (high < 65535 && 65535 - high >= kMinPorts) return {static_cast<std::uint16_t>(high + 1), 65535};
  if (low > 1024 && low - 1024 >= kMinPorts) return {1024, static_cast<std::uint16_t>(low - 1)};
  return {0, 0};
}

Expected<void, std::string> TcpProxy::start() {
  // splice(2) to a socket the peer reset raises SIGPIPE; the proxy handles EPIPE instead.
  ::signal(SIGPIPE, SIG_IGN);
  if (options_.source_port_min == 0 && options_.source_port_max == 0) {
    unsigned low = 32768, high = 60999;
    std::ifstream("/proc/sys/net/ipv4/ip_local_port_range") >> low >> high;
    std::tie(options_.source_port_min, options_.source_port_max) = upstream_port_range(low, high);
    if (options_.source_port_min == 0) {
      log::warn("tcp proxy: the ephemeral port range ", low, "-", high,
                " leaves no room for upstream ports; apps may collide with tunnelled flows");
    } else {
      log::info("tcp proxy: upstream source ports ", options_.source_port_min, "-",
                options_.source_port_max, " (outside the ephemeral range ", low, "-", high, ")");
    }
  }
  next_port_.store(static_cast<std::uint32_t>(std::random_device{}()));
  unsigned n = options_.threads ? options_.threads : std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; ++i) {
    auto w = std::make_unique<Worker>(*this, i);
    if (auto r = w->listen(); !r) {
      workers_.clear();
      return r;
    }
    workers_.push_back(std::move(w));
  }
  for (auto& w : workers_) w->start();
  return {};
}

void TcpProxy::stop(std::chrono::milliseconds deadline) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  for (auto& w : workers_) w->request_stop();  // all at once: one slow worker must not
  for (auto& w : workers_) w->join(until);     // eat the others' share of the deadline
  workers_.clear();
}

}  // namespace splitd::proxy
