#include "cgroup/identifier.hpp"

#include <linux/netlink.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <optional>

#include "cgroup/sock_diag.hpp"
#include "cgroup/unit_name.hpp"
#include "netlink/socket.hpp"

namespace splitd::cgroup {
namespace {

std::array<std::uint8_t, 16> bytes_of(const IpAddress& ip) {
  std::array<std::uint8_t, 16> out{};
  const auto b = ip.bytes();
  for (std::size_t i = 0; i < b.size() && i < out.size(); ++i) out[i] = b[i];
  return out;
}

// One sock_diag socket per calling thread (the proxies' workers): bound to the thread's
// network namespace, never shared, so a lookup takes no lock. Opened on first use; a
// failure is retried on a later flow.
netlink::Socket* diag_socket() {
  thread_local std::optional<netlink::Socket> sock;
  if (!sock) {
    auto s = netlink::Socket::open(NETLINK_SOCK_DIAG, "sock_diag");
    if (!s) return nullptr;
    sock.emplace(std::move(*s));
  }
  return &*sock;
}

std::optional<decider::RouteKind> route_kind(std::optional<Route> r) {
  if (!r) return std::nullopt;
  return *r == Route::kDirect ? decider::RouteKind::kDirect : decider::RouteKind::kTunnel;
}

}  // namespace

Identifier::Identifier(std::unique_ptr<CgroupMap> map, std::unique_ptr<ExecCgroups> exec, std::string mount)
    : map_(std::move(map)), exec_(std::move(exec)), processes_(std::move(mount)) {
  if (exec_ && (exec_->populated(Route::kDirect) || exec_->populated(Route::kTunnel))) note_exec();
}

bool Identifier::wanted() const {
  if (exec_in_use_.load(std::memory_order_relaxed)) return true;
  return std::chrono::steady_clock::now().time_since_epoch().count() <
         listing_until_.load(std::memory_order_relaxed);
}

void Identifier::note_listing() {
  listing_until_.store((std::chrono::steady_clock::now() + kListingInterest).time_since_epoch().count(),
                       std::memory_order_relaxed);
}

void Identifier::refresh() {
  map_->refresh();
  if (exec_ && exec_in_use_.load(std::memory_order_relaxed) && !exec_->populated(Route::kDirect) &&
      !exec_->populated(Route::kTunnel)) {
    exec_in_use_.store(false, std::memory_order_relaxed);
  }
}

Expected<SocketIdentity, DiagError> lookup_socket(bool tcp, const IpAddress& local, std::uint16_t local_port,
                                                  const IpAddress& remote, std::uint16_t remote_port) {
  const IpAddress l = local.unmapped();
  const IpAddress r = remote.unmapped();
  if (l.family() != r.family()) return unexpected(DiagError{DiagErrc::kMalformed, 0});
  SocketQuery q;
  q.tcp = tcp;
  q.family = l.family() == IpAddress::Family::kV4 ? AF_INET : AF_INET6;
  q.local_addr = bytes_of(l);
  q.local_port = local_port;
  q.remote_addr = bytes_of(r);
  q.remote_port = remote_port;
  netlink::Socket* sock = diag_socket();
  std::array<std::uint8_t, 128> req{};
  const std::uint32_t seq = sock != nullptr ? sock->next_seq() : 0;
  const std::size_t len = sock != nullptr ? build_request(q, seq, req) : 0;
  if (len == 0 || !sock->send({req.data(), len})) return unexpected(DiagError{DiagErrc::kKernel, EIO});
  // The kernel answers an exact lookup inside sendmsg; skip stale replies of an earlier
  // lookup that timed out (their seq differs), bounded.
  for (int tries = 0; tries < 4; ++tries) {
    auto dg = tries == 0 ? sock->try_receive() : sock->receive(std::chrono::milliseconds(50));
    if (!dg || dg->empty()) break;
    auto id = parse_reply(*dg, seq);
    if (!id && id.error().code == DiagErrc::kUnexpectedSeq) continue;
    return id;
  }
  return unexpected(DiagError{DiagErrc::kKernel, ETIMEDOUT});
}

decider::AppIdentity Identifier::identify(decider::Protocol protocol, const IpAddress& local,
                                          std::uint16_t local_port, const IpAddress& remote,
                                          std::uint16_t remote_port) const {
  decider::AppIdentity app;
  auto id = lookup_socket(protocol == decider::Protocol::kTcp, local, local_port, remote, remote_port);
  if (!id) {
    if (id.error().code == DiagErrc::kNoSocket) {
      socket_gone_.fetch_add(1, std::memory_order_relaxed);
      app.how = "socket gone";
    } else {
      failed_.fetch_add(1, std::memory_order_relaxed);
      app.how = "no identification (" + id.error().message() + ")";
    }
    return app;
  }
  app.found = true;
  app.uid = id->uid;
  app.inode = id->inode;
  app.cgroup_id = id->cgroup_id;
  identified_.fetch_add(1, std::memory_order_relaxed);
  app.how = "sock_diag";
  if (id->cgroup_id != 0) {
    if (auto path = map_->path_of(id->cgroup_id)) {
      app.cgroup_path = std::move(*path);
      Units u = parse_units(app.cgroup_path);
      app.unit = std::move(u.unit);
      app.app_id = std::move(u.app_id);
      app.how = "sock_diag+cgroup";
    } else {
      no_path_.fetch_add(1, std::memory_order_relaxed);
    }
    if (exec_) app.exec_route = route_kind(exec_->route_of(id->cgroup_id, app.cgroup_path));
  }
  return app;
}

void Identifier::find_process(decider::AppIdentity& app) const {
  if (!app.found || app.cgroup_path.empty() || app.pid != 0) return;
  if (auto p = processes_.owner(app.cgroup_path, app.inode)) {
    app.pid = p->pid;
    app.comm = std::move(p->comm);
    app.exe = std::move(p->exe);
    app.how += "+proc";
    processes_found_.fetch_add(1, std::memory_order_relaxed);
  } else {
    no_process_.fetch_add(1, std::memory_order_relaxed);
  }
}

Identifier::Stats Identifier::stats() const {
  Stats s;
  s.identified = identified_.load(std::memory_order_relaxed);
  s.socket_gone = socket_gone_.load(std::memory_order_relaxed);
  s.failed = failed_.load(std::memory_order_relaxed);
  s.no_path = no_path_.load(std::memory_order_relaxed);
  s.processes = processes_found_.load(std::memory_order_relaxed);
  s.no_process = no_process_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace splitd::cgroup
