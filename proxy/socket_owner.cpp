#include "proxy/socket_owner.hpp"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "common/fd.hpp"

namespace splitd::proxy {
namespace {

void put_address(const IpAddress& ip, __be32* out) {
  const auto bytes = ip.bytes();
  std::memcpy(out, bytes.data(), bytes.size());
}

}  // namespace

std::optional<uid_t> udp_socket_owner(const Endpoint& client, const Endpoint& peer) {
  if (client.address.family() != peer.address.family()) return std::nullopt;
  Fd sock(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!sock) return std::nullopt;
  struct {
    nlmsghdr nlh;
    inet_diag_req_v2 req;
  } msg{};
  constexpr std::uint32_t kSeq = 1;
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST;
  msg.nlh.nlmsg_seq = kSeq;
  msg.req.sdiag_family = client.address.family() == IpAddress::Family::kV4 ? AF_INET : AF_INET6;
  msg.req.sdiag_protocol = IPPROTO_UDP;
  msg.req.idiag_states = ~0u;
  // The kernel looks the socket up as if receiving from src:sport at dst:dport.
  put_address(peer.address, msg.req.id.idiag_src);
  put_address(client.address, msg.req.id.idiag_dst);
  msg.req.id.idiag_sport = htons(peer.port);
  msg.req.id.idiag_dport = htons(client.port);
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(sock.get(), &msg, sizeof msg, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) !=
      static_cast<ssize_t>(sizeof msg)) {
    return std::nullopt;
  }
  // One reply, soon: the request names one socket. Bounded wait, untrusted reply.
  pollfd p{sock.get(), POLLIN, 0};
  if (::poll(&p, 1, 200) != 1) return std::nullopt;
  alignas(nlmsghdr) unsigned char buf[1024];
  sockaddr_nl from{};
  socklen_t from_len = sizeof from;
  const ssize_t n = ::recvfrom(sock.get(), buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &from_len);
  if (n < static_cast<ssize_t>(sizeof(nlmsghdr)) || from.nl_pid != 0) return std::nullopt;
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(buf);
  if (nlh->nlmsg_len > static_cast<std::uint32_t>(n) || nlh->nlmsg_seq != kSeq ||
      nlh->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
      nlh->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) {
    return std::nullopt;  // NLMSG_ERROR (no such socket) or something else
  }
  const auto* diag = static_cast<const inet_diag_msg*>(NLMSG_DATA(nlh));
  return static_cast<uid_t>(diag->idiag_uid);
}

}  // namespace splitd::proxy
