// libFuzzer target for the DNS wire layer: the input is fed as a client query and as an
// upstream answer to a fixed query; a parsed answer is then aged and truncated, and a parsed
// query answered, the way the forwarder uses them.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "dns/message.hpp"

namespace {

const splitd::dns::Query& fixed_query() {
  // "example.com" A IN with EDNS (udp 1232), as a client would send it.
  static const std::vector<std::uint8_t> wire = {
      0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1,
      7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1,
      0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0};
  static const splitd::dns::Query q = [] {
    auto parsed = splitd::dns::parse_query(wire);
    if (!parsed) std::abort();
    return *parsed;
  }();
  return q;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace splitd::dns;
  const std::span<const std::uint8_t> in(data, size);

  if (auto q = parse_query(in)) {
    if (q->question_end > size) std::abort();
    const std::vector<std::uint8_t> r = make_response(in, *q, 2);
    auto a = parse_answer(r, *q);
    if (!a || !a->question_matches) std::abort();
    std::vector<std::uint8_t> big(r);
    big.resize(big.size() + 600, 0);
    (void)truncate_to(big, *q, udp_limit(*q));
    std::vector<std::uint8_t> echo(r);
    if (!restore_question(echo, in, *q)) std::abort();
  } else {
    (void)formerr_for(in);
  }

  const Query& fixed = fixed_query();
  std::vector<std::uint8_t> wire(in.begin(), in.end());
  if (auto a = parse_answer(wire, fixed)) {
    if (a->names.empty() || a->names.size() > 17) std::abort();
    for (std::size_t i = 0; i < a->ttl_offsets.size(); ++i) {
      if (a->ttl_offsets[i] + 4u > wire.size()) std::abort();
      if (i > 0 && a->ttl_offsets[i] <= a->ttl_offsets[i - 1] + 4) std::abort();
    }
    // Not re-parsed after aging: a name whose pointers run through TTL bytes changes with them.
    age_ttls(wire, a->ttl_offsets, 77);
    const std::size_t limit = size > 20 ? size / 2 : 512;
    if (truncate_to(wire, fixed, limit)) {
      auto t = parse_answer(wire, fixed);
      if (!t || !t->tc) std::abort();
    }
    (void)restore_question(wire, std::span<const std::uint8_t>(), fixed);
    set_id(wire, 0xffff);
  }
  return 0;
}
