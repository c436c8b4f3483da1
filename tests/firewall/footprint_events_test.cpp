// scan_nft_events / scan_rtnl_events over crafted datagrams: which kernel events count as
// a change of splitd's footprint, who made it, and what an unreadable datagram reports.
#include "firewall/footprint_events.hpp"

#include <gtest/gtest.h>
#include <linux/fib_rules.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <endian.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace splitd::firewall {
namespace {

constexpr std::uint32_t kOwnPortid = 4242;
constexpr std::uint32_t kNftPortid = 31337;  // `nft` run by someone
constexpr std::uint32_t kIpPortid = 555;     // `ip rule` / `ip route`
constexpr std::uint32_t kRouteTable = 1501;
const std::string kTable = "splitd";

// Builds a datagram of netlink messages the way the kernel lays them out: each message and
// attribute padded to 4 bytes, nlmsg_len covering the message with its attributes.
class Datagram {
 public:
  template <typename Hdr>
  Datagram& msg(std::uint16_t type, std::uint32_t portid, const Hdr& family_header,
                std::uint16_t flags = 0) {
    start_ = buf_.size();
    nlmsghdr h{};
    h.nlmsg_type = type;
    h.nlmsg_flags = flags;
    h.nlmsg_seq = ++seq_;
    h.nlmsg_pid = portid;
    put(&h, sizeof h);
    put(&family_header, sizeof family_header);
    return *this;
  }
  Datagram& nft(std::uint8_t nft_type, std::uint32_t portid, std::uint8_t family = NFPROTO_INET) {
    nfgenmsg g{};
    g.nfgen_family = family;
    g.version = NFNETLINK_V0;
    return msg(static_cast<std::uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | nft_type), portid, g);
  }
  Datagram& attr(std::uint16_t type, const void* data, std::size_t len) {
    nlattr a{};
    a.nla_len = static_cast<std::uint16_t>(NLA_HDRLEN + len);
    a.nla_type = type;
    put(&a, sizeof a);
    put(data, len);
    return *this;
  }
  Datagram& str(std::uint16_t type, std::string_view s) {
    std::string z(s);
    return attr(type, z.c_str(), z.size() + 1);
  }
  Datagram& u32(std::uint16_t type, std::uint32_t v) { return attr(type, &v, sizeof v); }
  Datagram& be32(std::uint16_t type, std::uint32_t v) { return u32(type, htobe32(v)); }

  const std::vector<std::uint8_t>& bytes() const { return buf_; }
  // Where each message ends (for cutting the datagram at and between them).
  std::vector<std::size_t> ends() const {
    std::vector<std::size_t> out;
    std::size_t off = 0;
    while (off < buf_.size()) {
      std::uint32_t len = 0;
      std::memcpy(&len, buf_.data() + off, sizeof len);
      off += NLMSG_ALIGN(len);
      out.push_back(off);
    }
    return out;
  }

 private:
  void put(const void* data, std::size_t len) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    buf_.insert(buf_.end(), p, p + len);
    buf_.resize(NLMSG_ALIGN(buf_.size()), 0);
    const auto total = static_cast<std::uint32_t>(buf_.size() - start_);
    std::memcpy(buf_.data() + start_, &total, sizeof total);  // nlmsg_len
  }

  std::vector<std::uint8_t> buf_;
  std::size_t start_ = 0;
  std::uint32_t seq_ = 0;
};

// A change `nft` makes to `table` of `family`, then the NEWGEN that closes it.
Datagram& table_change(Datagram& d, std::uint32_t portid, const std::string& table,
                       std::uint8_t family = NFPROTO_INET) {
  return d.nft(NFT_MSG_NEWTABLE, portid, family).str(NFTA_TABLE_NAME, table).u32(NFTA_TABLE_FLAGS, 0);
}
Datagram& chain_delete(Datagram& d, std::uint32_t portid, const std::string& table) {
  return d.nft(NFT_MSG_DELCHAIN, portid).str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, "output");
}
Datagram& new_gen(Datagram& d, std::uint32_t portid, std::uint32_t pid, std::string_view name) {
  d.nft(NFT_MSG_NEWGEN, portid, NFPROTO_UNSPEC).be32(NFTA_GEN_ID, 77);
  if (pid != 0) d.be32(NFTA_GEN_PROC_PID, pid);
  if (!name.empty()) d.str(NFTA_GEN_PROC_NAME, name);
  return d;
}

struct NftScan {
  FootprintEvents ev;
  bool awaiting_gen = false;
  NftScan& feed(std::span<const std::uint8_t> datagram, std::uint32_t own = kOwnPortid) {
    scan_nft_events(datagram, own, kTable, awaiting_gen, ev);
    return *this;
  }
};

FootprintEvents rtnl(std::span<const std::uint8_t> datagram, std::uint32_t own = kOwnPortid) {
  FootprintEvents ev;
  scan_rtnl_events(datagram, own, kRouteTable, ev);
  return ev;
}

fib_rule_hdr rule_header() {
  fib_rule_hdr h{};
  h.family = AF_INET;
  h.action = FR_ACT_TO_TBL;
  return h;
}

rtmsg route_header(std::uint8_t table) {
  rtmsg r{};
  r.rtm_family = AF_INET;
  r.rtm_table = table;
  r.rtm_type = RTN_LOCAL;
  r.rtm_protocol = 93;
  return r;
}

// ---- nftables events ---------------------------------------------------------------------

TEST(ScanNftEvents, ForeignChangeOfSplitdTableIsAChange) {
  Datagram d;
  table_change(d, kNftPortid, "splitd");
  NftScan s;
  s.feed(d.bytes());
  EXPECT_TRUE(s.ev.nftables);
  EXPECT_TRUE(s.ev.any());
  EXPECT_TRUE(s.awaiting_gen);  // who did it: the NEWGEN will say
  EXPECT_FALSE(s.ev.lost);
  EXPECT_FALSE(s.ev.policy);
  EXPECT_FALSE(s.ev.route);
  EXPECT_EQ(s.ev.culprit, "");
  EXPECT_EQ(s.ev.culprit_pid, 0u);
  EXPECT_EQ(s.ev.messages, 1u);
}

TEST(ScanNftEvents, NewGenAfterTheChangeNamesTheCulprit) {
  Datagram d;
  table_change(d, kNftPortid, "splitd");
  chain_delete(d, kNftPortid, "splitd");
  new_gen(d, kNftPortid, 4321, "nft");
  NftScan s;
  s.feed(d.bytes());
  EXPECT_TRUE(s.ev.nftables);
  EXPECT_FALSE(s.awaiting_gen);
  EXPECT_EQ(s.ev.culprit, "nft (pid 4321)");
  EXPECT_EQ(s.ev.culprit_pid, 4321u);
  EXPECT_EQ(s.ev.messages, 3u);
  EXPECT_FALSE(s.ev.lost);
}

TEST(ScanNftEvents, NewGenInTheNextDatagramStillNamesTheCulprit) {
  Datagram change;
  chain_delete(change, kNftPortid, "splitd");
  Datagram gen;
  new_gen(gen, kNftPortid, 99, "iptables-nft");
  NftScan s;
  s.feed(change.bytes());
  EXPECT_TRUE(s.awaiting_gen);
  EXPECT_EQ(s.ev.culprit, "");
  s.feed(gen.bytes());
  EXPECT_FALSE(s.awaiting_gen);
  EXPECT_EQ(s.ev.culprit, "iptables-nft (pid 99)");
  EXPECT_EQ(s.ev.culprit_pid, 99u);
  EXPECT_EQ(s.ev.messages, 2u);
}

TEST(ScanNftEvents, NewGenWithoutPidOrNameSaysWhatItKnows) {
  Datagram a;
  table_change(a, kNftPortid, "splitd");
  new_gen(a, kNftPortid, 0, "");
  NftScan s;
  s.feed(a.bytes());
  EXPECT_EQ(s.ev.culprit, "a process");
  EXPECT_EQ(s.ev.culprit_pid, 0u);

  Datagram b;
  table_change(b, kNftPortid, "splitd");
  new_gen(b, kNftPortid, 0, "nft");
  NftScan t;
  t.feed(b.bytes());
  EXPECT_EQ(t.ev.culprit, "nft");
  EXPECT_EQ(t.ev.culprit_pid, 0u);
}

TEST(ScanNftEvents, NewGenOfAnUnrelatedTransactionIsIgnored) {
  Datagram d;
  table_change(d, kNftPortid, "filter");
  new_gen(d, kNftPortid, 4321, "nft");
  NftScan s;
  s.feed(d.bytes());
  EXPECT_FALSE(s.ev.any());
  EXPECT_EQ(s.ev.culprit, "");
  EXPECT_EQ(s.ev.culprit_pid, 0u);
  EXPECT_EQ(s.ev.messages, 2u);
}

TEST(ScanNftEvents, OwnPortidIsSkipped) {
  Datagram d;
  table_change(d, kOwnPortid, "splitd");
  chain_delete(d, kOwnPortid, "splitd");
  new_gen(d, kOwnPortid, 1000, "splitd");
  NftScan s;
  s.feed(d.bytes());
  EXPECT_FALSE(s.ev.nftables);
  EXPECT_FALSE(s.ev.any());
  EXPECT_FALSE(s.awaiting_gen);
  EXPECT_EQ(s.ev.culprit, "");  // splitd's own NEWGEN names no culprit
  EXPECT_EQ(s.ev.messages, 3u);
}

TEST(ScanNftEvents, PortidZeroIsForeignWhenSplitdHasNoSocket) {
  // own_portid 0 means "none": a change from port 0 (the kernel itself) still counts.
  Datagram d;
  table_change(d, 0, "splitd");
  NftScan s;
  s.feed(d.bytes(), /*own=*/0);
  EXPECT_TRUE(s.ev.nftables);
}

TEST(ScanNftEvents, OtherTablesAndFamiliesAreIgnored) {
  Datagram d;
  table_change(d, kNftPortid, "other");
  table_change(d, kNftPortid, "splitd2");
  table_change(d, kNftPortid, "split");
  table_change(d, kNftPortid, "splitd", NFPROTO_IPV4);  // `table ip splitd` is not ours
  table_change(d, kNftPortid, "splitd", NFPROTO_IPV6);
  d.nft(NFT_MSG_NEWRULE, kNftPortid).str(NFTA_RULE_CHAIN, "input");  // no table attribute
  NftScan s;
  s.feed(d.bytes());
  EXPECT_FALSE(s.ev.any());
  EXPECT_FALSE(s.awaiting_gen);
  EXPECT_EQ(s.ev.messages, 6u);
}

TEST(ScanNftEvents, EveryObjectKindNamesTheTableInAttributeOne) {
  for (std::uint8_t type : {NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_DELCHAIN, NFT_MSG_NEWRULE,
                            NFT_MSG_DELRULE, NFT_MSG_NEWSET, NFT_MSG_DELSET, NFT_MSG_NEWSETELEM,
                            NFT_MSG_DELSETELEM, NFT_MSG_NEWOBJ, NFT_MSG_DELOBJ, NFT_MSG_NEWFLOWTABLE,
                            NFT_MSG_DELFLOWTABLE}) {
    Datagram d;
    d.nft(type, kNftPortid).str(1, "splitd");
    NftScan s;
    s.feed(d.bytes());
    EXPECT_TRUE(s.ev.nftables) << "message type " << int{type};
  }
}

TEST(ScanNftEvents, OtherSubsystemsAreCountedButIgnored) {
  Datagram d;
  nfgenmsg g{};
  g.nfgen_family = NFPROTO_INET;
  d.msg(static_cast<std::uint16_t>((NFNL_SUBSYS_CTNETLINK << 8) | 0), kNftPortid, g).str(1, "splitd");
  NftScan s;
  s.feed(d.bytes());
  EXPECT_FALSE(s.ev.any());
  EXPECT_EQ(s.ev.messages, 1u);
}

TEST(ScanNftEvents, EmptyDatagramReportsNothing) {
  NftScan s;
  s.feed({});
  EXPECT_FALSE(s.ev.any());
  EXPECT_EQ(s.ev.messages, 0u);
}

TEST(ScanNftEvents, TruncatedDatagramIsLostButKeepsWhatCameBefore) {
  Datagram d;
  table_change(d, kNftPortid, "splitd");
  new_gen(d, kNftPortid, 4321, "nft");
  const auto& all = d.bytes();
  const std::vector<std::size_t> ends = d.ends();
  ASSERT_EQ(ends.size(), 2u);
  for (std::size_t cut = 1; cut < all.size(); ++cut) {
    NftScan s;
    s.feed(std::span(all.data(), cut));
    const std::size_t whole = cut >= ends[0] ? 1 : 0;
    SCOPED_TRACE("cut at " + std::to_string(cut));
    EXPECT_EQ(s.ev.messages, whole);
    EXPECT_EQ(s.ev.lost, cut != ends[0]);  // only a cut between the messages is clean
    EXPECT_EQ(s.ev.nftables, whole == 1);
    EXPECT_EQ(s.ev.culprit, "");  // the NEWGEN never arrived whole
  }
}

TEST(ScanNftEvents, MalformedMessagesSetLost) {
  {
    // Too short for its nfgenmsg.
    Datagram d;
    std::uint16_t half = 0;
    d.msg(static_cast<std::uint16_t>((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE), kNftPortid, half);
    std::vector<std::uint8_t> b = d.bytes();
    const std::uint32_t len = NLMSG_HDRLEN + 2;  // header plus 2 bytes
    std::memcpy(b.data(), &len, sizeof len);
    NftScan s;
    s.feed(b);
    EXPECT_TRUE(s.ev.lost);
    EXPECT_FALSE(s.ev.nftables);
    EXPECT_EQ(s.ev.messages, 1u);
  }
  {
    // An attribute that claims more bytes than its message has.
    Datagram d;
    table_change(d, kNftPortid, "splitd");
    std::vector<std::uint8_t> b = d.bytes();
    const std::uint16_t huge = 200;
    std::memcpy(b.data() + NLMSG_HDRLEN + sizeof(nfgenmsg), &huge, sizeof huge);  // first nla_len
    NftScan s;
    s.feed(b);
    EXPECT_TRUE(s.ev.lost);
    EXPECT_FALSE(s.ev.nftables);
    EXPECT_FALSE(s.awaiting_gen);
  }
  {
    // A header whose length is below a header's.
    std::vector<std::uint8_t> b(NLMSG_HDRLEN, 0);
    const std::uint32_t len = 4;
    std::memcpy(b.data(), &len, sizeof len);
    NftScan s;
    s.feed(b);
    EXPECT_TRUE(s.ev.lost);
    EXPECT_EQ(s.ev.messages, 0u);
  }
}

TEST(ScanNftEvents, RandomGarbageDoesNotCrash) {
  std::mt19937 rng(1501);
  Datagram seed;
  table_change(seed, kNftPortid, "splitd");
  new_gen(seed, kNftPortid, 4321, "nft");
  for (int i = 0; i < 2000; ++i) {
    std::vector<std::uint8_t> b = seed.bytes();
    for (int flips = 1 + static_cast<int>(rng() % 4); flips > 0; --flips) {
      b[rng() % b.size()] = static_cast<std::uint8_t>(rng());
    }
    b.resize(rng() % (b.size() + 1));
    NftScan s;
    s.feed(b);
    // Whatever it found, a culprit only comes with a change.
    if (!s.ev.culprit.empty()) {
      EXPECT_TRUE(s.ev.nftables);
    }
    EXPECT_FALSE(s.ev.policy || s.ev.route);
  }
}

// ---- rtnetlink rule and route events ------------------------------------------------------

TEST(ScanRtnlEvents, ForeignRuleDeletionIsAPolicyChange) {
  Datagram d;
  d.msg(RTM_DELRULE, kIpPortid, rule_header())
      .u32(FRA_PRIORITY, 1501)
      .u32(FRA_FWMARK, 0x5d1)
      .u32(FRA_TABLE, kRouteTable);
  const FootprintEvents ev = rtnl(d.bytes());
  EXPECT_TRUE(ev.policy);
  EXPECT_FALSE(ev.route);
  EXPECT_FALSE(ev.nftables);
  EXPECT_FALSE(ev.lost);
  EXPECT_EQ(ev.rtnl_portid, kIpPortid);
  EXPECT_EQ(ev.messages, 1u);
  EXPECT_TRUE(ev.any());
}

TEST(ScanRtnlEvents, AnyForeignRuleCountsEvenOfAnotherTable) {
  // A rule ahead of splitd's can steal its packets, whatever table it names.
  Datagram d;
  d.msg(RTM_NEWRULE, 777, rule_header()).u32(FRA_PRIORITY, 100).u32(FRA_TABLE, 51820);
  const FootprintEvents ev = rtnl(d.bytes());
  EXPECT_TRUE(ev.policy);
  EXPECT_EQ(ev.rtnl_portid, 777u);
}

TEST(ScanRtnlEvents, OwnRuleChangesAreIgnored) {
  Datagram d;
  d.msg(RTM_NEWRULE, kOwnPortid, rule_header()).u32(FRA_PRIORITY, 1501);
  d.msg(RTM_DELRULE, kOwnPortid, rule_header()).u32(FRA_PRIORITY, 1501);
  const FootprintEvents ev = rtnl(d.bytes());
  EXPECT_FALSE(ev.any());
  EXPECT_EQ(ev.rtnl_portid, 0u);
  EXPECT_EQ(ev.messages, 2u);
}

TEST(ScanRtnlEvents, RouteInTheWatchedTableIsARouteChange) {
  // Tables above 255: rtm_table says RT_TABLE_COMPAT, RTA_TABLE the real one.
  Datagram d;
  d.msg(RTM_DELROUTE, kIpPortid, route_header(RT_TABLE_COMPAT)).u32(RTA_TABLE, kRouteTable).u32(RTA_OIF, 1);
  const FootprintEvents ev = rtnl(d.bytes());
  EXPECT_TRUE(ev.route);
  EXPECT_FALSE(ev.policy);
  EXPECT_EQ(ev.rtnl_portid, kIpPortid);
  EXPECT_FALSE(ev.lost);

  // A small table number needs no RTA_TABLE.
  Datagram small;
  small.msg(RTM_NEWROUTE, kIpPortid, route_header(200));
  FootprintEvents in_200;
  scan_rtnl_events(small.bytes(), kOwnPortid, 200, in_200);
  EXPECT_TRUE(in_200.route);
}

TEST(ScanRtnlEvents, RoutesInOtherTablesAreIgnored) {
  Datagram d;
  d.msg(RTM_NEWROUTE, kIpPortid, route_header(RT_TABLE_MAIN)).u32(RTA_TABLE, RT_TABLE_MAIN);
  d.msg(RTM_DELROUTE, kIpPortid, route_header(RT_TABLE_COMPAT)).u32(RTA_TABLE, 1502);
  // rtm_table alone would say 1501 & 0xff = 221; only RTA_TABLE names 1501.
  d.msg(RTM_NEWROUTE, kIpPortid, route_header(kRouteTable & 0xff));
  const FootprintEvents ev = rtnl(d.bytes());
  EXPECT_FALSE(ev.any());
  EXPECT_EQ(ev.rtnl_portid, 0u);
  EXPECT_EQ(ev.messages, 3u);
}

TEST(ScanRtnlEvents, OwnRouteChangesAreIgnored) {
  Datagram d;
  d.msg(RTM_NEWROUTE, kOwnPortid, route_header(RT_TABLE_COMPAT)).u32(RTA_TABLE, kRouteTable);
  const FootprintEvents ev = rtnl(d.bytes());
  EXPECT_FALSE(ev.any());
  // Without a socket of its own (0), nothing is splitd's.
  EXPECT_TRUE(rtnl(d.bytes(), 0).route);
}

TEST(ScanRtnlEvents, OtherMessageTypesAreIgnored) {
  Datagram d;
  ifinfomsg ifi{};
  ifi.ifi_index = 3;
  d.msg(RTM_NEWLINK, kIpPortid, ifi).str(IFLA_IFNAME, "eth0");
  ifaddrmsg ifa{};
  ifa.ifa_family = AF_INET;
  d.msg(RTM_DELADDR, kIpPortid, ifa);
  const FootprintEvents ev = rtnl(d.bytes());
  EXPECT_FALSE(ev.any());
  EXPECT_EQ(ev.messages, 2u);
}

TEST(ScanRtnlEvents, MalformedRoutesAndTruncatedDatagramsSetLost) {
  {
    // A route event too short for its rtmsg.
    Datagram d;
    std::uint32_t four = 0;
    d.msg(RTM_NEWROUTE, kIpPortid, four);
    const FootprintEvents ev = rtnl(d.bytes());
    EXPECT_TRUE(ev.lost);
    EXPECT_FALSE(ev.route);
  }
  {
    // A route attribute running past its message.
    Datagram d;
    d.msg(RTM_NEWROUTE, kIpPortid, route_header(RT_TABLE_COMPAT)).u32(RTA_TABLE, kRouteTable);
    std::vector<std::uint8_t> b = d.bytes();
    const std::uint16_t huge = 64;
    std::memcpy(b.data() + NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(rtmsg)), &huge, sizeof huge);
    const FootprintEvents ev = rtnl(b);
    EXPECT_TRUE(ev.lost);
    EXPECT_FALSE(ev.route);
  }
  {
    // A rule deletion, then a datagram cut inside the next message.
    Datagram d;
    d.msg(RTM_DELRULE, kIpPortid, rule_header()).u32(FRA_PRIORITY, 1501);
    d.msg(RTM_NEWROUTE, kIpPortid, route_header(RT_TABLE_COMPAT)).u32(RTA_TABLE, kRouteTable);
    const auto& all = d.bytes();
    const std::size_t first_end = d.ends()[0];
    for (std::size_t cut = first_end + 1; cut < all.size(); ++cut) {
      const FootprintEvents ev = rtnl(std::span(all.data(), cut));
      SCOPED_TRACE("cut at " + std::to_string(cut));
      EXPECT_TRUE(ev.lost);
      EXPECT_TRUE(ev.policy);  // what came before the cut still counts
      EXPECT_FALSE(ev.route);
      EXPECT_EQ(ev.messages, 1u);
    }
  }
  {
    const std::vector<std::uint8_t> three = {1, 2, 3};
    const FootprintEvents ev = rtnl(three);
    EXPECT_TRUE(ev.lost);
    EXPECT_EQ(ev.messages, 0u);
  }
}

}  // namespace
}  // namespace splitd::firewall
