#include "cgroup/sock_diag.hpp"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

namespace splitd::cgroup {
namespace {

struct Request {
  nlmsghdr nlh;
  inet_diag_req_v2 req;
};

void put_address(int family, const std::array<std::uint8_t, 16>& addr, __be32* out) {
  std::memcpy(out, addr.data(), family == AF_INET ? 4 : 16);
}

}  // namespace

std::size_t request_size() { return sizeof(Request); }

std::size_t build_request(const SocketQuery& q, std::uint32_t seq, std::span<std::uint8_t> out) {
  if (out.size() < sizeof(Request)) return 0;
  if (q.family != AF_INET && q.family != AF_INET6) return 0;
  Request msg{};
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = NLM_F_REQUEST;
  msg.nlh.nlmsg_seq = seq;
  msg.req.sdiag_family = static_cast<std::uint8_t>(q.family);
  msg.req.sdiag_protocol = q.tcp ? IPPROTO_TCP : IPPROTO_UDP;
  msg.req.idiag_states = ~0u;
  if (q.tcp) {
    put_address(q.family, q.local_addr, msg.req.id.idiag_src);
    put_address(q.family, q.remote_addr, msg.req.id.idiag_dst);
    msg.req.id.idiag_sport = htons(q.local_port);
    msg.req.id.idiag_dport = htons(q.remote_port);
  } else {
    put_address(q.family, q.remote_addr, msg.req.id.idiag_src);
    put_address(q.family, q.local_addr, msg.req.id.idiag_dst);
    msg.req.id.idiag_sport = htons(q.remote_port);
    msg.req.id.idiag_dport = htons(q.local_port);
  }
  msg.req.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  msg.req.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  std::memcpy(out.data(), &msg, sizeof msg);
  return sizeof msg;
}

const char* to_string(DiagErrc e) {
  switch (e) {
    case DiagErrc::kTruncated: return "sock_diag reply truncated";
    case DiagErrc::kMalformed: return "malformed sock_diag reply";
    case DiagErrc::kUnexpectedSeq: return "sock_diag reply with an unexpected sequence number";
    case DiagErrc::kUnexpectedType: return "sock_diag reply of an unexpected type";
    case DiagErrc::kNoSocket: return "no such socket";
    case DiagErrc::kKernel: return "sock_diag request failed";
  }
  return "unknown sock_diag error";
}

std::string DiagError::message() const {
  std::string out = to_string(code);
  if (sys_errno != 0) {
    out += ": ";
    out += std::strerror(sys_errno);
  }
  return out;
}

Expected<SocketIdentity, DiagError> parse_reply(std::span<const std::uint8_t> d, std::uint32_t seq) {
  nlmsghdr nlh;
  if (d.size() < sizeof nlh) return unexpected(DiagError{DiagErrc::kTruncated});
  std::memcpy(&nlh, d.data(), sizeof nlh);
  if (nlh.nlmsg_len < sizeof nlh) return unexpected(DiagError{DiagErrc::kMalformed});
  if (nlh.nlmsg_len > d.size()) return unexpected(DiagError{DiagErrc::kTruncated});
  if (nlh.nlmsg_seq != seq) return unexpected(DiagError{DiagErrc::kUnexpectedSeq});
  const std::span<const std::uint8_t> payload = d.subspan(NLMSG_HDRLEN, nlh.nlmsg_len - NLMSG_HDRLEN);

  if (nlh.nlmsg_type == NLMSG_ERROR) {
    std::int32_t error = 0;
    if (payload.size() < sizeof error) return unexpected(DiagError{DiagErrc::kTruncated});
    std::memcpy(&error, payload.data(), sizeof error);
    if (error == -ENOENT) return unexpected(DiagError{DiagErrc::kNoSocket, ENOENT});
    if (error >= 0 || error < -4095) return unexpected(DiagError{DiagErrc::kMalformed});  // an ACK is no answer
    return unexpected(DiagError{DiagErrc::kKernel, -error});
  }
  if (nlh.nlmsg_type != SOCK_DIAG_BY_FAMILY) return unexpected(DiagError{DiagErrc::kUnexpectedType});

  inet_diag_msg msg;
  if (payload.size() < sizeof msg) return unexpected(DiagError{DiagErrc::kTruncated});
  std::memcpy(&msg, payload.data(), sizeof msg);
  SocketIdentity out;
  out.uid = msg.idiag_uid;
  out.inode = msg.idiag_inode;

  // Attributes follow the (aligned) inet_diag_msg up to nlmsg_len.
  std::size_t off = NLMSG_ALIGN(sizeof msg);
  while (off < payload.size()) {
    nlattr attr;
    if (payload.size() - off < sizeof attr) return unexpected(DiagError{DiagErrc::kTruncated});
    std::memcpy(&attr, payload.data() + off, sizeof attr);
    if (attr.nla_len < sizeof attr) return unexpected(DiagError{DiagErrc::kMalformed});
    if (attr.nla_len > payload.size() - off) return unexpected(DiagError{DiagErrc::kTruncated});
    const std::size_t value_len = attr.nla_len - sizeof attr;
    if ((attr.nla_type & NLA_TYPE_MASK) == INET_DIAG_CGROUP_ID) {
      if (value_len != sizeof out.cgroup_id) return unexpected(DiagError{DiagErrc::kMalformed});
      std::memcpy(&out.cgroup_id, payload.data() + off + sizeof attr, sizeof out.cgroup_id);
    }
    off += NLA_ALIGN(attr.nla_len);
  }
  return out;
}

}  // namespace splitd::cgroup
