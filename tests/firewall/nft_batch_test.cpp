#include "firewall/nft_batch.hpp"

#include <gtest/gtest.h>
#include <libmnl/libmnl.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "firewall/ruleset.hpp"

namespace splitd::firewall {
namespace {

struct Message {
  std::uint16_t type;
  std::uint16_t flags;
  std::uint32_t seq;
};

std::vector<Message> messages(const std::vector<std::uint8_t>& datagram) {
  std::vector<Message> out;
  int left = static_cast<int>(datagram.size());
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(datagram.data());
  for (; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
    out.push_back({nlh->nlmsg_type, nlh->nlmsg_flags, nlh->nlmsg_seq});
  }
  EXPECT_EQ(left, 0) << "trailing bytes";
  return out;
}

std::vector<std::string> labels(const NftBatch& b) {
  std::vector<std::string> out;
  for (std::uint32_t s = b.begin_seq() + 1; s < b.end_seq(); ++s) out.push_back(b.label(s));
  return out;
}

std::uint32_t seq_of(const NftBatch& b, const std::string& label) {
  for (std::uint32_t s = b.begin_seq() + 1; s < b.end_seq(); ++s) {
    if (b.label(s) == label) return s;
  }
  ADD_FAILURE() << "no message labelled " << label;
  return 0;
}

constexpr std::uint16_t nft(std::uint16_t msg) {
  return static_cast<std::uint16_t>(NFNL_SUBSYS_NFTABLES << 8 | msg);
}

TEST(NftBatch, OneFramedTransactionWithAnAckOnEveryMessage) {
  NftBatch b = install_batch(FirewallConfig{});
  const auto datagram = b.finish(1000);
  const auto msgs = messages(datagram);
  ASSERT_EQ(msgs.size(), b.size() + 2);
  EXPECT_EQ(msgs.front().type, NFNL_MSG_BATCH_BEGIN);
  EXPECT_EQ(msgs.front().seq, 1000u);
  EXPECT_EQ(msgs.back().type, NFNL_MSG_BATCH_END);
  EXPECT_EQ(msgs.back().seq, b.end_seq());
  for (std::size_t i = 1; i + 1 < msgs.size(); ++i) {
    EXPECT_EQ(msgs[i].seq, 1000u + i);
    EXPECT_EQ(msgs[i].flags & (NLM_F_REQUEST | NLM_F_ACK), NLM_F_REQUEST | NLM_F_ACK) << i;
    EXPECT_EQ(msgs[i].type >> 8, NFNL_SUBSYS_NFTABLES) << i;
  }
  // Replace atomically: add, delete, add the table, then everything else.
  EXPECT_EQ(msgs[1].type, nft(NFT_MSG_NEWTABLE));
  EXPECT_EQ(msgs[2].type, nft(NFT_MSG_DELTABLE));
  EXPECT_EQ(msgs[3].type, nft(NFT_MSG_NEWTABLE));
}

TEST(NftBatch, EveryMessageHasALabel) {
  NftBatch b = install_batch(FirewallConfig{});
  b.finish(1);
  const std::string fib = "rule 'local, broadcast, multicast destinations' in chain output";
  EXPECT_EQ(labels(b), (std::vector<std::string>{
                           "table inet splitd",
                           "deletion of table inet splitd",
                           "table inet splitd",
                           "set never4",
                           "elements of set never4",
                           "set never6",
                           "elements of set never6",
                           "set vpn_servers4",
                           "set vpn_servers6",
                           "chain output",
                           "rule 'splitd's own sockets (bypass mark)' in chain output",
                           "rule 'replies of inbound connections' in chain output",
                           "rule 'marked by other software' in chain output",
                           "rule 'VPN clients' servers (their host routes via a physical gateway)' in chain output",
                           "rule 'VPN clients' servers (their host routes via a physical gateway)' in chain output",
                           "anonymous set of " + fib,
                           "elements of the anonymous set of " + fib,
                           fib,
                           "rule 'never_intercept' in chain output",
                           "rule 'never_intercept' in chain output",
                           "rule 'intercept TCP' in chain output",
                           "chain postrouting",
                           "rule 'sockets bound to an interface keep their binding (not intercepted)' in chain postrouting",
                           "chain prerouting",
                           "rule 'TCP packets of established transparent sockets' in chain prerouting",
                           "rule 'to splitd's TCP proxy' in chain prerouting",
                       }));
  EXPECT_EQ(b.label(1), "nftables transaction");
  EXPECT_EQ(b.label(b.end_seq()), "nftables transaction");
  EXPECT_EQ(b.label(b.end_seq() + 1), "");
}

TEST(NftBatch, UdpAndIpv6OffChangeTheRuleset) {
  FirewallConfig c;
  c.intercept_udp = true;
  c.ipv6 = false;
  NftBatch b = install_batch(c);
  b.finish(1);
  const auto l = labels(b);
  const auto has = [&](const std::string& s) {
    return std::find(l.begin(), l.end(), s) != l.end();
  };
  EXPECT_TRUE(has("rule 'intercept UDP' in chain output"));
  EXPECT_TRUE(has("rule 'to splitd's UDP proxy' in chain prerouting"));
  // Every datagram to the listeners (their reuseport group keeps a client on one worker).
  EXPECT_FALSE(has("rule 'UDP packets of established transparent sockets' in chain prerouting"));
  EXPECT_FALSE(has("set never6"));
}

TEST(NftBatch, AFailureNamesTheObjectAndWhatToDo) {
  NftBatch b = install_batch(FirewallConfig{});
  b.finish(500);

  auto e = b.describe_failure(seq_of(b, "rule 'intercept TCP' in chain output"), EOPNOTSUPP, "");
  EXPECT_EQ(e.code, FirewallErrorCode::kUnsupported);
  EXPECT_EQ(e.message, "rule 'intercept TCP' in chain output: Operation not supported");

  e = b.describe_failure(seq_of(b, "rule 'to splitd's TCP proxy' in chain prerouting"), ENOENT, "");
  EXPECT_EQ(e.code, FirewallErrorCode::kUnsupported);
  EXPECT_EQ(e.message.rfind(
                "rule 'to splitd's TCP proxy' in chain prerouting: No such file or directory; "
                "the kernel may lack nft_tproxy",
                0),
            0u)
      << e.message;

  e = b.describe_failure(
      seq_of(b, "rule 'TCP packets of established transparent sockets' in chain prerouting"), ENOENT,
      "");
  EXPECT_NE(e.message.find("nft_socket"), std::string::npos) << e.message;

  e = b.describe_failure(seq_of(b, "rule 'replies of inbound connections' in chain output"), EINVAL,
                         "Invalid argument in ct");
  EXPECT_EQ(e.code, FirewallErrorCode::kKernel);
  EXPECT_EQ(e.message,
            "rule 'replies of inbound connections' in chain output: Invalid argument "
            "(Invalid argument in ct)");

  e = b.describe_failure(500, EPERM, "");  // BEGIN: the batch as a whole
  EXPECT_EQ(e.code, FirewallErrorCode::kPermission);
  EXPECT_EQ(e.message,
            "nftables transaction: Operation not permitted; splitd needs CAP_NET_ADMIN "
            "in this network namespace");
}

TEST(NftRule, KnowsTheKernelModulesItNeeds) {
  NftRule r("x");
  r.ct_direction_eq(1).socket_transparent().tproxy_to_port(1).fib_daddr_type_in({2}).accept();
  EXPECT_EQ(r.needs(), "nft_ct, nft_socket, nft_tproxy, nft_fib_inet");
  EXPECT_EQ(NftRule("y").meta_mark_eq(1).accept().needs(), "");
}

TEST(Validate, RefusesValuesTheFootprintCannotTake) {
  const auto refused = [](auto change, const std::string& mentions) {
    FirewallConfig c;
    change(c);
    auto r = validate(c);
    ASSERT_FALSE(r) << mentions;
    EXPECT_EQ(r.error().code, FirewallErrorCode::kInvalidConfig);
    EXPECT_NE(r.error().message.find(mentions), std::string::npos) << r.error().message;
  };
  refused([](FirewallConfig& c) { c.port = 0; }, "port");
  refused([](FirewallConfig& c) { c.mark = 0; }, "mark");
  refused([](FirewallConfig& c) { c.bypass_mark = 0; }, "bypass_mark");
  refused([](FirewallConfig& c) { c.bypass_mark = c.mark; }, "differ");
  refused([](FirewallConfig& c) { c.route_table = 254; }, "route_table 254");
  refused([](FirewallConfig& c) { c.route_table = 0; }, "route_table 0");
  refused([](FirewallConfig& c) { c.rule_priority = 0; }, "priority");
  refused([](FirewallConfig& c) { c.rule_priority = 32766; }, "priority");
  EXPECT_TRUE(validate(FirewallConfig{}));
}

TEST(FirewallConfig, DefaultNeverIntercept) {
  std::vector<std::string> got;
  for (const auto& c : Firewall::default_never_intercept()) got.push_back(c.to_string());
  EXPECT_EQ(got, (std::vector<std::string>{"127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10",
                                           "224.0.0.0/4", "ff00::/8"}));
  EXPECT_EQ(FirewallConfig{}.never_intercept, Firewall::default_never_intercept());
}

}  // namespace
}  // namespace splitd::firewall
