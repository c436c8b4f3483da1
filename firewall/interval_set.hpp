#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "common/cidr.hpp"
#include "common/ip_address.hpp"

namespace splitd::firewall {

// One element of an nftables interval set, encoded the way nft encodes it: the start of
// a range, or the first address after a range (NFT_SET_ELEM_INTERVAL_END).
struct IntervalElement {
  std::array<std::uint8_t, 16> key{};  // network byte order; key_len bytes used
  std::uint8_t key_len = 0;
  bool end = false;   // NFT_SET_ELEM_INTERVAL_END
  bool open = false;  // a start whose range reaches the last address: no end element follows

  friend bool operator==(const IntervalElement&, const IntervalElement&) = default;
};

// The elements of an interval set holding the `family` blocks of `cidrs`: overlapping and
// adjacent blocks are merged (the kernel refuses overlapping intervals), ranges are
// sorted, and like nft a leading "end at 0" element is sent when the first range does
// not start at 0.
std::vector<IntervalElement> interval_elements(const std::vector<Cidr>& cidrs,
                                               IpAddress::Family family);

}  // namespace splitd::firewall
