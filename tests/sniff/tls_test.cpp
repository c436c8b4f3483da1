#include "sniff/tls.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sniff/sniff.hpp"

namespace splitd::sniff {
namespace {

using Bytes = std::vector<std::uint8_t>;

// ClientHellos from real clients, the whole first flight as it came off the socket.
// Captured once (Debian 12: OpenSSL 3.0.19, curl 7.88.1) with a python3 listener on
// 127.0.0.1:PORT that read records until the handshake message was complete and dumped
// them; random, session ID and key shares are whatever that run drew.
//   kOpensslSni:     openssl s_client -connect 127.0.0.1:PORT -servername www.example.com </dev/null
//   kCurlSni:        curl -s --resolve www.example.com:PORT:127.0.0.1 https://www.example.com:PORT/
//                    (curl pads its hello to 512 bytes: extension 21)
//   kOpensslNoSni:   openssl s_client -connect 127.0.0.1:PORT -noservername </dev/null
//   kOpensslTls12:   the first command with -tls1_2
//   kOpensslFrag512: the first command with -max_send_frag 512 -alpn h2,http/1.1,x*200 (five
//                    ALPN names of 200 'x'): a 1,339-byte hello in records of 512, 512, 315
constexpr std::string_view kOpensslSni =
    "160301013c010001380303db9b0fad0728fa3d8ac1b260837a1093c4dbd68a105baeabd61256761bb8fc4120"
    "f5f448bc9a31882e31e71e9d978ea235d59e95f273fa7a53a3feb5de122eae44003e130213031301c02cc030"
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d"
    "003c0035002f00ff010000b100000014001200000f7777772e6578616d706c652e636f6d000b000403000102"
    "000a00160014001d0017001e0019001801000101010201030104002300000016000000170000000d002a0028"
    "040305030603080708080809080a080b080408050806040105010601030303010302040205020602002b0009"
    "080304030303020301002d00020101003300260024001d0020f9bc675f8f64f78c3b25c546b3e9b37c8cf3bb"
    "08bdcef2ba037277d0ea1ed82c";
constexpr std::string_view kCurlSni =
    "1603010200010001fc0303c4a9950c9c1dc6f6a0b858a282439e5eba71531314615e0b2e66451efa7766a820"
    "b88247121503666dcc766fd049719a4c9efcdb86fe4f4e4cf46f064c68df53cb003e130213031301c02cc030"
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d"
    "003c0035002f00ff0100017500000014001200000f7777772e6578616d706c652e636f6d000b000403000102"
    "000a00160014001d0017001e00190018010001010102010301040010000e000c02683208687474702f312e31"
    "001600000017000000310000000d002a0028040305030603080708080809080a080b08040805080604010501"
    "0601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d0020b9"
    "1531bb9dfac0ab2bdcbf844f2e7f015074b1bdc5687b05cf1128f0d6e65d2e001500ae000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000";
constexpr std::string_view kOpensslNoSni =
    "16030101240100012003037c5360bc462dd8826a7038365bd6487b9f68fa79a215a3d7d0a496cafc5c475220"
    "a0d2f7c73c6be299ee1dd09623cc4a178415033ae95777612937addfd072c03f003e130213031301c02cc030"
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d"
    "003c0035002f00ff01000099000b000403000102000a00160014001d0017001e001900180100010101020103"
    "0104002300000016000000170000000d002a0028040305030603080708080809080a080b0804080508060401"
    "05010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d00"
    "20935fa83ce466c8d4f7f82c1c9e86fec36f47d2567ddcb52f7a0d324f0c762104";
constexpr std::string_view kOpensslTls12 =
    "16030100cf010000cb030318ddbb58e61827f2d0d9af56a8f85d30f36bac81b399ad951629088f1578f57000"
    "0038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033"
    "009d009c003d003c0035002f00ff0100006a00000014001200000f7777772e6578616d706c652e636f6d000b"
    "000403000102000a000c000a001d0017001e00190018002300000016000000170000000d002a002804030503"
    "0603080708080809080a080b080408050806040105010601030303010302040205020602";
constexpr std::string_view kOpensslFrag512 =
    "16030102000100053703032876937c0981997638ae06e7c61deaf00ccc32a53d6de4ef45c436452eca5e6e20"
    "012839d9bba2ec73d13bc0bf3c17616c5c30cfdcc94c01a16091dccb89084751003e130213031301c02cc030"
    "009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d"
    "003c0035002f00ff010004b000000014001200000f7777772e6578616d706c652e636f6d000b000403000102"
    "000a00160014001d0017001e001900180100010101020103010400230000001003fb03f90268320868747470"
    "2f312e31c8787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878c87878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878781603010200787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "787878787878787878787878787878c878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "78787878787878787878787878787878787878787878787878787878787878787878787878787878c8787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "787878787878787878787878787878787878787878c8160301013b7878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878787878"
    "787878787878780016000000170000000d002a0028040305030603080708080809080a080b08040805080604"
    "0105010601030303010302040205020602002b0009080304030303020301002d00020101003300260024001d"
    "00205b1232f72c833da7c065e89b752aa5be72e0281c6ef119ad6b50b71336baef64";

constexpr std::string_view kExampleName = "www.example.com";

Bytes from_hex(std::string_view hex) {
  Bytes out;
  const auto nibble = [](char c) {
    return static_cast<std::uint8_t>(c <= '9' ? c - '0' : c - 'a' + 10);
  };
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>((nibble(hex[i]) << 4) | nibble(hex[i + 1])));
  }
  return out;
}

Bytes bytes_of(std::string_view s) { return Bytes(s.begin(), s.end()); }

void put16(Bytes& b, std::size_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}
void put24(Bytes& b, std::size_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 16));
  put16(b, v & 0xffff);
}
std::size_t get16(const Bytes& b, std::size_t at) {
  return static_cast<std::size_t>(b.at(at) << 8 | b.at(at + 1));
}

// The handshake layer of a record stream: the record payloads, concatenated.
Bytes handshake_of(const Bytes& records) {
  Bytes out;
  std::size_t pos = 0;
  while (pos + 5 <= records.size()) {
    const std::size_t len = get16(records, pos + 3);
    out.insert(out.end(), records.begin() + static_cast<std::ptrdiff_t>(pos + 5),
               records.begin() + static_cast<std::ptrdiff_t>(pos + 5 + len));
    pos += 5 + len;
  }
  return out;
}

// Handshake bytes put back into handshake records of at most `frag` bytes each.
Bytes records_of(const Bytes& handshake, std::size_t frag, std::uint16_t version = 0x0301) {
  Bytes out;
  for (std::size_t pos = 0; pos < handshake.size(); pos += frag) {
    const std::size_t n = std::min(frag, handshake.size() - pos);
    out.push_back(22);
    put16(out, version);
    put16(out, n);
    out.insert(out.end(), handshake.begin() + static_cast<std::ptrdiff_t>(pos),
               handshake.begin() + static_cast<std::ptrdiff_t>(pos + n));
  }
  return out;
}

struct Extension {
  std::uint16_t type = 0;
  Bytes data;
};

// A ClientHello taken apart into its fields, to be edited and built again with every
// length recomputed.
struct Hello {
  Bytes version_and_random;  // legacy_version(2) random(32)
  Bytes session_id;
  Bytes suites;
  Bytes compression;
  std::vector<Extension> extensions;
  bool has_extensions = true;
};

Hello split_hello(const Bytes& handshake) {
  Hello h;
  std::size_t p = 4;
  const auto take = [&](std::size_t n) {
    Bytes out(handshake.begin() + static_cast<std::ptrdiff_t>(p),
              handshake.begin() + static_cast<std::ptrdiff_t>(p + n));
    p += n;
    return out;
  };
  h.version_and_random = take(34);
  h.session_id = take(handshake.at(p++));
  const std::size_t suites = get16(handshake, p);
  p += 2;
  h.suites = take(suites);
  h.compression = take(handshake.at(p++));
  const std::size_t end = p + 2 + get16(handshake, p);
  p += 2;
  while (p < end) {
    Extension e;
    e.type = static_cast<std::uint16_t>(get16(handshake, p));
    const std::size_t len = get16(handshake, p + 2);
    p += 4;
    e.data = take(len);
    h.extensions.push_back(std::move(e));
  }
  return h;
}

Bytes build_hello(const Hello& h) {
  Bytes body = h.version_and_random;
  body.push_back(static_cast<std::uint8_t>(h.session_id.size()));
  body.insert(body.end(), h.session_id.begin(), h.session_id.end());
  put16(body, h.suites.size());
  body.insert(body.end(), h.suites.begin(), h.suites.end());
  body.push_back(static_cast<std::uint8_t>(h.compression.size()));
  body.insert(body.end(), h.compression.begin(), h.compression.end());
  if (h.has_extensions) {
    Bytes exts;
    for (const Extension& e : h.extensions) {
      put16(exts, e.type);
      put16(exts, e.data.size());
      exts.insert(exts.end(), e.data.begin(), e.data.end());
    }
    put16(body, exts.size());
    body.insert(body.end(), exts.begin(), exts.end());
  }
  Bytes out{1};
  put24(out, body.size());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Extension sni_extension(std::string_view name, std::uint8_t name_type = 0) {
  Bytes entry{name_type};
  put16(entry, name.size());
  entry.insert(entry.end(), name.begin(), name.end());
  Extension e{0, {}};
  put16(e.data, entry.size());
  e.data.insert(e.data.end(), entry.begin(), entry.end());
  return e;
}

// An outer ECHClientHello as Chrome sends it, real or GREASE: HPKE suite
// (X25519/HKDF-SHA256, HKDF-SHA256/AES-128-GCM), a config ID, a 32-byte enc, a payload.
Extension ech_outer_extension(std::size_t payload_len) {
  Extension e{0xfe0d, {0, 0x00, 0x01, 0x00, 0x01, 0x2a}};
  put16(e.data, 32);
  e.data.insert(e.data.end(), 32, 0x5c);
  put16(e.data, payload_len);
  e.data.insert(e.data.end(), payload_len, 0xa7);
  return e;
}

// A captured hello with its server_name replaced (or removed, for an empty list).
Bytes with_sni(const Bytes& records, const std::vector<Extension>& sni) {
  Hello h = split_hello(handshake_of(records));
  std::vector<Extension> out = sni;
  for (Extension& e : h.extensions) {
    if (e.type != 0) out.push_back(std::move(e));
  }
  h.extensions = std::move(out);
  return records_of(build_hello(h), 16384);
}

Bytes with_extension(const Bytes& records, Extension extra) {
  Hello h = split_hello(handshake_of(records));
  h.extensions.push_back(std::move(extra));
  return records_of(build_hello(h), 16384);
}

struct Captured {
  const char* what;
  std::string_view hex;
  Outcome outcome;
  std::string_view name;
};

const Captured kCaptured[] = {
    {"openssl s_client", kOpensslSni, Outcome::kName, kExampleName},
    {"curl", kCurlSni, Outcome::kName, kExampleName},
    {"openssl -noservername", kOpensslNoSni, Outcome::kNoName, ""},
    {"openssl -tls1_2", kOpensslTls12, Outcome::kName, kExampleName},
    {"openssl -max_send_frag 512", kOpensslFrag512, Outcome::kName, kExampleName},
};

TEST(SniffTls, CapturedHellosGiveTheirName) {
  for (const Captured& c : kCaptured) {
    SCOPED_TRACE(c.what);
    const Result r = sniff_tls(from_hex(c.hex));
    EXPECT_EQ(r.outcome, c.outcome) << to_string(r.outcome);
    EXPECT_EQ(r.source, Source::kSni);
    EXPECT_EQ(r.name, c.name);
  }
}

TEST(SniffTls, FragmentedCaptureReallySpansRecords) {
  // The point of the capture: OpenSSL's -max_send_frag does split the ClientHello.
  const Bytes records = from_hex(kOpensslFrag512);
  EXPECT_EQ(get16(records, 3), 512u);
  EXPECT_EQ(records.at(5 + 512), 22);
  EXPECT_EQ(get16(records, 5 + 512 + 3), 512u);
  EXPECT_GT(handshake_of(records).size(), 1024u);
}

TEST(SniffTls, EveryPrefixNeedsMore) {
  for (const Captured& c : kCaptured) {
    SCOPED_TRACE(c.what);
    const Bytes all = from_hex(c.hex);
    for (std::size_t n = 1; n < all.size(); ++n) {
      const Result r = sniff_tls(std::span(all).first(n));
      ASSERT_EQ(r.outcome, Outcome::kNeedMore) << "prefix " << n << ": " << to_string(r.outcome);
      ASSERT_TRUE(r.name.empty());
    }
    EXPECT_EQ(sniff_tls({}).outcome, Outcome::kNeedMore);
  }
}

TEST(SniffTls, SourceIsSniOnceTheRecordHeaderLooksLikeTls) {
  const Bytes all = from_hex(kOpensslSni);
  EXPECT_EQ(sniff_tls(std::span(all).first(2)).source, Source::kNone);
  EXPECT_EQ(sniff_tls(std::span(all).first(3)).source, Source::kSni);
  EXPECT_EQ(sniff_tls(std::span(all).first(100)).source, Source::kSni);
}

TEST(SniffTls, RefragmentedRecordsGiveTheSameName) {
  for (const Captured& c : kCaptured) {
    SCOPED_TRACE(c.what);
    const Bytes handshake = handshake_of(from_hex(c.hex));
    for (const std::size_t frag : {1u, 7u, 100u, 512u}) {
      SCOPED_TRACE(frag);
      const Bytes records = records_of(handshake, frag, 0x0303);
      const Result r = sniff_tls(records);
      EXPECT_EQ(r.outcome, c.outcome) << to_string(r.outcome);
      EXPECT_EQ(r.name, c.name);
      if (frag == 7) {
        for (std::size_t n = 1; n < records.size(); ++n) {
          ASSERT_EQ(sniff_tls(std::span(records).first(n)).outcome, Outcome::kNeedMore) << n;
        }
      }
    }
  }
}

TEST(SniffTls, ParseClientHelloAgreesWithSniffTls) {
  for (const Captured& c : kCaptured) {
    SCOPED_TRACE(c.what);
    const Bytes records = from_hex(c.hex);
    const Bytes handshake = handshake_of(records);
    const Result a = sniff_tls(records);
    const Result b = parse_client_hello(handshake);
    EXPECT_EQ(b.outcome, a.outcome);
    EXPECT_EQ(b.name, a.name);
    EXPECT_EQ(b.source, a.source);
    for (std::size_t n = 0; n < handshake.size(); ++n) {
      ASSERT_EQ(parse_client_hello(std::span(handshake).first(n)).outcome, Outcome::kNeedMore) << n;
    }
  }
}

TEST(SniffTls, SniIsNormalized) {
  const Bytes records = with_sni(from_hex(kOpensslSni), {sni_extension("WWW.Example.COM.")});
  const Result r = sniff_tls(records);
  EXPECT_EQ(r.outcome, Outcome::kName);
  EXPECT_EQ(r.name, "www.example.com");
}

TEST(SniffTls, FirstHostNameEntryIsUsed) {
  // A list of an unknown name type, then two host names: the first host name wins.
  Bytes list;
  for (const auto& [type, name] : {std::pair<std::uint8_t, std::string_view>{7, "other.test"},
                                   {0, "first.test"},
                                   {0, "second.test"}}) {
    list.push_back(type);
    put16(list, name.size());
    list.insert(list.end(), name.begin(), name.end());
  }
  Extension e{0, {}};
  put16(e.data, list.size());
  e.data.insert(e.data.end(), list.begin(), list.end());
  const Result r = sniff_tls(with_sni(from_hex(kOpensslSni), {e}));
  EXPECT_EQ(r.outcome, Outcome::kName);
  EXPECT_EQ(r.name, "first.test");
  // Only a name of another type: no name.
  EXPECT_EQ(sniff_tls(with_sni(from_hex(kOpensslSni), {sni_extension("x.test", 7)})).outcome,
            Outcome::kNoName);
}

TEST(SniffTls, IpLiteralSniNamesNothing) {
  for (const std::string_view ip : {"192.0.2.7", "192.0.2.7.", "2001:db8::1", "::ffff:192.0.2.7"}) {
    SCOPED_TRACE(ip);
    const Result r = sniff_tls(with_sni(from_hex(kCurlSni), {sni_extension(ip)}));
    EXPECT_EQ(r.outcome, Outcome::kNoName) << to_string(r.outcome);
    EXPECT_EQ(r.source, Source::kSni);
    EXPECT_TRUE(r.name.empty());
  }
}

TEST(SniffTls, InvalidSniIsMalformed) {
  const std::string nul("www.example.com\0evil.test", 25);
  const std::string too_long = std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                               std::string(63, 'c') + "." + std::string(63, 'd');  // 255
  const std::string_view names[] = {nul, "www example.com", "a..b",
                                    ".", too_long, "caf\xc3\xa9.test"};
  for (const std::string_view bad : names) {
    SCOPED_TRACE(std::string(bad));
    EXPECT_EQ(sniff_tls(with_sni(from_hex(kOpensslSni), {sni_extension(bad)})).outcome,
              Outcome::kMalformed);
  }
  // An empty HostName or an empty list breaks the vector bounds.
  EXPECT_EQ(sniff_tls(with_sni(from_hex(kOpensslSni), {sni_extension("")})).outcome,
            Outcome::kMalformed);
  EXPECT_EQ(sniff_tls(with_sni(from_hex(kOpensslSni), {Extension{0, {0, 0}}})).outcome,
            Outcome::kMalformed);
  EXPECT_EQ(sniff_tls(with_sni(from_hex(kOpensslSni), {Extension{0, {}}})).outcome,
            Outcome::kMalformed);
}

// The offsets (in the handshake message) and widths of every length field of a hello.
std::vector<std::pair<std::size_t, std::size_t>> length_fields(const Bytes& hs) {
  std::vector<std::pair<std::size_t, std::size_t>> out{{1, 3}};
  std::size_t p = 4 + 34;
  out.emplace_back(p, 1);
  p += 1 + hs.at(p);
  out.emplace_back(p, 2);
  p += 2 + get16(hs, p);
  out.emplace_back(p, 1);
  p += 1 + hs.at(p);
  out.emplace_back(p, 2);
  const std::size_t end = p + 2 + get16(hs, p);
  p += 2;
  while (p < end) {
    out.emplace_back(p + 2, 2);
    if (get16(hs, p) == 0) {
      out.emplace_back(p + 4, 2);  // ServerNameList
      out.emplace_back(p + 7, 2);  // the first HostName
    }
    p += 4 + get16(hs, p + 2);
  }
  return out;
}

Bytes add_to_field(Bytes b, std::size_t at, std::size_t width, int delta) {
  std::size_t v = 0;
  for (std::size_t i = 0; i < width; ++i) v = v << 8 | b.at(at + i);
  v = static_cast<std::size_t>(static_cast<long long>(v) + delta);
  for (std::size_t i = width; i-- > 0; v >>= 8) b.at(at + i) = static_cast<std::uint8_t>(v);
  return b;
}

TEST(SniffTls, EveryLengthOffByOneIsCaught) {
  for (const Captured& c : kCaptured) {
    SCOPED_TRACE(c.what);
    const Bytes handshake = handshake_of(from_hex(c.hex));
    const auto fields = length_fields(handshake);
    ASSERT_GE(fields.size(), 10u);
    for (const auto& [at, width] : fields) {
      for (const int delta : {-1, 1}) {
        SCOPED_TRACE(testing::Message() << "offset " << at << " delta " << delta);
        const Bytes bad = add_to_field(handshake, at, width, delta);
        for (const Result& r : {parse_client_hello(bad), sniff_tls(records_of(bad, 16384)),
                                sniff_tls(records_of(bad, 100))}) {
          EXPECT_TRUE(r.outcome == Outcome::kMalformed || r.outcome == Outcome::kNeedMore)
              << to_string(r.outcome) << " " << r.name;
        }
      }
    }
    // The record layer's own length: one more is a record that holds more than the hello,
    // one less ends it early (the next "header" is the hello's last byte).
    const Bytes records = records_of(handshake, 16384);
    for (const int delta : {-1, 1}) {
      const Result r = sniff_tls(add_to_field(records, 3, 2, delta));
      EXPECT_TRUE(r.outcome == Outcome::kMalformed || r.outcome == Outcome::kNeedMore)
          << delta << ": " << to_string(r.outcome);
    }
  }
}

TEST(SniffTls, DuplicateExtensionIsMalformed) {
  const Bytes records = from_hex(kCurlSni);
  const Hello h = split_hello(handshake_of(records));
  for (const Extension& e : h.extensions) {
    SCOPED_TRACE(e.type);
    EXPECT_EQ(sniff_tls(with_extension(records, e)).outcome, Outcome::kMalformed);
  }
  const Bytes two = with_sni(records, {sni_extension("a.test"), sni_extension("b.test")});
  EXPECT_EQ(sniff_tls(two).outcome, Outcome::kMalformed);
}

TEST(SniffTls, SizeBound) {
  Hello h = split_hello(handshake_of(from_hex(kOpensslSni)));
  const std::size_t base = build_hello(h).size();
  // A padding extension (RFC 7685) that brings the hello to exactly kMaxClientHello: read.
  h.extensions.push_back(Extension{21, Bytes(kMaxClientHello - base - 4, 0)});
  ASSERT_EQ(build_hello(h).size(), kMaxClientHello);
  for (const std::size_t frag : {16384u, 512u}) {
    const Result r = sniff_tls(records_of(build_hello(h), frag));
    EXPECT_EQ(r.outcome, Outcome::kName) << frag;
    EXPECT_EQ(r.name, kExampleName);
  }
  // One byte more: given up on, with only the first record there.
  h.extensions.back().data.push_back(0);
  const Bytes big = build_hello(h);
  EXPECT_EQ(parse_client_hello(big).outcome, Outcome::kMalformed);
  EXPECT_EQ(parse_client_hello(std::span(big).first(4)).outcome, Outcome::kMalformed);
  for (const std::size_t frag : {16384u, 512u, 1u}) {
    const Bytes records = records_of(big, frag);
    EXPECT_EQ(sniff_tls(records).outcome, Outcome::kMalformed) << frag;
    const std::size_t head = std::min<std::size_t>(records.size(), 600);
    EXPECT_EQ(sniff_tls(std::span(records).first(head)).outcome, Outcome::kMalformed) << frag;
  }
}

TEST(SniffTls, RecordLengthBounds) {
  const Bytes zero = {22, 3, 1, 0, 0};
  EXPECT_EQ(sniff_tls(zero).outcome, Outcome::kMalformed);
  const Bytes huge = {22, 3, 1, 0x41, 0x01, 1};  // 16641: one over 2^14 + 256
  EXPECT_EQ(sniff_tls(huge).outcome, Outcome::kMalformed);
  EXPECT_EQ(sniff_tls(huge).source, Source::kSni);
}

TEST(SniffTls, NotTlsIsLetGo) {
  const std::vector<Bytes> others = {
      bytes_of("GET / HTTP/1.1\r\n"),
      bytes_of("SSH-2.0-OpenSSH_9.2\r\n"),
      {0x16, 0x02},                    // not major version 3
      {0x16, 0x03, 0x05},              // no such TLS
      {0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28},  // an alert first
      {0x17, 0x03, 0x03, 0x00, 0x01, 0x00},        // application data first
      {0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00},  // a ServerHello
      {0x16, 0x03, 0x01, 0x00, 0x01, 0x0b},                    // a Certificate
  };
  for (const Bytes& b : others) {
    const Result r = sniff_tls(b);
    EXPECT_EQ(r.outcome, Outcome::kNotThis) << testing::PrintToString(b);
    EXPECT_EQ(r.source, Source::kNone);
  }
  EXPECT_EQ(parse_client_hello(Bytes{2, 0, 0, 0}).outcome, Outcome::kNotThis);
  // A first record of version {03,00} may carry a TLS hello (RFC 5246 E.1): it is read.
  const Result r = sniff_tls(records_of(handshake_of(from_hex(kOpensslSni)), 16384, 0x0300));
  EXPECT_EQ(r.outcome, Outcome::kName);
  EXPECT_EQ(r.name, "www.example.com");
  // The message type is checked even when it comes alone in a record of one byte.
  EXPECT_EQ(sniff_tls(Bytes{0x16, 0x03, 0x01, 0x00, 0x01, 0x02}).outcome, Outcome::kNotThis);
}

TEST(SniffTls, OtherRecordsBeforeTheHelloEndsAreMalformed) {
  const Bytes handshake = handshake_of(from_hex(kOpensslSni));
  const Bytes first = records_of(Bytes(handshake.begin(), handshake.begin() + 100), 100);
  const Bytes rest = records_of(Bytes(handshake.begin() + 100, handshake.end()), 16384);
  for (const Bytes& middle : {Bytes{21, 3, 3, 0, 2, 2, 40}, Bytes{23, 3, 3, 0, 1, 0},
                              Bytes{20, 3, 3, 0, 1, 1}, Bytes{22, 3, 5, 0, 1, 0}}) {
    Bytes stream = first;
    stream.insert(stream.end(), middle.begin(), middle.end());
    stream.insert(stream.end(), rest.begin(), rest.end());
    EXPECT_EQ(sniff_tls(stream).outcome, Outcome::kMalformed);
    // Decided on the bad header's first bytes.
    EXPECT_EQ(sniff_tls(std::span(stream).first(first.size() + 3)).outcome, Outcome::kMalformed);
  }
}

TEST(SniffTls, RecordsAfterTheHelloAreNotRead) {
  // TLS 1.3 middlebox compatibility: change_cipher_spec and early data follow the hello.
  Bytes stream = from_hex(kOpensslSni);
  for (const std::uint8_t b : {20, 3, 3, 0, 1, 1, 23, 3, 3, 0, 3, 1, 2, 3}) stream.push_back(b);
  const Result r = sniff_tls(stream);
  EXPECT_EQ(r.outcome, Outcome::kName);
  EXPECT_EQ(r.name, kExampleName);
}

TEST(SniffTls, HandshakeBytesAfterTheHelloAreMalformed) {
  Bytes handshake = handshake_of(from_hex(kOpensslSni));
  handshake.insert(handshake.end(), {20, 0, 0, 0});  // a Finished after the hello
  const Bytes one = records_of(handshake, 16384);
  EXPECT_EQ(sniff_tls(one).outcome, Outcome::kMalformed);
  // ... decided from the record header, before the extra bytes are there.
  EXPECT_EQ(sniff_tls(std::span(one).first(one.size() - 4)).outcome, Outcome::kMalformed);
  EXPECT_EQ(sniff_tls(records_of(handshake, handshake.size() - 2)).outcome, Outcome::kMalformed);
}

TEST(SniffTls, HelloWithoutExtensionsNamesNothing) {
  Hello h = split_hello(handshake_of(from_hex(kOpensslTls12)));
  h.has_extensions = false;
  EXPECT_EQ(sniff_tls(records_of(build_hello(h), 16384)).outcome, Outcome::kNoName);
  h.has_extensions = true;
  h.extensions.clear();
  EXPECT_EQ(sniff_tls(records_of(build_hello(h), 16384)).outcome, Outcome::kNoName);
}

TEST(SniffTls, BrokenFixedFieldsAreMalformed) {
  const Hello good = split_hello(handshake_of(from_hex(kOpensslSni)));
  Hello h = good;
  h.session_id.assign(33, 1);  // over 32
  EXPECT_EQ(parse_client_hello(build_hello(h)).outcome, Outcome::kMalformed);
  h = good;
  h.suites.pop_back();  // odd
  EXPECT_EQ(parse_client_hello(build_hello(h)).outcome, Outcome::kMalformed);
  h = good;
  h.suites.clear();
  EXPECT_EQ(parse_client_hello(build_hello(h)).outcome, Outcome::kMalformed);
  h = good;
  h.compression.clear();
  EXPECT_EQ(parse_client_hello(build_hello(h)).outcome, Outcome::kMalformed);
  h = good;
  h.version_and_random[0] = 0x7f;
  EXPECT_EQ(parse_client_hello(build_hello(h)).outcome, Outcome::kMalformed);
  // A truncated extension header inside a well-sized extensions block.
  Bytes hs = build_hello(good);
  const std::size_t ext_len_at = length_fields(hs).at(4).first;
  hs.push_back(0);
  hs = add_to_field(hs, 1, 3, 1);
  hs = add_to_field(hs, ext_len_at, 2, 1);
  EXPECT_EQ(parse_client_hello(hs).outcome, Outcome::kMalformed);
}

TEST(SniffTls, EchGivesTheOuterName) {
  const Bytes records = with_extension(from_hex(kOpensslSni), ech_outer_extension(200));
  const Result r = sniff_tls(records);
  EXPECT_EQ(r.outcome, Outcome::kEch);
  EXPECT_EQ(r.source, Source::kSni);
  EXPECT_EQ(r.name, kExampleName);
  for (std::size_t n = 1; n < records.size(); ++n) {
    ASSERT_EQ(sniff_tls(std::span(records).first(n)).outcome, Outcome::kNeedMore) << n;
  }
  EXPECT_EQ(parse_client_hello(handshake_of(records)).outcome, Outcome::kEch);

  // Without an outer SNI, or with an IP one: ECH with no name.
  const Bytes bare = with_extension(from_hex(kOpensslNoSni), ech_outer_extension(32));
  EXPECT_EQ(sniff_tls(bare).outcome, Outcome::kEch);
  EXPECT_EQ(sniff_tls(bare).name, "");
  const Bytes ip = with_extension(with_sni(from_hex(kOpensslSni), {sni_extension("192.0.2.1")}),
                                  ech_outer_extension(32));
  EXPECT_EQ(sniff_tls(ip).outcome, Outcome::kEch);
  EXPECT_EQ(sniff_tls(ip).name, "");
  // A broken outer SNI stays malformed.
  const Bytes bad = with_extension(with_sni(from_hex(kOpensslSni), {sni_extension("a b")}),
                                   ech_outer_extension(32));
  EXPECT_EQ(sniff_tls(bad).outcome, Outcome::kMalformed);
}

TEST(SniffTls, InnerEchMarkerIsEchToo) {
  const Result r = sniff_tls(with_extension(from_hex(kCurlSni), Extension{0xfe0d, {1}}));
  EXPECT_EQ(r.outcome, Outcome::kEch);
  EXPECT_EQ(r.name, kExampleName);
}

TEST(SniffTls, BrokenEchExtensionIsMalformed) {
  const Bytes base = from_hex(kOpensslSni);
  Extension truncated = ech_outer_extension(16);
  truncated.data.pop_back();
  for (const Extension& e : {Extension{0xfe0d, {}}, Extension{0xfe0d, {1, 0}}, truncated,
                             ech_outer_extension(0)}) {
    EXPECT_EQ(sniff_tls(with_extension(base, e)).outcome, Outcome::kMalformed);
  }
}

TEST(SniffTls, GreaseIsIgnoredButGreaseEchIsEch) {
  // Chrome's GREASE (RFC 8701): a reserved cipher suite first, a reserved empty extension
  // first and a reserved one-byte extension last. They change nothing.
  Hello h = split_hello(handshake_of(from_hex(kCurlSni)));
  h.suites.insert(h.suites.begin(), {0x3a, 0x3a});
  h.extensions.insert(h.extensions.begin(), Extension{0x1a1a, {}});
  h.extensions.push_back(Extension{0xdada, {0}});
  const Result r = sniff_tls(records_of(build_hello(h), 512));
  EXPECT_EQ(r.outcome, Outcome::kName);
  EXPECT_EQ(r.name, kExampleName);
  // Chrome without an ECH config sends a GREASE ECH extension: random bytes of the real
  // one's shape. Nothing on the wire tells it apart, so it counts as ECH (documented).
  h.extensions.insert(h.extensions.end() - 1, ech_outer_extension(144));
  const Result g = sniff_tls(records_of(build_hello(h), 512));
  EXPECT_EQ(g.outcome, Outcome::kEch);
  EXPECT_EQ(g.name, kExampleName);
}

TEST(SniffStream, DispatchesTlsOnItsFirstByte) {
  const Bytes records = from_hex(kOpensslFrag512);
  const Result r = sniff_stream(records);
  EXPECT_EQ(r.outcome, Outcome::kName);
  EXPECT_EQ(r.source, Source::kSni);
  EXPECT_EQ(r.name, kExampleName);
  EXPECT_EQ(sniff_stream(std::span(records).first(1)).outcome, Outcome::kNeedMore);
  EXPECT_EQ(sniff_stream({}).outcome, Outcome::kNeedMore);
  EXPECT_EQ(sniff_stream(from_hex(kOpensslNoSni)).outcome, Outcome::kNoName);
  // 0x16 is not a byte an HTTP method starts with, so a broken TLS header is not HTTP either.
  EXPECT_EQ(sniff_stream(Bytes{0x16, 0x02}).outcome, Outcome::kNotThis);
}

}  // namespace
}  // namespace splitd::sniff
