#include "cgroup/sock_diag.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>

#include <cstring>
#include <vector>

namespace splitd::cgroup {
namespace {

struct Request {
  nlmsghdr nlh;
  inet_diag_req_v2 req;
};

std::array<std::uint8_t, 16> v4(const char* text) {
  std::array<std::uint8_t, 16> out{};
  EXPECT_EQ(inet_pton(AF_INET, text, out.data()), 1);
  return out;
}
std::array<std::uint8_t, 16> v6(const char* text) {
  std::array<std::uint8_t, 16> out{};
  EXPECT_EQ(inet_pton(AF_INET6, text, out.data()), 1);
  return out;
}

Request build(const SocketQuery& q, std::uint32_t seq) {
  std::array<std::uint8_t, 256> buf{};
  const std::size_t n = build_request(q, seq, buf);
  EXPECT_EQ(n, sizeof(Request));
  EXPECT_EQ(n, request_size());
  Request r;
  std::memcpy(&r, buf.data(), sizeof r);
  return r;
}

SocketQuery query(bool tcp, int family) {
  SocketQuery q;
  q.tcp = tcp;
  q.family = family;
  if (family == AF_INET) {
    q.local_addr = v4("10.0.0.2");
    q.remote_addr = v4("93.184.216.34");
  } else {
    q.local_addr = v6("fd00::2");
    q.remote_addr = v6("2606:2800:220:1::248");
  }
  q.local_port = 40000;
  q.remote_port = 443;
  return q;
}

void expect_common(const Request& r, const SocketQuery& q, std::uint32_t seq) {
  EXPECT_EQ(r.nlh.nlmsg_len, sizeof(Request));
  EXPECT_EQ(r.nlh.nlmsg_type, SOCK_DIAG_BY_FAMILY);
  EXPECT_EQ(r.nlh.nlmsg_flags, NLM_F_REQUEST);  // exact lookup: no NLM_F_DUMP
  EXPECT_EQ(r.nlh.nlmsg_seq, seq);
  EXPECT_EQ(r.nlh.nlmsg_pid, 0u);
  EXPECT_EQ(r.req.sdiag_family, q.family);
  EXPECT_EQ(r.req.sdiag_protocol, q.tcp ? IPPROTO_TCP : IPPROTO_UDP);
  EXPECT_EQ(r.req.idiag_ext, 0);
  EXPECT_EQ(r.req.idiag_states, ~0u);
  EXPECT_EQ(r.req.id.idiag_if, 0u);
  EXPECT_EQ(r.req.id.idiag_cookie[0], INET_DIAG_NOCOOKIE);
  EXPECT_EQ(r.req.id.idiag_cookie[1], INET_DIAG_NOCOOKIE);
}

bool same_addr(const __be32* field, const std::array<std::uint8_t, 16>& addr, int family) {
  std::array<std::uint8_t, 16> got{};
  std::memcpy(got.data(), field, 16);
  const std::size_t n = family == AF_INET ? 4 : 16;
  for (std::size_t i = 0; i < 16; ++i) {
    if (got[i] != (i < n ? addr[i] : 0)) return false;
  }
  return true;
}

TEST(BuildRequest, TcpLocalIsSource) {
  for (int family : {AF_INET, AF_INET6}) {
    const SocketQuery q = query(true, family);
    const Request r = build(q, 77);
    expect_common(r, q, 77);
    EXPECT_TRUE(same_addr(r.req.id.idiag_src, q.local_addr, family));
    EXPECT_TRUE(same_addr(r.req.id.idiag_dst, q.remote_addr, family));
    EXPECT_EQ(ntohs(r.req.id.idiag_sport), 40000);
    EXPECT_EQ(ntohs(r.req.id.idiag_dport), 443);
  }
}

TEST(BuildRequest, UdpLocalIsDestination) {
  for (int family : {AF_INET, AF_INET6}) {
    const SocketQuery q = query(false, family);
    const Request r = build(q, 5);
    expect_common(r, q, 5);
    EXPECT_TRUE(same_addr(r.req.id.idiag_src, q.remote_addr, family));
    EXPECT_TRUE(same_addr(r.req.id.idiag_dst, q.local_addr, family));
    EXPECT_EQ(ntohs(r.req.id.idiag_sport), 443);
    EXPECT_EQ(ntohs(r.req.id.idiag_dport), 40000);
  }
}

TEST(BuildRequest, V4IgnoresBytesBeyondFour) {
  SocketQuery q = query(true, AF_INET);
  q.local_addr[5] = 0xff;
  const Request r = build(q, 1);
  EXPECT_EQ(r.req.id.idiag_src[1], 0u);
}

TEST(BuildRequest, RejectsSmallBufferAndBadFamily) {
  std::array<std::uint8_t, sizeof(Request) - 1> small{};
  EXPECT_EQ(build_request(query(true, AF_INET), 1, small), 0u);
  std::array<std::uint8_t, 256> buf{};
  SocketQuery q = query(true, AF_INET);
  q.family = AF_UNIX;
  EXPECT_EQ(build_request(q, 1, buf), 0u);
}

// A crafted kernel reply.
class Reply {
 public:
  explicit Reply(std::uint32_t seq, std::uint16_t type = SOCK_DIAG_BY_FAMILY) {
    bytes_.reserve(512);
    nlmsghdr h{};
    h.nlmsg_type = type;
    h.nlmsg_seq = seq;
    append(&h, sizeof h);
  }
  Reply& diag(std::uint32_t uid, std::uint32_t inode) {
    inet_diag_msg m{};
    m.idiag_family = AF_INET;
    m.idiag_uid = uid;
    m.idiag_inode = inode;
    append(&m, sizeof m);
    return *this;
  }
  Reply& attr(std::uint16_t type, const void* data, std::size_t len, int len_delta = 0) {
    nlattr a{};
    a.nla_type = type;
    a.nla_len = static_cast<std::uint16_t>(static_cast<int>(sizeof a + len) + len_delta);
    append(&a, sizeof a);
    append(data, len);
    while (bytes_.size() % NLA_ALIGNTO != 0) bytes_.push_back(0);
    return *this;
  }
  Reply& error(std::int32_t err) {
    nlmsgerr e{};
    e.error = err;
    append(&e, sizeof e);
    return *this;
  }
  std::vector<std::uint8_t> done(int len_delta = 0) {
    const auto len = static_cast<std::uint32_t>(static_cast<int>(bytes_.size()) + len_delta);
    std::memcpy(bytes_.data(), &len, sizeof len);
    return bytes_;
  }

 private:
  void append(const void* p, std::size_t n) {
    const std::size_t old = bytes_.size();
    bytes_.resize(old + n);
    std::memcpy(bytes_.data() + old, p, n);
  }
  std::vector<std::uint8_t> bytes_;
};

TEST(ParseReply, WithCgroupId) {
  const std::uint64_t cg = 0x1234567890abull;
  const std::uint8_t info[12] = {};
  const auto d = Reply(9).diag(1000, 4242).attr(INET_DIAG_INFO, info, sizeof info).attr(INET_DIAG_CGROUP_ID, &cg, 8).done();
  const auto r = parse_reply(d, 9);
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(*r, (SocketIdentity{1000, 4242, cg}));
}

TEST(ParseReply, WithoutCgroupId) {
  const auto d = Reply(9).diag(0, 1).done();
  const auto r = parse_reply(d, 9);
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, (SocketIdentity{0, 1, 0}));
}

TEST(ParseReply, UnalignedBuffer) {
  const std::uint64_t cg = 77;
  const auto d = Reply(3).diag(5, 6).attr(INET_DIAG_CGROUP_ID, &cg, 8).done();
  std::vector<std::uint8_t> shifted(d.size() + 1);
  std::memcpy(shifted.data() + 1, d.data(), d.size());
  const auto r = parse_reply(std::span<const std::uint8_t>(shifted).subspan(1), 3);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->cgroup_id, 77u);
}

TEST(ParseReply, Truncated) {
  const std::uint64_t cg = 1;
  const auto d = Reply(1).diag(1, 2).attr(INET_DIAG_CGROUP_ID, &cg, 8).done();
  for (std::size_t n = 0; n < d.size(); ++n) {
    const auto r = parse_reply(std::span<const std::uint8_t>(d.data(), n), 1);
    ASSERT_FALSE(r) << n;
    EXPECT_EQ(r.error().code, DiagErrc::kTruncated) << n;
  }
  // The header claims more than the datagram holds.
  const auto longer = Reply(1).diag(1, 2).done(+8);
  EXPECT_EQ(parse_reply(longer, 1).error().code, DiagErrc::kTruncated);
  // nlmsg_len covers only part of inet_diag_msg.
  const auto short_msg = Reply(1).diag(1, 2).done(-4);
  EXPECT_EQ(parse_reply(short_msg, 1).error().code, DiagErrc::kTruncated);
  // nlmsg_len smaller than a header.
  const auto tiny = Reply(1).diag(1, 2).done(-static_cast<int>(sizeof(inet_diag_msg) + 8));
  EXPECT_EQ(parse_reply(tiny, 1).error().code, DiagErrc::kMalformed);
}

TEST(ParseReply, WrongSeq) {
  const auto d = Reply(1).diag(1, 2).done();
  EXPECT_EQ(parse_reply(d, 2).error().code, DiagErrc::kUnexpectedSeq);
}

TEST(ParseReply, ErrorNoEnt) {
  const auto d = Reply(4, NLMSG_ERROR).error(-ENOENT).done();
  const auto r = parse_reply(d, 4);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, DiagErrc::kNoSocket);
}

TEST(ParseReply, ErrorOther) {
  const auto d = Reply(4, NLMSG_ERROR).error(-EPERM).done();
  const auto r = parse_reply(d, 4);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, DiagErrc::kKernel);
  EXPECT_EQ(r.error().sys_errno, EPERM);
  EXPECT_NE(r.error().message().find("permitted"), std::string::npos);
  // An ACK (error 0) or a positive value is no answer to a lookup.
  EXPECT_EQ(parse_reply(Reply(4, NLMSG_ERROR).error(0).done(), 4).error().code, DiagErrc::kMalformed);
  EXPECT_EQ(parse_reply(Reply(4, NLMSG_ERROR).error(5).done(), 4).error().code, DiagErrc::kMalformed);
  // An error message too short for its code.
  EXPECT_EQ(parse_reply(Reply(4, NLMSG_ERROR).done(), 4).error().code, DiagErrc::kTruncated);
}

TEST(ParseReply, WrongType) {
  const auto d = Reply(4, 16 /* RTM_NEWLINK */).diag(1, 2).done();
  EXPECT_EQ(parse_reply(d, 4).error().code, DiagErrc::kUnexpectedType);
  EXPECT_EQ(parse_reply(Reply(4, NLMSG_DONE).diag(1, 2).done(), 4).error().code, DiagErrc::kUnexpectedType);
}

TEST(ParseReply, BadAttributeLengths) {
  const std::uint64_t cg = 1;
  // Shorter than an attribute header.
  auto d = Reply(1).diag(1, 2).attr(INET_DIAG_CGROUP_ID, &cg, 8, -10).done();
  EXPECT_EQ(parse_reply(d, 1).error().code, DiagErrc::kMalformed);
  // Longer than what is left.
  d = Reply(1).diag(1, 2).attr(INET_DIAG_CGROUP_ID, &cg, 8, +4).done();
  EXPECT_EQ(parse_reply(d, 1).error().code, DiagErrc::kTruncated);
  // A cgroup id that is not 8 bytes.
  const std::uint32_t small = 1;
  d = Reply(1).diag(1, 2).attr(INET_DIAG_CGROUP_ID, &small, 4).done();
  EXPECT_EQ(parse_reply(d, 1).error().code, DiagErrc::kMalformed);
  // A lone partial attribute header after the message.
  d = Reply(1).diag(1, 2).done();
  d.push_back(8);
  d.push_back(0);
  const auto len = static_cast<std::uint32_t>(d.size());
  std::memcpy(d.data(), &len, 4);
  EXPECT_EQ(parse_reply(d, 1).error().code, DiagErrc::kTruncated);
}

TEST(ParseReply, IgnoresBytesAfterTheMessage) {
  const std::uint64_t cg = 9;
  auto d = Reply(1).diag(1, 2).attr(INET_DIAG_CGROUP_ID, &cg, 8).done();
  d.resize(d.size() + 40, 0xff);
  const auto r = parse_reply(d, 1);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->cgroup_id, 9u);
}

}  // namespace
}  // namespace splitd::cgroup
