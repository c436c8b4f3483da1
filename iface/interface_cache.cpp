#include "iface/interface_cache.hpp"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/log.hpp"
#include "netlink/message.hpp"

namespace splitd::iface {
namespace {

constexpr int kEventSocketBuffer = 4 * 1024 * 1024;
constexpr int kMaxDumpRetries = 8;

}  // namespace

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
  auto events = netlink::Socket::open(NETLINK_ROUTE, "rtnetlink events", {.nonblocking = true});
  if (!events) return unexpected(events.error());
  // A burst of route changes (a VPN connecting) must not overflow the queue.
  events->ensure_receive_buffer(kEventSocketBuffer);
  for (unsigned group : {RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR,
                         RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE}) {
    if (auto j = events->join_group(group); !j) return unexpected(j.error());
  }
  auto requests = netlink::Socket::open(NETLINK_ROUTE, "rtnetlink");
  if (!requests) return unexpected(requests.error());
  events_.emplace(std::move(*events));
  requests_.emplace(std::move(*requests));
  wake_fd_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_) {
    return unexpected(
        NetlinkFailure{NetlinkError::kSocket, std::string("eventfd: ") + std::strerror(errno)});
  }
  return true;
}

Expected<bool, NetlinkFailure> InterfaceCache::dump(int family, std::uint16_t type,
                                                    NetlinkState& into) {
  alignas(nlmsghdr) std::uint8_t req[256];
  netlink::MessageBuilder msg(req, type, NLM_F_REQUEST | NLM_F_DUMP);
  if (type == RTM_GETLINK) {
    msg.put_header<ifinfomsg>().ifi_family = static_cast<unsigned char>(family);
    msg.put_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  } else if (type == RTM_GETADDR) {
    msg.put_header<ifaddrmsg>().ifa_family = static_cast<unsigned char>(family);
  } else {
    msg.put_header<rtmsg>().rtm_family = static_cast<unsigned char>(family);
  }
  // Every reply is checked for seq and portid by the socket; replies of an earlier dump
  // that failed half-way are skipped there. One bad message fails the dump, after it has
  // been read to its end (so the socket is clean for the retry).
  std::optional<NetlinkFailure> bad;
  auto ack = requests_->dump(msg.header(), [&](const nlmsghdr& nlh) {
    if (bad) return;
    auto ev = parse_rtnl_message(nlh);
    if (!ev) {
      bad = ev.error();
    } else if (ev->has_value()) {
      into.apply(**ev);
    }
  });
  if (!ack) return unexpected(ack.error());
  if (ack->interrupted) return unexpected(NetlinkFailure{NetlinkError::kDumpInterrupted, ""});
  if (ack->error != 0) {
    std::string detail = std::strerror(ack->error);
    if (!ack->message.empty()) detail += " (" + ack->message + ")";
    return unexpected(NetlinkFailure{NetlinkError::kKernelError, std::move(detail)});
  }
  if (bad) return unexpected(*bad);
  return true;
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
  bool need_resync = false;
  for (;;) {
    auto data = events_->try_receive();
    if (!data) {
      if (data.error().code != NetlinkError::kOverrun) return unexpected(data.error());
      (void)events_->take_overrun();
      need_resync = true;  // keep draining; the dump below replaces everything anyway
      continue;
    }
    if (data->empty()) return need_resync;
    auto batch = parse_batch(*data, BatchExpectation{});
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
  pollfd fds[2] = {{events_->fd(), POLLIN, 0}, {wake_fd_.get(), POLLIN, 0}};
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
