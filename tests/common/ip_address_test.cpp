#include "common/ip_address.hpp"

#include <gtest/gtest.h>

namespace splitd {
namespace {

TEST(IpAddress, ParseAndPrint) {
  for (const char* text : {"0.0.0.0", "203.0.113.10", "255.255.255.255", "::", "::1",
                           "2001:db8::10", "fe80::1", "::ffff:198.51.100.10"}) {
    auto ip = IpAddress::parse(text);
    ASSERT_TRUE(ip.has_value()) << text;
    EXPECT_EQ(ip->to_string(), text);
  }
  for (const char* bad : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "2001:db8:::1", "x", "1.2.3.4/24",
                          "2001:db8::10%eth0"}) {
    EXPECT_FALSE(IpAddress::parse(bad).has_value()) << bad;
  }
  EXPECT_FALSE(IpAddress::parse(std::string(100, '1')).has_value());
}

TEST(IpAddress, Classes) {
  EXPECT_TRUE(IpAddress::parse("127.0.0.5")->is_loopback());
  EXPECT_TRUE(IpAddress::parse("::1")->is_loopback());
  EXPECT_TRUE(IpAddress::parse("::ffff:127.0.0.1")->is_loopback());
  EXPECT_TRUE(IpAddress::parse("169.254.3.4")->is_link_local());
  EXPECT_TRUE(IpAddress::parse("fe80::1")->is_link_local());
  EXPECT_TRUE(IpAddress::parse("febf::1")->is_link_local());
  EXPECT_FALSE(IpAddress::parse("fec0::1")->is_link_local());
  EXPECT_TRUE(IpAddress::parse("239.1.1.1")->is_multicast());
  EXPECT_TRUE(IpAddress::parse("ff02::1")->is_multicast());
  EXPECT_TRUE(IpAddress::parse("::")->is_unspecified());
  EXPECT_FALSE(IpAddress::parse("203.0.113.1")->is_multicast());
}

TEST(IpAddress, MappedAndBytes) {
  auto mapped = *IpAddress::parse("::ffff:198.51.100.10");
  EXPECT_TRUE(mapped.is_v4_mapped());
  EXPECT_EQ(mapped.unmapped(), *IpAddress::parse("198.51.100.10"));
  EXPECT_EQ(mapped.unmapped().bytes().size(), 4u);
  EXPECT_FALSE(IpAddress::parse("2001:db8::1")->is_v4_mapped());
  const std::uint8_t five[5] = {};
  EXPECT_FALSE(IpAddress::from_bytes(five).has_value());
  EXPECT_EQ(IpAddress::v4(0xcb00710au).to_string(), "203.0.113.10");
  EXPECT_LT(*IpAddress::parse("1.2.3.4"), *IpAddress::parse("1.2.3.5"));
}

}  // namespace
}  // namespace splitd
