#include "decider/domain_matcher.hpp"

#include <array>
#include <functional>

namespace splitd::decider {
namespace {

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Lowercases name into buf, dropping one trailing dot. nullopt if the name cannot match any
// pattern: empty, too long, non-ASCII, or with an empty label.
std::optional<std::string_view> normalize_name(std::string_view name,
                                               std::array<char, DomainMatcher::kMaxName>& buf) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty() || name.size() > buf.size()) return std::nullopt;
  char prev = '.';
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (static_cast<unsigned char>(c) >= 0x80) return std::nullopt;
    if (c == '.' && prev == '.') return std::nullopt;
    buf[i] = lower(c);
    prev = c;
  }
  if (prev == '.') return std::nullopt;
  return std::string_view(buf.data(), name.size());
}

}  // namespace

std::optional<std::string> DomainMatcher::normalize_pattern(std::string_view pattern) {
  if (!pattern.empty() && pattern.back() == '.') pattern.remove_suffix(1);
  if (pattern.empty() || pattern.size() > kMaxName) return std::nullopt;
  std::string out;
  out.reserve(pattern.size());
  std::size_t label_start = 0;
  for (std::size_t i = 0; i <= pattern.size(); ++i) {
    if (i == pattern.size() || pattern[i] == '.') {
      const std::string_view label = pattern.substr(label_start, i - label_start);
      if (label.empty()) return std::nullopt;
      if (label.size() > 1 && label.find('*') != std::string_view::npos) return std::nullopt;
      label_start = i + 1;
    } else if (static_cast<unsigned char>(pattern[i]) >= 0x80) {
      return std::nullopt;
    }
    if (i < pattern.size()) out.push_back(lower(pattern[i]));
  }
  return out;
}

std::uint64_t DomainMatcher::hash(std::string_view key) {
  return std::hash<std::string_view>{}(key);
}

std::string_view DomainMatcher::key_of(const Slot& s) const {
  if (s.exact != kNone) return patterns_[s.exact];
  return std::string_view(patterns_[s.wild]).substr(2);
}

const DomainMatcher::Slot* DomainMatcher::find(std::string_view key) const {
  if (slots_.empty()) return nullptr;
  const std::uint64_t h = hash(key);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = h & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.exact == kNone && s.wild == kNone) return nullptr;
    if (s.hash == h && key_of(s) == key) return &s;
  }
}

void DomainMatcher::insert(std::string_view key, bool wild, std::uint32_t id) {
  if ((used_ + 1) * 2 > slots_.size()) grow();
  const std::uint64_t h = hash(key);
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = h & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    const bool empty = s.exact == kNone && s.wild == kNone;
    if (empty || (s.hash == h && key_of(s) == key)) {
      if (empty) ++used_;
      s.hash = h;
      std::uint32_t& field = wild ? s.wild : s.exact;
      if (field == kNone) field = id;  // a duplicate keeps the first
      return;
    }
  }
}

void DomainMatcher::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.empty() ? 64 : old.size() * 2, Slot{});
  const std::size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.exact == kNone && s.wild == kNone) continue;
    std::size_t i = s.hash & mask;
    while (slots_[i].exact != kNone || slots_[i].wild != kNone) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

bool DomainMatcher::add(std::string_view raw) {
  auto p = normalize_pattern(raw);
  if (!p) return false;
  const auto id = static_cast<std::uint32_t>(patterns_.size());
  patterns_.push_back(std::move(*p));
  const std::string& pattern = patterns_.back();
  ++size_;
  if (pattern == "*") {
    if (any_ == kNone) any_ = id;
    return true;
  }
  const bool leading = pattern.starts_with("*.");
  const std::string_view rest = std::string_view(pattern).substr(leading ? 2 : 0);
  if (rest.find('*') == std::string_view::npos) {
    insert(rest, leading, id);
    return true;
  }
  Wild w;
  w.id = id;
  w.leading = leading;
  std::size_t end = rest.size();
  for (;;) {
    const std::size_t dot = rest.rfind('.', end == 0 ? 0 : end - 1);
    if (dot == std::string_view::npos) {
      w.labels.emplace_back(rest.substr(0, end));
      break;
    }
    w.labels.emplace_back(rest.substr(dot + 1, end - dot - 1));
    end = dot;
  }
  wild_.push_back(std::move(w));
  return true;
}

const std::string* DomainMatcher::match(std::string_view raw) const {
  std::array<char, kMaxName> buf;
  const auto name = normalize_name(raw, buf);
  if (!name) return nullptr;
  if (used_ != 0) {
    if (const Slot* s = find(*name); s != nullptr && s->exact != kNone) return &patterns_[s->exact];
    for (std::size_t dot = name->find('.'); dot != std::string_view::npos;
         dot = name->find('.', dot + 1)) {
      if (const Slot* s = find(name->substr(dot + 1)); s != nullptr && s->wild != kNone) {
        return &patterns_[s->wild];
      }
    }
  }
  if (any_ != kNone) return &patterns_[any_];
  return wild_.empty() ? nullptr : match_wild(*name);
}

const std::string* DomainMatcher::match_wild(std::string_view name) const {
  // The name's labels, last first. A valid name has at most 127.
  std::array<std::string_view, 128> labels;
  std::size_t count = 0;
  std::size_t end = name.size();
  for (;;) {
    const std::size_t dot = name.rfind('.', end - 1);
    if (dot == std::string_view::npos) {
      labels[count++] = name.substr(0, end);
      break;
    }
    labels[count++] = name.substr(dot + 1, end - dot - 1);
    end = dot;
    if (count == labels.size()) return nullptr;
  }
  for (const Wild& w : wild_) {
    const std::size_t n = w.labels.size();
    if (w.leading ? count <= n : count != n) continue;
    bool ok = true;
    for (std::size_t i = 0; i < n && ok; ++i) ok = w.labels[i] == "*" || w.labels[i] == labels[i];
    if (ok) return &patterns_[w.id];
  }
  return nullptr;
}

}  // namespace splitd::decider
