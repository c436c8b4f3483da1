#pragma once
// The wire format of a UDP download (lab-load udp-download against lab-load serve): the
// client asks once, the server sends numbered datagrams to the asking address for a
// given time, then says how many it sent. All integers little-endian (both ends run on
// the same machine; the format is not meant for anything else).
//
//   request  (client -> server, exactly 32 bytes): "LLBLAST1", u64 session,
//            u32 duration in ms, u32 datagram size, u64 rate in datagrams/s (0 = as fast
//            as the server's socket takes them)
//   data     (server -> client, `size` bytes): u64 session, u64 seq (0, 1, 2, ...), filler
//   end      (server -> client, 24 bytes, sent several times): u64 session, u64 kEndSeq,
//            u64 datagrams sent
//
// A 32-byte echo datagram that starts with the magic would be taken for a request; the
// echo clients of lab-load put a sequence number there, which never gets that large.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>

namespace splitd::bench::download {

constexpr char kMagic[8] = {'L', 'L', 'B', 'L', 'A', 'S', 'T', '1'};
constexpr std::size_t kRequestSize = 32;
constexpr std::size_t kHeaderSize = 16;  // session and seq: the smallest data datagram
constexpr std::size_t kEndSize = 24;
constexpr std::uint64_t kEndSeq = ~std::uint64_t{0};
constexpr std::size_t kMaxSize = 65507;  // the largest IPv4 UDP payload
constexpr std::uint32_t kMaxDurationMs = 3'600'000;

struct Request {
  std::uint64_t session = 0;
  std::uint32_t duration_ms = 0;
  std::uint32_t size = 0;
  std::uint64_t rate = 0;
};

inline void put64(char* p, std::uint64_t v) { std::memcpy(p, &v, 8); }
inline void put32(char* p, std::uint32_t v) { std::memcpy(p, &v, 4); }
inline std::uint64_t get64(const char* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline std::uint32_t get32(const char* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline void encode_request(const Request& r, char (&out)[kRequestSize]) {
  std::memcpy(out, kMagic, sizeof kMagic);
  put64(out + 8, r.session);
  put32(out + 16, r.duration_ms);
  put32(out + 20, r.size);
  put64(out + 24, r.rate);
}

// A request, or nothing if the datagram is not one (or asks for something out of range).
inline std::optional<Request> decode_request(const char* p, std::size_t len) {
  if (len != kRequestSize || std::memcmp(p, kMagic, sizeof kMagic) != 0) return std::nullopt;
  Request r;
  r.session = get64(p + 8);
  r.duration_ms = get32(p + 16);
  r.size = get32(p + 20);
  r.rate = get64(p + 24);
  if (r.duration_ms == 0 || r.duration_ms > kMaxDurationMs || r.size < kHeaderSize ||
      r.size > kMaxSize) {
    return std::nullopt;
  }
  return r;
}

inline bool is_request(const char* p, std::size_t len) {
  return len == kRequestSize && std::memcmp(p, kMagic, sizeof kMagic) == 0;
}

}  // namespace splitd::bench::download
