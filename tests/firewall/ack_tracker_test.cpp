#include "firewall/ack_tracker.hpp"

#include <gtest/gtest.h>
#include <linux/netlink.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

namespace splitd::firewall {
namespace {

constexpr std::uint32_t kPortid = 4242;

// One NLMSG_ERROR message as the kernel sends it with NETLINK_CAP_ACK; `ext` adds an
// extended-ack message attribute.
//
// Every size and the "has an attribute" decision are taken once, into locals, before the
// buffer is allocated. Asking `ext` again after the allocation made GCC 12 at -O3 treat
// the two questions as independent (operator new might, as far as it knows, change the
// string behind the reference), thread a path with a buffer sized without the attribute
// that still writes it, and report -Wstringop-overflow / -Warray-bounds on that path.
std::vector<std::uint8_t> ack(std::uint32_t seq, int error, std::uint32_t portid = kPortid,
                              const std::string& ext = {}) {
  constexpr std::size_t kAttrOffset = NLMSG_LENGTH(sizeof(nlmsgerr));
  const std::size_t ext_len = ext.size();  // without the terminating NUL
  const bool with_ext = ext_len != 0;
  const std::size_t attr_len = with_ext ? NLA_HDRLEN + ext_len + 1 : 0;
  std::vector<std::uint8_t> m(kAttrOffset + NLA_ALIGN(attr_len), 0);
  nlmsghdr h{};
  h.nlmsg_len = static_cast<std::uint32_t>(m.size());
  h.nlmsg_type = NLMSG_ERROR;
  h.nlmsg_flags = NLM_F_CAPPED | (with_ext ? NLM_F_ACK_TLVS : 0);
  h.nlmsg_seq = seq;
  h.nlmsg_pid = portid;
  std::memcpy(m.data(), &h, sizeof h);
  nlmsgerr e{};
  e.error = -error;
  e.msg.nlmsg_seq = seq;
  std::memcpy(m.data() + NLMSG_HDRLEN, &e, sizeof e);
  if (with_ext) {
    nlattr a{};
    a.nla_len = static_cast<std::uint16_t>(attr_len);
    a.nla_type = NLMSGERR_ATTR_MSG;
    std::uint8_t* at = m.data() + kAttrOffset;
    std::memcpy(at, &a, sizeof a);
    std::memcpy(at + NLA_HDRLEN, ext.data(), ext_len);  // the NUL: m is zero-filled
  }
  return m;
}

std::vector<std::uint8_t> cat(std::initializer_list<std::vector<std::uint8_t>> parts) {
  std::vector<std::uint8_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

TEST(AckTracker, AllAcknowledged) {
  AckTracker t(100, 104, kPortid);  // messages 101..103
  ASSERT_TRUE(t.feed(cat({ack(101, 0), ack(102, 0)})));
  EXPECT_FALSE(t.done());
  EXPECT_EQ(t.missing(), 1u);
  ASSERT_TRUE(t.feed(ack(103, 0)));
  EXPECT_TRUE(t.done());
  EXPECT_FALSE(t.failure());
}

TEST(AckTracker, TheFirstFailingMessageIsReported) {
  AckTracker t(100, 104, kPortid);
  ASSERT_TRUE(t.feed(cat(
      {ack(101, 0), ack(103, ENOENT), ack(102, EOPNOTSUPP, kPortid, "Could not process rule")})));
  EXPECT_TRUE(t.done());
  ASSERT_TRUE(t.failure());
  EXPECT_EQ(t.failure()->seq, 102u);
  EXPECT_EQ(t.failure()->error, EOPNOTSUPP);
  EXPECT_EQ(t.failure()->ext_message, "Could not process rule");
}

TEST(AckTracker, ForeignAndStaleRepliesAreIgnored) {
  AckTracker t(100, 103, kPortid);
  ASSERT_TRUE(t.feed(cat({ack(101, EPERM, kPortid + 1), ack(99, EINVAL), ack(200, EINVAL)})));
  EXPECT_FALSE(t.done());
  EXPECT_FALSE(t.failure());
  ASSERT_TRUE(t.feed(cat({ack(101, 0), ack(102, 0)})));
  EXPECT_TRUE(t.done());
  EXPECT_FALSE(t.failure());
}

TEST(AckTracker, AnErrorOnBeginRefusesTheWholeBatch) {
  AckTracker t(100, 110, kPortid);
  ASSERT_TRUE(t.feed(ack(100, EPERM)));
  EXPECT_TRUE(t.done());
  ASSERT_TRUE(t.failure());
  EXPECT_EQ(t.failure()->seq, 100u);
  EXPECT_EQ(t.failure()->error, EPERM);
}

TEST(AckTracker, SuccessfulFrameAcksAreTolerated) {
  AckTracker t(100, 102, kPortid);
  ASSERT_TRUE(t.feed(cat({ack(100, 0), ack(101, 0), ack(102, 0)})));
  EXPECT_TRUE(t.done());
  EXPECT_FALSE(t.failure());
}

TEST(AckTracker, MalformedRepliesAreErrors) {
  {
    AckTracker t(100, 103, kPortid);
    auto m = ack(101, 0);
    m.resize(m.size() - 3);  // truncated
    EXPECT_FALSE(t.feed(m));
  }
  {
    AckTracker t(100, 103, kPortid);
    auto m = ack(101, 0);
    nlmsghdr h;
    std::memcpy(&h, m.data(), sizeof h);
    h.nlmsg_len = NLMSG_HDRLEN + 2;  // too short for an nlmsgerr
    std::memcpy(m.data(), &h, sizeof h);
    m.resize(NLMSG_ALIGN(h.nlmsg_len));
    EXPECT_FALSE(t.feed(m));
  }
  {
    AckTracker t(100, 103, kPortid);
    EXPECT_FALSE(t.feed(cat({ack(101, 0), ack(101, 0)})));  // two ACKs for one message
  }
}

}  // namespace
}  // namespace splitd::firewall
