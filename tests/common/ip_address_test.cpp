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

#include "common/cidr.hpp"

namespace splitd {
namespace {

TEST(Cidr, ParseNormalisesAndContains) {
  auto c = *Cidr::parse("192.168.1.77/16");
  EXPECT_EQ(c.to_string(), "192.168.0.0/16");
  EXPECT_TRUE(c.contains(*IpAddress::parse("192.168.255.1")));
  EXPECT_TRUE(c.contains(*IpAddress::parse("::ffff:192.168.3.4")));
  EXPECT_FALSE(c.contains(*IpAddress::parse("192.169.0.1")));
  EXPECT_FALSE(c.contains(*IpAddress::parse("2001:db8::1")));
  EXPECT_EQ(c.last().to_string(), "192.168.255.255");
  EXPECT_EQ(Cidr::parse("203.0.113.10")->to_string(), "203.0.113.10/32");
  EXPECT_EQ(Cidr::parse("2001:db8::1/32")->to_string(), "2001:db8::/32");
  EXPECT_EQ(Cidr::parse("fe80::/10")->last().to_string(), "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
  EXPECT_EQ(Cidr::parse("::ffff:10.0.0.0/104")->to_string(), "10.0.0.0/8");
  auto all = *Cidr::parse("0.0.0.0/0");
  EXPECT_TRUE(all.contains(*IpAddress::parse("255.1.2.3")));
  EXPECT_EQ(all.last().to_string(), "255.255.255.255");
  auto host6 = *Cidr::parse("2001:db8::10/128");
  EXPECT_TRUE(host6.contains(*IpAddress::parse("2001:db8::10")));
  EXPECT_FALSE(host6.contains(*IpAddress::parse("2001:db8::11")));
  EXPECT_TRUE(Cidr::parse("10.1.2.3/9")->contains(*IpAddress::parse("10.127.0.1")));
  EXPECT_FALSE(Cidr::parse("10.1.2.3/9")->contains(*IpAddress::parse("10.128.0.1")));
}

TEST(Cidr, Errors) {
  std::string err;
  EXPECT_FALSE(Cidr::parse("10.0.0.0/33", &err));
  EXPECT_EQ(err, "prefix length 33 exceeds 32");
  EXPECT_FALSE(Cidr::parse("10.0.0.0/", &err));
  EXPECT_EQ(err, "prefix length '' is not a number");
  EXPECT_FALSE(Cidr::parse("10.0.0.0/8x", &err));
  EXPECT_FALSE(Cidr::parse("10.0.0/8", &err));
  EXPECT_EQ(err, "'10.0.0' is not an IPv4 or IPv6 address");
  EXPECT_FALSE(Cidr::parse("::/129", &err));
  EXPECT_EQ(err, "prefix length 129 exceeds 128");
  EXPECT_FALSE(Cidr::parse("", &err));
  EXPECT_FALSE(Cidr::parse("/8", &err));
  EXPECT_FALSE(Cidr::parse("1.2.3.4/-1", &err));
}

}  // namespace
}  // namespace splitd

#include <thread>

#include "common/atomic_shared_ptr.hpp"

namespace splitd {
namespace {

// Readers always see one whole value while a writer replaces it (run under TSan too).
TEST(AtomicSharedPtr, ReadersSeeWholeSnapshotsWhileAWriterSwaps) {
  struct Pair {
    int a, b;
  };
  AtomicSharedPtr<const Pair> cell(std::make_shared<const Pair>(Pair{0, 0}));
  std::atomic<bool> done{false};
  std::atomic<int> torn{0};
  std::thread reader([&] {
    while (!done.load()) {
      const auto p = cell.load();
      if (p->a != p->b) ++torn;
    }
  });
  for (int i = 1; i <= 20000; ++i) cell.store(std::make_shared<const Pair>(Pair{i, i}));
  done = true;
  reader.join();
  EXPECT_EQ(torn.load(), 0);
  EXPECT_EQ(cell.load()->a, 20000);
}

}  // namespace
}  // namespace splitd
