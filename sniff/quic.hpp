#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "sniff/sniff.hpp"

namespace splitd::sniff {

// The QUIC versions whose Initial packets we can read.
inline constexpr std::uint32_t kQuicV1 = 0x00000001;  // RFC 9000
inline constexpr std::uint32_t kQuicV2 = 0x6b3343cf;  // RFC 9369

// The Initial secrets of a connection ID (RFC 9001 §5.2 for v1, RFC 9369 §3.3.1 for v2):
// the client's AEAD key, IV and header-protection key (AES-128-GCM, AES-128).
struct QuicInitialKeys {
  std::array<std::uint8_t, 16> key{};
  std::array<std::uint8_t, 12> iv{};
  std::array<std::uint8_t, 16> hp{};
};
// False for a version other than kQuicV1 / kQuicV2 or a libcrypto failure.
bool derive_client_initial_keys(std::uint32_t version, std::span<const std::uint8_t> dcid,
                                QuicInitialKeys& out);

// Reads the ClientHello from a QUIC flow's first client datagrams (UDP payloads), in the
// order they arrive: it removes header protection and decrypts each Initial packet (a
// datagram may coalesce several packets; other packet types are skipped), collects the
// CRYPTO frames at their offsets (they may come out of order, split and repeated, as
// Chrome sends them), and parses the ClientHello (parse_client_hello) once the CRYPTO
// stream is contiguous from offset 0. Keys come from the first Initial's destination
// connection ID; later packets must carry the same one and version. Results: kNotThis
// when the first datagram is not a QUIC v1/v2 Initial of at least 1200 bytes (RFC 9000
// §14.1); kNeedMore while the ClientHello is incomplete; then the ClientHello's outcome
// (kName, kNoName, kEch, kMalformed) with source kQuic; kMalformed on a broken packet,
// a CONNECTION_CLOSE or a frame other than PADDING, PING, ACK and CRYPTO, or CRYPTO data
// beyond kMaxClientHello. A final result repeats on later calls. One per flow; not
// thread-safe. Holds at most kMaxClientHello bytes.
class QuicSniffer {
 public:
  Result feed(std::span<const std::uint8_t> datagram);
  // The CRYPTO stream as far as it is contiguous from offset 0 (for tests).
  std::span<const std::uint8_t> crypto_prefix() const;

 private:
  Result finish(Outcome outcome);  // remembers a final outcome
  Result current() const;          // kNeedMore, with kQuic once the first Initial opened
  // The frames of one authenticated Initial: kMalformed, or kNeedMore (done_ may then hold
  // the ClientHello's outcome).
  Outcome read_frames(std::span<const std::uint8_t> plain);
  bool add_crypto(std::uint64_t offset, std::span<const std::uint8_t> data);  // false: too far

  Result done_;  // a final outcome once reached (outcome != kNeedMore)
  bool started_ = false;
  std::uint32_t version_ = 0;
  std::array<std::uint8_t, 20> dcid_{};
  std::uint8_t dcid_len_ = 0;
  QuicInitialKeys keys_;
  std::vector<std::uint8_t> crypto_;  // CRYPTO data by offset
  std::vector<bool> have_;            // which bytes of crypto_ arrived
  std::size_t contiguous_ = 0;        // crypto_[0, contiguous_) all arrived
};

}  // namespace splitd::sniff
