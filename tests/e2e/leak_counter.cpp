#include "tests/e2e/leak_counter.hpp"

#include <gtest/gtest.h>

#include <string>

namespace splitd::e2e {

void add_leak_counter(const lab::Lab& lab) {
  const auto r = lab.exec(lab.wan_ns(),
                          "nft add table inet leak && "
                          "nft add chain inet leak pre '{ type filter hook prerouting priority -300; }' && "
                          "nft add rule inet leak pre ip daddr 198.51.100.10 counter && "
                          "nft add rule inet leak pre ip6 daddr 2001:db8:1::10 counter");
  ASSERT_EQ(r.exit_code, 0) << r.err;
}

std::uint64_t leaked_packets(const lab::Lab& lab) {
  const std::string out = lab.exec(lab.wan_ns(), "nft list table inet leak").out;
  std::uint64_t total = 0;
  for (std::size_t at = out.find("counter packets "); at != std::string::npos;
       at = out.find("counter packets ", at + 1)) {
    total += std::stoull(out.substr(at + 16));
  }
  return total;
}

void expect_no_leak(const lab::Lab& lab) {
  const std::string counter = lab.exec(lab.wan_ns(), "nft list table inet leak").out;
  EXPECT_NE(counter.find("ip daddr 198.51.100.10 counter packets 0 bytes 0"), std::string::npos) << counter;
  EXPECT_NE(counter.find("ip6 daddr 2001:db8:1::10 counter packets 0 bytes 0"), std::string::npos) << counter;
}

}  // namespace splitd::e2e
