#include "dns/forwarder.hpp"

#include <net/if.h>
#include <netinet/in.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <list>
#include <random>
#include <sstream>
#include <unordered_map>

#include "common/asio.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "decider/decider.hpp"
#include "dns/message.hpp"
#include "dns/name_store.hpp"

namespace splitd::dns {

const char* to_string(QueryRoute r) {
  switch (r) {
    case QueryRoute::kTunnel: return "tunnel";
    case QueryRoute::kDirect: return "direct";
    case QueryRoute::kBlock: return "block";
    case QueryRoute::kLocal: return "local";
  }
  return "?";
}

const char* to_string(QueryResult r) {
  switch (r) {
    case QueryResult::kAnswered: return "answered";
    case QueryResult::kCached: return "cached";
    case QueryResult::kServfail: return "servfail";
    case QueryResult::kBlocked: return "blocked";
    case QueryResult::kCanary: return "canary";
    case QueryResult::kFormerr: return "formerr";
    case QueryResult::kDropped: return "dropped";
  }
  return "?";
}

std::vector<IpAddress> parse_resolv_conf(const std::string& text) {
  std::vector<IpAddress> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string key, value;
    if (!(words >> key >> value) || key != "nameserver") continue;
    // "fe80::1%eth0": a scoped address names its link; splitd binds by route instead.
    if (const auto pct = value.find('%'); pct != std::string::npos) value.resize(pct);
    auto ip = IpAddress::parse(value);
    if (!ip) continue;
    const IpAddress u = ip->unmapped();
    if (u.is_loopback() || u.is_unspecified()) continue;
    if (std::find(out.begin(), out.end(), u) == out.end()) out.push_back(u);
  }
  return out;
}

std::vector<IpAddress> system_resolvers(const std::string& etc, const std::string& resolved) {
  const auto read = [](const std::string& path) {
    std::ifstream f(path);
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
  };
  auto servers = parse_resolv_conf(read(etc));
  if (servers.empty()) servers = parse_resolv_conf(read(resolved));
  return servers;
}

namespace {

namespace asio = net::asio;
using net::error_code;
using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxUdp = 65535;
constexpr std::size_t kMaxQuery = 4096;
// Addresses learned from one answer: a wildcard zone answering thousands of records must
// not flood the store (and evict the names of real connections).
constexpr std::size_t kMaxLearnedPerAnswer = 64;
// Cached answers: none larger than this, and at most kCacheBytes per worker.
constexpr std::size_t kMaxCachedAnswer = 8192;
constexpr std::size_t kCacheBytes = 16u << 20;
// An upstream socket (one random source port) serves this many queries, then a new one
// takes over: an off-path spoofer must guess the port as well as the id.
constexpr std::uint32_t kQueriesPerUpstreamSocket = 32;
constexpr char kCanary[] = "use-application-dns.net";
constexpr std::uint8_t kRcodeServfail = 2, kRcodeNxdomain = 3, kRcodeRefused = 5;

std::string errno_text(int err) { return std::strerror(err); }

bool set_int(int fd, int level, int name, int value) {
  return ::setsockopt(fd, level, name, &value, sizeof value) == 0;
}

socklen_t to_sockaddr(const IpAddress& ip, std::uint16_t port, sockaddr_storage& ss) {
  std::memset(&ss, 0, sizeof ss);
  if (ip.is_v4()) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr = ip.to_in_addr();
    return sizeof *a;
  }
  auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
  a->sin6_family = AF_INET6;
  a->sin6_port = htons(port);
  a->sin6_addr = ip.to_in6_addr();
  return sizeof *a;
}

bool from_sockaddr(const sockaddr_storage& ss, IpAddress& ip, std::uint16_t& port) {
  if (ss.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
    ip = IpAddress::v4(a->sin_addr);
    port = ntohs(a->sin_port);
    return true;
  }
  if (ss.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
    ip = IpAddress::v6(a->sin6_addr);
    port = ntohs(a->sin6_port);
    return true;
  }
  return false;
}

// Splits a socket into the route of a query: SO_MARK (never captured again),
// SO_BINDTODEVICE and the interface's address.
Expected<void, std::string> bind_to_route(int fd, const decider::Route& route, std::uint32_t mark) {
  if (!set_int(fd, SOL_SOCKET, SO_MARK, static_cast<int>(mark))) {
    return unexpected("SO_MARK: " + errno_text(errno));
  }
  if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, route.interface.c_str(),
                   static_cast<socklen_t>(route.interface.size())) != 0) {
    return unexpected("SO_BINDTODEVICE " + route.interface + ": " + errno_text(errno));
  }
  if (route.source) {
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(*route.source, 0, ss);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      return unexpected("bind " + route.source->to_string() + ": " + errno_text(errno));
    }
  }
  return {};
}

struct IpPortHash {
  std::size_t operator()(const std::pair<IpAddress, std::uint16_t>& k) const {
    std::size_t h = k.second;
    for (std::uint8_t b : k.first.bytes()) h = h * 131 + b;
    return h;
  }
};

}  // namespace

struct Forwarder::Shared {
  mutable std::mutex mu;
  Upstreams upstreams;
};

// One thread's forwarder: its own io_context, listeners (SO_REUSEPORT: the kernel spreads
// the captured queries over the workers), upstream sockets, pending queries and cache.
class Forwarder::Worker {
 public:
  Worker(const decider::RuleDecider& decider, NameStore& names, ForwarderOptions o, Shared& shared)
      : decider_(decider), names_(names), opts_(o), shared_(shared), rng_(std::random_device{}()) {}

  Expected<void, std::string> start() {
    for (bool v6 : {false, true}) {
      if (v6 && !opts_.ipv6) continue;
      const IpAddress lo = v6 ? IpAddress::v6(in6addr_loopback) : IpAddress::v4(INADDR_LOOPBACK);
      if (auto r = listen_udp(lo); !r) return r;
      if (auto r = listen_tcp(lo); !r) return r;
    }
    arm_sweep();
    thread_ = std::thread([this] {
      try {
        ctx_.run();
      } catch (const std::exception& e) {
        log::error("dns: forwarder stopped: ", e.what());
      }
    });
    return {};
  }

  void stop() {
    if (!thread_.joinable()) return;
    asio::post(ctx_, [this] {
      stopping_ = true;
      for (auto& a : acceptors_) a->close();
      for (auto& l : udp_listeners_) l->desc.close();
      for (auto& [k, r] : reply_sockets_) r->desc.close();
      for (auto& [k, u] : upstream_sockets_) u->desc.close();
      for (auto& u : dead_upstreams_) u->desc.close();
      for (auto& c : tcp_clients_) {
        if (auto s = c.lock()) s->sock.close();
      }
      sweep_timer_.cancel();
      ctx_.stop();
    });
    thread_.join();
  }


  ForwarderStats stats() const {
    ForwarderStats s;
    for (std::size_t r = 0; r < kQueryRoutes; ++r) {
      for (std::size_t k = 0; k < kQueryResults; ++k) {
        s.queries[r][k] = queries_[r][k].load(std::memory_order_relaxed);
      }
    }
    s.malformed_queries = malformed_queries_.load(std::memory_order_relaxed);
    s.malformed_answers = malformed_answers_.load(std::memory_order_relaxed);
    s.upstream_timeouts = upstream_timeouts_.load(std::memory_order_relaxed);
    s.upstream_errors = upstream_errors_.load(std::memory_order_relaxed);
    s.tcp_retries = tcp_retries_.load(std::memory_order_relaxed);
    s.tcp_clients = tcp_clients_total_.load(std::memory_order_relaxed);
    s.cache_entries = cache_size_.load(std::memory_order_relaxed);
    for (std::size_t i = 0; i < s.latency_buckets.size(); ++i) {
      s.latency_buckets[i] = latency_buckets_[i].load(std::memory_order_relaxed);
    }
    s.latency_count = latency_count_.load(std::memory_order_relaxed);
    s.latency_sum_seconds =
        static_cast<double>(latency_sum_us_.load(std::memory_order_relaxed)) / 1e6;
    return s;
  }

  void clear_cache() {
    asio::post(ctx_, [this] {
      cache_.clear();
      cache_lru_.clear();
      cache_bytes_ = 0;
      cache_size_.store(0, std::memory_order_relaxed);
    });
  }

 private:
  // Where a query came from, and how to answer it.
  struct TcpClient;
  struct ClientRef {
    bool tcp = false;
    IpAddress addr;                    // the client
    std::uint16_t port = 0;
    IpAddress server;                  // the address it asked (the original destination)
    std::uint16_t server_port = 0;
    std::weak_ptr<TcpClient> conn;     // tcp
  };

  struct UdpSock {
    explicit UdpSock(asio::io_context& ctx) : desc(ctx) {}
    asio::posix::stream_descriptor desc;  // owns the fd
  };

  // A socket to one upstream server over one route: several queries in flight, told
  // apart by their ids.
  struct Upstream {
    explicit Upstream(asio::io_context& ctx) : desc(ctx) {}
    IpAddress server;
    std::uint32_t ifindex = 0;
    std::optional<IpAddress> source;  // the interface address it is bound to
    asio::posix::stream_descriptor desc;
    std::unordered_map<std::uint16_t, std::uint64_t> inflight;  // id -> pending serial
    Clock::time_point last_used;
    std::uint32_t uses = 0;  // queries sent on it
  };
  // By (server, interface index).
  using UpstreamMap =
      std::unordered_map<std::pair<IpAddress, std::uint16_t>, std::unique_ptr<Upstream>, IpPortHash>;

  struct Pending {
    std::uint64_t serial = 0;
    ClientRef client;
    std::vector<std::uint8_t> wire;  // the client's query as sent
    Query q;
    decider::SessionInfo info;  // the client, its app identified once
    QueryRoute route = QueryRoute::kTunnel;
    std::vector<IpAddress> servers;
    std::size_t next_server = 0;
    // The current try.
    std::uint32_t attempt = 0;
    Upstream* up = nullptr;          // UDP try: its socket and id
    std::uint16_t up_id = 0;
    IpAddress server;
    decider::Route server_route;
    // on_query's decision, for the first try to a server of that family (later tries
    // decide again: the tunnel may have gone meanwhile).
    std::optional<decider::Route> decided;
    IpAddress::Family decided_family = IpAddress::Family::kV4;
    Clock::time_point sent_at;
    Clock::time_point started_at;
  };

  struct TcpClient : std::enable_shared_from_this<TcpClient> {
    explicit TcpClient(asio::io_context& ctx) : sock(ctx), idle(ctx) {}
    net::tcp::socket sock;
    asio::steady_timer idle;
    std::deque<std::vector<std::uint8_t>> out;
    bool writing = false;
    std::size_t inflight = 0;
  };

  struct CacheEntry {
    std::vector<std::uint8_t> wire;
    std::vector<std::uint16_t> ttl_offsets;
    std::vector<std::string> names;
    std::vector<LearnedAddress> addresses;
    Clock::time_point stored;
    Clock::time_point learned;  // when its addresses last went into the store
    Clock::time_point expires;
    std::list<std::string>::iterator lru;
  };

  // ---- listeners ---------------------------------------------------------------------

  Expected<void, std::string> listen_udp(const IpAddress& lo) {
    const bool v6 = lo.is_v6();
    Fd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) {
      if (v6 && errno == EAFNOSUPPORT) return {};
      return unexpected("dns: UDP socket: " + errno_text(errno));
    }
    if (v6) set_int(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
    set_int(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1);
    set_int(fd.get(), SOL_SOCKET, SO_REUSEPORT, 1);
    if (!set_int(fd.get(), v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1)) {
      return unexpected("dns: transparent UDP listener: " + errno_text(errno) +
                        (errno == EPERM ? " (needs CAP_NET_ADMIN)" : ""));
    }
    set_int(fd.get(), v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_RECVORIGDSTADDR : IP_RECVORIGDSTADDR, 1);
    set_int(fd.get(), SOL_SOCKET, SO_MARK, static_cast<int>(opts_.bypass_mark));
    if (!set_int(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)) {
      set_int(fd.get(), SOL_SOCKET, SO_RCVBUF, 4 << 20);
    }
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(lo, opts_.port, ss);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      const int err = errno;
      return unexpected("dns: bind UDP " + lo.to_string() + " port " + std::to_string(opts_.port) +
                        ": " + errno_text(err) +
                        (err == EADDRINUSE ? " (another splitd? change dns.forwarder_port)" : ""));
    }
    auto s = std::make_unique<UdpSock>(ctx_);
    s->desc.assign(fd.release());
    UdpSock* raw = s.get();
    udp_listeners_.push_back(std::move(s));
    wait_udp(*raw, std::nullopt);
    return {};
  }

  Expected<void, std::string> listen_tcp(const IpAddress& lo) {
    auto a = std::make_unique<net::tcp::acceptor>(ctx_);
    error_code ec;
    a->open(lo.is_v6() ? net::tcp::v6() : net::tcp::v4(), ec);
    if (ec) {
      if (lo.is_v6()) return {};
      return unexpected("dns: TCP socket: " + ec.message());
    }
    const int fd = a->native_handle();
    if (lo.is_v6()) set_int(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    set_int(fd, SOL_SOCKET, SO_REUSEADDR, 1);
    set_int(fd, SOL_SOCKET, SO_REUSEPORT, 1);
    if (!set_int(fd, lo.is_v6() ? SOL_IPV6 : SOL_IP, lo.is_v6() ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1)) {
      return unexpected("dns: transparent TCP listener: " + errno_text(errno));
    }
    set_int(fd, SOL_SOCKET, SO_MARK, static_cast<int>(opts_.bypass_mark));
    a->bind(net::tcp::endpoint(net::to_asio(lo), opts_.port), ec);
    if (ec) {
      return unexpected("dns: bind TCP " + lo.to_string() + " port " + std::to_string(opts_.port) +
                        ": " + ec.message());
    }
    a->listen(128, ec);
    if (ec) return unexpected("dns: listen TCP: " + ec.message());
    auto* raw = a.get();
    acceptors_.push_back(std::move(a));
    accept_next(*raw);
    return {};
  }

  // `fixed`: a reply socket (bound to the server address the clients asked), whose
  // datagrams are queries to that address.
  void wait_udp(UdpSock& s, std::optional<std::pair<IpAddress, std::uint16_t>> fixed) {
    s.desc.async_wait(asio::posix::stream_descriptor::wait_read, [this, &s, fixed](error_code ec) {
      if (ec || stopping_) return;
      drain_udp(s, fixed);
      wait_udp(s, fixed);
    });
  }

  void drain_udp(UdpSock& s, const std::optional<std::pair<IpAddress, std::uint16_t>>& fixed) {
    for (int n = 0; n < 64; ++n) {
      sockaddr_storage from{};
      alignas(cmsghdr) char control[128];
      iovec iov{buf_.data(), buf_.size()};
      msghdr msg{};
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      const ssize_t got = ::recvmsg(s.desc.native_handle(), &msg, MSG_DONTWAIT);
      if (got < 0) return;  // EAGAIN (or an error the next wait reports again)
      ClientRef c;
      if (!from_sockaddr(from, c.addr, c.port)) continue;
      bool have_dst = false;
      if (fixed) {
        c.server = fixed->first;
        c.server_port = fixed->second;
        have_dst = true;
      }
      for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm != nullptr && !have_dst; cm = CMSG_NXTHDR(&msg, cm)) {
        if ((cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_ORIGDSTADDR) ||
            (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_ORIGDSTADDR)) {
          sockaddr_storage dst{};
          std::memcpy(&dst, CMSG_DATA(cm),
                      std::min<std::size_t>(cm->cmsg_len - CMSG_LEN(0), sizeof dst));
          have_dst = from_sockaddr(dst, c.server, c.server_port);
        }
      }
      if (!have_dst || (msg.msg_flags & MSG_TRUNC) != 0) {
        count(QueryRoute::kLocal, QueryResult::kDropped);
        continue;
      }
      const std::span<const std::uint8_t> wire(buf_.data(), static_cast<std::size_t>(got));
      on_query(std::move(c), wire);
    }
  }

  void accept_next(net::tcp::acceptor& a) {
    a.async_accept([this, &a](error_code ec, net::tcp::socket sock) {
      if (stopping_) return;
      if (!ec) on_tcp_client(std::move(sock));
      if (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) return;
      if (ec) {
        // EMFILE and the like: the listener stays readable, so accepting again at once
        // would spin. Wait a little; UDP keeps being served meanwhile.
        log::debug("dns: accept: ", ec.message(), "; pausing TCP accepts for 100 ms");
        auto t = std::make_shared<asio::steady_timer>(ctx_, std::chrono::milliseconds(100));
        t->async_wait([this, &a, t](error_code tec) {
          if (!tec && !stopping_) accept_next(a);
        });
        return;
      }
      accept_next(a);
    });
  }

  void on_tcp_client(net::tcp::socket sock) {
    std::erase_if(tcp_clients_, [](const std::weak_ptr<TcpClient>& w) { return w.expired(); });
    if (tcp_clients_.size() >= opts_.max_tcp_clients) {
      count(QueryRoute::kLocal, QueryResult::kDropped);
      return;  // closed: the client retries or gives up
    }
    error_code ec;
    const auto peer = sock.remote_endpoint(ec);
    const auto local = sock.local_endpoint(ec);
    if (ec) return;
    auto c = std::make_shared<TcpClient>(ctx_);
    c->sock = std::move(sock);
    tcp_clients_.push_back(c);
    tcp_clients_total_.fetch_add(1, std::memory_order_relaxed);
    ClientRef ref;
    ref.tcp = true;
    ref.addr = net::to_ip(peer.address()).unmapped();
    ref.port = peer.port();
    ref.server = net::to_ip(local.address()).unmapped();
    ref.server_port = local.port();
    ref.conn = c;
    asio::co_spawn(ctx_, tcp_reader(c, ref), asio::detached);
  }

  net::awaitable<void> tcp_reader(std::shared_ptr<TcpClient> c, ClientRef ref) {
    std::vector<std::uint8_t> msg;
    for (;;) {
      c->idle.expires_after(opts_.tcp_idle);
      c->idle.async_wait([w = std::weak_ptr<TcpClient>(c)](error_code ec) {
        if (ec) return;
        if (auto s = w.lock()) {
          error_code ignored;
          s->sock.close(ignored);
        }
      });
      std::uint8_t len_be[2];
      auto [ec, n] = co_await asio::async_read(c->sock, asio::buffer(len_be),
                                               asio::as_tuple(net::use_awaitable));
      if (ec) break;
      const std::size_t len = (std::size_t{len_be[0]} << 8) | len_be[1];
      if (len < 12) {
        // Not even a header: nothing to answer, and the stream is out of step. Closed.
        malformed_queries_.fetch_add(1, std::memory_order_relaxed);
        count(QueryRoute::kLocal, QueryResult::kDropped);
        break;
      }
      msg.resize(len);
      if (len != 0) {
        auto [ec2, n2] = co_await asio::async_read(c->sock, asio::buffer(msg),
                                                   asio::as_tuple(net::use_awaitable));
        if (ec2) break;
      }
      if (c->inflight + c->out.size() >= opts_.max_tcp_queries) {
        count(QueryRoute::kLocal, QueryResult::kDropped);
        break;  // a client that will not read its answers: close it
      }
      ++c->inflight;
      on_query(ref, msg);
    }
    c->idle.cancel();
    error_code ignored;
    c->sock.close(ignored);
  }

  void tcp_send(const std::shared_ptr<TcpClient>& c, std::span<const std::uint8_t> answer) {
    if (c->inflight > 0) --c->inflight;
    if (!c->sock.is_open()) return;
    std::vector<std::uint8_t> framed(answer.size() + 2);
    framed[0] = static_cast<std::uint8_t>(answer.size() >> 8);
    framed[1] = static_cast<std::uint8_t>(answer.size());
    std::memcpy(framed.data() + 2, answer.data(), answer.size());
    c->out.push_back(std::move(framed));
    if (!c->writing) tcp_write_next(c);
  }

  void tcp_write_next(std::shared_ptr<TcpClient> c) {
    if (c->out.empty()) {
      c->writing = false;
      return;
    }
    c->writing = true;
    asio::async_write(c->sock, asio::buffer(c->out.front()), [this, c](error_code ec, std::size_t) {
      c->out.pop_front();
      if (ec) {
        c->out.clear();
        c->writing = false;
        return;
      }
      tcp_write_next(c);
    });
  }

  // ---- queries -----------------------------------------------------------------------

  void count(QueryRoute r, QueryResult k) {
    queries_[static_cast<std::size_t>(r)][static_cast<std::size_t>(k)].fetch_add(
        1, std::memory_order_relaxed);
  }

  decider::SessionInfo client_info(const ClientRef& c) const {
    decider::SessionInfo info;
    info.protocol = c.tcp ? decider::Protocol::kTcp : decider::Protocol::kUdp;
    info.src = c.addr;
    info.src_port = c.port;
    info.dst = c.server;
    info.dst_port = c.server_port;
    // App rules (and exec) apply to a query like to a flow: the client socket's app.
    decider::identify_client(opts_.identifier, *decider_.rules(), info);
    return info;
  }

  void on_query(ClientRef c, std::span<const std::uint8_t> wire) {
    // Real queries are a few hundred bytes; a larger one would only hold memory while it
    // waits for an upstream.
    if (wire.size() > kMaxQuery) {
      malformed_queries_.fetch_add(1, std::memory_order_relaxed);
      count(QueryRoute::kLocal, QueryResult::kDropped);
      drop(c);
      return;
    }
    auto parsed = parse_query(wire);
    if (!parsed) {
      malformed_queries_.fetch_add(1, std::memory_order_relaxed);
      if (auto formerr = formerr_for(wire)) {
        count(QueryRoute::kLocal, QueryResult::kFormerr);
        reply(c, *formerr, nullptr);
      } else {
        count(QueryRoute::kLocal, QueryResult::kDropped);
        drop(c);
      }
      return;
    }
    Query& q = parsed.value();
    if (opts_.doh_canary && q.name == kCanary) {
      count(QueryRoute::kLocal, QueryResult::kCanary);
      reply(c, make_response(wire, q, kRcodeNxdomain), &q);
      return;
    }
    decider::SessionInfo info = client_info(c);
    // The route kind of the name; each server's own family picks its interface below. A
    // side with only IPv6 (a tunnel without an IPv4 address) is still that side.
    IpAddress::Family family = IpAddress::Family::kV4;
    decider::Route route = decider_.decide_name(info, q.name, family);
    if (route.kind == decider::RouteKind::kBlock) {
      family = IpAddress::Family::kV6;
      route = decider_.decide_name(info, q.name, family);
    }
    if (route.kind == decider::RouteKind::kBlock) {
      count(QueryRoute::kBlock, QueryResult::kBlocked);
      reply(c, make_response(wire, q, kRcodeServfail), &q);
      return;
    }
    const QueryRoute qr = route.kind == decider::RouteKind::kTunnel ? QueryRoute::kTunnel
                                                                    : QueryRoute::kDirect;
    if (serve_cached(c, wire, q, qr)) return;
    if (pending_.size() >= opts_.max_pending) {
      count(qr, QueryResult::kServfail);
      reply(c, make_response(wire, q, kRcodeServfail), &q);
      return;
    }
    auto p = std::make_unique<Pending>();
    p->serial = ++serial_;
    p->client = std::move(c);
    p->wire.assign(wire.begin(), wire.end());
    p->q = std::move(q);
    p->info = std::move(info);
    p->route = qr;
    p->decided = std::move(route);
    p->decided_family = family;
    {
      std::lock_guard lock(shared_.mu);
      p->servers = qr == QueryRoute::kTunnel ? shared_.upstreams.tunnel : shared_.upstreams.for_direct();
    }
    p->started_at = Clock::now();
    Pending& ref = *p;
    pending_.emplace(p->serial, std::move(p));
    try_next(ref);
  }

  // Sends the query to the next server that has a route; SERVFAIL when none is left.
  void try_next(Pending& p) {
    const decider::SessionInfo& info = p.info;
    while (p.next_server < p.servers.size()) {
      const IpAddress server = p.servers[p.next_server++];
      decider::Route r = p.decided && server.family() == p.decided_family
                             ? std::move(*p.decided)
                             : decider_.decide_name(info, p.q.name, server.family());
      p.decided.reset();
      const bool same_side = (r.kind == decider::RouteKind::kTunnel) == (p.route == QueryRoute::kTunnel);
      if (r.kind == decider::RouteKind::kBlock || !same_side) continue;
      ++p.attempt;
      p.server = server;
      p.server_route = std::move(r);
      p.sent_at = Clock::now();
      if (send_udp(p)) return;
      upstream_errors_.fetch_add(1, std::memory_order_relaxed);
    }
    if (p.servers.empty()) {
      warn_once(p.route == QueryRoute::kTunnel ? "dns.servers is empty"
                                               : "no direct DNS servers (dns.direct_servers is empty and the system names none)");
    }
    fail(p, QueryResult::kServfail);
  }

  // At most one warning per 30 s per worker: a condition that fails every query must not
  // flood the log.
  bool warning_due() {
    const auto now = Clock::now();
    if (now - last_warning_ < std::chrono::seconds(30)) return false;
    last_warning_ = now;
    return true;
  }

  void warn_once(const std::string& what) {
    if (warning_due()) log::warn("dns: ", what, ": answering SERVFAIL");
  }

  Upstream* upstream_for(const IpAddress& server, const decider::Route& route) {
    const std::pair<IpAddress, std::uint16_t> key{server, static_cast<std::uint16_t>(route.ifindex)};
    auto it = upstream_sockets_.find(key);
    if (it != upstream_sockets_.end()) {
      // The same interface with another address (a VPN reconnecting): the socket's bind
      // is stale. Its queries in flight time out and go to the next server.
      if (it->second->source == route.source) return it->second.get();
      retire_upstream(it);
    }
    if (upstream_sockets_.size() >= 64) close_idle_upstreams();
    Fd fd(::socket(server.af(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return nullptr;
    // Answers of every query in flight to this server land here: room for bursts.
    if (!set_int(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, 1 << 20)) set_int(fd.get(), SOL_SOCKET, SO_RCVBUF, 1 << 20);
    if (auto r = bind_to_route(fd.get(), route, opts_.bypass_mark); !r) {
      log::debug("dns: upstream socket for ", server.to_string(), ": ", r.error());
      return nullptr;
    }
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(server, 53, ss);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      log::debug("dns: connect ", server.to_string(), ": ", errno_text(errno));
      return nullptr;
    }
    auto u = std::make_unique<Upstream>(ctx_);
    u->server = server;
    u->ifindex = route.ifindex;
    u->source = route.source;
    u->desc.assign(fd.release());
    Upstream* raw = u.get();
    upstream_sockets_.emplace(key, std::move(u));
    wait_upstream(raw, key);
    return raw;
  }

  // `keep_reading`: the socket still receives the answers of its queries in flight (a
  // rotation); otherwise it is closed now (its address is stale) and they time out.
  void retire_upstream(UpstreamMap::iterator it, bool keep_reading = false) {
    if (!keep_reading || it->second->inflight.empty()) it->second->desc.close();
    dead_upstreams_.push_back(std::move(it->second));
    upstream_sockets_.erase(it);
  }

  void close_idle_upstreams() {
    for (auto it = upstream_sockets_.begin(); it != upstream_sockets_.end();) {
      auto next = std::next(it);
      if (it->second->inflight.empty()) retire_upstream(it);
      it = next;
    }
  }

  void wait_upstream(Upstream* u, std::pair<IpAddress, std::uint16_t> key) {
    u->desc.async_wait(asio::posix::stream_descriptor::wait_read, [this, u, key](error_code ec) {
      if (ec || stopping_) return;
      for (int n = 0; n < 64; ++n) {
        const ssize_t got = ::recv(u->desc.native_handle(), buf_.data(), buf_.size(), MSG_DONTWAIT);
        if (got < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK) break;
          continue;  // ECONNREFUSED from an ICMP error: the try times out or the next answers
        }
        on_upstream_answer(*u, std::span<const std::uint8_t>(buf_.data(), static_cast<std::size_t>(got)));
      }
      wait_upstream(u, key);
    });
  }

  bool send_udp(Pending& p) {
    Upstream* u = upstream_for(p.server, p.server_route);
    if (u == nullptr) return false;
    std::uint16_t id = 0;
    for (int tries = 0; tries < 16; ++tries) {
      id = random_id();
      if (!u->inflight.contains(id)) break;
    }
    if (u->inflight.contains(id)) return false;
    std::vector<std::uint8_t>& out = send_buf_;
    out.assign(p.wire.begin(), p.wire.end());
    set_id(out, id);
    if (::send(u->desc.native_handle(), out.data(), out.size(), MSG_DONTWAIT) < 0) {
      const int err = errno;
      log::debug("dns: send to ", p.server.to_string(), " via ", p.server_route.interface, ": ",
                 errno_text(err));
      // A socket whose interface went away stays broken: the next query makes a new one.
      if (err != EAGAIN && err != EWOULDBLOCK) {
        auto it = upstream_sockets_.find({p.server, static_cast<std::uint16_t>(p.server_route.ifindex)});
        if (it != upstream_sockets_.end()) retire_upstream(it);
      }
      return false;
    }
    u->inflight.emplace(id, p.serial);
    u->last_used = Clock::now();
    if (++u->uses >= kQueriesPerUpstreamSocket) {
      // Retired now, freed once its queries are answered or timed out; the next query
      // opens a socket with a new random port.
      auto it = upstream_sockets_.find({p.server, static_cast<std::uint16_t>(p.server_route.ifindex)});
      if (it != upstream_sockets_.end() && it->second.get() == u) retire_upstream(it, /*keep_reading=*/true);
    }
    p.up = u;
    p.up_id = id;
    deadlines_.push_back({Clock::now() + opts_.timeout, p.serial, p.attempt});
    return true;
  }

  void on_upstream_answer(Upstream& u, std::span<const std::uint8_t> wire) {
    if (wire.size() < 2) return;
    const std::uint16_t id = static_cast<std::uint16_t>((wire[0] << 8) | wire[1]);
    auto it = u.inflight.find(id);
    if (it == u.inflight.end()) return;  // late (timed out already) or spoofed
    auto pit = pending_.find(it->second);
    if (pit == pending_.end()) {
      u.inflight.erase(it);
      return;
    }
    Pending& p = *pit->second;
    // The upstream echoes the question we sent (the client's bytes): anything else is not
    // the answer to it, and is not worth a parse.
    if (!same_question(wire, p)) return;
    auto info = parse_answer(wire, p.q);
    if (info && !info->question_matches) return;  // not the answer to this question: keep waiting
    u.inflight.erase(it);
    p.up = nullptr;
    if (!info) {
      malformed_answers_.fetch_add(1, std::memory_order_relaxed);
      try_next(p);
      return;
    }
    if (info->tc) {
      tcp_retries_.fetch_add(1, std::memory_order_relaxed);
      asio::co_spawn(ctx_, tcp_attempt(p.serial, p.attempt), asio::detached);
      return;
    }
    upstream_answered(p, wire, std::move(info.value()));
  }

  static bool same_question(std::span<const std::uint8_t> answer, const Pending& p) {
    const std::size_t end = p.q.question_end;
    if (answer.size() < end || p.wire.size() < end || end < 12) return false;
    for (std::size_t i = 12; i < end; ++i) {
      std::uint8_t a = answer[i], b = p.wire[i];
      if (a >= 'A' && a <= 'Z') a = static_cast<std::uint8_t>(a - 'A' + 'a');
      if (b >= 'A' && b <= 'Z') b = static_cast<std::uint8_t>(b - 'A' + 'a');
      if (a != b) return false;
    }
    return true;
  }

  void upstream_answered(Pending& p, std::span<const std::uint8_t> wire, AnswerInfo info) {
    record_latency(Clock::now() - p.sent_at);
    if ((info.rcode == kRcodeServfail || info.rcode == kRcodeRefused) &&
        p.next_server < p.servers.size()) {
      upstream_errors_.fetch_add(1, std::memory_order_relaxed);
      try_next(p);
      return;
    }
    // Learned before the answer leaves: the app's connection that follows finds its name.
    learn(info.addresses, info.names, 0);
    std::vector<std::uint8_t> answer(wire.begin(), wire.end());
    store_cache(p, answer, info);
    finish(p, std::move(answer), QueryResult::kAnswered);
  }

  void learn(const std::vector<LearnedAddress>& addresses, const std::vector<std::string>& names,
             std::uint32_t elapsed) {
    const std::size_t n = std::min(addresses.size(), kMaxLearnedPerAnswer);
    for (std::size_t i = 0; i < n; ++i) {
      const LearnedAddress& a = addresses[i];
      names_.learn(a.ip, names, a.ttl > elapsed ? a.ttl - elapsed : 0, Source::kDns);
    }
  }

  // Sends an answer built from an upstream's (restored id and question) and forgets p.
  void finish(Pending& p, std::vector<std::uint8_t> answer, QueryResult result) {
    if (!restore_question(answer, p.wire, p.q)) {
      malformed_answers_.fetch_add(1, std::memory_order_relaxed);
      answer = make_response(p.wire, p.q, kRcodeServfail);
      result = QueryResult::kServfail;
    }
    count(p.route, result);
    reply(p.client, std::move(answer), &p.q);
    pending_.erase(p.serial);
  }

  void fail(Pending& p, QueryResult result) {
    count(p.route, result);
    reply(p.client, make_response(p.wire, p.q, kRcodeServfail), &p.q);
    pending_.erase(p.serial);
  }

  net::awaitable<void> tcp_attempt(std::uint64_t serial, std::uint32_t attempt) {
    auto pit = pending_.find(serial);
    if (pit == pending_.end()) co_return;
    const IpAddress server = pit->second->server;
    const decider::Route route = pit->second->server_route;
    std::vector<std::uint8_t> query = pit->second->wire;
    const auto id = random_id();
    set_id(query, id);

    auto sock = std::make_shared<net::tcp::socket>(ctx_);
    asio::steady_timer deadline(ctx_);
    deadline.expires_after(opts_.timeout);
    deadline.async_wait([sock](error_code ec) {
      if (ec) return;
      error_code ignored;
      sock->close(ignored);
    });
    std::vector<std::uint8_t> answer;
    const auto result = co_await [&]() -> net::awaitable<std::string> {
      error_code ec;
      sock->open(server.is_v4() ? net::tcp::v4() : net::tcp::v6(), ec);
      if (ec) co_return "socket: " + ec.message();
      if (auto r = bind_to_route(sock->native_handle(), route, opts_.bypass_mark); !r) co_return r.error();
      auto [cec] = co_await sock->async_connect(net::tcp::endpoint(net::to_asio(server), 53),
                                                asio::as_tuple(net::use_awaitable));
      if (cec) co_return "connect: " + cec.message();
      std::vector<std::uint8_t> framed(query.size() + 2);
      framed[0] = static_cast<std::uint8_t>(query.size() >> 8);
      framed[1] = static_cast<std::uint8_t>(query.size());
      std::memcpy(framed.data() + 2, query.data(), query.size());
      auto [wec, wn] = co_await asio::async_write(*sock, asio::buffer(framed),
                                                  asio::as_tuple(net::use_awaitable));
      if (wec) co_return "write: " + wec.message();
      std::uint8_t len_be[2];
      auto [rec, rn] = co_await asio::async_read(*sock, asio::buffer(len_be),
                                                 asio::as_tuple(net::use_awaitable));
      if (rec) co_return "read: " + rec.message();
      answer.resize((std::size_t{len_be[0]} << 8) | len_be[1]);
      auto [bec, bn] = co_await asio::async_read(*sock, asio::buffer(answer),
                                                 asio::as_tuple(net::use_awaitable));
      if (bec) co_return "read: " + bec.message();
      co_return std::string();
    }();
    deadline.cancel();
    error_code ignored;
    sock->close(ignored);

    pit = pending_.find(serial);
    if (pit == pending_.end() || pit->second->attempt != attempt) co_return;
    Pending& p = *pit->second;
    if (!result.empty()) {
      log::debug("dns: TCP to ", server.to_string(), ": ", result);
      upstream_errors_.fetch_add(1, std::memory_order_relaxed);
      try_next(p);
      co_return;
    }
    auto info = parse_answer(answer, p.q);
    const bool id_ok = answer.size() >= 2 && ((answer[0] << 8) | answer[1]) == id;
    if (!info || !id_ok || !info->question_matches) {
      malformed_answers_.fetch_add(1, std::memory_order_relaxed);
      try_next(p);
      co_return;
    }
    upstream_answered(p, answer, std::move(info.value()));
  }

  // ---- cache -------------------------------------------------------------------------

  static std::string cache_key(const Query& q, QueryRoute r) {
    std::string k = q.name;
    k += '\0';
    k += static_cast<char>(q.qtype >> 8);
    k += static_cast<char>(q.qtype);
    k += static_cast<char>(q.qclass >> 8);
    k += static_cast<char>(q.qclass);
    k += static_cast<char>((q.do_bit ? 1 : 0) | (q.cd ? 2 : 0) | (q.edns ? 4 : 0));
    k += static_cast<char>(r);
    return k;
  }

  void store_cache(const Pending& p, const std::vector<std::uint8_t>& answer, const AnswerInfo& info) {
    if (opts_.cache_ttl.count() == 0 || opts_.cache_entries == 0) return;
    if (info.rcode != 0 && info.rcode != kRcodeNxdomain) return;
    if (answer.size() > kMaxCachedAnswer) return;
    const std::uint32_t ttl = std::min<std::uint32_t>(
        info.min_ttl, static_cast<std::uint32_t>(opts_.cache_ttl.count()));
    if (ttl == 0) return;
    std::string key = cache_key(p.q, p.route);
    if (auto it = cache_.find(key); it != cache_.end()) drop_cached(it);
    while ((cache_.size() >= opts_.cache_entries || cache_bytes_ + answer.size() > kCacheBytes) &&
           !cache_lru_.empty()) {
      drop_cached(cache_.find(cache_lru_.back()));
    }
    cache_lru_.push_front(key);
    CacheEntry e;
    e.wire = answer;
    e.ttl_offsets = info.ttl_offsets;
    e.names = info.names;
    e.addresses = info.addresses;
    e.stored = Clock::now();
    e.learned = e.stored;
    e.expires = e.stored + std::chrono::seconds(ttl);
    e.lru = cache_lru_.begin();
    cache_bytes_ += e.wire.size();
    cache_.emplace(std::move(key), std::move(e));
    cache_size_.store(cache_.size(), std::memory_order_relaxed);
  }

  void drop_cached(std::unordered_map<std::string, CacheEntry>::iterator it) {
    if (it == cache_.end()) return;
    cache_bytes_ -= it->second.wire.size();
    cache_lru_.erase(it->second.lru);
    cache_.erase(it);
  }

  bool serve_cached(const ClientRef& c, std::span<const std::uint8_t> wire, const Query& q, QueryRoute r) {
    if (cache_.empty()) return false;
    const std::string key = cache_key(q, r);
    auto it = cache_.find(key);
    if (it == cache_.end()) return false;
    CacheEntry& e = it->second;
    const auto now = Clock::now();
    if (now >= e.expires) {
      drop_cached(it);
      cache_size_.store(cache_.size(), std::memory_order_relaxed);
      return false;
    }
    const auto elapsed = static_cast<std::uint32_t>(
        std::chrono::duration_cast<std::chrono::seconds>(now - e.stored).count());
    std::vector<std::uint8_t> answer = e.wire;
    age_ttls(answer, e.ttl_offsets, elapsed);
    // The store learned these with the answer and keeps them past its TTL; a hit renews
    // them at most every 10 s (a flush or an eviction in between is made good then).
    if (now - e.learned >= std::chrono::seconds(10)) {
      learn(e.addresses, e.names, elapsed);
      e.learned = now;
    }
    if (!restore_question(answer, wire, q)) return false;
    cache_lru_.splice(cache_lru_.begin(), cache_lru_, e.lru);
    count(r, QueryResult::kCached);
    reply(c, std::move(answer), &q);
    return true;
  }

  // ---- answers to clients ------------------------------------------------------------

  void drop(const ClientRef& c) {
    if (!c.tcp) return;
    if (auto conn = c.conn.lock()) {
      if (conn->inflight > 0) --conn->inflight;
    }
  }

  // `q`: the query answered (nullptr for a FORMERR of one that did not parse); a UDP
  // answer larger than the client can take is cut, and the client asks again over TCP.
  void reply(const ClientRef& c, std::vector<std::uint8_t> answer, const Query* q) {
    if (c.tcp) {
      if (auto conn = c.conn.lock()) tcp_send(conn, answer);
      return;
    }
    if (q != nullptr) truncate_to(answer, *q, udp_limit(*q));
    send_udp_reply(c, answer);
  }

  void send_udp_reply(const ClientRef& c, std::span<const std::uint8_t> answer) {
    UdpSock* s = reply_socket(c.server, c.server_port);
    if (s == nullptr) {
      count(QueryRoute::kLocal, QueryResult::kDropped);
      return;
    }
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(c.addr, c.port, ss);
    ::sendto(s->desc.native_handle(), answer.data(), answer.size(), MSG_DONTWAIT,
             reinterpret_cast<sockaddr*>(&ss), len);
  }

  // A socket bound (transparently) to the address and port the client asked, so the
  // answer comes from where the client sent its query. Datagrams it receives are queries
  // to that address.
  UdpSock* reply_socket(const IpAddress& server, std::uint16_t port) {
    const std::pair<IpAddress, std::uint16_t> key{server, port};
    if (auto it = reply_sockets_.find(key); it != reply_sockets_.end()) return it->second.get();
    if (reply_sockets_.size() >= 256) {
      for (auto& [k, r] : reply_sockets_) r->desc.close();
      for (auto& [k, r] : reply_sockets_) dead_replies_.push_back(std::move(r));
      reply_sockets_.clear();
    }
    const bool v6 = server.is_v6();
    Fd fd(::socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!fd) return nullptr;
    if (v6) set_int(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
    set_int(fd.get(), v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT, 1);
    set_int(fd.get(), SOL_SOCKET, SO_REUSEADDR, 1);
    set_int(fd.get(), SOL_SOCKET, SO_MARK, static_cast<int>(opts_.bypass_mark));
    sockaddr_storage ss;
    const socklen_t len = to_sockaddr(server, port, ss);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      // A local server holding that port without SO_REUSEADDR: its clients' queries are
      // captured but cannot be answered from its address.
      const std::string why = errno_text(errno);
      if (warning_due()) {
        log::warn("dns: cannot answer from ", server.to_string(), " port ", port, " (", why,
                  "): queries to it go unanswered; a local server there must set SO_REUSEADDR");
      }
      return nullptr;
    }
    auto s = std::make_unique<UdpSock>(ctx_);
    s->desc.assign(fd.release());
    UdpSock* raw = s.get();
    reply_sockets_.emplace(key, std::move(s));
    wait_udp(*raw, key);
    return raw;
  }

  // ---- timeouts ----------------------------------------------------------------------

  void arm_sweep() {
    sweep_timer_.expires_after(std::chrono::milliseconds(20));
    sweep_timer_.async_wait([this](error_code ec) {
      if (ec || stopping_) return;
      sweep();
      arm_sweep();
    });
  }

  void sweep() {
    const auto now = Clock::now();
    while (!deadlines_.empty() && deadlines_.front().at <= now) {
      const Deadline d = deadlines_.front();
      deadlines_.pop_front();
      auto it = pending_.find(d.serial);
      if (it == pending_.end()) continue;
      Pending& p = *it->second;
      if (p.attempt != d.attempt || p.up == nullptr) continue;  // answered, or over TCP now
      p.up->inflight.erase(p.up_id);
      p.up = nullptr;
      upstream_timeouts_.fetch_add(1, std::memory_order_relaxed);
      try_next(p);
    }
    // Closed sockets go once their aborted handlers have run (a sweep later) and, for an
    // upstream, once no pending query points at it (its tries time out).
    std::erase_if(dead_upstreams_, [](const std::unique_ptr<Upstream>& u) {
      if (!u->inflight.empty()) return false;
      if (u->desc.is_open()) {
        u->desc.close();  // its handler runs aborted before the next sweep
        return false;
      }
      return true;
    });
    dead_replies_.clear();
  }

  void record_latency(Clock::duration d) {
    const auto us = static_cast<std::uint64_t>(
        std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(d).count()));
    std::size_t i = 0;
    while (i < kLatencyBoundsUs.size() && us > kLatencyBoundsUs[i]) ++i;
    latency_buckets_[i].fetch_add(1, std::memory_order_relaxed);
    latency_count_.fetch_add(1, std::memory_order_relaxed);
    latency_sum_us_.fetch_add(us, std::memory_order_relaxed);
  }

  struct Deadline {
    Clock::time_point at;
    std::uint64_t serial;
    std::uint32_t attempt;
  };

  const decider::RuleDecider& decider_;
  NameStore& names_;
  const ForwarderOptions opts_;
  Shared& shared_;
  // Query ids from the kernel's CSPRNG, drawn in blocks.
  std::uint16_t random_id() {
    if (random_pos_ == random_ids_.size()) {
      if (::getrandom(random_ids_.data(), random_ids_.size() * sizeof(std::uint16_t), 0) < 0) {
        for (auto& v : random_ids_) v = static_cast<std::uint16_t>(rng_());
      }
      random_pos_ = 0;
    }
    return random_ids_[random_pos_++];
  }
  std::mt19937 rng_;  // fallback only
  std::array<std::uint16_t, 512> random_ids_{};
  std::size_t random_pos_ = random_ids_.size();

  asio::io_context ctx_{1};
  std::thread thread_;
  bool stopping_ = false;
  asio::steady_timer sweep_timer_{ctx_};


  std::vector<std::uint8_t> buf_ = std::vector<std::uint8_t>(kMaxUdp);
  std::vector<std::uint8_t> send_buf_;
  std::vector<std::unique_ptr<UdpSock>> udp_listeners_;
  std::vector<std::unique_ptr<net::tcp::acceptor>> acceptors_;
  std::vector<std::weak_ptr<TcpClient>> tcp_clients_;
  std::unordered_map<std::pair<IpAddress, std::uint16_t>, std::unique_ptr<UdpSock>, IpPortHash> reply_sockets_;
  UpstreamMap upstream_sockets_;
  std::vector<std::unique_ptr<Upstream>> dead_upstreams_;
  std::vector<std::unique_ptr<UdpSock>> dead_replies_;

  std::uint64_t serial_ = 0;
  std::unordered_map<std::uint64_t, std::unique_ptr<Pending>> pending_;
  std::deque<Deadline> deadlines_;

  std::unordered_map<std::string, CacheEntry> cache_;
  std::list<std::string> cache_lru_;
  std::size_t cache_bytes_ = 0;

  Clock::time_point last_warning_{};

  std::array<std::array<std::atomic<std::uint64_t>, kQueryResults>, kQueryRoutes> queries_{};
  std::atomic<std::uint64_t> malformed_queries_{0}, malformed_answers_{0}, upstream_timeouts_{0},
      upstream_errors_{0}, tcp_retries_{0}, tcp_clients_total_{0}, cache_size_{0};
  std::array<std::atomic<std::uint64_t>, kLatencyBoundsUs.size() + 1> latency_buckets_{};
  std::atomic<std::uint64_t> latency_count_{0}, latency_sum_us_{0};
};

Forwarder::Forwarder(const decider::RuleDecider& decider, NameStore& names, ForwarderOptions options)
    : shared_(std::make_unique<Shared>()) {
  std::size_t n = options.threads;
  if (n == 0) n = std::clamp<std::size_t>(std::thread::hardware_concurrency(), 1, 4);
  for (std::size_t i = 0; i < n; ++i) {
    workers_.push_back(std::make_unique<Worker>(decider, names, options, *shared_));
  }
}

Forwarder::~Forwarder() { stop(); }

Expected<void, std::string> Forwarder::start(Upstreams upstreams) {
  set_upstreams(std::move(upstreams));
  for (auto& w : workers_) {
    if (auto r = w->start(); !r) {
      stop();
      return r;
    }
  }
  return {};
}

void Forwarder::stop() {
  for (auto& w : workers_) w->stop();
}

void Forwarder::set_upstreams(Upstreams upstreams) {
  std::lock_guard lock(shared_->mu);
  shared_->upstreams = std::move(upstreams);
}

Upstreams Forwarder::upstreams() const {
  std::lock_guard lock(shared_->mu);
  return shared_->upstreams;
}

ForwarderStats Forwarder::stats() const {
  ForwarderStats total;
  for (const auto& w : workers_) {
    const ForwarderStats s = w->stats();
    for (std::size_t r = 0; r < kQueryRoutes; ++r) {
      for (std::size_t k = 0; k < kQueryResults; ++k) total.queries[r][k] += s.queries[r][k];
    }
    total.malformed_queries += s.malformed_queries;
    total.malformed_answers += s.malformed_answers;
    total.upstream_timeouts += s.upstream_timeouts;
    total.upstream_errors += s.upstream_errors;
    total.tcp_retries += s.tcp_retries;
    total.tcp_clients += s.tcp_clients;
    total.cache_entries += s.cache_entries;
    for (std::size_t i = 0; i < total.latency_buckets.size(); ++i) total.latency_buckets[i] += s.latency_buckets[i];
    total.latency_sum_seconds += s.latency_sum_seconds;
    total.latency_count += s.latency_count;
  }
  return total;
}

void Forwarder::clear_cache() {
  for (auto& w : workers_) w->clear_cache();
}

std::size_t Forwarder::threads() const { return workers_.size(); }

}  // namespace splitd::dns
