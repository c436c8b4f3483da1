#include "sniff/quic.hpp"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>

#include "sniff/tls.hpp"

namespace splitd::sniff {
namespace {

// RFC 9000 §14.1: a client pads every datagram carrying an Initial packet to this size;
// a shorter first datagram is some other UDP protocol on port 443.
constexpr std::size_t kMinClientDatagram = 1200;
constexpr std::size_t kMaxCidLength = 20;  // RFC 9000 §17.2 (and RFC 9369 keeps it)
constexpr std::size_t kTagLength = 16;     // AES-128-GCM
constexpr std::size_t kSampleLength = 16;  // RFC 9001 §5.4.2: the sample starts 4 bytes
constexpr std::size_t kSampleSkip = 4;     // after the packet number, whatever its length
// Clients send Initial packets before they know the path MTU, so they fit in 1500 bytes;
// a packet above this takes a heap buffer for that one call (a jumbo-frame LAN).
constexpr std::size_t kStackPlaintext = 2048;

constexpr std::array<std::uint8_t, 20> kSaltV1 = {
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
    0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a};
constexpr std::array<std::uint8_t, 20> kSaltV2 = {
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93,
    0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9};

enum class PacketType : std::uint8_t { kInitial, kZeroRtt, kHandshake, kRetry };

// What differs between the versions we read: the Initial salt, the key labels and the
// numbering of the long-header packet types (RFC 9369 §3.2 renumbers them).
struct VersionTraits {
  const std::array<std::uint8_t, 20>* salt;
  std::string_view key_label;
  std::string_view iv_label;
  std::string_view hp_label;
  std::array<PacketType, 4> types;  // by the two type bits of the first byte
};

constexpr VersionTraits kTraitsV1 = {
    &kSaltV1, "quic key", "quic iv", "quic hp",
    {PacketType::kInitial, PacketType::kZeroRtt, PacketType::kHandshake, PacketType::kRetry}};
constexpr VersionTraits kTraitsV2 = {
    &kSaltV2, "quicv2 key", "quicv2 iv", "quicv2 hp",
    {PacketType::kRetry, PacketType::kInitial, PacketType::kZeroRtt, PacketType::kHandshake}};

const VersionTraits* traits_of(std::uint32_t version) {
  if (version == kQuicV1) return &kTraitsV1;
  if (version == kQuicV2) return &kTraitsV2;
  return nullptr;
}

struct KdfDeleter {
  void operator()(EVP_KDF* k) const noexcept { EVP_KDF_free(k); }
};
struct KdfCtxDeleter {
  void operator()(EVP_KDF_CTX* c) const noexcept { EVP_KDF_CTX_free(c); }
};
struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const noexcept { EVP_CIPHER_CTX_free(c); }
};
using KdfPtr = std::unique_ptr<EVP_KDF, KdfDeleter>;
using KdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, KdfCtxDeleter>;
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

// One HKDF step (RFC 5869) with SHA-256; `mode` is EVP_KDF_HKDF_MODE_EXTRACT_ONLY
// (key = IKM, salt) or EVP_KDF_HKDF_MODE_EXPAND_ONLY (key = PRK, info).
bool hkdf(EVP_KDF_CTX* ctx, int mode, std::span<const std::uint8_t> key,
          std::span<const std::uint8_t> salt_or_info, std::span<std::uint8_t> out) {
  // A zero-length connection ID (after a Retry) is a valid IKM; libcrypto wants a pointer.
  static constexpr std::uint8_t kEmpty = 0;
  auto ptr = [](std::span<const std::uint8_t> s) {
    return const_cast<std::uint8_t*>(s.empty() ? &kEmpty : s.data());
  };
  char digest[] = "SHA256";
  const char* which = mode == EVP_KDF_HKDF_MODE_EXTRACT_ONLY ? OSSL_KDF_PARAM_SALT
                                                             : OSSL_KDF_PARAM_INFO;
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ptr(key), key.size()),
      OSSL_PARAM_construct_octet_string(which, ptr(salt_or_info), salt_or_info.size()),
      OSSL_PARAM_construct_end(),
  };
  EVP_KDF_CTX_reset(ctx);
  return EVP_KDF_derive(ctx, out.data(), out.size(), params) == 1;
}

// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, as RFC 9001 §5.1 uses it.
bool expand_label(EVP_KDF_CTX* ctx, std::span<const std::uint8_t> secret, std::string_view label,
                  std::span<std::uint8_t> out) {
  constexpr std::string_view kPrefix = "tls13 ";
  std::array<std::uint8_t, 2 + 1 + 255 + 1> info{};
  const std::size_t label_length = kPrefix.size() + label.size();
  if (label_length > 255 || out.size() > 0xffff) return false;
  std::size_t n = 0;
  info[n++] = static_cast<std::uint8_t>(out.size() >> 8);
  info[n++] = static_cast<std::uint8_t>(out.size());
  info[n++] = static_cast<std::uint8_t>(label_length);
  for (char c : kPrefix) info[n++] = static_cast<std::uint8_t>(c);
  for (char c : label) info[n++] = static_cast<std::uint8_t>(c);
  info[n++] = 0;  // context: empty
  return hkdf(ctx, EVP_KDF_HKDF_MODE_EXPAND_ONLY, secret, std::span(info.data(), n), out);
}

// A cursor over untrusted bytes: every read checks the bound and fails rather than read
// past the span.
class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> s) : s_(s) {}
  std::size_t pos() const { return pos_; }
  std::size_t left() const { return s_.size() - pos_; }
  bool u8(std::uint8_t& v) {
    if (left() < 1) return false;
    v = s_[pos_++];
    return true;
  }
  bool u32(std::uint32_t& v) {
    if (left() < 4) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) v = v << 8 | s_[pos_++];
    return true;
  }
  // RFC 9000 §16: the two high bits of the first byte give the length (1, 2, 4 or 8).
  bool varint(std::uint64_t& v) {
    if (left() < 1) return false;
    const std::size_t length = std::size_t{1} << (s_[pos_] >> 6);
    if (left() < length) return false;
    v = s_[pos_++] & 0x3fu;
    for (std::size_t i = 1; i < length; ++i) v = v << 8 | s_[pos_++];
    return true;
  }
  bool bytes(std::uint64_t n, std::span<const std::uint8_t>& out) {
    if (n > left()) return false;
    out = s_.subspan(pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return true;
  }
  bool skip(std::uint64_t n) {
    std::span<const std::uint8_t> ignored;
    return bytes(n, ignored);
  }

 private:
  std::span<const std::uint8_t> s_;
  std::size_t pos_ = 0;
};

// The parts of a long-header packet we locate before removing header protection.
struct LongHeader {
  std::uint32_t version = 0;
  PacketType type = PacketType::kInitial;
  std::span<const std::uint8_t> dcid;
  std::size_t pn_offset = 0;  // from the packet's first byte
  std::size_t size = 0;       // the whole packet, pn_offset + Length
};

// False for anything we cannot walk: a short header, a fixed bit of 0, version
// negotiation or an unknown version (whose layout past the connection IDs is unknown), a
// Retry (no Length field; never sent by a client), or fields running past the datagram.
bool parse_long_header(std::span<const std::uint8_t> packet, LongHeader& h) {
  Reader r(packet);
  std::uint8_t first = 0;
  if (!r.u8(first) || (first & 0x80) == 0 || (first & 0x40) == 0) return false;
  if (!r.u32(h.version)) return false;
  const VersionTraits* traits = traits_of(h.version);
  if (traits == nullptr) return false;
  h.type = traits->types[(first >> 4) & 0x03];
  if (h.type == PacketType::kRetry) return false;
  std::uint8_t dcid_length = 0;
  std::uint8_t scid_length = 0;
  if (!r.u8(dcid_length) || dcid_length > kMaxCidLength || !r.bytes(dcid_length, h.dcid)) {
    return false;
  }
  if (!r.u8(scid_length) || scid_length > kMaxCidLength || !r.skip(scid_length)) return false;
  if (h.type == PacketType::kInitial) {
    std::uint64_t token_length = 0;
    if (!r.varint(token_length) || !r.skip(token_length)) return false;
  }
  std::uint64_t length = 0;
  if (!r.varint(length) || length > r.left()) return false;
  h.pn_offset = r.pos();
  h.size = h.pn_offset + static_cast<std::size_t>(length);
  return true;
}

// Removes header protection from and decrypts Initial packets with one connection's client
// keys. Lives for one feed() call (its contexts are not shared between threads).
class InitialOpener {
 public:
  // False on a libcrypto failure.
  bool init(const QuicInitialKeys& keys) {
    iv_ = keys.iv;
    hp_.reset(EVP_CIPHER_CTX_new());
    aead_.reset(EVP_CIPHER_CTX_new());
    return hp_ && aead_ &&
           EVP_EncryptInit_ex(hp_.get(), EVP_aes_128_ecb(), nullptr, keys.hp.data(), nullptr) ==
               1 &&
           EVP_CIPHER_CTX_set_padding(hp_.get(), 0) == 1 &&
           EVP_DecryptInit_ex(aead_.get(), EVP_aes_128_gcm(), nullptr, keys.key.data(),
                              nullptr) == 1;
  }

  // Opens `packet` (h.size bytes) into `plain` (room for h.size bytes). False when it does
  // not authenticate (or is too short to carry a sample and a tag); on success the
  // unprotected first byte and the plaintext's length.
  bool open(std::span<const std::uint8_t> packet, const LongHeader& h, std::uint8_t* plain,
            std::uint8_t& first, std::size_t& plain_length) {
    if (h.size < h.pn_offset + kSampleSkip + kSampleLength) return false;
    std::array<std::uint8_t, kSampleLength> mask{};
    int n = 0;
    if (EVP_EncryptUpdate(hp_.get(), mask.data(), &n, packet.data() + h.pn_offset + kSampleSkip,
                          static_cast<int>(kSampleLength)) != 1 ||
        n != static_cast<int>(kSampleLength)) {
      return false;
    }
    first = static_cast<std::uint8_t>(packet[0] ^ (mask[0] & 0x0f));
    const std::size_t pn_length = (first & 0x03u) + 1;
    if (h.size < h.pn_offset + pn_length + kTagLength) return false;
    std::array<std::uint8_t, 4> pn_bytes{};
    std::uint64_t pn = 0;
    for (std::size_t i = 0; i < pn_length; ++i) {
      pn_bytes[i] = static_cast<std::uint8_t>(packet[h.pn_offset + i] ^ mask[1 + i]);
      pn = pn << 8 | pn_bytes[i];
    }
    // A client's first Initial packets have no acknowledged predecessor, so the truncated
    // packet number is the full one (RFC 9000 §17.1 sizes it to be decodable from zero).
    std::array<std::uint8_t, 12> nonce = iv_;
    for (std::size_t i = 0; i < 8; ++i) {
      nonce[nonce.size() - 1 - i] ^= static_cast<std::uint8_t>(pn >> (8 * i));
    }
    const std::size_t body = h.pn_offset + pn_length;
    const std::size_t cipher_length = h.size - body - kTagLength;
    std::array<std::uint8_t, kTagLength> tag{};
    std::memcpy(tag.data(), packet.data() + body + cipher_length, kTagLength);
    // The AAD is the unprotected header: fed in three pieces so it is never copied.
    int out = 0;
    int last = 0;
    if (EVP_DecryptInit_ex(aead_.get(), nullptr, nullptr, nullptr, nonce.data()) != 1 ||
        EVP_DecryptUpdate(aead_.get(), nullptr, &out, &first, 1) != 1 ||
        EVP_DecryptUpdate(aead_.get(), nullptr, &out, packet.data() + 1,
                          static_cast<int>(h.pn_offset - 1)) != 1 ||
        EVP_DecryptUpdate(aead_.get(), nullptr, &out, pn_bytes.data(),
                          static_cast<int>(pn_length)) != 1 ||
        EVP_DecryptUpdate(aead_.get(), plain, &out, packet.data() + body,
                          static_cast<int>(cipher_length)) != 1 ||
        EVP_CIPHER_CTX_ctrl(aead_.get(), EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kTagLength),
                            tag.data()) != 1 ||
        EVP_DecryptFinal_ex(aead_.get(), plain + out, &last) != 1) {
      return false;
    }
    plain_length = static_cast<std::size_t>(out) + static_cast<std::size_t>(last);
    return plain_length == cipher_length;
  }

 private:
  std::array<std::uint8_t, 12> iv_{};
  CipherCtxPtr hp_;    // AES-128-ECB with the header-protection key
  CipherCtxPtr aead_;  // AES-128-GCM with the packet key; the nonce is set per packet
};

// An ACK frame's body (RFC 9000 §19.3): every range must stay at or above packet 0.
bool skip_ack(Reader& r, bool ecn) {
  std::uint64_t largest = 0;
  std::uint64_t delay = 0;
  std::uint64_t count = 0;
  std::uint64_t range = 0;
  if (!r.varint(largest) || !r.varint(delay) || !r.varint(count) || !r.varint(range) ||
      range > largest) {
    return false;
  }
  std::uint64_t smallest = largest - range;
  // Each range takes at least two bytes, so a huge count ends at the end of the packet.
  for (std::uint64_t i = 0; i < count; ++i) {
    std::uint64_t gap = 0;
    if (!r.varint(gap) || !r.varint(range) || smallest < gap + 2) return false;
    largest = smallest - gap - 2;
    if (range > largest) return false;
    smallest = largest - range;
  }
  std::uint64_t counts = 0;
  return !ecn || (r.varint(counts) && r.varint(counts) && r.varint(counts));
}

}  // namespace

bool derive_client_initial_keys(std::uint32_t version, std::span<const std::uint8_t> dcid,
                                QuicInitialKeys& out) {
  const VersionTraits* traits = traits_of(version);
  if (traits == nullptr) return false;
  const KdfPtr kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (!kdf) return false;
  const KdfCtxPtr ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) return false;
  std::array<std::uint8_t, 32> initial_secret{};
  std::array<std::uint8_t, 32> client_secret{};
  return hkdf(ctx.get(), EVP_KDF_HKDF_MODE_EXTRACT_ONLY, dcid, *traits->salt, initial_secret) &&
         expand_label(ctx.get(), initial_secret, "client in", client_secret) &&
         expand_label(ctx.get(), client_secret, traits->key_label, out.key) &&
         expand_label(ctx.get(), client_secret, traits->iv_label, out.iv) &&
         expand_label(ctx.get(), client_secret, traits->hp_label, out.hp);
}

Result QuicSniffer::feed(std::span<const std::uint8_t> datagram) {
  if (done_.outcome != Outcome::kNeedMore) return done_;
  const bool first_datagram = !started_;
  if (first_datagram && datagram.size() < kMinClientDatagram) return finish(Outcome::kNotThis);

  std::optional<InitialOpener> opener;  // created on the first Initial of ours
  std::array<std::uint8_t, kStackPlaintext> stack_plain;  // not zero-filled: written first
  std::vector<std::uint8_t> heap_plain;
  std::size_t pos = 0;
  bool first_packet = true;
  while (pos < datagram.size()) {
    const std::span<const std::uint8_t> rest = datagram.subspan(pos);
    LongHeader h;
    // The packet that decides whether this flow is QUIC at all is the first one we see.
    const bool deciding = first_datagram && first_packet;
    first_packet = false;
    if (!parse_long_header(rest, h)) {
      // Nothing after an unreadable or short-header packet can be located: the rest of the
      // datagram is not ours to read. Unauthenticated bytes never make a flow malformed.
      if (deciding) return finish(Outcome::kNotThis);
      break;
    }
    pos += h.size;
    if (h.type != PacketType::kInitial) {
      if (deciding) return finish(Outcome::kNotThis);
      continue;  // 0-RTT and Handshake packets carry no ClientHello
    }
    if (deciding) {
      if (!derive_client_initial_keys(h.version, h.dcid, keys_)) return finish(Outcome::kNotThis);
    } else if (h.version != version_ || h.dcid.size() != dcid_len_ ||
               !std::equal(h.dcid.begin(), h.dcid.end(), dcid_.begin())) {
      continue;  // another connection's Initial (or a stray): not ours
    }
    if (!opener) {
      opener.emplace();
      if (!opener->init(keys_)) {
        if (deciding) return finish(Outcome::kNotThis);
        return current();  // libcrypto failed: maybe it works on a later datagram
      }
    }
    std::uint8_t* plain = stack_plain.data();
    if (h.size > stack_plain.size()) {
      heap_plain.resize(h.size);
      plain = heap_plain.data();
    }
    std::uint8_t first = 0;
    std::size_t plain_length = 0;
    if (!opener->open(rest.first(h.size), h, plain, first, plain_length)) {
      // The first Initial proves the flow is QUIC; a later one that fails is a stray or
      // spoofed packet and must not decide anything.
      if (deciding) return finish(Outcome::kNotThis);
      continue;
    }
    if (deciding) {
      started_ = true;
      version_ = h.version;
      dcid_len_ = static_cast<std::uint8_t>(h.dcid.size());
      std::copy(h.dcid.begin(), h.dcid.end(), dcid_.begin());
    }
    // Authenticated from here: what is wrong now is the client's own doing. Reserved bits
    // set or a packet without frames are protocol violations (RFC 9000 §17.2, §12.4).
    if ((first & 0x0c) != 0 || plain_length == 0) return finish(Outcome::kMalformed);
    const Outcome outcome = read_frames(std::span(plain, plain_length));
    if (outcome != Outcome::kNeedMore) return finish(outcome);
    if (done_.outcome != Outcome::kNeedMore) return done_;
  }
  return current();
}

std::span<const std::uint8_t> QuicSniffer::crypto_prefix() const {
  return std::span(crypto_.data(), contiguous_);
}

Result QuicSniffer::finish(Outcome outcome) {
  done_ = Result{outcome, outcome == Outcome::kNotThis ? Source::kNone : Source::kQuic, {}};
  return done_;
}

Result QuicSniffer::current() const {
  return Result{Outcome::kNeedMore, started_ ? Source::kQuic : Source::kNone, {}};
}

Outcome QuicSniffer::read_frames(std::span<const std::uint8_t> plain) {
  const std::size_t contiguous_before = contiguous_;
  Reader r(plain);
  while (r.left() > 0) {
    std::uint8_t type = 0;
    r.u8(type);
    switch (type) {
      case 0x00:  // PADDING
      case 0x01:  // PING
        break;
      case 0x02:  // ACK
      case 0x03:  // ACK with ECN counts
        if (!skip_ack(r, type == 0x03)) return Outcome::kMalformed;
        break;
      case 0x06: {  // CRYPTO
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
        std::span<const std::uint8_t> data;
        if (!r.varint(offset) || !r.varint(length) || !r.bytes(length, data) ||
            !add_crypto(offset, data)) {
          return Outcome::kMalformed;
        }
        break;
      }
      default:
        // CONNECTION_CLOSE (0x1c) gives the connection up; anything else (a multi-byte
        // type included: ours all have one-byte encodings, RFC 9000 §12.4) is not
        // allowed in an Initial packet.
        return Outcome::kMalformed;
    }
  }
  // Parsing once per packet rather than per frame bounds the work when a client splits
  // its ClientHello into many tiny frames.
  if (contiguous_ > contiguous_before) {
    Result hello = parse_client_hello(crypto_prefix());
    if (hello.outcome == Outcome::kNeedMore) return Outcome::kNeedMore;
    // The Initial authenticated, so this is QUIC: a CRYPTO stream that does not start with
    // a ClientHello is a broken QUIC flow, not another protocol.
    if (hello.outcome == Outcome::kNotThis) return Outcome::kMalformed;
    done_ = std::move(hello);
    done_.source = Source::kQuic;
  }
  return Outcome::kNeedMore;
}

bool QuicSniffer::add_crypto(std::uint64_t offset, std::span<const std::uint8_t> data) {
  if (offset > kMaxClientHello || data.size() > kMaxClientHello - offset) return false;
  const std::size_t begin = static_cast<std::size_t>(offset);
  const std::size_t end = begin + data.size();
  if (crypto_.capacity() == 0) {
    // One allocation per flow, not zero-filled: resize() below fills only what arrives.
    crypto_.reserve(kMaxClientHello);
    have_.reserve(kMaxClientHello);
  }
  if (end > crypto_.size()) {
    crypto_.resize(end);
    have_.resize(end, false);
  }
  // Duplicates and overlaps keep the first copy: a retransmission carries the same bytes,
  // and a client that sends different ones gains nothing by it.
  for (std::size_t i = begin; i < end; ++i) {
    if (!have_[i]) {
      crypto_[i] = data[i - begin];
      have_[i] = true;
    }
  }
  while (contiguous_ < have_.size() && have_[contiguous_]) ++contiguous_;
  return true;
}

}  // namespace splitd::sniff
