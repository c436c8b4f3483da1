#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/cidr.hpp"
#include "common/ip_address.hpp"

namespace splitd::decider {

// Longest-prefix match over IPv4 and IPv6 blocks: one path-compressed binary trie per
// family in a flat node array. A node is a prefix; its children split on the next bit, and
// chains of single children are compressed away, so a lookup visits at most one node per
// prefix length present on the address's path (≤ 33 for IPv4, ≤ 129 for IPv6, about
// log2(rules) for scattered rules) and its cost does not grow with the rule count.
// IPv4-mapped IPv6 addresses are looked up as IPv4 (blocks are normalised by Cidr).
// freeze() adds a jump table on the first 16 bits, so a lookup starts below the top of
// the trie (where the cache misses are, the table is one).
// Built once by one thread, then immutable: const lookups are safe from any thread.
class PrefixTrie {
 public:
  static constexpr std::uint32_t kNone = std::numeric_limits<std::uint32_t>::max();

  PrefixTrie();

  // Associates value with block; a block already present keeps its first value.
  void insert(const Cidr& block, std::uint32_t value);
  // Builds the jump table (where a lookup starts for each value of the address's first 16
  // bits), which skips the top of the trie. Optional; insert() after it drops it again.
  void freeze();
  // The value of the longest block that contains ip, or kNone.
  std::uint32_t lookup(const IpAddress& ip) const;

  std::size_t size() const { return size_; }
  std::size_t node_count() const { return nodes_.size(); }

 private:
  // An address as 128 bits, most significant first; IPv4 in the top 32 bits.
  struct Bits {
    std::uint64_t hi = 0;
    std::uint64_t lo = 0;
  };
  struct Node {
    Bits key;  // bits past len are zero
    std::uint32_t value = kNone;
    std::uint32_t child[2] = {kNone, kNone};
    std::uint8_t len = 0;
  };

  static Bits bits_of(const IpAddress& ip);
  static unsigned bit(const Bits& b, unsigned i);
  static unsigned common_prefix(const Bits& a, const Bits& b, unsigned max_len);
  static Bits truncated(const Bits& b, unsigned len);
  std::uint32_t add_node(const Bits& key, unsigned len, std::uint32_t value);

  static constexpr unsigned kJumpBits = 16;
  struct Jump {
    std::uint32_t node;  // the longest node of at most kJumpBits bits on the path
    std::uint32_t best;  // the value found on the way there
  };

  std::vector<Node> nodes_;  // [0] is the IPv4 root (/0), [1] the IPv6 root (::/0)
  std::size_t size_ = 0;
  std::vector<Jump> jump_;  // empty, or 2 × 2^kJumpBits: IPv4 then IPv6
};

}  // namespace splitd::decider
