#include "firewall/interval_set.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>

#include <string>

#include "firewall/firewall.hpp"

namespace splitd::firewall {
namespace {

std::vector<Cidr> cidrs(std::initializer_list<const char*> texts) {
  std::vector<Cidr> out;
  for (const char* t : texts) out.push_back(*Cidr::parse(t));
  return out;
}

// "start 10.0.0.0", "end 11.0.0.0", "open ff00::" for readable comparisons.
std::vector<std::string> show(const std::vector<IntervalElement>& elements) {
  std::vector<std::string> out;
  for (const auto& e : elements) {
    char buf[INET6_ADDRSTRLEN];
    inet_ntop(e.key_len == 4 ? AF_INET : AF_INET6, e.key.data(), buf, sizeof buf);
    out.push_back(std::string(e.end ? "end " : e.open ? "open " : "start ") + buf);
  }
  return out;
}

using V = std::vector<std::string>;

TEST(IntervalElements, DefaultsLikeNftEncodesThem) {
  const auto defaults = FirewallConfig::default_never_intercept();
  EXPECT_EQ(show(interval_elements(defaults, IpAddress::Family::kV4)),
            (V{"end 0.0.0.0", "start 127.0.0.0", "end 128.0.0.0", "start 169.254.0.0",
               "end 169.255.0.0", "start 224.0.0.0", "end 240.0.0.0"}));
  // ff00::/8 reaches the last address: an open start, no end element.
  EXPECT_EQ(show(interval_elements(defaults, IpAddress::Family::kV6)),
            (V{"end ::", "start ::1", "end ::2", "start fe80::", "end fec0::", "open ff00::"}));
}

TEST(IntervalElements, OverlappingAndAdjacentBlocksAreMerged) {
  EXPECT_EQ(show(interval_elements(cidrs({"10.1.0.0/16", "10.0.0.0/8", "10.200.3.0/24"}),
                                   IpAddress::Family::kV4)),
            (V{"end 0.0.0.0", "start 10.0.0.0", "end 11.0.0.0"}));
  EXPECT_EQ(
      show(interval_elements(cidrs({"10.128.0.0/9", "10.0.0.0/9", "192.0.2.1"}),
                             IpAddress::Family::kV4)),
      (V{"end 0.0.0.0", "start 10.0.0.0", "end 11.0.0.0", "start 192.0.2.1", "end 192.0.2.2"}));
  EXPECT_EQ(show(interval_elements(cidrs({"10.0.0.0/8", "10.0.0.0/8"}), IpAddress::Family::kV4)),
            (V{"end 0.0.0.0", "start 10.0.0.0", "end 11.0.0.0"}));
}

TEST(IntervalElements, EdgesOfTheAddressSpace) {
  EXPECT_EQ(show(interval_elements(cidrs({"0.0.0.0/0"}), IpAddress::Family::kV4)),
            (V{"open 0.0.0.0"}));
  EXPECT_EQ(
      show(interval_elements(cidrs({"0.0.0.0/8", "255.255.255.255"}), IpAddress::Family::kV4)),
      (V{"start 0.0.0.0", "end 1.0.0.0", "open 255.255.255.255"}));
  EXPECT_EQ(show(interval_elements(cidrs({"128.0.0.0/1", "200.0.0.0/8"}), IpAddress::Family::kV4)),
            (V{"end 0.0.0.0", "open 128.0.0.0"}));
}

TEST(IntervalElements, OnlyTheRequestedFamily) {
  EXPECT_TRUE(interval_elements(cidrs({"::/0"}), IpAddress::Family::kV4).empty());
  EXPECT_TRUE(interval_elements({}, IpAddress::Family::kV6).empty());
  // An IPv4-mapped block is IPv4 (Cidr normalises it).
  EXPECT_EQ(show(interval_elements(cidrs({"::ffff:192.0.2.0/120"}), IpAddress::Family::kV4)),
            (V{"end 0.0.0.0", "start 192.0.2.0", "end 192.0.3.0"}));
}

}  // namespace
}  // namespace splitd::firewall
