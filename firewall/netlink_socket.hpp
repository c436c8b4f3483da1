#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "common/expected.hpp"
#include "firewall/firewall.hpp"

struct mnl_socket;
struct nlmsghdr;

namespace splitd::firewall {

struct MnlSocketCloser {
  void operator()(mnl_socket* s) const noexcept;
};
using MnlSocket = std::unique_ptr<mnl_socket, MnlSocketCloser>;

// One netlink request socket (NETLINK_NETFILTER or NETLINK_ROUTE) bound to the network
// namespace of the thread that opened it. Only datagrams from the kernel (nl_pid 0) are
// returned; callers check seq and portid of each message. Not thread-safe.
class NetlinkSocket {
 public:
  // `name` is used in error messages ("nfnetlink", "rtnetlink").
  static Expected<NetlinkSocket, FirewallError> open(int bus, std::string name);

  std::uint32_t portid() const { return portid_; }
  // A fresh sequence number (never 0).
  std::uint32_t next_seq();
  // Reserves `count` consecutive sequence numbers and returns the first.
  std::uint32_t reserve_seqs(std::uint32_t count);

  // Sends one datagram (a message or a whole batch); grows the send buffer when a batch
  // is larger than it.
  Expected<void, FirewallError> send(std::span<const std::uint8_t> datagram);

  // Waits up to `timeout` for one datagram from the kernel. An empty span means timeout.
  // ENOBUFS (replies lost) is an error: the caller's view is incomplete.
  Expected<std::span<const std::uint8_t>, FirewallError> receive(std::chrono::milliseconds timeout);

  // Makes room for at least `bytes` of queued replies (a batch's ACKs).
  void ensure_receive_buffer(int bytes);

  // Subscribes to the multicast group `group` (NFNLGRP_NFTABLES, RTNLGRP_LINK, ...). The
  // socket then also receives event datagrams; use it for events only.
  Expected<void, FirewallError> join_group(unsigned group);
  Expected<void, FirewallError> leave_group(unsigned group);
  // The descriptor, to poll it together with a wake-up fd (do not read from it directly).
  int fd() const;
  // Whether a receive() since the last call failed with ENOBUFS (events or replies were
  // lost and the caller must resync with a fresh dump); clears the flag.
  bool take_overrun() { return std::exchange(overrun_, false); }

  // Sends one request (NLM_F_ACK set by the caller) and waits for its ACK. Returns the
  // kernel's errno (0 = success) and its extended-ack message, if any.
  struct Ack {
    int error = 0;
    std::string message;
  };
  Expected<Ack, FirewallError> request(nlmsghdr* request);

  // Sends a dump request and calls `on_message` for each reply message until NLMSG_DONE.
  // An NLMSG_ERROR reply is returned as Ack{errno}.
  template <typename F>
  Expected<Ack, FirewallError> dump(nlmsghdr* request, F&& on_message);

  static constexpr std::chrono::milliseconds kReplyTimeout{5000};

 private:
  NetlinkSocket() = default;
  Expected<Ack, FirewallError> dump_impl(nlmsghdr* request, void (*cb)(const nlmsghdr*, void*),
                                         void* ctx);
  FirewallError fail(const std::string& what, int err) const;

  MnlSocket sock_;
  std::string name_;
  std::uint32_t portid_ = 0;
  std::uint32_t seq_ = 0;
  int sndbuf_ = 0;
  int rcvbuf_ = 0;
  bool overrun_ = false;
  std::unique_ptr<std::uint8_t[]> buf_;
};

template <typename F>
Expected<NetlinkSocket::Ack, FirewallError> NetlinkSocket::dump(nlmsghdr* request, F&& on_message) {
  using Fn = std::remove_reference_t<F>;
  auto trampoline = [](const nlmsghdr* nlh, void* ctx) { (*static_cast<Fn*>(ctx))(nlh); };
  return dump_impl(request, trampoline, &on_message);
}

// Parses the NLMSG_ERROR payload of `nlh` (length already checked by the caller or not:
// this checks). Returns false when it is too short to be one.
bool parse_netlink_error(const nlmsghdr* nlh, int& error, std::string& ext_message);

}  // namespace splitd::firewall
