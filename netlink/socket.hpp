#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "common/expected.hpp"
#include "netlink/error.hpp"
#include "netlink/message.hpp"

struct mnl_socket;

namespace splitd::netlink {

struct MnlSocketCloser {
  void operator()(mnl_socket* s) const noexcept;
};

struct SocketOptions {
  // SOCK_NONBLOCK on the descriptor (receive() and try_receive() never block either way;
  // this matters for code that polls fd() and for send()).
  bool nonblocking = false;
  // NETLINK_GET_STRICT_CHK: the kernel checks dump requests strictly and filters
  // rtnetlink dumps by the header's fields (route protocol, table); ignored by old kernels.
  bool strict_check = false;
};

// One netlink socket (NETLINK_ROUTE, NETLINK_NETFILTER, NETLINK_SOCK_DIAG, ...) bound to
// the network namespace of the thread that opened it, with the two ways splitd talks to
// the kernel: request() (one message, wait for its ACK) and dump() (every reply checked
// for seq and portid until NLMSG_DONE / NLMSG_ERROR). Only datagrams from the kernel
// (nl_pid 0) are ever returned: another process must not be able to fake replies or
// events. Error ACKs come without a copy of the request (NETLINK_CAP_ACK) and with the
// kernel's extended message (NETLINK_EXT_ACK). Owned by one component; not thread-safe.
// Move-only.
class Socket {
 public:
  // `name` is used in error messages ("nfnetlink", "rtnetlink", "sock_diag").
  static Expected<Socket, Failure> open(int bus, std::string name, SocketOptions options = {});

  const std::string& name() const { return name_; }
  std::uint32_t portid() const { return portid_; }
  // A fresh sequence number (never 0).
  std::uint32_t next_seq();
  // Reserves `count` consecutive sequence numbers and returns the first.
  std::uint32_t reserve_seqs(std::uint32_t count);

  // Sends one datagram (a message or a whole batch); grows the send buffer when a batch
  // is larger than it.
  Expected<void, Failure> send(std::span<const std::uint8_t> datagram);

  // Waits up to `timeout` for one datagram from the kernel. An empty span means timeout.
  // The span is valid until the next receive. ENOBUFS (replies or events lost) is
  // kOverrun and sets the overrun flag; a datagram larger than the buffer is kTruncated.
  Expected<std::span<const std::uint8_t>, Failure> receive(std::chrono::milliseconds timeout);
  // The same without waiting: a datagram already queued, or an empty span. Usable right
  // after send() for families that answer synchronously (sock_diag), and to drain events.
  Expected<std::span<const std::uint8_t>, Failure> try_receive();

  // Makes room for at least `bytes` of queued datagrams (a batch's ACKs, event bursts);
  // SO_RCVBUFFORCE when permitted, else as much as SO_RCVBUF allows.
  void ensure_receive_buffer(int bytes);

  // Subscribes to the multicast group `group` (RTNLGRP_LINK, NFNLGRP_NFTABLES, ...). The
  // socket then also receives event datagrams; use it for events only.
  Expected<void, Failure> join_group(unsigned group);
  Expected<void, Failure> leave_group(unsigned group);
  // The descriptor, to poll it together with a wake-up fd (do not read from it directly).
  int fd() const;
  // Whether a receive since the last call failed with ENOBUFS (events or replies were
  // lost and the caller must resync with a fresh dump); clears the flag.
  bool take_overrun() { return std::exchange(overrun_, false); }

  // Sends one request (NLM_F_ACK is added; nlmsg_seq is set here) and waits for its ACK:
  // the kernel's errno (0 = success) and extended-ack message. Replies of other requests
  // are skipped; a request that gets no ACK within `timeout` per datagram is kTimeout.
  Expected<Ack, Failure> request(nlmsghdr* request,
                                 std::chrono::milliseconds timeout = kReplyTimeout);

  // Sends a dump request (or any request with replies; nlmsg_seq is set here) and calls
  // `on_message(const nlmsghdr&)` for each reply message of it until NLMSG_DONE, an
  // NLMSG_ERROR, or, when the request had no NLM_F_ACK, a single non-multipart reply.
  // Ack.error is the kernel's errno (NLMSG_ERROR or the DONE status); Ack.interrupted
  // reports NLM_F_DUMP_INTR (the dump ran to its end; the caller retries it). Socket
  // trouble, malformed replies and ENOBUFS are failures.
  template <typename F>
  Expected<Ack, Failure> dump(nlmsghdr* request, F&& on_message,
                              std::chrono::milliseconds timeout = kReplyTimeout);

  static constexpr std::chrono::milliseconds kReplyTimeout{5000};

 private:
  Socket() = default;
  Expected<Ack, Failure> exchange(nlmsghdr* request, ReplyReader::Callback cb, void* ctx,
                                  std::chrono::milliseconds timeout);
  Expected<std::span<const std::uint8_t>, Failure> receive_once(bool wait,
                                                                std::chrono::milliseconds timeout);
  Failure fail(const std::string& what, int err) const;

  std::unique_ptr<mnl_socket, MnlSocketCloser> sock_;
  std::string name_;
  std::uint32_t portid_ = 0;
  std::uint32_t seq_ = 0;
  int sndbuf_ = 0;
  int rcvbuf_ = 0;
  bool overrun_ = false;
  std::unique_ptr<std::uint8_t[]> buf_;
};

template <typename F>
Expected<Ack, Failure> Socket::dump(nlmsghdr* request, F&& on_message,
                                    std::chrono::milliseconds timeout) {
  using Fn = std::remove_reference_t<F>;
  return exchange(
      request, [](const nlmsghdr& m, void* ctx) { (*static_cast<Fn*>(ctx))(m); }, &on_message,
      timeout);
}

}  // namespace splitd::netlink
