#include "firewall/interval_set.hpp"

#include <algorithm>
#include <cstring>

namespace splitd::firewall {
namespace {

using Key = std::array<std::uint8_t, 16>;

struct Range {
  Key first{};
  Key last{};
};

Key key_of(const IpAddress& ip) {
  Key k{};
  const auto b = ip.bytes();
  std::memcpy(k.data(), b.data(), b.size());
  return k;
}

// Big-endian +1 over the first `len` bytes; false on overflow (the key was all ones).
bool increment(Key& k, std::size_t len) {
  for (std::size_t i = len; i-- > 0;) {
    if (++k[i] != 0) return true;
  }
  return false;
}

}  // namespace

std::vector<IntervalElement> interval_elements(const std::vector<Cidr>& cidrs,
                                               IpAddress::Family family) {
  const std::size_t len = family == IpAddress::Family::kV4 ? 4 : 16;
  std::vector<Range> ranges;
  for (const auto& c : cidrs) {
    if (c.family() != family) continue;
    ranges.push_back(Range{key_of(c.network()), key_of(c.last())});
  }
  // Keys of the family's length, zero-padded: lexicographic order is numeric order.
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.first < b.first; });
  std::vector<Range> merged;
  for (const auto& r : ranges) {
    if (!merged.empty()) {
      Range& cur = merged.back();
      Key after = cur.last;
      const bool to_the_end = !increment(after, len);
      if (to_the_end || r.first <= after) {  // overlapping or adjacent
        if (cur.last < r.last) cur.last = r.last;
        continue;
      }
    }
    merged.push_back(r);
  }

  std::vector<IntervalElement> out;
  const auto element = [len](const Key& k, bool end, bool open) {
    IntervalElement e;
    e.key = k;
    e.key_len = static_cast<std::uint8_t>(len);
    e.end = end;
    e.open = open;
    return e;
  };
  if (!merged.empty() && merged.front().first != Key{}) out.push_back(element(Key{}, true, false));
  for (const auto& r : merged) {
    Key after = r.last;
    const bool open = !increment(after, len);
    out.push_back(element(r.first, false, open));
    if (!open) out.push_back(element(after, true, false));
  }
  return out;
}

}  // namespace splitd::firewall
