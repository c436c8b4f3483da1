#include "iface/netlink_messages.hpp"

#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <net/if.h>

#include <cerrno>
#include <random>

#include "iface/interface_snapshot.hpp"
#include "netlink_captures.hpp"
#include "netlink_test_util.hpp"

namespace splitd::iface {
namespace {

using testing::append;
using testing::done_message;
using testing::from_hex;
using testing::header_of;
using testing::set_header;
using testing::with_seq;

constexpr std::uint32_t kPortid = 4242;

// Parses one message as a notification and returns its single event.
Event parse_one(const std::vector<std::uint8_t>& msg) {
  auto r = parse_batch(msg, BatchExpectation{});
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().message());
  EXPECT_EQ(r->events.size(), 1u);
  return r->events.at(0);
}

NetlinkFailure parse_fails(const std::vector<std::uint8_t>& msg,
                           BatchExpectation expect = BatchExpectation{}) {
  auto r = parse_batch(msg, expect);
  EXPECT_FALSE(r.has_value());
  return r ? NetlinkFailure{} : r.error();
}

TEST(NetlinkCaptured, VethLink) {
  const auto ev = parse_one(from_hex(testdata::kLinkPhys0));
  const auto& link = std::get<LinkEvent>(ev);
  EXPECT_FALSE(link.removed);
  EXPECT_EQ(link.link.index, 3u);
  EXPECT_EQ(link.link.name, "phys0");
  EXPECT_EQ(link.link.kind, "veth");
  EXPECT_EQ(link.link.mtu, 1500u);
  EXPECT_EQ(link.link.hwaddr.size(), 6u);
  EXPECT_TRUE(link.link.flags & IFF_UP);
  EXPECT_EQ(classify(link.link), InterfaceKind::kVirtual);
}

TEST(NetlinkCaptured, TunLinkIsTunnel) {
  const Event link_ev = parse_one(from_hex(testdata::kLinkTun0));
  const auto& link = std::get<LinkEvent>(link_ev).link;
  EXPECT_EQ(link.name, "tun0");
  EXPECT_EQ(link.kind, "tun");
  EXPECT_TRUE(link.flags & IFF_POINTOPOINT);
  EXPECT_TRUE(link.hwaddr.empty());
  EXPECT_EQ(classify(link), InterfaceKind::kTunnel);
}

TEST(NetlinkCaptured, LoopbackLink) {
  const Event link_ev = parse_one(from_hex(testdata::kLinkLo));
  const auto& link = std::get<LinkEvent>(link_ev).link;
  EXPECT_EQ(link.name, "lo");
  EXPECT_EQ(link.index, 1u);
  EXPECT_EQ(classify(link), InterfaceKind::kLoopback);
}

TEST(NetlinkCaptured, Addresses) {
  const Event a4_ev = parse_one(from_hex(testdata::kAddr4Phys0));
  const auto& a4 = std::get<AddrEvent>(a4_ev).addr;
  EXPECT_EQ(a4.index, 3u);
  EXPECT_EQ(a4.address.to_string(), "198.18.1.2");
  EXPECT_EQ(a4.prefix_len, 24);
  EXPECT_EQ(a4.scope, RT_SCOPE_UNIVERSE);
  const Event a6_ev = parse_one(from_hex(testdata::kAddr6Phys0));
  const auto& a6 = std::get<AddrEvent>(a6_ev).addr;
  EXPECT_EQ(a6.address.to_string(), "2001:db8:ff:1::2");
  EXPECT_EQ(a6.prefix_len, 64);
}

TEST(NetlinkCaptured, Routes) {
  const Event r4_ev = parse_one(from_hex(testdata::kRoute4Default));
  const auto& r4 = std::get<RouteEvent>(r4_ev).route;
  EXPECT_EQ(r4.family, IpAddress::Family::kV4);
  EXPECT_EQ(r4.dst_len, 0);
  EXPECT_EQ(r4.table, static_cast<std::uint32_t>(RT_TABLE_MAIN));
  EXPECT_EQ(r4.type, RTN_UNICAST);
  EXPECT_EQ(r4.oif, 3u);
  EXPECT_EQ(r4.metric, 100u);
  ASSERT_TRUE(r4.gateway.has_value());
  EXPECT_EQ(r4.gateway->to_string(), "198.18.1.1");

  const Event half_ev = parse_one(from_hex(testdata::kRoute4VpnHalf));
  const auto& half = std::get<RouteEvent>(half_ev).route;
  EXPECT_EQ(half.dst_len, 1);
  EXPECT_EQ(half.dst.to_string(), "0.0.0.0");
  EXPECT_EQ(half.oif, 4u);
  EXPECT_FALSE(half.gateway.has_value());

  const Event r6_ev = parse_one(from_hex(testdata::kRoute6Default));
  const auto& r6 = std::get<RouteEvent>(r6_ev).route;
  EXPECT_EQ(r6.family, IpAddress::Family::kV6);
  EXPECT_EQ(r6.dst_len, 0);
  EXPECT_EQ(r6.metric, 100u);
  EXPECT_EQ(r6.gateway->to_string(), "2001:db8:ff:1::1");
}

TEST(NetlinkBatch, DumpReplyWithDone) {
  std::vector<std::uint8_t> buf;
  for (const char* hex : {testdata::kLinkLo, testdata::kLinkPhys0, testdata::kLinkTun0}) {
    append(buf, with_seq(from_hex(hex), 7, kPortid));
  }
  append(buf, done_message(7, kPortid));
  auto r = parse_batch(buf, {true, 7, kPortid});
  ASSERT_TRUE(r.has_value()) << r.error().message();
  EXPECT_TRUE(r->done);
  EXPECT_EQ(r->events.size(), 3u);
}

TEST(NetlinkBatch, DumpReplyChecksSeqAndPortid) {
  const auto msg = with_seq(from_hex(testdata::kLinkLo), 7, kPortid);
  EXPECT_EQ(parse_fails(msg, {true, 8, kPortid}).code, NetlinkError::kUnexpectedSeq);
  EXPECT_EQ(parse_fails(msg, {true, 7, kPortid + 1}).code, NetlinkError::kUnexpectedPortid);
  // Notifications carry the seq/portid of whoever made the change: not checked.
  EXPECT_TRUE(parse_batch(msg, BatchExpectation{}).has_value());
}

TEST(NetlinkBatch, DumpInterrupted) {
  auto msg = with_seq(from_hex(testdata::kLinkLo), 7, kPortid);
  nlmsghdr h = header_of(msg);
  h.nlmsg_flags |= NLM_F_DUMP_INTR;
  set_header(msg, h);
  EXPECT_EQ(parse_fails(msg, {true, 7, kPortid}).code, NetlinkError::kDumpInterrupted);
}

std::vector<std::uint8_t> error_message(int error, std::size_t payload = sizeof(nlmsgerr)) {
  std::vector<std::uint8_t> msg(NLMSG_LENGTH(payload), 0);
  nlmsghdr h{};
  h.nlmsg_len = static_cast<std::uint32_t>(msg.size());
  h.nlmsg_type = NLMSG_ERROR;
  set_header(msg, h);
  if (payload >= sizeof(int)) std::memcpy(msg.data() + NLMSG_HDRLEN, &error, sizeof error);
  return msg;
}

TEST(NetlinkBatch, KernelErrorAndAck) {
  const auto f = parse_fails(error_message(-EPERM));
  EXPECT_EQ(f.code, NetlinkError::kKernelError);
  EXPECT_NE(f.message().find("Operation not permitted"), std::string::npos) << f.message();
  auto ack = parse_batch(error_message(0), BatchExpectation{});
  ASSERT_TRUE(ack.has_value());
  EXPECT_TRUE(ack->done);
  EXPECT_EQ(parse_fails(error_message(-EPERM, 2)).code, NetlinkError::kTruncated);
}

TEST(NetlinkBatch, EveryTruncationIsAnErrorNotACrash) {
  for (const char* hex : {testdata::kLinkPhys0, testdata::kAddr6Phys0, testdata::kRoute6Default}) {
    const auto full = from_hex(hex);
    for (std::size_t len = 1; len < full.size(); ++len) {
      std::vector<std::uint8_t> cut(full.begin(), full.begin() + static_cast<long>(len));
      auto r = parse_batch(cut, BatchExpectation{});
      ASSERT_FALSE(r.has_value()) << "length " << len;
      EXPECT_EQ(r.error().code, NetlinkError::kTruncated);
    }
  }
}

TEST(NetlinkBatch, OversizedLengthIsTruncation) {
  auto msg = from_hex(testdata::kLinkLo);
  nlmsghdr h = header_of(msg);
  h.nlmsg_len = 0xffffffffu;
  set_header(msg, h);
  const auto f = parse_fails(msg);
  EXPECT_EQ(f.code, NetlinkError::kTruncated);
  EXPECT_NE(f.message().find("claims 4294967295 bytes"), std::string::npos) << f.message();
  h.nlmsg_len = 4;  // smaller than a header
  set_header(msg, h);
  EXPECT_EQ(parse_fails(msg).code, NetlinkError::kTruncated);
}

TEST(NetlinkBatch, AttributeLongerThanMessage) {
  auto msg = from_hex(testdata::kAddr4Phys0);
  // First attribute follows nlmsghdr (16) + ifaddrmsg (8).
  const std::uint16_t huge = 0x7fff;
  std::memcpy(msg.data() + 24, &huge, sizeof huge);
  const auto f = parse_fails(msg);
  EXPECT_EQ(f.code, NetlinkError::kTruncated);
  EXPECT_NE(f.message().find("address: attribute type"), std::string::npos) << f.message();
}

// Builds messages field by field for the malformed cases no kernel sends.
struct Builder {
  alignas(nlmsghdr) std::uint8_t buf[512]{};
  nlmsghdr* nlh = mnl_nlmsg_put_header(buf);
  std::vector<std::uint8_t> bytes() const { return {buf, buf + nlh->nlmsg_len}; }
};

TEST(NetlinkMalformed, AddressOfWrongSize) {
  Builder b;
  b.nlh->nlmsg_type = RTM_NEWADDR;
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(b.nlh, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  ifa->ifa_index = 2;
  const std::uint8_t five[5] = {1, 2, 3, 4, 5};
  mnl_attr_put(b.nlh, IFA_LOCAL, sizeof five, five);
  const auto f = parse_fails(b.bytes());
  EXPECT_EQ(f.code, NetlinkError::kMalformed);
  EXPECT_NE(f.message().find("address of 5 bytes"), std::string::npos) << f.message();
}

TEST(NetlinkMalformed, PrefixTooLong) {
  Builder b;
  b.nlh->nlmsg_type = RTM_NEWADDR;
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(b.nlh, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET;
  ifa->ifa_prefixlen = 33;
  mnl_attr_put_u32(b.nlh, IFA_LOCAL, 0x0100000a);
  EXPECT_EQ(parse_fails(b.bytes()).code, NetlinkError::kMalformed);
}

TEST(NetlinkMalformed, AddressWithoutAddress) {
  Builder b;
  b.nlh->nlmsg_type = RTM_NEWADDR;
  auto* ifa = static_cast<ifaddrmsg*>(mnl_nlmsg_put_extra_header(b.nlh, sizeof(ifaddrmsg)));
  ifa->ifa_family = AF_INET6;
  EXPECT_EQ(parse_fails(b.bytes()).code, NetlinkError::kMalformed);
}

TEST(NetlinkMalformed, LinkWithoutNameOrIndexOrShortMtu) {
  {
    Builder b;
    b.nlh->nlmsg_type = RTM_NEWLINK;
    auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(b.nlh, sizeof(ifinfomsg)));
    ifi->ifi_index = 5;
    EXPECT_EQ(parse_fails(b.bytes()).code, NetlinkError::kMalformed);
  }
  {
    Builder b;
    b.nlh->nlmsg_type = RTM_NEWLINK;
    mnl_nlmsg_put_extra_header(b.nlh, sizeof(ifinfomsg));  // index 0
    mnl_attr_put_strz(b.nlh, IFLA_IFNAME, "x0");
    EXPECT_EQ(parse_fails(b.bytes()).code, NetlinkError::kMalformed);
  }
  {
    Builder b;
    b.nlh->nlmsg_type = RTM_NEWLINK;
    auto* ifi = static_cast<ifinfomsg*>(mnl_nlmsg_put_extra_header(b.nlh, sizeof(ifinfomsg)));
    ifi->ifi_index = 5;
    mnl_attr_put_strz(b.nlh, IFLA_IFNAME, "x0");
    mnl_attr_put_u16(b.nlh, IFLA_MTU, 1500);
    const auto f = parse_fails(b.bytes());
    EXPECT_EQ(f.code, NetlinkError::kMalformed);
    EXPECT_NE(f.message().find("link mtu"), std::string::npos) << f.message();
  }
}

TEST(NetlinkMalformed, ShortFixedHeader) {
  Builder b;
  b.nlh->nlmsg_type = RTM_NEWROUTE;
  mnl_nlmsg_put_extra_header(b.nlh, 4);  // rtmsg is 12 bytes
  EXPECT_EQ(parse_fails(b.bytes()).code, NetlinkError::kTruncated);
}

TEST(NetlinkIgnored, OtherTypesAndFamilies) {
  Builder neigh;
  neigh.nlh->nlmsg_type = RTM_NEWNEIGH;
  mnl_nlmsg_put_extra_header(neigh.nlh, 12);
  auto r = parse_batch(neigh.bytes(), BatchExpectation{});
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->events.empty());

  // A bridge-port message: RTM_DELLINK of family AF_BRIDGE must not delete the link.
  auto bridge = from_hex(testdata::kLinkPhys0);
  bridge[NLMSG_HDRLEN] = AF_BRIDGE;
  nlmsghdr h = header_of(bridge);
  h.nlmsg_type = RTM_DELLINK;
  set_header(bridge, h);
  r = parse_batch(bridge, BatchExpectation{});
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->events.empty());
}

TEST(NetlinkBatch, TrailingBytesShorterThanHeader) {
  auto buf = from_hex(testdata::kAddr4Phys0);
  buf.resize(buf.size() + 8, 0);
  EXPECT_EQ(parse_fails(buf).code, NetlinkError::kTruncated);
}

// Random corruption of real messages: every outcome is a value or an error, never a crash
// or an out-of-bounds read (run under ASan).
TEST(NetlinkFuzz, MutatedCapturesNeverCrash) {
  std::mt19937 rng(12345);
  const char* sources[] = {testdata::kLinkLo,     testdata::kLinkPhys0,   testdata::kLinkTun0,
                           testdata::kAddr4Phys0, testdata::kAddr6Phys0,  testdata::kRoute4Default,
                           testdata::kRoute4VpnHalf, testdata::kRoute6Default};
  int errors = 0, parsed = 0;
  for (int round = 0; round < 20000; ++round) {
    auto msg = from_hex(sources[round % 8]);
    const int flips = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < flips; ++i) {
      msg[rng() % msg.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    }
    if (rng() % 4 == 0) msg.resize(rng() % msg.size() + 1);
    auto r = parse_batch(msg, BatchExpectation{});
    (r ? parsed : errors)++;
  }
  EXPECT_GT(errors, 0);
  EXPECT_GT(parsed, 0);
}

}  // namespace
}  // namespace splitd::iface
