#pragma once

// Test-side QUIC client packets: long-header packets around CRYPTO (and other) frames,
// protected as RFC 9001 §5 (QUIC v1) and RFC 9369 (QUIC v2) say, with Initial keys derived
// here from the Destination Connection ID, independently of splitd's sniffer; and a real
// ClientHello to carry in them. Header-only, libcrypto and GoogleTest (failures of
// libcrypto calls are reported with EXPECT_*). Used by the sniffer's unit test
// (tests/sniff/quic_test.cpp) and the end-to-end test (tests/e2e/sniff_test.cpp).

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace splitd::sniff::quic_packets {

using Bytes = std::vector<std::uint8_t>;

inline constexpr std::uint32_t kVersion1 = 0x00000001;  // RFC 9000
inline constexpr std::uint32_t kVersion2 = 0x6b3343cf;  // RFC 9369

// A real ClientHello (TLS 1.3, SNI www.example.com, 316 bytes), captured once with
//   python3 listener on 127.0.0.1:PORT that wrote what it received to a file, and
//   openssl s_client -connect 127.0.0.1:PORT -servername www.example.com </dev/null
// (OpenSSL 3.0.19), the 5-byte TLS record header stripped: QUIC's CRYPTO frames carry the
// handshake message only. It has no quic_transport_parameters; the parser ignores those.
inline constexpr std::uint8_t kClientHello[] = {
    0x01, 0x00, 0x01, 0x38, 0x03, 0x03, 0xee, 0xd9, 0xc0, 0xde, 0xcb, 0xbf, 0x62, 0xc3, 0x6a, 0x7e,
    0xea, 0xef, 0x1c, 0x69, 0x84, 0x35, 0x68, 0x74, 0xa0, 0xb3, 0x5b, 0x66, 0x3e, 0xf4, 0x1e, 0x33,
    0xe1, 0x7d, 0x52, 0x2b, 0x43, 0x81, 0x20, 0xf8, 0x59, 0x37, 0x5f, 0xda, 0x8b, 0x3e, 0xac, 0x93,
    0x25, 0xe5, 0x44, 0x39, 0x89, 0xfc, 0x5a, 0xae, 0x8c, 0x4d, 0xc7, 0x0f, 0x0f, 0x9d, 0x3d, 0xbd,
    0x70, 0x01, 0xd5, 0x17, 0x53, 0x1d, 0xac, 0x00, 0x3e, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0xc0,
    0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa, 0xc0, 0x2b, 0xc0, 0x2f, 0x00,
    0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27, 0x00, 0x67, 0xc0, 0x0a, 0xc0,
    0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d, 0x00, 0x9c, 0x00, 0x3d, 0x00,
    0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xb1, 0x00, 0x00, 0x00, 0x14, 0x00,
    0x12, 0x00, 0x00, 0x0f, 0x77, 0x77, 0x77, 0x2e, 0x65, 0x78, 0x61, 0x6d, 0x70, 0x6c, 0x65, 0x2e,
    0x63, 0x6f, 0x6d, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00,
    0x14, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01,
    0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00,
    0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08,
    0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05,
    0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02, 0x00,
    0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00, 0x02,
    0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0xf4, 0xb5, 0x50, 0x07,
    0x4f, 0x75, 0x47, 0x78, 0x2b, 0x15, 0x96, 0xc6, 0x4c, 0x58, 0x35, 0x3b, 0xc9, 0x32, 0x50, 0x59,
    0xe5, 0x90, 0x82, 0xe2, 0x93, 0x72, 0xea, 0xed, 0x10, 0x4e, 0x41, 0x2b,
};
inline constexpr std::string_view kClientHelloName = "www.example.com";

// kClientHello with its server_name extension carrying `name` instead (a single host_name
// entry), every length on the way updated. Empty if the hello does not parse.
inline Bytes client_hello_with_sni(std::string_view name) {
  const Bytes in(std::begin(kClientHello), std::end(kClientHello));
  const auto u16 = [&](std::size_t at) { return static_cast<std::size_t>(in[at] << 8 | in[at + 1]); };
  std::size_t at = 4 + 2 + 32;  // handshake header, legacy_version, random
  at += 1 + in[at];             // legacy_session_id
  at += 2 + u16(at);            // cipher_suites
  at += 1 + in[at];             // legacy_compression_methods
  const std::size_t ext_len_at = at;
  if (in.size() != at + 2 + u16(at)) return {};
  Bytes sni = {0x00, 0x00};  // extension type server_name
  const std::size_t list = 1 + 2 + name.size();
  for (std::size_t v : {list + 2, list}) {
    sni.push_back(static_cast<std::uint8_t>(v >> 8));
    sni.push_back(static_cast<std::uint8_t>(v));
  }
  sni.push_back(0x00);  // host_name
  sni.push_back(static_cast<std::uint8_t>(name.size() >> 8));
  sni.push_back(static_cast<std::uint8_t>(name.size()));
  sni.insert(sni.end(), name.begin(), name.end());
  Bytes out(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(ext_len_at + 2));
  bool replaced = false;
  for (at = ext_len_at + 2; at + 4 <= in.size();) {
    const std::size_t type = u16(at);
    const std::size_t end = at + 4 + u16(at + 2);
    if (end > in.size()) return {};
    if (type == 0) {
      out.insert(out.end(), sni.begin(), sni.end());
      replaced = true;
    } else {
      out.insert(out.end(), in.begin() + static_cast<std::ptrdiff_t>(at),
                 in.begin() + static_cast<std::ptrdiff_t>(end));
    }
    at = end;
  }
  if (!replaced || at != in.size()) return {};
  const std::size_t ext_len = out.size() - ext_len_at - 2;
  out[ext_len_at] = static_cast<std::uint8_t>(ext_len >> 8);
  out[ext_len_at + 1] = static_cast<std::uint8_t>(ext_len);
  const std::size_t body = out.size() - 4;
  out[1] = static_cast<std::uint8_t>(body >> 16);
  out[2] = static_cast<std::uint8_t>(body >> 8);
  out[3] = static_cast<std::uint8_t>(body);
  return out;
}

inline const Bytes kDcid = {0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08};
inline const Bytes kScid = {0xc0, 0xff, 0xee, 0x01};

inline void put_varint(Bytes& out, std::uint64_t v) {
  if (v < 0x40) {
    out.push_back(static_cast<std::uint8_t>(v));
  } else if (v < 0x4000) {
    out.push_back(static_cast<std::uint8_t>(0x40 | v >> 8));
    out.push_back(static_cast<std::uint8_t>(v));
  } else if (v < 0x40000000) {
    for (int i = 3; i >= 0; --i) {
      out.push_back(static_cast<std::uint8_t>((i == 3 ? 0x80 : 0) | (v >> (8 * i) & 0xff)));
    }
  } else {
    for (int i = 7; i >= 0; --i) {
      out.push_back(static_cast<std::uint8_t>((i == 7 ? 0xc0 : 0) | (v >> (8 * i) & 0xff)));
    }
  }
}

inline Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

inline Bytes crypto_frame(std::uint64_t offset, const Bytes& data) {
  Bytes f = {0x06};
  put_varint(f, offset);
  put_varint(f, data.size());
  f.insert(f.end(), data.begin(), data.end());
  return f;
}

enum class Type { kInitial, kZeroRtt, kHandshake, kRetry };

inline std::uint8_t type_bits(std::uint32_t version, Type t) {
  const auto i = static_cast<std::uint8_t>(t);
  return version == kVersion2 ? static_cast<std::uint8_t>((i + 1) % 4) : i;
}

// The client's Initial keys (RFC 9001 §5.2, RFC 9369 §3.3.1): HKDF-Extract with the
// version's salt, then HKDF-Expand-Label (RFC 8446 §7.1), HMAC-SHA256 throughout.
struct InitialKeys {
  std::array<std::uint8_t, 16> key{};
  std::array<std::uint8_t, 12> iv{};
  std::array<std::uint8_t, 16> hp{};
};

inline std::array<std::uint8_t, 32> hmac_sha256(std::span<const std::uint8_t> key,
                                                std::span<const std::uint8_t> data) {
  std::array<std::uint8_t, 32> out{};
  unsigned n = 0;
  EXPECT_NE(HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), data.data(), data.size(),
                 out.data(), &n),
            nullptr);
  EXPECT_EQ(n, 32u);
  return out;
}

// HKDF-Expand-Label with an empty context, for outputs of at most 32 bytes (one block).
inline void expand_label(std::span<const std::uint8_t> secret, std::string_view label,
                         std::span<std::uint8_t> out) {
  const std::string full = "tls13 " + std::string(label);
  Bytes info = {static_cast<std::uint8_t>(out.size() >> 8), static_cast<std::uint8_t>(out.size()),
                static_cast<std::uint8_t>(full.size())};
  info.insert(info.end(), full.begin(), full.end());
  info.push_back(0x00);  // empty context
  info.push_back(0x01);  // T(1) = HMAC(PRK, info | 0x01)
  const auto t = hmac_sha256(secret, info);
  std::copy_n(t.begin(), out.size(), out.begin());
}

inline InitialKeys client_initial_keys(std::uint32_t version, std::span<const std::uint8_t> dcid) {
  static constexpr std::uint8_t kSalt1[] = {0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34,
                                            0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8,
                                            0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a};
  static constexpr std::uint8_t kSalt2[] = {0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6,
                                            0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26,
                                            0x9d, 0xcb, 0xf9, 0xbd, 0x2e, 0xd9};
  const bool v2 = version == kVersion2;
  const auto initial = hmac_sha256(v2 ? std::span<const std::uint8_t>(kSalt2) : kSalt1, dcid);
  std::array<std::uint8_t, 32> client{};
  expand_label(initial, "client in", client);
  InitialKeys k;
  expand_label(client, v2 ? "quicv2 key" : "quic key", k.key);
  expand_label(client, v2 ? "quicv2 iv" : "quic iv", k.iv);
  expand_label(client, v2 ? "quicv2 hp" : "quic hp", k.hp);
  return k;
}

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const noexcept { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

// One long-header packet as a client would build it; protect() applies RFC 9001 §5.3
// (AES-128-GCM, nonce = iv XOR packet number, AAD = header) and §5.4 (header protection).
// Non-Initial packets are protected with the Initial keys too (a test may want a sniffer
// to skip them unread). Versions other than v2 use the v1 keys.
struct Packet {
  std::uint32_t version = kVersion1;
  Bytes dcid = kDcid;
  Bytes scid = kScid;
  Type type = Type::kInitial;
  std::uint64_t pn = 0;
  std::size_t pn_length = 1;
  Bytes token;
  Bytes frames;
  std::uint8_t reserved = 0;  // the two reserved bits (must be 0)
  std::size_t pad_to = 0;     // PADDING appended until the packet is this long
};

inline Bytes protect(const Packet& p) {
  const InitialKeys keys = client_initial_keys(p.version == kVersion2 ? kVersion2 : kVersion1, p.dcid);
  Bytes out = {static_cast<std::uint8_t>(0xc0 | type_bits(p.version, p.type) << 4 |
                                         p.reserved << 2 | (p.pn_length - 1))};
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(p.version >> (8 * i)));
  out.push_back(static_cast<std::uint8_t>(p.dcid.size()));
  out.insert(out.end(), p.dcid.begin(), p.dcid.end());
  out.push_back(static_cast<std::uint8_t>(p.scid.size()));
  out.insert(out.end(), p.scid.begin(), p.scid.end());
  if (p.type == Type::kInitial) {
    put_varint(out, p.token.size());
    out.insert(out.end(), p.token.begin(), p.token.end());
  }
  Bytes payload = p.frames;
  // The header-protection sample needs 4 + 16 bytes after the packet number's start.
  if (p.pn_length + payload.size() < 4) payload.resize(4 - p.pn_length, 0x00);
  const std::size_t length_bytes = p.pn_length + payload.size() + 16 < 0x4000 ? 2 : 4;
  const std::size_t total = out.size() + length_bytes + p.pn_length + payload.size() + 16;
  if (total < p.pad_to) payload.resize(payload.size() + p.pad_to - total, 0x00);
  const std::size_t length = p.pn_length + payload.size() + 16;
  if (length_bytes == 2) {
    out.push_back(static_cast<std::uint8_t>(0x40 | length >> 8));
    out.push_back(static_cast<std::uint8_t>(length));
  } else {
    for (int i = 3; i >= 0; --i) {
      out.push_back(static_cast<std::uint8_t>((i == 3 ? 0x80 : 0) | (length >> (8 * i) & 0xff)));
    }
  }
  const std::size_t pn_offset = out.size();
  for (std::size_t i = p.pn_length; i > 0; --i) {
    out.push_back(static_cast<std::uint8_t>(p.pn >> (8 * (i - 1))));
  }
  std::array<std::uint8_t, 12> nonce = keys.iv;
  for (std::size_t i = 0; i < 8; ++i) nonce[11 - i] ^= static_cast<std::uint8_t>(p.pn >> (8 * i));

  CipherCtx gcm(EVP_CIPHER_CTX_new());
  Bytes sealed(payload.size() + 16);
  int n = 0;
  int m = 0;
  EXPECT_EQ(
      EVP_EncryptInit_ex(gcm.get(), EVP_aes_128_gcm(), nullptr, keys.key.data(), nonce.data()), 1);
  EXPECT_EQ(EVP_EncryptUpdate(gcm.get(), nullptr, &n, out.data(), static_cast<int>(out.size())), 1);
  EXPECT_EQ(EVP_EncryptUpdate(gcm.get(), sealed.data(), &n, payload.data(),
                              static_cast<int>(payload.size())),
            1);
  EXPECT_EQ(EVP_EncryptFinal_ex(gcm.get(), sealed.data() + n, &m), 1);
  EXPECT_EQ(
      EVP_CIPHER_CTX_ctrl(gcm.get(), EVP_CTRL_AEAD_GET_TAG, 16, sealed.data() + payload.size()), 1);
  out.insert(out.end(), sealed.begin(), sealed.end());

  CipherCtx ecb(EVP_CIPHER_CTX_new());
  std::array<std::uint8_t, 16> mask{};
  EXPECT_EQ(EVP_EncryptInit_ex(ecb.get(), EVP_aes_128_ecb(), nullptr, keys.hp.data(), nullptr), 1);
  EXPECT_EQ(EVP_CIPHER_CTX_set_padding(ecb.get(), 0), 1);
  EXPECT_EQ(EVP_EncryptUpdate(ecb.get(), mask.data(), &n, out.data() + pn_offset + 4, 16), 1);
  out[0] ^= mask[0] & 0x0f;
  for (std::size_t i = 0; i < p.pn_length; ++i) out[pn_offset + i] ^= mask[1 + i];
  return out;
}

// A client's datagram: one Initial padded to 1200 bytes (RFC 9000 §14.1).
inline Bytes initial_datagram(const Bytes& frames, std::uint64_t pn = 0,
                              std::uint32_t version = kVersion1) {
  Packet p;
  p.frames = frames;
  p.pn = pn;
  p.version = version;
  p.pad_to = 1200;
  return protect(p);
}

}  // namespace splitd::sniff::quic_packets
