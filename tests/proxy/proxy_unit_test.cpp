#include <gtest/gtest.h>

#include "proxy/session_table.hpp"
#include "proxy/tcp_proxy.hpp"
#include "proxy/udp_proxy.hpp"

namespace splitd::proxy {
namespace {

TEST(UpstreamPortRange, OutsideTheEphemeralRange) {
  using R = std::pair<std::uint16_t, std::uint16_t>;
  EXPECT_EQ(upstream_port_range(32768, 60999), (R{61000, 65535}));  // Linux default
  EXPECT_EQ(upstream_port_range(32768, 65000), (R{1024, 32767}));   // no room above
  EXPECT_EQ(upstream_port_range(1024, 65535), (R{0, 0}));           // no room at all
  EXPECT_EQ(upstream_port_range(49152, 65535), (R{1024, 49151}));   // IANA-style range
}

TEST(SessionTable, CountsListsAndKills) {
  SessionTable t;
  decider::Route r;
  r.kind = decider::RouteKind::kTunnel;
  r.interface = "tun0";
  r.rule = "default";
  auto a = t.add(decider::Protocol::kTcp, {*IpAddress::parse("198.18.2.2"), 40000},
                 {*IpAddress::parse("198.51.100.10"), 443}, r);
  auto b = t.add(decider::Protocol::kTcp, {*IpAddress::parse("2001:db8:ff:2::2"), 40001},
                 {*IpAddress::parse("2001:db8:1::10"), 443}, r);
  bool killed = false;
  std::uint64_t killed_id = 0;
  b->kill = [&](std::uint64_t id) {
    killed = true;
    killed_id = id;
  };
  a->bytes_sent += 100;
  b->bytes_received += 50;
  auto list = t.list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].id, a->id);
  EXPECT_EQ(list[0].destination.to_string(), "198.51.100.10:443");
  EXPECT_EQ(list[1].client.to_string(), "[2001:db8:ff:2::2]:40001");
  EXPECT_EQ(list[0].bytes_sent, 100u);
  EXPECT_TRUE(t.kill(b->id));
  EXPECT_TRUE(killed);
  EXPECT_EQ(killed_id, b->id);
  EXPECT_FALSE(t.kill(a->id));      // no kill hook
  EXPECT_FALSE(t.kill(12345));      // unknown id
  t.remove(*a);
  const auto totals = t.totals();
  EXPECT_EQ(totals.active, 1u);
  EXPECT_EQ(totals.total, 2u);
  EXPECT_EQ(totals.bytes_sent, 100u);     // finished sessions count
  EXPECT_EQ(totals.bytes_received, 50u);  // live ones too
}

TEST(KeyedHash, IsSipHash24UnderItsKey) {
  std::array<std::uint8_t, 16> key;
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i);
  const KeyedHash h(key);
  // The SipHash-2-4 paper's test vector for key 00..0f and the empty message.
  EXPECT_EQ(h({}), std::size_t{0x726fdb47dd0e0e31ull});
  const std::array<std::uint8_t, 3> msg{1, 2, 3};
  EXPECT_EQ(h(msg), KeyedHash(key)(msg));
}

TEST(KeyedHash, RandomKeysDiffer) {
  const std::array<std::uint8_t, 19> endpoint{4, 203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23, 0x28};
  const KeyedHash a, b;
  EXPECT_EQ(a(endpoint), a(endpoint));
  EXPECT_NE(a(endpoint), b(endpoint));  // 2^-64 chance of a false failure
}

}  // namespace
}  // namespace splitd::proxy
