#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace splitd::decider {

// Matches DNS names against the [split] domain patterns:
//   "x.com"              exactly x.com
//   "*.x.com"            any name below x.com, at any depth (a.x.com, a.b.x.com), not x.com
//   "*.cdn.*.example.com" a leading "*" is one or more labels, any other "*" exactly one
//   "*"                  any name
// Patterns and names compare as lowercase ASCII with the trailing dot ignored; IDNs must be
// given as punycode (xn--...), and a name with a non-ASCII byte never matches.
// Exact patterns and "*.suffix" patterns sit in one flat hash table keyed by name or
// suffix (a lookup tries the name, then each proper suffix, longest first), patterns with an
// inner "*" in a short list scanned label by label; so 100,000 exact or "*." patterns cost
// a handful of hash lookups per name. When several patterns match, the most specific one
// is reported: exact, then the longest "*." suffix, then the others in insertion order.
// Built by one thread, then immutable: const lookups are safe from any thread.
class DomainMatcher {
 public:
  static constexpr std::size_t kMaxName = 253;

  // Lowercased, trailing dot removed; nullopt if not a valid pattern (empty labels,
  // non-ASCII, a "*" inside a label, longer than 253).
  static std::optional<std::string> normalize_pattern(std::string_view pattern);

  // Adds a pattern; false (and nothing added) if it is not valid. Duplicates are harmless.
  bool add(std::string_view pattern);
  // The (normalised) pattern matching name, or nullptr. Does not allocate.
  const std::string* match(std::string_view name) const;

  bool empty() const { return size_ == 0; }
  std::size_t size() const { return size_; }

 private:
  static constexpr std::uint32_t kNone = 0xffffffff;
  // One flat open-addressing table for exact names and "*." suffixes: a miss costs one
  // cache line, where std::unordered_map costs three or four (bucket, node, key).
  struct Slot {
    std::uint64_t hash = 0;
    std::uint32_t exact = kNone;  // pattern id of the exact pattern "key"
    std::uint32_t wild = kNone;   // pattern id of "*.key"
  };
  struct Wild {
    std::uint32_t id = kNone;
    bool leading = false;             // a leading "*": one or more labels
    std::vector<std::string> labels;  // the rest, last label first; "*" is one label
  };

  static std::uint64_t hash(std::string_view key);
  std::string_view key_of(const Slot& s) const;
  const Slot* find(std::string_view key) const;
  void insert(std::string_view key, bool wild, std::uint32_t id);
  void grow();
  const std::string* match_wild(std::string_view name) const;

  std::vector<std::string> patterns_;  // normalised, by id
  std::vector<Slot> slots_;            // size a power of two, at most half full
  std::size_t used_ = 0;
  std::uint32_t any_ = kNone;          // the pattern "*"
  std::vector<Wild> wild_;
  std::size_t size_ = 0;
};

}  // namespace splitd::decider
