// libFuzzer target for the rule patterns: the config/API checks (check_domain_pattern,
// check_cidr, check_app) and the decider's matchers they feed (DomainMatcher, PrefixTrie,
// glob_match, app_id_matches, RuleSet), each matcher compared with a plain reference
// implementation of its documented semantics. Input: lines; every line but the last is a
// pattern (domain, CIDR, glob), the last one is the name, address or path matched against
// them. Build with clang (see tests/decider/CMakeLists.txt); run:
//   fuzz_patterns -max_total_time=60 -max_len=4096 tests/decider/corpus/fuzz_patterns
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "decider/app_matcher.hpp"
#include "decider/decider.hpp"
#include "decider/domain_matcher.hpp"
#include "decider/prefix_trie.hpp"

using namespace splitd;
using namespace splitd::decider;

namespace {

constexpr std::size_t kMaxLines = 32;
// glob_match() and app_id_matches() once backtracked at every '*' (exponential in the
// stars, found by this fuzzer); they are quadratic now, like the reference below, so any
// number of stars is fed to them. The texts are bounded for the reference's sake.
constexpr std::size_t kMaxGlobText = 128;

bool tame_glob(std::string_view pattern, std::string_view text) {
  // The reference is quadratic; the matcher under test is too, whatever the stars.
  return pattern.size() <= kMaxGlobText && text.size() <= kMaxGlobText;
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t at = s.find(sep, start);
    out.emplace_back(s.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
    if (at == std::string_view::npos) return out;
    start = at + 1;
  }
}

// ---- domain patterns, as domain_matcher.hpp documents them --------------------------------

// A name's labels (lowercase, one trailing dot dropped); nullopt if it can match nothing.
std::optional<std::vector<std::string>> name_labels(std::string_view name) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > DomainMatcher::kMaxName) return std::nullopt;
  std::string lowered;
  for (char c : name) {
    if (static_cast<unsigned char>(c) >= 0x80) return std::nullopt;
    lowered.push_back(lower(c));
  }
  auto labels = split(lowered, '.');
  for (const auto& l : labels) {
    if (l.empty()) return std::nullopt;
  }
  return labels;
}

enum class Kind { kExact, kSuffix, kOther };

Kind kind_of(const std::string& pattern) {
  if (pattern.find('*') == std::string::npos) return Kind::kExact;
  if (pattern.starts_with("*.") && pattern.find('*', 1) == std::string::npos) return Kind::kSuffix;
  return Kind::kOther;
}

// "*" any name; a leading "*" one or more labels; any other "*" exactly one label.
bool reference_match(const std::string& pattern, const std::vector<std::string>& name) {
  if (pattern == "*") return true;
  std::vector<std::string> p = split(pattern, '.');
  const bool leading = p.size() > 1 && p.front() == "*";
  if (leading) p.erase(p.begin());
  if (leading ? name.size() <= p.size() : name.size() != p.size()) return false;
  const std::size_t off = name.size() - p.size();
  for (std::size_t i = 0; i < p.size(); ++i) {
    if (p[i] != "*" && p[i] != name[off + i]) return false;
  }
  return true;
}

void check_domain_matcher(const std::vector<std::string>& patterns, const std::string& name) {
  DomainMatcher m;
  std::vector<std::string> accepted;
  for (const std::string& raw : patterns) {
    const auto norm = DomainMatcher::normalize_pattern(raw);
    const bool added = m.add(raw);
    if (added != norm.has_value()) __builtin_trap();
    if (norm) accepted.push_back(*norm);

    // What the config and the API accept, the decider must accept too, unchanged.
    if (auto checked = config::check_domain_pattern(raw)) {
      if (!norm || *norm != *checked) __builtin_trap();
    }
  }
  if (m.size() != accepted.size() || m.empty() != accepted.empty()) __builtin_trap();

  // Every exact pattern matches itself, and is what is reported for it.
  for (const std::string& p : accepted) {
    if (kind_of(p) != Kind::kExact) continue;
    const std::string* got = m.match(p);
    if (got == nullptr || *got != p) __builtin_trap();
  }

  const std::string* got = m.match(name);
  const auto labels = name_labels(name);
  const std::string* want_exact = nullptr;
  const std::string* want_suffix = nullptr;
  bool any = false;
  if (labels) {
    for (const std::string& p : accepted) {
      if (!reference_match(p, *labels)) continue;
      any = true;
      const Kind k = kind_of(p);
      if (k == Kind::kExact && want_exact == nullptr) want_exact = &p;
      if (k == Kind::kSuffix && (want_suffix == nullptr || p.size() > want_suffix->size())) want_suffix = &p;
    }
  }
  if ((got != nullptr) != any) __builtin_trap();
  if (got == nullptr) return;
  if (!labels || !reference_match(*got, *labels)) __builtin_trap();
  // The most specific pattern wins: exact, then the longest "*." suffix.
  if (want_exact != nullptr && *got != *want_exact) __builtin_trap();
  if (want_exact == nullptr && want_suffix != nullptr && *got != *want_suffix) __builtin_trap();
}

// ---- CIDRs and the prefix trie --------------------------------------------------------------

// The longest block containing ip, the first of equal ones; kNone if none does.
std::uint32_t reference_lookup(const std::vector<Cidr>& blocks, const IpAddress& ip) {
  std::uint32_t best = PrefixTrie::kNone;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    if (!blocks[i].contains(ip)) continue;
    if (best == PrefixTrie::kNone || blocks[i].prefix_len() > blocks[best].prefix_len()) {
      best = static_cast<std::uint32_t>(i);
    }
  }
  return best;
}

// Parses every line as a block (and as an address to look up); checks the trie before
// freeze() here, and after it through RuleSet::match (check_rule_set).
void check_cidrs(const std::vector<std::string>& lines, std::vector<Cidr>& blocks,
                 std::vector<IpAddress>& probes) {
  for (const std::string& line : lines) {
    auto checked = config::check_cidr(line);
    auto parsed = Cidr::parse(line);
    if (checked.has_value() != parsed.has_value()) __builtin_trap();
    if (parsed) {
      if (!(*checked == *parsed)) __builtin_trap();
      if (!parsed->contains(parsed->network()) || !parsed->contains(parsed->last())) __builtin_trap();
      blocks.push_back(*parsed);
      probes.push_back(parsed->network());
      probes.push_back(parsed->last());
    }
    if (auto ip = IpAddress::parse(line)) probes.push_back(*ip);
  }
  if (blocks.empty()) return;
  PrefixTrie trie;
  for (std::size_t i = 0; i < blocks.size(); ++i) trie.insert(blocks[i], static_cast<std::uint32_t>(i));
  for (const IpAddress& ip : probes) {
    if (trie.lookup(ip) != reference_lookup(blocks, ip)) __builtin_trap();
  }
}

// ---- globs, as app_matcher.hpp documents them ------------------------------------------------

// cgroup globs: "*" a run without '/', "**" any run, "?" one character but '/'.
bool reference_glob(std::string_view p, std::string_view t) {
  if (p.starts_with('/')) p.remove_prefix(1);
  if (t.starts_with('/')) t.remove_prefix(1);
  enum Tok : int { kStar = -1, kCross = -2, kAny = -3 };
  std::vector<int> toks;
  for (std::size_t i = 0; i < p.size();) {
    if (p[i] == '*') {
      std::size_t j = i;
      while (j < p.size() && p[j] == '*') ++j;
      toks.push_back(j - i > 1 ? kCross : kStar);
      i = j;
    } else {
      toks.push_back(p[i] == '?' ? kAny : static_cast<unsigned char>(p[i]));
      ++i;
    }
  }
  // ok[i][j]: toks[i..] matches t[j..].
  std::vector<std::vector<char>> ok(toks.size() + 1, std::vector<char>(t.size() + 1, 0));
  ok[toks.size()][t.size()] = 1;
  for (std::size_t i = toks.size(); i-- > 0;) {
    for (std::size_t j = t.size() + 1; j-- > 0;) {
      const bool more = j < t.size();
      switch (toks[i]) {
        case kStar: ok[i][j] = ok[i + 1][j] || (more && t[j] != '/' && ok[i][j + 1]); break;
        case kCross: ok[i][j] = ok[i + 1][j] || (more && ok[i][j + 1]); break;
        case kAny: ok[i][j] = more && t[j] != '/' && ok[i + 1][j + 1]; break;
        default: ok[i][j] = more && static_cast<unsigned char>(t[j]) == toks[i] && ok[i + 1][j + 1];
      }
    }
  }
  return ok[0][0] != 0;
}

// App ids: "*" any run, "?" one character, case-insensitive; whole or the last label.
bool reference_iglob(std::string_view p, std::string_view t) {
  std::vector<std::vector<char>> ok(p.size() + 1, std::vector<char>(t.size() + 1, 0));
  ok[p.size()][t.size()] = 1;
  for (std::size_t i = p.size(); i-- > 0;) {
    for (std::size_t j = t.size() + 1; j-- > 0;) {
      const bool more = j < t.size();
      if (p[i] == '*') ok[i][j] = ok[i + 1][j] || (more && ok[i][j + 1]);
      else ok[i][j] = more && (p[i] == '?' || lower(p[i]) == lower(t[j])) && ok[i + 1][j + 1];
    }
  }
  return ok[0][0] != 0;
}

bool reference_app_id(std::string_view p, std::string_view id) {
  if (p.empty() || id.empty()) return false;
  if (reference_iglob(p, id)) return true;
  const std::size_t dot = id.rfind('.');
  return dot != std::string_view::npos && dot + 1 < id.size() && reference_iglob(p, id.substr(dot + 1));
}

void check_globs(const std::vector<std::string>& patterns, const std::string& text) {
  for (const std::string& p : patterns) {
    if (!tame_glob(p, text)) continue;
    if (glob_match(p, text) != reference_glob(p, text)) __builtin_trap();
    if (app_id_matches(p, text) != reference_app_id(p, text)) __builtin_trap();
  }
  // Units of a cgroup path, deepest first, each a component of the path.
  std::size_t previous_start = text.size() + 1;
  for_each_unit(text, [&](std::string_view unit) {
    if (!is_unit_component(unit)) __builtin_trap();
    const std::size_t at = static_cast<std::size_t>(unit.data() - text.data());
    const std::size_t end = at + unit.size();
    if (end >= previous_start) __builtin_trap();
    if ((at > 0 && text[at - 1] != '/') || (end < text.size() && text[end] != '/')) __builtin_trap();
    previous_start = at;
    return false;
  });
}

// ---- app rules and the rule set --------------------------------------------------------------

class Names final : public IpNames {
 public:
  explicit Names(const std::vector<std::string>& names) : names_(names) {}
  void visit_names(const IpAddress&, NameVisitor& visitor) const override {
    for (const std::string& n : names_) {
      if (visitor(n)) return;
    }
  }

 private:
  const std::vector<std::string>& names_;
};

void check_rule_set(const std::vector<std::string>& lines, const std::vector<std::string>& patterns,
                    const std::vector<Cidr>& blocks, const std::vector<IpAddress>& probes,
                    const std::string& last) {
  // An app rule from the first lines, as the API would get it (user only as a uid: a name
  // goes to the system's user database).
  config::AppRule rule;
  const auto field = [&](std::size_t i) { return i < lines.size() ? lines[i] : std::string(); };
  rule.name = field(0);
  rule.cgroup = field(1);
  rule.comm = field(2);
  rule.path = field(3);
  rule.unit = field(4);
  rule.app_id = field(5);
  rule.user = field(6).find_first_not_of("0123456789") == std::string::npos ? field(6) : "";

  RuleSpec spec;
  spec.domains = patterns;
  spec.ips = blocks;
  const bool tame = tame_glob(rule.cgroup, last) && tame_glob(rule.unit, last) && tame_glob(rule.app_id, last);
  if (auto app = config::check_app(rule); app && tame) {
    AppSpec a{app->name, app->cgroup, app->comm, app->path, app->unit, app->app_id, app->user, std::nullopt};
    if (!a.user.empty()) a.uid = *config::resolve_user(a.user);
    spec.apps.push_back(a);
  }
  const auto rules = RuleSet::build(spec);

  SessionInfo client;
  client.cgroup_path = last;
  client.comm = last;
  client.exe = last;
  client.app_id = last;
  const RuleMatch by_app = rules->match_name(client, last);
  if (!spec.apps.empty() && !spec.apps[0].comm.empty() && spec.apps[0].comm == last &&
      by_app.kind != MatchKind::kApp) {
    __builtin_trap();
  }

  // IP rules alone (no names known): the longest block, through the frozen trie.
  for (const IpAddress& ip : probes) {
    SessionInfo flow;
    flow.dst = ip;
    const RuleMatch m = rules->match(flow, nullptr);
    const std::uint32_t want = reference_lookup(blocks, ip);
    if (want == PrefixTrie::kNone ? m.kind != MatchKind::kNone
                                  : m.kind != MatchKind::kIp || m.rule != "ip " + blocks[want].to_string()) {
      __builtin_trap();
    }
  }

  // A destination known by every line as a name: the smallest name a domain rule matches
  // decides; without one, the longest IP block.
  const SessionInfo none;
  SessionInfo flow;
  flow.dst = blocks.back().network();
  const Names names(lines);
  const RuleMatch m = rules->match(flow, &names);
  std::optional<std::string> smallest;
  for (const std::string& n : lines) {
    if (rules->match_name(none, n).kind != MatchKind::kDomain) continue;
    std::string shown(n.ends_with('.') ? n.substr(0, n.size() - 1) : n);
    for (char& c : shown) c = lower(c);
    if (!smallest || shown < *smallest) smallest = shown;
  }
  if (smallest) {
    if (m.kind != MatchKind::kDomain || m.domain > *smallest) __builtin_trap();
  } else if (m.kind == MatchKind::kDomain) {
    if (rules->match_name(none, m.domain).kind != MatchKind::kDomain) __builtin_trap();
  } else if (m.kind != MatchKind::kIp) {
    __builtin_trap();  // the destination is in the last block
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> lines = split(text, '\n');
  if (lines.size() > kMaxLines) lines.resize(kMaxLines);
  const std::string last = lines.back();
  std::vector<std::string> patterns(lines.begin(), lines.end() - (lines.size() > 1 ? 1 : 0));

  check_domain_matcher(patterns, last);
  std::vector<Cidr> blocks;
  std::vector<IpAddress> probes;
  check_cidrs(lines, blocks, probes);
  check_globs(patterns, last);
  // Building a rule set fills the trie's jump table (2 x 65536 walks, milliseconds under
  // the sanitizers): only for inputs that have an address block.
  if (!blocks.empty()) check_rule_set(lines, patterns, blocks, probes, last);
  return 0;
}
