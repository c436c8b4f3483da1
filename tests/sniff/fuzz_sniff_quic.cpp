// libFuzzer target for QuicSniffer. The first input byte picks a mode:
//   even: the rest is datagrams, each a 2-byte big-endian length and its bytes, fed as they
//         are (the header walk, the 1200-byte rule, version and connection ID checks);
//   odd:  the rest is packets, each a flags byte, a 2-byte big-endian length and that many
//         bytes of plaintext frames, which this target seals as Initial packets with the
//         keys of a fixed connection ID, so that the frame parser and the CRYPTO
//         reassembly get fuzzed past the AEAD that random bytes never pass.
// Invariants (__builtin_trap): a final result never changes; kName carries a non-empty,
// already normalized host name; the reassembly holds at most kMaxClientHello bytes.
#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "sniff/quic.hpp"
#include "sniff/sniff.hpp"

namespace {

using splitd::sniff::Outcome;
using splitd::sniff::QuicInitialKeys;
using splitd::sniff::QuicSniffer;
using splitd::sniff::Result;
using Bytes = std::vector<std::uint8_t>;

constexpr std::array<std::uint8_t, 8> kDcid = {0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08};
constexpr std::array<std::uint8_t, 8> kOtherDcid = {1, 2, 3, 4, 5, 6, 7, 8};

// Flags of a sealed packet.
constexpr std::uint8_t kFlagV2 = 0x01;
constexpr std::uint8_t kFlagPnLength = 0x06;  // two bits: packet number length - 1
constexpr std::uint8_t kFlagOtherDcid = 0x08;
constexpr std::uint8_t kFlagBadTag = 0x10;
constexpr std::uint8_t kFlagCoalesce = 0x20;  // into the previous packet's datagram
constexpr std::uint8_t kFlagNoPadding = 0x40;
constexpr std::uint8_t kFlagReserved = 0x80;  // set a reserved bit (a protocol violation)

struct CipherCtxDeleter {
  void operator()(EVP_CIPHER_CTX* c) const noexcept { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxDeleter>;

// The keys are the same for every input: derived once, not per execution.
struct Keys {
  QuicInitialKeys v1;
  QuicInitialKeys v2;
  QuicInitialKeys other;
  Keys() {
    if (!splitd::sniff::derive_client_initial_keys(splitd::sniff::kQuicV1, kDcid, v1) ||
        !splitd::sniff::derive_client_initial_keys(splitd::sniff::kQuicV2, kDcid, v2) ||
        !splitd::sniff::derive_client_initial_keys(splitd::sniff::kQuicV1, kOtherDcid, other)) {
      __builtin_trap();
    }
  }
};

// Appends one Initial packet (RFC 9001 §5.3, §5.4) holding `plain` to `out`.
void seal(std::uint8_t flags, std::span<const std::uint8_t> plain, std::size_t pad_to, Bytes& out) {
  static const Keys keys;
  const bool v2 = (flags & kFlagV2) != 0;
  const bool other = (flags & kFlagOtherDcid) != 0;
  const QuicInitialKeys& k = other ? keys.other : v2 ? keys.v2 : keys.v1;
  const std::uint32_t version = v2 ? splitd::sniff::kQuicV2 : splitd::sniff::kQuicV1;
  const std::size_t pn_length = ((flags & kFlagPnLength) >> 1) + 1;
  const std::size_t start = out.size();
  out.push_back(static_cast<std::uint8_t>(
      0xc0 | (v2 ? 0x10 : 0x00) | ((flags & kFlagReserved) != 0 ? 0x04 : 0x00) | (pn_length - 1)));
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(version >> (8 * i)));
  const auto& dcid = other ? kOtherDcid : kDcid;
  out.push_back(static_cast<std::uint8_t>(dcid.size()));
  out.insert(out.end(), dcid.begin(), dcid.end());
  out.push_back(0);  // SCID length
  out.push_back(0);  // token length
  Bytes payload(plain.begin(), plain.end());
  if (pn_length + payload.size() < 4) payload.resize(4 - pn_length, 0);  // room for the sample
  const std::size_t header = out.size() - start + 2 + pn_length;
  if (header + payload.size() + 16 < pad_to) payload.resize(pad_to - header - 16, 0);
  const std::size_t length = pn_length + payload.size() + 16;  // < 0x4000: 2-byte varint
  out.push_back(static_cast<std::uint8_t>(0x40 | length >> 8));
  out.push_back(static_cast<std::uint8_t>(length));
  const std::size_t pn_offset = out.size() - start;
  const std::uint64_t pn = flags;  // any value that fits one byte
  for (std::size_t i = pn_length; i > 0; --i) {
    out.push_back(static_cast<std::uint8_t>(i == 1 ? pn : 0));
  }
  std::array<std::uint8_t, 12> nonce = k.iv;
  nonce[11] ^= static_cast<std::uint8_t>(pn);

  const CipherCtx gcm(EVP_CIPHER_CTX_new());
  const CipherCtx ecb(EVP_CIPHER_CTX_new());
  if (!gcm || !ecb) __builtin_trap();
  const std::size_t body = out.size();
  out.resize(body + payload.size() + 16);
  int n = 0;
  int m = 0;
  if (EVP_EncryptInit_ex(gcm.get(), EVP_aes_128_gcm(), nullptr, k.key.data(), nonce.data()) != 1 ||
      EVP_EncryptUpdate(gcm.get(), nullptr, &n, out.data() + start,
                        static_cast<int>(body - start)) != 1 ||
      EVP_EncryptUpdate(gcm.get(), out.data() + body, &n, payload.data(),
                        static_cast<int>(payload.size())) != 1 ||
      EVP_EncryptFinal_ex(gcm.get(), out.data() + body + n, &m) != 1 ||
      EVP_CIPHER_CTX_ctrl(gcm.get(), EVP_CTRL_AEAD_GET_TAG, 16,
                          out.data() + body + payload.size()) != 1) {
    __builtin_trap();
  }
  if ((flags & kFlagBadTag) != 0) out.back() ^= 0x01;
  std::array<std::uint8_t, 16> mask{};
  if (EVP_EncryptInit_ex(ecb.get(), EVP_aes_128_ecb(), nullptr, k.hp.data(), nullptr) != 1 ||
      EVP_CIPHER_CTX_set_padding(ecb.get(), 0) != 1 ||
      EVP_EncryptUpdate(ecb.get(), mask.data(), &n, out.data() + start + pn_offset + 4, 16) != 1) {
    __builtin_trap();
  }
  out[start] ^= mask[0] & 0x0f;
  for (std::size_t i = 0; i < pn_length; ++i) out[start + pn_offset + i] ^= mask[1 + i];
}

// Feeds one datagram and checks the invariants against the previous final result.
class Checker {
 public:
  void feed(std::span<const std::uint8_t> datagram) {
    const Result r = sniffer_.feed(datagram);
    if (sniffer_.crypto_prefix().size() > splitd::sniff::kMaxClientHello) __builtin_trap();
    if (r.outcome != Outcome::kNotThis && r.source != splitd::sniff::Source::kQuic &&
        !(r.outcome == Outcome::kNeedMore && r.source == splitd::sniff::Source::kNone)) {
      __builtin_trap();
    }
    if (final_) {
      if (r.outcome != final_->outcome || r.name != final_->name || r.source != final_->source) {
        __builtin_trap();
      }
      return;
    }
    if (r.outcome == Outcome::kName) {
      std::string copy = r.name;
      if (copy.empty() || !splitd::sniff::normalize_host_name(copy) || copy != r.name) {
        __builtin_trap();
      }
    }
    if (r.outcome != Outcome::kNeedMore) final_ = std::make_unique<Result>(r);
  }

 private:
  QuicSniffer sniffer_;
  std::unique_ptr<Result> final_;
};

bool take(std::span<const std::uint8_t>& in, std::size_t n, std::span<const std::uint8_t>& out) {
  if (in.size() < n) return false;
  out = in.first(n);
  in = in.subspan(n);
  return true;
}

std::size_t length16(std::span<const std::uint8_t> two) {
  return static_cast<std::size_t>(two[0]) << 8 | two[1];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::span<const std::uint8_t> in(data + 1, size - 1);
  Checker checker;
  std::span<const std::uint8_t> field;
  if ((data[0] & 1) == 0) {
    while (take(in, 2, field)) {
      std::span<const std::uint8_t> datagram;
      if (!take(in, length16(field), datagram)) datagram = std::exchange(in, {});
      checker.feed(datagram);
    }
    return 0;
  }
  Bytes datagram;
  std::span<const std::uint8_t> flags;
  while (take(in, 1, flags) && take(in, 2, field)) {
    std::span<const std::uint8_t> plain;
    // Packets stay under 16 KiB so their Length fits a two-byte varint.
    if (!take(in, std::min<std::size_t>(length16(field), 8192), plain))
      plain = std::exchange(in, {});
    if ((flags[0] & kFlagCoalesce) == 0 && !datagram.empty()) {
      checker.feed(datagram);
      datagram.clear();
    }
    seal(flags[0], plain, (flags[0] & kFlagNoPadding) != 0 ? 0 : 1200, datagram);
  }
  if (!datagram.empty()) checker.feed(datagram);
  return 0;
}
