#include "sniff/tls.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <string_view>

namespace splitd::sniff {
namespace {

constexpr std::uint8_t kContentHandshake = 22;
constexpr std::uint8_t kClientHello = 1;
constexpr std::size_t kRecordHeader = 5;
constexpr std::size_t kHandshakeHeader = 4;
// RFC 8446 §5.1 caps a plaintext record at 2^14; this takes the ciphertext bound of §5.2,
// 2^14 + 256, so that a sender rounding up is not cut off for a few bytes.
constexpr std::size_t kMaxRecord = 16384 + 256;
constexpr std::size_t kMaxSessionId = 32;
constexpr std::uint16_t kExtServerName = 0;
constexpr std::uint16_t kExtEncryptedClientHello = 0xfe0d;
constexpr std::uint8_t kNameTypeHostName = 0;
constexpr std::uint8_t kEchOuter = 0;
constexpr std::uint8_t kEchInner = 1;
// Every extension takes at least its 4-byte header, which bounds how many a hello holds.
constexpr std::size_t kMaxExtensions = kMaxClientHello / 4;

Result make(Outcome o, Source s = Source::kSni) { return Result::of(o, s); }
Result not_this() { return Result::not_this(); }
Result malformed() { return make(Outcome::kMalformed); }

// A bounds-checked cursor over one length-delimited part of the hello; every read fails
// rather than run past its end.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> in) : in_(in) {}

  std::size_t left() const { return in_.size() - pos_; }
  bool u8(std::uint8_t& v) {
    if (left() < 1) return false;
    v = in_[pos_++];
    return true;
  }
  bool u16(std::uint16_t& v) {
    if (left() < 2) return false;
    v = static_cast<std::uint16_t>((in_[pos_] << 8) | in_[pos_ + 1]);
    pos_ += 2;
    return true;
  }
  bool skip(std::size_t n) {
    if (left() < n) return false;
    pos_ += n;
    return true;
  }
  bool bytes(std::size_t n, std::span<const std::uint8_t>& out) {
    if (left() < n) return false;
    out = in_.subspan(pos_, n);
    pos_ += n;
    return true;
  }
  // A vector with a 1- or 2-byte length prefix (RFC 8446 §3.4), its length within [lo, hi].
  bool vec8(std::size_t lo, std::size_t hi, std::span<const std::uint8_t>& out) {
    std::uint8_t n = 0;
    return u8(n) && n >= lo && n <= hi && bytes(n, out);
  }
  bool vec16(std::size_t lo, std::size_t hi, std::span<const std::uint8_t>& out) {
    std::uint16_t n = 0;
    return u16(n) && n >= lo && n <= hi && bytes(n, out);
  }

 private:
  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

// An SNI may be an IP literal, which RFC 6066 §3 forbids but clients send (some for
// https://1.2.3.4/): it names no server, yet the hello is not broken for that.
bool is_ip_literal(std::string_view s) {
  if (s.empty()) return false;
  const bool v6 = s.find(':') != std::string_view::npos;
  bool digit = false;
  for (const char c : s) {
    const bool dec = c >= '0' && c <= '9';
    const bool hex = (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    digit = digit || dec;
    if (dec || c == '.') continue;
    if (v6 && (hex || c == ':' || c == '[' || c == ']')) continue;
    return false;
  }
  return v6 || digit;
}

// The SNI's host name as the outcome it leads to: kName (normalized in `name`), kNoName
// for an IP literal, kMalformed for anything that is not a host name.
Outcome host_name_outcome(std::span<const std::uint8_t> raw, std::string& name) {
  const std::string_view view(reinterpret_cast<const char*>(raw.data()), raw.size());
  if (is_ip_literal(view)) return Outcome::kNoName;
  name.assign(view);
  if (!normalize_host_name(name)) return Outcome::kMalformed;
  return Outcome::kName;
}

// RFC 6066 §3: ServerNameList<1..2^16-1> of {name_type, HostName<1..2^16-1>}; the list must
// fill the extension. Takes the first host_name entry; entries of unknown types are skipped.
bool parse_server_name(std::span<const std::uint8_t> data, std::span<const std::uint8_t>& host,
                       bool& found) {
  Reader ext(data);
  std::span<const std::uint8_t> list;
  if (!ext.vec16(1, 0xffff, list) || ext.left() != 0) return false;
  Reader r(list);
  while (r.left() > 0) {
    std::uint8_t type = 0;
    std::span<const std::uint8_t> entry;
    if (!r.u8(type) || !r.vec16(1, 0xffff, entry)) return false;
    if (type == kNameTypeHostName && !found) {
      host = entry;
      found = true;
    }
  }
  return true;
}

// The ECH draft's ECHClientHello: an outer one carries cipher_suite(4), config_id(1),
// enc<0..2^16-1> and payload<1..2^16-1>; an inner one nothing but its type. GREASE ECH has
// the same shape, so it passes too: it is told apart from real ECH nowhere on the wire.
bool parse_ech(std::span<const std::uint8_t> data) {
  Reader r(data);
  std::uint8_t type = 0;
  if (!r.u8(type)) return false;
  if (type == kEchInner) return r.left() == 0;
  if (type != kEchOuter) return true;  // a later draft's type: still ECH
  std::span<const std::uint8_t> enc, payload;
  return r.skip(5) && r.vec16(0, 0xffff, enc) && r.vec16(1, 0xffff, payload) && r.left() == 0;
}

// The body of a complete ClientHello message (RFC 8446 §4.1.2).
Result parse_body(std::span<const std::uint8_t> body) {
  Reader r(body);
  std::uint8_t major = 0;
  std::span<const std::uint8_t> session_id, suites, compression, extensions;
  if (!r.u8(major) || major != 3 || !r.skip(1 + 32)) return malformed();
  if (!r.vec8(0, kMaxSessionId, session_id)) return malformed();
  if (!r.vec16(2, 0xfffe, suites) || suites.size() % 2 != 0) return malformed();
  if (!r.vec8(1, 0xff, compression)) return malformed();
  // A hello from before extensions (SSL 3 style, still valid TLS 1.0-1.2) ends here.
  if (r.left() == 0) return make(Outcome::kNoName);
  if (!r.vec16(0, 0xffff, extensions) || r.left() != 0) return malformed();

  // Types seen, for the duplicate check (RFC 8446 §4.2); sorted once at the end rather
  // than a 64 Ki-bit set, which would have to be zeroed on every call.
  std::array<std::uint16_t, kMaxExtensions> types;
  std::size_t count = 0;
  std::span<const std::uint8_t> host;
  bool has_sni = false;
  bool has_ech = false;
  Reader exts(extensions);
  while (exts.left() > 0) {
    std::uint16_t type = 0;
    std::span<const std::uint8_t> data;
    if (!exts.u16(type) || !exts.vec16(0, 0xffff, data)) return malformed();
    if (count == types.size()) return malformed();  // unreachable: the body bounds it
    types[count++] = type;
    if (type == kExtServerName) {
      bool found = false;
      if (!parse_server_name(data, host, found)) return malformed();
      has_sni = found;
    } else if (type == kExtEncryptedClientHello) {
      if (!parse_ech(data)) return malformed();
      has_ech = true;
    }
  }
  std::sort(types.begin(), types.begin() + static_cast<std::ptrdiff_t>(count));
  if (std::adjacent_find(types.begin(), types.begin() + static_cast<std::ptrdiff_t>(count)) !=
      types.begin() + static_cast<std::ptrdiff_t>(count)) {
    return malformed();
  }

  Result out;
  out.source = Source::kSni;
  out.outcome = Outcome::kNoName;
  if (has_sni) {
    out.outcome = host_name_outcome(host, out.name);
    if (out.outcome != Outcome::kName) out.name.clear();
    if (out.outcome == Outcome::kMalformed) return out;
  }
  if (has_ech) {
    // The outer SNI is the ECH provider's public name: reported, but not to be routed by.
    out.outcome = Outcome::kEch;
  }
  return out;
}

std::size_t read24(const std::uint8_t* p) {
  return (static_cast<std::size_t>(p[0]) << 16) | (static_cast<std::size_t>(p[1]) << 8) | p[2];
}

}  // namespace

Result parse_client_hello(std::span<const std::uint8_t> handshake) {
  if (handshake.empty()) return {};
  if (handshake[0] != kClientHello) return not_this();
  if (handshake.size() < kHandshakeHeader) return make(Outcome::kNeedMore);
  const std::size_t len = read24(handshake.data() + 1);
  if (len > kMaxClientHello - kHandshakeHeader) return malformed();
  if (handshake.size() < kHandshakeHeader + len) return make(Outcome::kNeedMore);
  return parse_body(handshake.subspan(kHandshakeHeader, len));
}

Result sniff_tls(std::span<const std::uint8_t> stream) {
  // Record payloads are gathered here only when the hello spans records; one record (the
  // common case) is parsed in place. Left uninitialised: only the bytes copied are read.
  std::array<std::uint8_t, kMaxClientHello> buf;
  std::span<const std::uint8_t> msg;  // the handshake bytes so far
  bool copied = false;
  std::size_t pos = 0;
  bool first = true;
  while (true) {
    // Each header byte is checked as soon as it is there, so that a stream that is not
    // TLS is let go after its first bytes.
    const std::size_t avail = stream.size() - pos;
    const std::uint8_t* h = stream.data() + pos;
    const Result bad = first ? not_this() : malformed();
    if (avail >= 1 && h[0] != kContentHandshake) return bad;
    if (avail >= 2 && h[1] != 3) return bad;
    // Any {03,XX} up to TLS 1.3: RFC 5246 E.1 lets a client put {03,00} on its first record.
    if (avail >= 3 && h[2] > 4) return bad;
    if (avail < kRecordHeader) {
      return make(Outcome::kNeedMore, first && avail < 3 ? Source::kNone : Source::kSni);
    }
    const std::size_t record_len = (static_cast<std::size_t>(h[3]) << 8) | h[4];
    if (record_len == 0 || record_len > kMaxRecord) return malformed();
    const std::span<const std::uint8_t> payload =
        stream.subspan(pos + kRecordHeader, std::min(record_len, avail - kRecordHeader));
    const std::size_t before = msg.size();
    if (first) {
      msg = payload;
    } else {
      if (!copied) {
        std::memcpy(buf.data(), msg.data(), msg.size());
        copied = true;
      }
      // A hello too big for buf is caught below (its record runs past `need`).
      const std::size_t n = std::min(payload.size(), buf.size() - before);
      std::memcpy(buf.data() + before, payload.data(), n);
      msg = std::span<const std::uint8_t>(buf.data(), before + n);
    }
    first = false;

    if (!msg.empty() && msg[0] != kClientHello) return not_this();
    if (msg.size() >= kHandshakeHeader) {
      const std::size_t need = kHandshakeHeader + read24(msg.data() + 1);
      if (need > kMaxClientHello) return malformed();
      // The client's first flight holds no other handshake message: the hello ends its
      // record. Decided from the record header, before its bytes arrive.
      if (before + record_len > need) return malformed();
      if (msg.size() == need) {
        Result r = parse_client_hello(msg);
        if (r.outcome != Outcome::kNotThis) r.source = Source::kSni;
        return r;
      }
    }
    if (payload.size() < record_len) return make(Outcome::kNeedMore);
    pos += kRecordHeader + record_len;
  }
}

}  // namespace splitd::sniff
