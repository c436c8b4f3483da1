#include "decider/prefix_trie.hpp"

#include <bit>

namespace splitd::decider {

PrefixTrie::PrefixTrie() {
  nodes_.resize(2);
}

PrefixTrie::Bits PrefixTrie::bits_of(const IpAddress& ip) {
  const IpAddress x = ip.unmapped();
  const auto b = x.bytes();
  Bits r;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i < 8) r.hi |= std::uint64_t{b[i]} << (56 - 8 * i);
    else r.lo |= std::uint64_t{b[i]} << (56 - 8 * (i - 8));
  }
  return r;
}

unsigned PrefixTrie::bit(const Bits& b, unsigned i) {
  return i < 64 ? static_cast<unsigned>((b.hi >> (63 - i)) & 1u)
                : static_cast<unsigned>((b.lo >> (127 - i)) & 1u);
}

unsigned PrefixTrie::common_prefix(const Bits& a, const Bits& b, unsigned max_len) {
  unsigned n;
  if (const std::uint64_t x = a.hi ^ b.hi; x != 0) n = static_cast<unsigned>(std::countl_zero(x));
  else if (const std::uint64_t y = a.lo ^ b.lo; y != 0) n = 64 + unsigned(std::countl_zero(y));
  else n = 128;
  return n < max_len ? n : max_len;
}

PrefixTrie::Bits PrefixTrie::truncated(const Bits& b, unsigned len) {
  Bits r;
  if (len >= 128) return b;
  if (len >= 64) {
    r.hi = b.hi;
    r.lo = len == 64 ? 0 : b.lo & (~std::uint64_t{0} << (128 - len));
  } else {
    r.hi = len == 0 ? 0 : b.hi & (~std::uint64_t{0} << (64 - len));
  }
  return r;
}

std::uint32_t PrefixTrie::add_node(const Bits& key, unsigned len, std::uint32_t value) {
  Node n;
  n.key = key;
  n.len = static_cast<std::uint8_t>(len);
  n.value = value;
  nodes_.push_back(n);
  return static_cast<std::uint32_t>(nodes_.size() - 1);
}

void PrefixTrie::insert(const Cidr& block, std::uint32_t value) {
  jump_.clear();
  const unsigned len = block.prefix_len();
  const Bits key = truncated(bits_of(block.network()), len);
  // Invariant: nodes_[at] is a prefix of key no longer than len. Indices, not references:
  // add_node() may reallocate.
  std::uint32_t at = block.family() == IpAddress::Family::kV4 ? 0 : 1;
  for (;;) {
    if (nodes_[at].len == len) {
      if (nodes_[at].value == kNone) {
        nodes_[at].value = value;
        ++size_;
      }
      return;
    }
    const unsigned side = bit(key, nodes_[at].len);
    const std::uint32_t c = nodes_[at].child[side];
    if (c == kNone) {
      const std::uint32_t leaf = add_node(key, len, value);
      nodes_[at].child[side] = leaf;
      ++size_;
      return;
    }
    const unsigned child_len = nodes_[c].len;
    const unsigned cp = common_prefix(key, nodes_[c].key, len < child_len ? len : child_len);
    if (cp == child_len) {
      at = c;
      continue;
    }
    if (cp == len) {
      // The new block lies between at and c.
      const std::uint32_t mid = add_node(key, len, value);
      nodes_[mid].child[bit(nodes_[c].key, len)] = c;
      nodes_[at].child[side] = mid;
      ++size_;
      return;
    }
    // key and c diverge at bit cp: a valueless branch node holds both.
    const std::uint32_t fork = add_node(truncated(key, cp), cp, kNone);
    const std::uint32_t leaf = add_node(key, len, value);
    nodes_[fork].child[bit(key, cp)] = leaf;
    nodes_[fork].child[bit(nodes_[c].key, cp)] = c;
    nodes_[at].child[side] = fork;
    ++size_;
    return;
  }
}

void PrefixTrie::freeze() {
  constexpr std::size_t kSize = std::size_t{1} << kJumpBits;
  jump_.assign(2 * kSize, Jump{});
  for (std::uint32_t family = 0; family < 2; ++family) {
    for (std::size_t p = 0; p < kSize; ++p) {
      Bits key;
      key.hi = std::uint64_t{p} << (64 - kJumpBits);
      std::uint32_t at = family;
      std::uint32_t best = nodes_[at].value;
      while (nodes_[at].len < kJumpBits) {
        const std::uint32_t c = nodes_[at].child[bit(key, nodes_[at].len)];
        if (c == kNone || nodes_[c].len > kJumpBits) break;
        if (common_prefix(key, nodes_[c].key, nodes_[c].len) < nodes_[c].len) break;
        at = c;
        if (nodes_[at].value != kNone) best = nodes_[at].value;
      }
      jump_[family * kSize + p] = Jump{at, best};
    }
  }
}

std::uint32_t PrefixTrie::lookup(const IpAddress& ip) const {
  const IpAddress x = ip.unmapped();
  const Bits key = bits_of(x);
  const unsigned max = x.is_v4() ? 32 : 128;
  const Node* n;
  std::uint32_t best;
  if (!jump_.empty()) {
    const std::size_t family = x.is_v4() ? 0 : std::size_t{1} << kJumpBits;
    const Jump& j = jump_[family + (key.hi >> (64 - kJumpBits))];
    n = &nodes_[j.node];
    best = j.best;
  } else {
    n = &nodes_[x.is_v4() ? 0 : 1];
    best = n->value;
  }
  while (n->len < max) {
    const std::uint32_t c = n->child[bit(key, n->len)];
    if (c == kNone) break;
    const Node& child = nodes_[c];
    if (common_prefix(key, child.key, child.len) < child.len) break;
    n = &child;
    if (n->value != kNone) best = n->value;
  }
  return best;
}

}  // namespace splitd::decider
