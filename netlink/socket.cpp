#include "netlink/socket.hpp"

#include <libmnl/libmnl.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <ctime>

namespace splitd::netlink {
namespace {

// Large enough for any datagram the kernel builds (it caps dump datagrams at 32 KiB).
constexpr std::size_t kReceiveBufferSize = 64 * 1024;

}  // namespace

void MnlSocketCloser::operator()(mnl_socket* s) const noexcept { mnl_socket_close(s); }

Failure Socket::fail(const std::string& what, int err) const {
  return Failure{Error::kSocket, name_ + " " + what + ": " + std::strerror(err)};
}

Expected<Socket, Failure> Socket::open(int bus, std::string name, SocketOptions options) {
  Socket s;
  s.name_ = std::move(name);
  s.sock_.reset(mnl_socket_open2(bus, SOCK_CLOEXEC | (options.nonblocking ? SOCK_NONBLOCK : 0)));
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
  if (options.strict_check) setsockopt(fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof one);
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

std::uint32_t Socket::next_seq() { return reserve_seqs(1); }

std::uint32_t Socket::reserve_seqs(std::uint32_t count) {
  if (seq_ == 0 || seq_ + count < seq_) seq_ = 1;  // skip 0 and wrap-around
  const std::uint32_t first = seq_;
  seq_ += count;
  return first;
}

void Socket::ensure_receive_buffer(int bytes) {
  if (bytes <= rcvbuf_ / 2) return;  // the kernel reports double the requested size
  const int fd = mnl_socket_get_fd(sock_.get());
  // FORCE needs CAP_NET_ADMIN; plain SO_RCVBUF (capped by rmem_max) is the fallback.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  }
  socklen_t len = sizeof rcvbuf_;
  getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf_, &len);
}

Expected<void, Failure> Socket::join_group(unsigned group) {
  int g = static_cast<int>(group);
  if (mnl_socket_setsockopt(sock_.get(), NETLINK_ADD_MEMBERSHIP, &g, sizeof g) != 0) {
    return unexpected(fail("join of multicast group " + std::to_string(group), errno));
  }
  return {};
}

Expected<void, Failure> Socket::leave_group(unsigned group) {
  int g = static_cast<int>(group);
  if (mnl_socket_setsockopt(sock_.get(), NETLINK_DROP_MEMBERSHIP, &g, sizeof g) != 0) {
    return unexpected(fail("leave of multicast group " + std::to_string(group), errno));
  }
  return {};
}

int Socket::fd() const { return mnl_socket_get_fd(sock_.get()); }

Expected<void, Failure> Socket::send(std::span<const std::uint8_t> datagram) {
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

Expected<std::span<const std::uint8_t>, Failure> Socket::receive(
    std::chrono::milliseconds timeout) {
  return receive_once(true, timeout);
}

Expected<std::span<const std::uint8_t>, Failure> Socket::try_receive() {
  return receive_once(false, std::chrono::milliseconds(0));
}

Expected<std::span<const std::uint8_t>, Failure> Socket::receive_once(
    bool wait, std::chrono::milliseconds timeout) {
  const int fd = mnl_socket_get_fd(sock_.get());
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (wait) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      pollfd p{fd, POLLIN, 0};
      const int rc = ::poll(&p, 1, left.count() > 0 ? static_cast<int>(left.count()) : 0);
      if (rc < 0) {
        if (errno == EINTR) continue;
        return unexpected(fail("poll", errno));
      }
      if (rc == 0) return std::span<const std::uint8_t>{};
    }
    sockaddr_nl from{};
    iovec iov{buf_.get(), kReceiveBufferSize};
    msghdr msg{};
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!wait) return std::span<const std::uint8_t>{};
        continue;
      }
      if (errno == ENOBUFS) {
        overrun_ = true;
        return unexpected(Failure{Error::kOverrun, name_ + ": datagrams lost (ENOBUFS)"});
      }
      return unexpected(fail("receive", errno));
    }
    if ((msg.msg_flags & MSG_TRUNC) != 0) {
      return unexpected(
          Failure{Error::kTruncated, name_ + ": datagram larger than the receive buffer"});
    }
    // Only the kernel may answer: another process must not be able to fake replies.
    if (msg.msg_namelen != sizeof from || from.nl_pid != 0) continue;
    return std::span<const std::uint8_t>{buf_.get(), static_cast<std::size_t>(n)};
  }
}

Expected<Ack, Failure> Socket::request(nlmsghdr* req, std::chrono::milliseconds timeout) {
  req->nlmsg_flags |= NLM_F_ACK;
  return exchange(
      req, [](const nlmsghdr&, void*) {}, nullptr, timeout);
}

Expected<Ack, Failure> Socket::exchange(nlmsghdr* req, ReplyReader::Callback cb, void* ctx,
                                        std::chrono::milliseconds timeout) {
  req->nlmsg_seq = next_seq();
  if (auto r = send({reinterpret_cast<const std::uint8_t*>(req), req->nlmsg_len}); !r) {
    return unexpected(r.error());
  }
  ReplyReader replies(req->nlmsg_seq, portid_, (req->nlmsg_flags & NLM_F_ACK) != 0);
  while (!replies.done()) {
    auto data = receive(timeout);
    if (!data) return unexpected(data.error());
    if (data->empty()) {
      return unexpected(Failure{Error::kTimeout, name_ + ": no reply within " +
                                                     std::to_string(timeout.count()) + " ms"});
    }
    if (auto r = replies.feed(*data, cb, ctx); !r) {
      Failure f = r.error();
      f.detail = name_ + ": " + f.detail;
      return unexpected(std::move(f));
    }
  }
  return replies.ack();
}

}  // namespace splitd::netlink
