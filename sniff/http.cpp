#include "sniff/http.hpp"

#include <algorithm>
#include <string>
#include <string_view>

namespace splitd::sniff {
namespace {

constexpr std::size_t kMaxMethod = 16;
constexpr std::size_t kMaxPortDigits = 5;
constexpr unsigned kMaxPort = 65535;

Result make(Outcome o, Source s = Source::kHost) { return Result::of(o, s); }
Result not_this() { return Result::not_this(); }
Result malformed() { return make(Outcome::kMalformed); }

// RFC 9110 §5.6.2 tchar.
bool is_tchar(std::uint8_t c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  constexpr std::string_view kSpecials = "!#$%&'*+-.^_`|~";
  return kSpecials.find(static_cast<char>(c)) != std::string_view::npos;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return lower(x) == lower(y);
         });
}

bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// RFC 3986 port = *DIGIT; one above 65535 is no port of TCP.
bool valid_port(std::string_view port) {
  if (port.size() > kMaxPortDigits) return false;
  unsigned value = 0;
  for (const char c : port) {
    if (!is_digit(c)) return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  return value <= kMaxPort;
}

// uri-host [":" port] (RFC 9110 §7.2), as a Host field or an absolute-form target carries
// it. IP literals name no server; an empty one is allowed when the target has no
// authority (RFC 9112 §3.2).
Result from_authority(std::string_view a) {
  if (a.empty()) return make(Outcome::kNoName);
  if (a.front() == '[') {
    const std::size_t close = a.find(']');
    if (close == std::string_view::npos || close == 1) return malformed();
    for (const char c : a.substr(1, close - 1)) {
      if (!is_hex(c) && c != ':' && c != '.') return malformed();
    }
    const std::string_view rest = a.substr(close + 1);
    if (!rest.empty() && (rest.front() != ':' || !valid_port(rest.substr(1)))) return malformed();
    return make(Outcome::kNoName);
  }
  std::string_view host = a;
  if (const std::size_t colon = a.find(':'); colon != std::string_view::npos) {
    host = a.substr(0, colon);
    if (!valid_port(a.substr(colon + 1))) return malformed();  // also a second ':'
  }
  if (host.empty()) return malformed();
  std::string_view digits = host;
  if (digits.back() == '.') digits.remove_suffix(1);
  const auto numeric = [](char c) { return is_digit(c) || c == '.'; };
  if (std::any_of(digits.begin(), digits.end(), is_digit) &&
      std::all_of(digits.begin(), digits.end(), numeric)) {
    return make(Outcome::kNoName);  // an IPv4 literal
  }
  Result r = make(Outcome::kName);
  r.name.assign(host);
  if (!normalize_host_name(r.name)) return malformed();
  return r;
}

// The authority of an absolute-form target ("http://name:port/path"), which names the
// server when there is no Host field (RFC 9112 §3.2.2). Other forms name nothing.
Result from_target(std::string_view target) {
  std::string_view rest;
  if (istarts_with(target, "http://")) {
    rest = target.substr(7);
  } else if (istarts_with(target, "https://")) {
    rest = target.substr(8);
  } else {
    return make(Outcome::kNoName);
  }
  const std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
  // RFC 9110 §4.2.4: userinfo in an http(s) URI is an error (and a phishing trick).
  if (authority.find('@') != std::string_view::npos) return malformed();
  return from_authority(authority);
}

}  // namespace

Result sniff_http(std::span<const std::uint8_t> stream) {
  // Only the first kMaxHttpHead bytes are read: a head that has not ended there is given up.
  const std::size_t limit = std::min(stream.size(), kMaxHttpHead);
  const bool capped = stream.size() > kMaxHttpHead;
  const auto* s = stream.data();
  std::size_t i = 0;
  // Out of bytes: wait for more, unless the bound is what ran out.
  const auto out_of_bytes = [&](Source src) {
    return capped ? malformed() : make(Outcome::kNeedMore, src);
  };

  // Request line (RFC 9112 §3): method SP request-target SP HTTP-version CRLF. Every byte
  // is checked as it comes, so that other protocols (SSH, HTTP/2's preface) are let go early.
  for (; i < limit && is_tchar(s[i]); ++i) {
    if (i == kMaxMethod) return not_this();
  }
  if (i == limit) return out_of_bytes(Source::kNone);
  if (i == 0 || s[i] != ' ') return not_this();
  const std::size_t target_start = ++i;
  for (; i < limit && s[i] != ' '; ++i) {
    if (s[i] < 0x21 || s[i] > 0x7e) return not_this();
  }
  if (i == limit) return out_of_bytes(Source::kNone);
  if (i == target_start) return not_this();
  const std::string_view target(reinterpret_cast<const char*>(s + target_start), i - target_start);
  ++i;
  constexpr std::string_view kVersion = "HTTP/1.";
  for (const char c : kVersion) {
    if (i == limit) return out_of_bytes(Source::kNone);
    if (s[i++] != static_cast<std::uint8_t>(c)) return not_this();
  }
  if (i == limit) return out_of_bytes(Source::kNone);
  if (s[i] != '0' && s[i] != '1') return not_this();
  ++i;
  if (i == limit) return out_of_bytes(Source::kNone);
  if (s[i] == '\r') {
    if (++i == limit) return out_of_bytes(Source::kNone);
  }
  if (s[i++] != '\n') return not_this();

  // Header fields (RFC 9112 §5) up to the empty line. The name is taken only once the head
  // is complete: a second Host later on makes the request malformed (RFC 9110 §7.2), and
  // clients send the whole head in one write, so waiting costs nothing.
  std::string_view host;
  bool have_host = false;
  while (true) {
    if (i == limit) return out_of_bytes(Source::kHost);
    if (s[i] == '\r') {
      if (++i == limit) return out_of_bytes(Source::kHost);
      if (s[i] != '\n') return malformed();
      break;
    }
    if (s[i] == '\n') break;
    // obs-fold (RFC 9112 §5.2): a line continued with leading whitespace; rejected, as a
    // server may, because proxies disagree on what it means.
    if (s[i] == ' ' || s[i] == '\t') return malformed();
    const std::size_t name_start = i;
    while (i < limit && is_tchar(s[i])) ++i;
    if (i == limit) return out_of_bytes(Source::kHost);
    if (s[i] != ':' || i == name_start) return malformed();
    const std::string_view name(reinterpret_cast<const char*>(s + name_start), i - name_start);
    ++i;
    while (i < limit && (s[i] == ' ' || s[i] == '\t')) ++i;
    const std::size_t value_start = i;
    std::size_t value_end = i;  // past the last byte that is not OWS
    for (; i < limit && s[i] != '\r' && s[i] != '\n'; ++i) {
      const std::uint8_t c = s[i];
      if ((c < 0x20 && c != '\t') || c == 0x7f) return malformed();
      if (c != ' ' && c != '\t') value_end = i + 1;
    }
    if (i == limit) return out_of_bytes(Source::kHost);
    if (s[i] == '\r') {
      if (++i == limit) return out_of_bytes(Source::kHost);
      if (s[i] != '\n') return malformed();
    }
    ++i;
    if (iequals(name, "host")) {
      if (have_host) return malformed();
      have_host = true;
      host = std::string_view(reinterpret_cast<const char*>(s + value_start),
                              value_end - value_start);
    }
  }
  return have_host ? from_authority(host) : from_target(target);
}

}  // namespace splitd::sniff
