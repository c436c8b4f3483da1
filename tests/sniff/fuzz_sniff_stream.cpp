// libFuzzer target for the stream sniffers: the input is read as a TCP stream's first bytes
// (sniff_stream, sniff_tls, sniff_http) and as a handshake layer (parse_client_hello), whole
// and cut at a few points, the way a flow's bytes arrive in pieces. Traps on a result that
// breaks the contract in sniff.hpp rather than on a crash alone.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "sniff/http.hpp"
#include "sniff/sniff.hpp"
#include "sniff/tls.hpp"

namespace {

using splitd::sniff::Outcome;
using splitd::sniff::Result;
using splitd::sniff::Source;
using Parser = Result (*)(std::span<const std::uint8_t>);

void check(bool ok) {
  if (!ok) __builtin_trap();
}

bool same(const Result& a, const Result& b) {
  return a.outcome == b.outcome && a.source == b.source && a.name == b.name;
}

// What every result must be on its own.
void check_result(const Result& r) {
  if (r.outcome == Outcome::kName || r.outcome == Outcome::kEch) {
    std::string copy = r.name;
    if (r.outcome == Outcome::kName) check(!r.name.empty());
    if (!r.name.empty()) check(splitd::sniff::normalize_host_name(copy) && copy == r.name);
  } else {
    check(r.name.empty());
  }
  if (r.outcome == Outcome::kNotThis) check(r.source == Source::kNone);
  if (r.outcome == Outcome::kName || r.outcome == Outcome::kNoName ||
      r.outcome == Outcome::kEch || r.outcome == Outcome::kMalformed) {
    check(r.source == Source::kSni || r.source == Source::kHost);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::uint8_t> in(data, size);
  const Parser parsers[] = {splitd::sniff::sniff_stream, splitd::sniff::sniff_tls,
                            splitd::sniff::sniff_http, splitd::sniff::parse_client_hello};
  const std::size_t cuts[] = {size / 3, size / 2, size > 0 ? size - 1 : 0};
  for (const Parser parse : parsers) {
    const Result full = parse(in);
    check_result(full);
    check(same(full, parse(in)));  // pure: the same bytes, the same answer
    for (const std::size_t cut : cuts) {
      if (cut >= size) continue;
      const Result part = parse(in.first(cut));
      check_result(part);
      // A prefix either waits for more or already knows the final answer; it never decides
      // otherwise than the whole (which is what lets a flow be sniffed as bytes arrive).
      check(part.outcome == Outcome::kNeedMore || same(part, full));
    }
  }
  // sniff_stream is its dispatch and nothing more.
  if (size > 0) {
    const Result direct =
        data[0] == 0x16 ? splitd::sniff::sniff_tls(in) : splitd::sniff::sniff_http(in);
    check(same(splitd::sniff::sniff_stream(in), direct));
  }
  return 0;
}
