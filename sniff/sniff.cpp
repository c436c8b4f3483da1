#include "sniff/sniff.hpp"

#include "sniff/http.hpp"
#include "sniff/tls.hpp"

namespace splitd::sniff {

const char* to_string(Source s) {
  switch (s) {
    case Source::kNone: return "";
    case Source::kDns: return "dns";
    case Source::kSni: return "sni";
    case Source::kHost: return "host";
    case Source::kQuic: return "quic";
  }
  return "";
}

const char* to_string(Outcome o) {
  switch (o) {
    case Outcome::kNeedMore: return "need_more";
    case Outcome::kName: return "name";
    case Outcome::kNoName: return "no_name";
    case Outcome::kEch: return "ech";
    case Outcome::kNotThis: return "not_this";
    case Outcome::kMalformed: return "malformed";
  }
  return "";
}

bool normalize_host_name(std::string& name) {
  constexpr std::size_t kMaxName = 253;
  constexpr std::size_t kMaxLabel = 63;
  std::size_t len = name.size();
  // One trailing dot is the root label of a fully qualified name, the same name.
  if (len > 0 && name[len - 1] == '.') --len;
  if (len == 0 || len > kMaxName) return false;
  std::size_t label = 0;
  bool all_digits_and_dots = true;
  for (std::size_t i = 0; i < len; ++i) {
    const char c = name[i];
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool digit = c >= '0' && c <= '9';
    const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!digit && !alpha && c != '-' && c != '_') return false;
    if (!digit) all_digits_and_dots = false;
    if (++label > kMaxLabel) return false;
  }
  if (label == 0) return false;  // "a..": the trailing dot went, an empty label stays
  // An IPv4 literal (or an all-numeric name, which resolvers take as one) names no server.
  if (all_digits_and_dots) return false;
  name.resize(len);
  for (char& c : name) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return true;
}

Result sniff_stream(std::span<const std::uint8_t> stream) {
  constexpr std::uint8_t kTlsHandshake = 0x16;
  if (stream.empty()) return {};
  if (stream[0] == kTlsHandshake) return sniff_tls(stream);
  return sniff_http(stream);
}

}  // namespace splitd::sniff
