#include "firewall/netlink_socket.hpp"

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace splitd::firewall {
namespace {

// Large enough for any dump datagram the kernel builds (it caps them at 32 KiB).
constexpr std::size_t kReceiveBufferSize = 64 * 1024;

}  // namespace

void MnlSocketCloser::operator()(mnl_socket* s) const noexcept { mnl_socket_close(s); }

FirewallError NetlinkSocket::fail(const std::string& what, int err) const {
  return FirewallError{FirewallErrorCode::kNetlink, name_ + " " + what + ": " + std::strerror(err)};
}

Expected<NetlinkSocket, FirewallError> NetlinkSocket::open(int bus, std::string name) {
  NetlinkSocket s;
  s.name_ = std::move(name);
  s.sock_.reset(mnl_socket_open2(bus, SOCK_CLOEXEC));
  if (!s.sock_) return unexpected(s.fail("socket", errno));
  if (mnl_socket_bind(s.sock_.get(), 0, MNL_SOCKET_AUTOPID) != 0) {
    return unexpected(s.fail("bind", errno));
  }
  s.portid_ = mnl_socket_get_portid(s.sock_.get());
  const int fd = mnl_socket_get_fd(s.sock_.get());
  int one = 1;
  // Error ACKs without a copy of the request (a batch's copies could fill the buffer),
  // and with the kernel's extended message ("Could not process rule: ...") when it has one.
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one);
  // Lets route dumps be filtered by protocol in the kernel (ignored by old kernels).
  if (bus == NETLINK_ROUTE) setsockopt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof one);
  socklen_t len = sizeof s.sndbuf_;
  getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s.sndbuf_, &len);
  len = sizeof s.rcvbuf_;
  getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &s.rcvbuf_, &len);
  s.buf_ = std::make_unique_for_overwrite<std::uint8_t[]>(kReceiveBufferSize);
  // Sequence numbers start at the clock so replies to an earlier socket with the same
  // port id cannot be mistaken for ours.
  s.seq_ = static_cast<std::uint32_t>(std::time(nullptr));
  return s;
}

std::uint32_t NetlinkSocket::next_seq() { return reserve_seqs(1); }

std::uint32_t NetlinkSocket::reserve_seqs(std::uint32_t count) {
  if (seq_ == 0 || seq_ + count < seq_) seq_ = 1;  // skip 0 and wrap-around
  const std::uint32_t first = seq_;
  seq_ += count;
  return first;
}

void NetlinkSocket::ensure_receive_buffer(int bytes) {
  if (bytes <= rcvbuf_ / 2) return;  // the kernel reports double the requested size
  const int fd = mnl_socket_get_fd(sock_.get());
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  }
  socklen_t len = sizeof rcvbuf_;
  getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf_, &len);
}

Expected<void, FirewallError> NetlinkSocket::join_group(unsigned group) {
  int g = static_cast<int>(group);
  if (mnl_socket_setsockopt(sock_.get(), NETLINK_ADD_MEMBERSHIP, &g, sizeof g) != 0) {
    return unexpected(fail("join of multicast group " + std::to_string(group), errno));
  }
  return {};
}

Expected<void, FirewallError> NetlinkSocket::leave_group(unsigned group) {
  int g = static_cast<int>(group);
  if (mnl_socket_setsockopt(sock_.get(), NETLINK_DROP_MEMBERSHIP, &g, sizeof g) != 0) {
    return unexpected(fail("leave of multicast group " + std::to_string(group), errno));
  }
  return {};
}

int NetlinkSocket::fd() const { return mnl_socket_get_fd(sock_.get()); }

Expected<void, FirewallError> NetlinkSocket::send(std::span<const std::uint8_t> datagram) {
  const int fd = mnl_socket_get_fd(sock_.get());
  // netlink refuses a datagram larger than the send buffer (EMSGSIZE).
  if (static_cast<std::size_t>(sndbuf_) < datagram.size() + 4096) {
    int want = static_cast<int>(datagram.size() + 4096);
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) != 0) {
      setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
    }
    socklen_t len = sizeof sndbuf_;
    getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf_, &len);
  }
  for (;;) {
    const ssize_t n = mnl_socket_sendto(sock_.get(), datagram.data(), datagram.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return unexpected(fail("send", errno));
    if (static_cast<std::size_t>(n) != datagram.size()) return unexpected(fail("send", EMSGSIZE));
    return {};
  }
}

Expected<std::span<const std::uint8_t>, FirewallError> NetlinkSocket::receive(
    std::chrono::milliseconds timeout) {
  const int fd = mnl_socket_get_fd(sock_.get());
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLIN, 0};
    const int rc = ::poll(&p, 1, left.count() > 0 ? static_cast<int>(left.count()) : 0);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return unexpected(fail("poll", errno));
    }
    if (rc == 0) return std::span<const std::uint8_t>{};
    sockaddr_nl from{};
    iovec iov{buf_.get(), kReceiveBufferSize};
    msghdr msg{};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      if (errno == ENOBUFS) {
        overrun_ = true;
        return unexpected(FirewallError{FirewallErrorCode::kNetlink,
                                        name_ + ": replies lost (receive buffer overrun)"});
      }
      return unexpected(fail("receive", errno));
    }
    if ((msg.msg_flags & MSG_TRUNC) != 0) {
      return unexpected(FirewallError{FirewallErrorCode::kNetlink,
                                      name_ + ": reply larger than the receive buffer"});
    }
    // Only the kernel may answer: another process must not be able to fake ACKs.
    if (msg.msg_namelen != sizeof from || from.nl_pid != 0) continue;
    return std::span<const std::uint8_t>{buf_.get(), static_cast<std::size_t>(n)};
  }
}

bool parse_netlink_error(const nlmsghdr* nlh, int& error, std::string& ext_message) {
  if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) return false;
  const auto* err = static_cast<const nlmsgerr*>(mnl_nlmsg_get_payload(nlh));
  error = err->error < 0 ? -err->error : err->error;
  ext_message.clear();
  if ((nlh->nlmsg_flags & NLM_F_ACK_TLVS) == 0) return true;
  // TLVs follow the echoed request: only its header when capped, else all of it.
  std::size_t offset = sizeof(nlmsgerr);
  if ((nlh->nlmsg_flags & NLM_F_CAPPED) == 0) {
    if (err->msg.nlmsg_len < sizeof(nlmsghdr)) return true;
    offset += NLMSG_ALIGN(err->msg.nlmsg_len) - sizeof(nlmsghdr);
  }
  if (NLMSG_LENGTH(offset) > nlh->nlmsg_len) return true;
  mnl_attr_parse(
      nlh, static_cast<unsigned>(offset),
      [](const nlattr* attr, void* data) -> int {
        if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG &&
            mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) == 0) {
          *static_cast<std::string*>(data) = mnl_attr_get_str(attr);
        }
        return MNL_CB_OK;
      },
      &ext_message);
  return true;
}

Expected<NetlinkSocket::Ack, FirewallError> NetlinkSocket::request(nlmsghdr* req) {
  return dump_impl(
      req, [](const nlmsghdr*, void*) {}, nullptr);
}

Expected<NetlinkSocket::Ack, FirewallError> NetlinkSocket::dump_impl(
    nlmsghdr* req, void (*cb)(const nlmsghdr*, void*), void* ctx) {
  const std::uint32_t seq = next_seq();
  req->nlmsg_seq = seq;
  if (auto r = send({reinterpret_cast<const std::uint8_t*>(req), req->nlmsg_len}); !r) {
    return unexpected(r.error());
  }
  bool interrupted = false;
  for (;;) {
    auto data = receive(kReplyTimeout);
    if (!data) return unexpected(data.error());
    if (data->empty()) return unexpected(fail("no reply", ETIMEDOUT));
    const void* at = data->data();
    int left = static_cast<int>(data->size());
    auto* nlh = static_cast<const nlmsghdr*>(at);
    for (; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
      if (nlh->nlmsg_seq != seq || nlh->nlmsg_pid != portid_) continue;  // stale or not ours
      if ((nlh->nlmsg_flags & NLM_F_DUMP_INTR) != 0) interrupted = true;
      if (nlh->nlmsg_type == NLMSG_ERROR) {
        Ack ack;
        if (!parse_netlink_error(nlh, ack.error, ack.message)) {
          return unexpected(fail("malformed error reply", EPROTO));
        }
        if (ack.error == 0 && interrupted) ack.error = EINTR;
        return ack;
      }
      if (nlh->nlmsg_type == NLMSG_DONE) {
        Ack ack;
        if (nlh->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
          int status = 0;
          std::memcpy(&status, mnl_nlmsg_get_payload(nlh), sizeof status);
          ack.error = status < 0 ? -status : status;
        }
        if (ack.error == 0 && interrupted) ack.error = EINTR;
        return ack;
      }
      if (nlh->nlmsg_type < NLMSG_MIN_TYPE) continue;  // NOOP, OVERRUN
      cb(nlh, ctx);
    }
    if (left != 0) return unexpected(fail("truncated reply", EPROTO));
  }
}

}  // namespace splitd::firewall
