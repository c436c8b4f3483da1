// netlink::Socket against the real kernel, read-only: dumps and queries in the current
// network namespace (allowed without root; nothing is changed), and an ACKed request that
// the kernel refuses.
#include "netlink/socket.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <set>
#include <string>

#include "common/fd.hpp"
#include "netlink/message.hpp"

namespace splitd::netlink {
namespace {

using namespace std::chrono_literals;

Socket open_route(SocketOptions options = {}) {
  auto s = Socket::open(NETLINK_ROUTE, "rtnetlink", options);
  if (!s) throw std::runtime_error(s.error().message());
  return std::move(*s);
}

struct LinkRequest {
  alignas(nlmsghdr) std::uint8_t buf[128];
  MessageBuilder msg;
  LinkRequest(std::uint16_t flags, int index)
      : msg(buf, RTM_GETLINK, static_cast<std::uint16_t>(NLM_F_REQUEST | flags)) {
    msg.put_header<ifinfomsg>().ifi_index = index;
    msg.put_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  }
};

TEST(NetlinkSocket, OpensWithAPortidAndFreshSeqs) {
  Socket s = open_route();
  EXPECT_NE(s.portid(), 0u);
  EXPECT_GE(s.fd(), 0);
  EXPECT_EQ(s.name(), "rtnetlink");
  const std::uint32_t a = s.next_seq();
  const std::uint32_t b = s.reserve_seqs(10);
  EXPECT_EQ(b, a + 1);
  EXPECT_EQ(s.next_seq(), b + 10);
  EXPECT_FALSE(s.take_overrun());
}

TEST(NetlinkSocket, LinkDumpSeesLoopback) {
  Socket s = open_route();
  LinkRequest req(NLM_F_DUMP, 0);
  std::set<std::string> names;
  bool malformed = false;
  auto ack = s.dump(req.msg.header(), [&](const nlmsghdr& m) {
    if (m.nlmsg_type != RTM_NEWLINK || m.nlmsg_pid != s.portid()) {
      malformed = true;
      return;
    }
    auto attrs = parse_attrs<IFLA_MAX>(attributes(m, sizeof(ifinfomsg)), "link");
    if (!attrs || (*attrs)[IFLA_IFNAME] == nullptr) {
      malformed = true;
      return;
    }
    names.insert(attr_string((*attrs)[IFLA_IFNAME]));
  });
  ASSERT_TRUE(ack) << ack.error().message();
  EXPECT_EQ(ack->error, 0) << ack->message;
  EXPECT_FALSE(malformed);
  EXPECT_TRUE(names.contains("lo"));
  // The exchange read to its end: nothing of it is left queued.
  auto rest = s.try_receive();
  ASSERT_TRUE(rest);
  EXPECT_TRUE(rest->empty());

  // The same socket serves the next dump (fresh seq; replies checked again).
  std::size_t again = 0;
  LinkRequest req2(NLM_F_DUMP, 0);
  auto ack2 = s.dump(req2.msg.header(), [&](const nlmsghdr&) { ++again; });
  ASSERT_TRUE(ack2) << ack2.error().message();
  EXPECT_EQ(again, names.size());
}

TEST(NetlinkSocket, SingleQueryAndQueryWithAck) {
  Socket s = open_route();
  // Without NLM_F_ACK the one reply ends the exchange.
  LinkRequest one(0, 1);  // lo is ifindex 1 in every namespace
  int replies = 0;
  auto ack = s.dump(one.msg.header(), [&](const nlmsghdr& m) {
    replies += m.nlmsg_type == RTM_NEWLINK;
  });
  ASSERT_TRUE(ack) << ack.error().message();
  EXPECT_EQ(ack->error, 0);
  EXPECT_EQ(replies, 1);
  // request(): the reply is skipped, the ACK read.
  LinkRequest acked(0, 1);
  auto r = s.request(acked.msg.header());
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->error, 0) << r->message;
  auto rest = s.try_receive();
  ASSERT_TRUE(rest);
  EXPECT_TRUE(rest->empty());
}

TEST(NetlinkSocket, RefusedRequestGivesErrnoAndExtendedAck) {
  // No such interface: ENODEV, as an ACK, not a socket failure.
  Socket s = open_route();
  LinkRequest missing(0, 0x7ffffff0);
  auto r = s.request(missing.msg.header());
  ASSERT_TRUE(r) << r.error().message();
  EXPECT_EQ(r->error, ENODEV);

  // With strict checking the kernel explains what is wrong with the request.
  Socket strict = open_route({.strict_check = true});
  LinkRequest bad(0, 1);
  reinterpret_cast<ifinfomsg*>(NLMSG_DATA(bad.msg.header()))->ifi_change = 1;
  auto e = strict.request(bad.msg.header());
  ASSERT_TRUE(e) << e.error().message();
  EXPECT_EQ(e->error, EINVAL);
  EXPECT_NE(e->message.find("header"), std::string::npos) << e->message;
}

TEST(NetlinkSocket, ReceiveTimesOutAndTryReceiveDoesNotWait) {
  Socket s = open_route({.nonblocking = true});
  const auto t0 = std::chrono::steady_clock::now();
  auto d = s.receive(20ms);
  ASSERT_TRUE(d) << d.error().message();
  EXPECT_TRUE(d->empty());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 15ms);
  auto n = s.try_receive();
  ASSERT_TRUE(n);
  EXPECT_TRUE(n->empty());
}

TEST(NetlinkSocket, JoinAndLeaveGroup) {
  Socket s = open_route();
  EXPECT_TRUE(s.join_group(RTNLGRP_LINK));
  EXPECT_TRUE(s.leave_group(RTNLGRP_LINK));
  auto bad = s.join_group(100000);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Error::kSocket);
  EXPECT_NE(bad.error().detail.find("rtnetlink join of multicast group 100000"), std::string::npos)
      << bad.error().message();
  s.ensure_receive_buffer(1 << 20);  // best effort without CAP_NET_ADMIN; must not fail
}

// sock_diag (the bus the app identification uses): a dump of TCP listeners finds ours, and
// an exact lookup is answered synchronously, so try_receive() right after send() has it.
struct Listener {
  Fd fd;
  std::uint16_t port = 0;  // host order
  Listener() : fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(fd.get(), 1) != 0) {
      throw std::runtime_error("listen failed");
    }
    socklen_t len = sizeof a;
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
  }
};

TEST(NetlinkSocket, SockDiagDumpAndSynchronousLookup) {
  Listener l;
  auto s = Socket::open(NETLINK_SOCK_DIAG, "sock_diag");
  ASSERT_TRUE(s) << s.error().message();

  alignas(nlmsghdr) std::uint8_t buf[256];
  MessageBuilder dump(buf, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP);
  auto& req = dump.put_header<inet_diag_req_v2>();
  req.sdiag_family = AF_INET;
  req.sdiag_protocol = IPPROTO_TCP;
  req.idiag_states = 1u << TCP_LISTEN;
  bool found = false;
  auto ack = s->dump(dump.header(), [&](const nlmsghdr& m) {
    auto msg = fixed_header<inet_diag_msg>(m);
    if (msg && ntohs(msg->id.idiag_sport) == l.port) found = true;
  });
  ASSERT_TRUE(ack) << ack.error().message();
  EXPECT_EQ(ack->error, 0) << ack->message;
  EXPECT_TRUE(found) << "listener on port " << l.port;

  MessageBuilder one(buf, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST);
  auto& q = one.put_header<inet_diag_req_v2>();
  q.sdiag_family = AF_INET;
  q.sdiag_protocol = IPPROTO_TCP;
  q.idiag_states = 1u << TCP_LISTEN;
  q.id.idiag_sport = htons(l.port);
  q.id.idiag_src[0] = htonl(INADDR_LOOPBACK);
  q.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  q.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
  one.header()->nlmsg_seq = s->next_seq();
  ASSERT_TRUE(s->send(one.bytes()));
  auto d = s->try_receive();
  ASSERT_TRUE(d) << d.error().message();
  ASSERT_FALSE(d->empty()) << "sock_diag did not answer synchronously";
  ReplyReader replies(one.header()->nlmsg_seq, s->portid(), false);
  int port = -1;
  ASSERT_TRUE(replies.feed(*d, [&](const nlmsghdr& m) {
    if (auto msg = fixed_header<inet_diag_msg>(m)) port = ntohs(msg->id.idiag_sport);
  }));
  EXPECT_TRUE(replies.done());
  EXPECT_EQ(replies.ack().error, 0) << replies.ack().message;
  EXPECT_EQ(port, l.port);
}

TEST(NetlinkSocket, OpenOfAnUnknownBusFails) {
  auto s = Socket::open(32, "nonsense");  // beyond MAX_LINKS
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, Error::kSocket);
  EXPECT_NE(s.error().detail.find("nonsense socket"), std::string::npos) << s.error().message();
}

}  // namespace
}  // namespace splitd::netlink
