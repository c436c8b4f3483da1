#include "iface/interface_cache.hpp"

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "common/log.hpp"

namespace splitd::iface {
namespace {

constexpr std::size_t kRecvBufferSize = 64 * 1024;
constexpr int kEventSocketBuffer = 4 * 1024 * 1024;
constexpr int kMaxDumpRetries = 8;

NetlinkFailure sock_fail(const char* what) {
  return NetlinkFailure{NetlinkError::kSocket, std::string(what) + ": " + std::strerror(errno)};
}

// Receives one datagram. Only messages sent by the kernel (nl_pid 0) are accepted: another
// process on this host must not be able to feed us routes. Returns 0 for "nothing to
// read" (non-blocking), the byte count, or a failure (ENOBUFS → kOverrun).
Expected<std::size_t, NetlinkFailure> receive(int fd, std::vector<std::uint8_t>& buf,
                                              bool nonblocking) {
  for (;;) {
    sockaddr_nl from{};
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(fd, &msg, nonblocking ? MSG_DONTWAIT : 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return std::size_t{0};
      if (errno == ENOBUFS) return unexpected(NetlinkFailure{NetlinkError::kOverrun, "ENOBUFS"});
      return unexpected(sock_fail("recvmsg"));
    }
    if ((msg.msg_flags & MSG_TRUNC) != 0) {
      return unexpected(NetlinkFailure{NetlinkError::kTruncated, "datagram larger than buffer"});
    }
    if (msg.msg_namelen != sizeof from || from.nl_pid != 0) continue;  // not the kernel
    return static_cast<std::size_t>(n);
  }
}

}  // namespace

void MnlSocketCloser::operator()(mnl_socket* s) const noexcept { mnl_socket_close(s); }

InterfaceCache::InterfaceCache(SelectionConfig config) : config_(std::move(config)) {}

InterfaceCache::~InterfaceCache() { stop(); }

Expected<std::unique_ptr<InterfaceCache>, NetlinkFailure> InterfaceCache::open(
    SelectionConfig config) {
  std::unique_ptr<InterfaceCache> cache(new InterfaceCache(std::move(config)));
  // Subscribe before dumping so no change between the dump and the subscription is lost;
  // events that repeat what the dump saw are idempotent.
  if (auto r = cache->open_sockets(); !r) return unexpected(r.error());
  if (auto r = cache->full_dump(); !r) return unexpected(r.error());
  cache->publish();
  return cache;
}

Expected<bool, NetlinkFailure> InterfaceCache::open_sockets() {
  event_sock_.reset(mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC | SOCK_NONBLOCK));
  if (!event_sock_) return unexpected(sock_fail("netlink socket"));
  const int fd = mnl_socket_get_fd(event_sock_.get());
  int size = kEventSocketBuffer;
  // A burst of route changes (a VPN connecting) must not overflow the queue; FORCE needs
  // CAP_NET_ADMIN, plain SO_RCVBUF is the fallback.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
  }
  const unsigned groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR |
                          RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
  if (mnl_socket_bind(event_sock_.get(), groups, MNL_SOCKET_AUTOPID) != 0) {
    return unexpected(sock_fail("netlink bind (events)"));
  }
  request_sock_.reset(mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC));
  if (!request_sock_) return unexpected(sock_fail("netlink socket"));
  if (mnl_socket_bind(request_sock_.get(), 0, MNL_SOCKET_AUTOPID) != 0) {
    return unexpected(sock_fail("netlink bind (requests)"));
  }
  request_portid_ = mnl_socket_get_portid(request_sock_.get());
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) return unexpected(sock_fail("eventfd"));
  return true;
}

Expected<bool, NetlinkFailure> InterfaceCache::dump(int family, std::uint16_t type,
                                                    NetlinkState& into) {
  alignas(nlmsghdr) std::uint8_t req[256]{};
  nlmsghdr* nlh = mnl_nlmsg_put_header(req);
  nlh->nlmsg_type = type;
  nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  nlh->nlmsg_seq = ++seq_;
  if (type == RTM_GETLINK) {
    auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifinfomsg)));
    ifi->ifi_family = static_cast<unsigned char>(family);
    mnl_attr_put_u32(nlh, IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  } else if (type == RTM_GETADDR) {
    auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(ifaddrmsg)));
    ifa->ifa_family = static_cast<unsigned char>(family);
  } else {
    auto* rtm = static_cast<rtmsg*>(mnl_nlmsg_put_extra_header(nlh, sizeof(rtmsg)));
    rtm->rtm_family = static_cast<unsigned char>(family);
  }
  // Replies of an earlier dump that failed half-way would fail this one's seq check.
  std::vector<std::uint8_t> stale(kRecvBufferSize);
  for (;;) {
    auto n = receive(mnl_socket_get_fd(request_sock_.get()), stale, true);
    if (!n || *n == 0) break;
  }
  if (mnl_socket_sendto(request_sock_.get(), nlh, nlh->nlmsg_len) < 0) {
    return unexpected(sock_fail("netlink send"));
  }
  const BatchExpectation expect{true, nlh->nlmsg_seq, request_portid_};
  std::vector<std::uint8_t> buf(kRecvBufferSize);
  for (;;) {
    auto n = receive(mnl_socket_get_fd(request_sock_.get()), buf, false);
    if (!n) return unexpected(n.error());
    auto batch = parse_batch({buf.data(), *n}, expect);
    if (!batch) {
      // Drain the rest of this dump so the socket is clean for the retry.
      if (batch.error().code == NetlinkError::kDumpInterrupted) {
        for (;;) {
          auto more = receive(mnl_socket_get_fd(request_sock_.get()), buf, true);
          if (!more || *more == 0) break;
        }
      }
      return unexpected(batch.error());
    }
    for (const auto& ev : batch->events) into.apply(ev);
    if (batch->done) return true;
  }
}

Expected<bool, NetlinkFailure> InterfaceCache::full_dump() {
  for (int attempt = 1;; ++attempt) {
    NetlinkState fresh;
    auto r = dump(AF_UNSPEC, RTM_GETLINK, fresh);
    if (r) r = dump(AF_UNSPEC, RTM_GETADDR, fresh);
    if (r) r = dump(AF_INET, RTM_GETROUTE, fresh);
    if (r) r = dump(AF_INET6, RTM_GETROUTE, fresh);
    if (r) {
      state_ = std::move(fresh);
      return true;
    }
    if (r.error().code != NetlinkError::kDumpInterrupted || attempt >= kMaxDumpRetries) {
      return unexpected(r.error());
    }
  }
}

Expected<bool, NetlinkFailure> InterfaceCache::drain_events(bool& changed) {
  std::vector<std::uint8_t> buf(kRecvBufferSize);
  bool need_resync = false;
  for (;;) {
    auto n = receive(mnl_socket_get_fd(event_sock_.get()), buf, true);
    if (!n) {
      if (n.error().code != NetlinkError::kOverrun) return unexpected(n.error());
      need_resync = true;  // keep draining; the dump below replaces everything anyway
      continue;
    }
    if (*n == 0) return need_resync;
    auto batch = parse_batch({buf.data(), *n}, BatchExpectation{});
    if (!batch) {
      // One bad notification must not poison the state: note it and resync.
      log::warn("interface cache: ignoring notification: ", batch.error().message());
      need_resync = true;
      continue;
    }
    for (const auto& ev : batch->events) {
      if (state_.apply(ev)) need_resync = true;
      changed = true;
    }
  }
}

void InterfaceCache::publish() {
  auto next = InterfaceSnapshot::build(state_, config_);
  auto prev = snapshot_.load();
  if (prev && *prev == *next) return;
  snapshot_.store(next);
  generation_.fetch_add(1);
  std::lock_guard lock(subscribers_mu_);
  const auto subscribers = subscribers_;  // a callback may (un)subscribe
  for (const auto& [id, cb] : subscribers) cb(next);
}

void InterfaceCache::run() {
  pollfd fds[2] = {{mnl_socket_get_fd(event_sock_.get()), POLLIN, 0},
                   {wake_fd_.get(), POLLIN, 0}};
  for (;;) {
    const int rc = ::poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      log::error("interface cache: poll: ", std::strerror(errno));
      return;
    }
    if ((fds[1].revents & POLLIN) != 0) return;
    if (fds[0].revents == 0) continue;
    bool changed = false;
    auto drained = drain_events(changed);
    bool resync = drained ? *drained : true;
    if (!drained) log::warn("interface cache: ", drained.error().message(), "; re-reading");
    if (resync) {
      resyncs_.fetch_add(1);
      if (auto r = full_dump(); !r) {
        // Keep the last good snapshot; the next event triggers another attempt.
        log::error("interface cache: re-reading interfaces failed: ", r.error().message());
        continue;
      }
      changed = true;
    }
    if (changed) publish();
  }
}

void InterfaceCache::start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { run(); });
}

void InterfaceCache::stop() {
  if (!thread_.joinable()) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(wake_fd_.get(), &one, sizeof one);
  thread_.join();
}

std::shared_ptr<const InterfaceSnapshot> InterfaceCache::snapshot() const {
  return snapshot_.load();
}

std::uint64_t InterfaceCache::subscribe(Callback cb) {
  std::lock_guard lock(subscribers_mu_);
  const std::uint64_t id = next_subscriber_++;
  subscribers_.emplace_back(id, std::move(cb));
  return id;
}

void InterfaceCache::unsubscribe(std::uint64_t id) {
  std::lock_guard lock(subscribers_mu_);
  std::erase_if(subscribers_, [id](const auto& s) { return s.first == id; });
}

}  // namespace splitd::iface
