#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace splitd::sniff {

// Where a flow's name came from: captured DNS, or the flow's own first bytes.
enum class Source : std::uint8_t { kNone, kDns, kSni, kHost, kQuic };
const char* to_string(Source s);  // "", "dns", "sni", "host", "quic"

// What a parser made of the bytes it was given so far.
enum class Outcome : std::uint8_t {
  kNeedMore,   // a proper prefix of what the parser reads: call again with more bytes
  kName,       // `name` is the server name: lowercase, a valid host name, no trailing dot
  kNoName,     // complete and well formed, but it names no server (no SNI, no Host, an IP)
  kEch,        // a ClientHello with Encrypted Client Hello: `name` is the outer SNI, the
               // provider's public name, which says nothing of the real server
  kNotThis,    // not this protocol (a caller may try another parser)
  kMalformed,  // this protocol, but broken or beyond a bound
};
const char* to_string(Outcome o);  // "need_more", "name", "no_name", "ech", "not_this", "malformed"

struct Result {
  Outcome outcome = Outcome::kNeedMore;
  Source source = Source::kNone;  // kSni, kHost or kQuic once the parser knows the protocol
  std::string name;               // kName and kEch only

  static Result of(Outcome o, Source s) {
    Result r;
    r.outcome = o;
    r.source = s;
    return r;
  }
  static Result not_this() { return of(Outcome::kNotThis, Source::kNone); }
};

// Bounds of every parser: what a client may send before a name must be known. A
// ClientHello with post-quantum key shares is ~1.8 KB; anything larger than this is
// given up on (kMalformed) and the flow falls back to the IP rules.
inline constexpr std::size_t kMaxClientHello = 16384;  // handshake message, header included
inline constexpr std::size_t kMaxHttpHead = 8192;      // request line + headers

// The name a server host name must be to be used: 1-253 characters of letters, digits,
// '-', '_' and '.', no empty label, no label over 63, not all digits and dots (an IPv4
// literal), no ':' (an IPv6 literal). Lowercases in place; a trailing dot is removed.
bool normalize_host_name(std::string& name);

// The first bytes of a TCP stream: a TLS ClientHello (first byte 0x16) or an HTTP/1
// request; kNotThis for anything else (then the flow waits no longer).
Result sniff_stream(std::span<const std::uint8_t> stream);

}  // namespace splitd::sniff
