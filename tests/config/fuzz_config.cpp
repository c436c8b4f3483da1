// libFuzzer target for the config file: bytes → parse() (toml++ and every key's check);
// a config that parses is summarised and compared with the defaults, the way `splitd
// check` and a reload use it. The input split at its first newline also goes through the
// checks the REST API shares (check_domain_pattern, check_cidr, parse_duration), each
// result checked for its documented normal form. Build with clang (see
// tests/config/CMakeLists.txt); run: fuzz_config -max_total_time=60 [corpus dir].
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config/config.hpp"

using namespace splitd;
using namespace splitd::config;

namespace {

void shared_checks(const std::string& text) {
  if (auto p = check_domain_pattern(text)) {
    // Lower case, no trailing dot, and a fixed point of the check.
    if (p->empty() || p->back() == '.') __builtin_trap();
    for (char c : *p) {
      if (std::isupper(static_cast<unsigned char>(c))) __builtin_trap();
    }
    auto again = check_domain_pattern(*p);
    if (!again || *again != *p) __builtin_trap();
  } else if (p.error().empty()) {
    __builtin_trap();  // a refusal always says why
  }

  if (auto c = check_cidr(text)) {
    // The printed form parses back to the same block.
    auto again = check_cidr(c->to_string());
    if (!again || !(*again == *c)) __builtin_trap();
  } else if (c.error().empty()) {
    __builtin_trap();
  }

  if (auto d = parse_duration(text)) {
    if (d->count() < 0) __builtin_trap();
    auto again = parse_duration(format_duration(*d));
    if (!again || *again != *d) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  auto parsed = parse(text, "fuzz.toml");
  if (parsed) {
    if (parsed->source != "fuzz.toml") __builtin_trap();
    if (summary(*parsed).empty()) __builtin_trap();
    (void)changes(Config(), *parsed);
    const ConfigChanges same = changes(*parsed, *parsed);
    if (same.rules || same.footprint || !same.restart.empty()) __builtin_trap();
  } else {
    if (parsed.error().empty()) __builtin_trap();  // a failure has at least one diagnostic
    for (const Diagnostic& d : parsed.error()) {
      if (d.file != "fuzz.toml" || d.message.empty()) __builtin_trap();
      (void)d.to_string();
    }
  }

  const std::size_t nl = text.find('\n');
  const std::string first(text.substr(0, nl));
  shared_checks(first);
  if (nl != std::string_view::npos) shared_checks(std::string(text.substr(nl + 1)));
  return 0;
}
