#include "sniff/quic.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "sniff/sniff.hpp"
#include "sniff/tls.hpp"
#include "tests/sniff/quic_packets.hpp"

namespace splitd::sniff {
namespace {

using quic_packets::Bytes;
using quic_packets::cat;
using quic_packets::crypto_frame;
using quic_packets::initial_datagram;
using quic_packets::kClientHello;
using quic_packets::kDcid;
using quic_packets::Packet;
using quic_packets::protect;
using quic_packets::put_varint;
using quic_packets::Type;

// The name in the ClientHello of quic_packets.hpp.
constexpr std::string_view kName = quic_packets::kClientHelloName;

// RFC 9001 Appendix A.2: the client's protected Initial (1200 bytes, DCID 8394c8f03e515708,
// packet number 2 in 4 bytes) ...
constexpr std::string_view kRfc9001ClientInitial =
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934";
// ... RFC 9369 Appendix A.2: the same packet protected for QUIC v2 ...
constexpr std::string_view kRfc9369ClientInitial =
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc";
// ... and the ClientHello both carry in one CRYPTO frame at offset 0 (SNI example.com).
constexpr std::string_view kRfcClientHello =
    "010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e86804fe3a47"
    "f06a2b69484c00000413011302010000c000000010000e00000b6578616d706c"
    "652e636f6dff01000100000a00080006001d0017001800100007000504616c70"
    "6e000500050100000000003300260024001d00209370b2c9caa47fbabaf4559f"
    "edba753de171fa71f50f1ce15d43e994ec74d748002b0003020304000d001000"
    "0e0403050306030203080408050806002d00020101001c000240010039003204"
    "08ffffffffffffffff05048000ffff07048000ffff0801100104800075300901"
    "100f088394c8f03e51570806048000ffff";

Bytes from_hex(std::string_view hex) {
  Bytes out;
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
  }
  return out;
}

std::string to_hex(std::span<const std::uint8_t> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (std::uint8_t b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0x0f];
  }
  return out;
}

Bytes hello() { return Bytes(std::begin(kClientHello), std::end(kClientHello)); }
Bytes hello(std::size_t begin, std::size_t end) {
  return Bytes(kClientHello + begin, kClientHello + end);
}

const Bytes kOtherDcid = {0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};


const Bytes kPing = {0x01};
const Bytes kPadding3 = {0x00, 0x00, 0x00};
// CONNECTION_CLOSE: error PROTOCOL_VIOLATION, frame type 0, reason "x".
const Bytes kConnectionClose = {0x1c, 0x0a, 0x00, 0x01, 'x'};


bool prefix_is(const QuicSniffer& s, const Bytes& expected) {
  const auto prefix = s.crypto_prefix();
  return std::equal(prefix.begin(), prefix.end(), expected.begin(), expected.end());
}

void expect_name(const Result& r, std::string_view name = kName) {
  EXPECT_EQ(r.outcome, Outcome::kName) << to_string(r.outcome);
  EXPECT_EQ(r.name, name);
  EXPECT_EQ(r.source, Source::kQuic);
}

void expect_need_more(const Result& r) {
  EXPECT_EQ(r.outcome, Outcome::kNeedMore) << to_string(r.outcome);
  EXPECT_EQ(r.source, Source::kQuic);
}

void expect_outcome(const Result& r, Outcome o) {
  EXPECT_EQ(r.outcome, o) << "got " << static_cast<int>(r.outcome) << ", want "
                          << static_cast<int>(o);
}

// ---- keys -------------------------------------------------------------------------------

TEST(QuicKeys, Rfc9001AppendixA1) {
  QuicInitialKeys k;
  ASSERT_TRUE(derive_client_initial_keys(kQuicV1, kDcid, k));
  EXPECT_EQ(to_hex(k.key), "1f369613dd76d5467730efcbe3b1a22d");
  EXPECT_EQ(to_hex(k.iv), "fa044b2f42a3fd3b46fb255c");
  EXPECT_EQ(to_hex(k.hp), "9f50449e04a0e810283a1e9933adedd2");
}

TEST(QuicKeys, Rfc9369AppendixA1) {
  QuicInitialKeys k;
  ASSERT_TRUE(derive_client_initial_keys(kQuicV2, kDcid, k));
  EXPECT_EQ(to_hex(k.key), "8b1a0bc121284290a29e0971b5cd045d");
  EXPECT_EQ(to_hex(k.iv), "91f73e2351d8fa91660e909f");
  EXPECT_EQ(to_hex(k.hp), "45b95e15235d6f45a6b19cbcb0294ba9");
}

TEST(QuicKeys, UnknownVersionAndEmptyConnectionId) {
  QuicInitialKeys k;
  EXPECT_FALSE(derive_client_initial_keys(0xff00001d, kDcid, k));  // draft-29
  EXPECT_FALSE(derive_client_initial_keys(0, kDcid, k));
  // After a Retry the DCID is the server's choice and may be empty: still derivable, and
  // different from the keys of a non-empty one.
  QuicInitialKeys empty;
  ASSERT_TRUE(derive_client_initial_keys(kQuicV1, {}, empty));
  ASSERT_TRUE(derive_client_initial_keys(kQuicV1, kDcid, k));
  EXPECT_NE(to_hex(empty.key), to_hex(k.key));
}

// ---- the published packets ----------------------------------------------------------------

TEST(QuicSniffer, Rfc9001AppendixA2Packet) {
  QuicSniffer s;
  const Bytes packet = from_hex(kRfc9001ClientInitial);
  ASSERT_EQ(packet.size(), 1200u);
  const Result r = s.feed(packet);
  EXPECT_EQ(to_hex(s.crypto_prefix()), kRfcClientHello);
  expect_name(r, "example.com");
}

TEST(QuicSniffer, Rfc9369AppendixA2Packet) {
  QuicSniffer s;
  const Bytes packet = from_hex(kRfc9369ClientInitial);
  ASSERT_EQ(packet.size(), 1200u);
  const Result r = s.feed(packet);
  EXPECT_EQ(to_hex(s.crypto_prefix()), kRfcClientHello);
  expect_name(r, "example.com");
}

// ---- reassembly ---------------------------------------------------------------------------

TEST(QuicSniffer, WholeClientHelloInOneDatagram) {
  QuicSniffer s;
  const Bytes d = initial_datagram(crypto_frame(0, hello()));
  ASSERT_EQ(d.size(), 1200u);
  expect_name(s.feed(d));
  EXPECT_TRUE(prefix_is(s, hello()));
  // A final result repeats, whatever comes next.
  expect_name(s.feed(d));
  expect_name(s.feed(Bytes(1200, 0)));
}

TEST(QuicSniffer, ClientHelloOverTwoDatagrams) {
  QuicSniffer s;
  expect_need_more(s.feed(initial_datagram(crypto_frame(0, hello(0, 150)), 0)));
  EXPECT_TRUE(prefix_is(s, hello(0, 150)));
  expect_name(s.feed(initial_datagram(crypto_frame(150, hello(150, sizeof kClientHello)), 1)));
  EXPECT_TRUE(prefix_is(s, hello()));
}

TEST(QuicSniffer, TwoDatagramsInReverseOrder) {
  QuicSniffer s;
  // The second datagram arrives first: CRYPTO at offset 150 only, nothing contiguous yet.
  expect_need_more(s.feed(initial_datagram(crypto_frame(150, hello(150, sizeof kClientHello)), 1)));
  EXPECT_TRUE(s.crypto_prefix().empty());
  expect_name(s.feed(initial_datagram(crypto_frame(0, hello(0, 150)), 0)));
  EXPECT_TRUE(prefix_is(s, hello()));
}

// Chrome's "chaos protection": the ClientHello cut into pieces, shuffled, with PING and
// PADDING between, spread over two packets; here some pieces are also sent twice.
TEST(QuicSniffer, ShuffledSplitDuplicatedCryptoFrames) {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    std::mt19937 rng(seed);
    std::vector<Bytes> frames;
    for (std::size_t at = 0; at < sizeof kClientHello;) {
      const std::size_t n = std::min<std::size_t>(1 + rng() % 40, sizeof kClientHello - at);
      frames.push_back(crypto_frame(at, hello(at, at + n)));
      if (rng() % 3 == 0) frames.push_back(frames.back());  // a duplicate
      at += n;
    }
    std::shuffle(frames.begin(), frames.end(), rng);
    Bytes first;
    Bytes second;
    for (std::size_t i = 0; i < frames.size(); ++i) {
      Bytes& into = i % 2 == 0 ? first : second;
      into.insert(into.end(), frames[i].begin(), frames[i].end());
      const Bytes& filler = rng() % 2 == 0 ? kPing : kPadding3;
      into.insert(into.end(), filler.begin(), filler.end());
    }
    QuicSniffer s;
    const Result r1 = s.feed(initial_datagram(first, 0));
    expect_need_more(r1);
    expect_name(s.feed(initial_datagram(second, 1)));
    EXPECT_TRUE(prefix_is(s, hello())) << "seed " << seed;
  }
}

TEST(QuicSniffer, OverlapKeepsTheFirstCopy) {
  QuicSniffer s;
  Bytes garbled = hello(50, 200);
  std::fill(garbled.begin(), garbled.begin() + 50, 0xee);  // differs on [50, 100)
  const Bytes frames = cat({crypto_frame(0, hello(0, 100)), crypto_frame(50, garbled), kPing});
  expect_need_more(s.feed(initial_datagram(frames, 0)));
  EXPECT_TRUE(prefix_is(s, hello(0, 200)));
  expect_name(s.feed(initial_datagram(crypto_frame(200, hello(200, sizeof kClientHello)), 1)));
}

TEST(QuicSniffer, CoalescedInitialsAreReadAndOtherTypesSkipped) {
  Packet a;
  a.pn = 0;
  a.frames = crypto_frame(0, hello(0, 100));
  Packet b;
  b.pn = 1;
  b.pn_length = 2;
  b.frames = cat({kPing, crypto_frame(100, hello(100, sizeof kClientHello))});
  b.pad_to = 1000;
  // 0-RTT and Handshake packets hold a CONNECTION_CLOSE: it would be kMalformed if read.
  Packet zero_rtt;
  zero_rtt.type = Type::kZeroRtt;
  zero_rtt.frames = kConnectionClose;
  Packet handshake;
  handshake.type = Type::kHandshake;
  handshake.pn = 0;
  handshake.frames = kConnectionClose;
  handshake.pad_to = 120;
  const Bytes d = cat({protect(a), protect(b), protect(zero_rtt), protect(handshake)});
  ASSERT_GE(d.size(), 1200u);
  QuicSniffer s;
  expect_name(s.feed(d));
  EXPECT_TRUE(prefix_is(s, hello()));
}

TEST(QuicSniffer, ShortHeaderEndsTheDatagram) {
  Packet a;
  a.frames = crypto_frame(0, hello(0, 100));
  Bytes d = protect(a);
  // A 1-RTT packet after it: everything from here on is unreadable and ignored.
  d.push_back(0x40);
  d.insert(d.end(), kDcid.begin(), kDcid.end());
  d.resize(1200, 0x1c);
  QuicSniffer s;
  expect_need_more(s.feed(d));
  EXPECT_TRUE(prefix_is(s, hello(0, 100)));
}

TEST(QuicSniffer, QuicV2) {
  QuicSniffer s;
  expect_need_more(s.feed(initial_datagram(crypto_frame(0, hello(0, 200)), 0, kQuicV2)));
  expect_name(
      s.feed(initial_datagram(crypto_frame(200, hello(200, sizeof kClientHello)), 1, kQuicV2)));
  EXPECT_TRUE(prefix_is(s, hello()));
}

TEST(QuicSniffer, QuicV2PacketTypesAreItsOwn) {
  // v2 type bits 00 are a Retry, 10 a 0-RTT: neither is a client's first packet.
  for (Type t : {Type::kRetry, Type::kZeroRtt, Type::kHandshake}) {
    Packet p;
    p.version = kQuicV2;
    p.type = t;
    p.frames = crypto_frame(0, hello());
    p.pad_to = 1200;
    QuicSniffer s;
    expect_outcome(s.feed(protect(p)), Outcome::kNotThis);
  }
  // And v2's Initial numbering (01) in a v1 packet is a 0-RTT there.
  Packet p;
  p.frames = crypto_frame(0, hello());
  p.pad_to = 1200;
  Bytes d = protect(p);
  d[0] |= 0x10;
  QuicSniffer s;
  expect_outcome(s.feed(d), Outcome::kNotThis);
}

TEST(QuicSniffer, PacketNumberLengthsTokenAndLargePackets) {
  for (std::size_t pn_length = 1; pn_length <= 4; ++pn_length) {
    const std::uint64_t pn = std::uint64_t{0xa5} << (8 * (pn_length - 1));
    Packet p;
    p.pn = pn;
    p.pn_length = pn_length;
    p.token.assign(40, 0x7a);  // a NEW_TOKEN token from an earlier connection
    p.frames = crypto_frame(0, hello());
    p.pad_to = 1200;
    QuicSniffer s;
    expect_name(s.feed(protect(p)));
    EXPECT_TRUE(prefix_is(s, hello())) << pn_length;
  }
  // Bigger than the stack buffer the plaintext normally goes to.
  Packet big;
  big.frames = crypto_frame(0, hello());
  big.pad_to = 3000;
  QuicSniffer s;
  expect_name(s.feed(protect(big)));
}

TEST(QuicSniffer, EmptyConnectionId) {
  Packet p;
  p.dcid = {};
  p.frames = crypto_frame(0, hello());
  p.pad_to = 1200;
  QuicSniffer s;
  expect_name(s.feed(protect(p)));
}

TEST(QuicSniffer, AckFramesAreSkipped) {
  // ACK: largest 5 (as a 2-byte varint), delay 3, packets 5-4, 2 and 0; then ACK_ECN for
  // packets 9-0 with its three counts.
  const Bytes ack = {0x02, 0x40, 0x05, 0x03, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00};
  const Bytes ack_ecn = {0x03, 0x09, 0x00, 0x00, 0x09, 0x01, 0x02, 0x03};
  QuicSniffer s;
  expect_name(s.feed(initial_datagram(cat({ack, ack_ecn, crypto_frame(0, hello())}))));
}

TEST(QuicSniffer, BadAckRangesAreMalformed) {
  const Bytes bad[] = {
      {0x02, 0x05, 0x00, 0x00, 0x06},              // first range below packet 0
      {0x02, 0x05, 0x00, 0x01, 0x04, 0x00, 0x00},  // gap below packet 0
      {0x02, 0x09, 0x00, 0x01, 0x00, 0x00, 0x09},  // second range below packet 0
      // A huge count, and the packet ends before its ranges do.
      {0x02, 0x80, 0xff, 0xff, 0xff, 0x00, 0x8f, 0xff, 0xff, 0xff, 0x00},
  };
  for (const Bytes& frame : bad) {
    QuicSniffer s;
    expect_outcome(s.feed(initial_datagram(cat({crypto_frame(0, hello(0, 10)), frame}))),
                   Outcome::kMalformed);
  }
}

// ---- what is not this connection's Initial is ignored ------------------------------------

TEST(QuicSniffer, FlippedCiphertextBitIsIgnored) {
  QuicSniffer s;
  expect_need_more(s.feed(initial_datagram(crypto_frame(0, hello(0, 150)), 0)));
  Bytes second = initial_datagram(crypto_frame(150, hello(150, sizeof kClientHello)), 1);
  Bytes flipped = second;
  flipped[600] ^= 0x04;
  expect_need_more(s.feed(flipped));
  EXPECT_TRUE(prefix_is(s, hello(0, 150)));
  expect_name(s.feed(second));
}

TEST(QuicSniffer, FirstInitialFailingAuthenticationIsNotQuic) {
  Bytes d = initial_datagram(crypto_frame(0, hello()));
  d[d.size() - 1] ^= 0x01;  // the tag
  QuicSniffer s;
  expect_outcome(s.feed(d), Outcome::kNotThis);
  EXPECT_EQ(s.feed(initial_datagram(crypto_frame(0, hello()))).outcome, Outcome::kNotThis);
}

TEST(QuicSniffer, AnotherConnectionIdOrVersionIsIgnored) {
  QuicSniffer s;
  expect_need_more(s.feed(initial_datagram(crypto_frame(0, hello(0, 150)), 0)));
  // Valid under their own keys, and fatal if read: a CONNECTION_CLOSE.
  Packet other_dcid;
  other_dcid.dcid = kOtherDcid;
  other_dcid.frames = kConnectionClose;
  other_dcid.pad_to = 1200;
  expect_need_more(s.feed(protect(other_dcid)));
  Packet other_version;
  other_version.version = kQuicV2;
  other_version.frames = kConnectionClose;
  other_version.pad_to = 1200;
  expect_need_more(s.feed(protect(other_version)));
  // Nor does an unknown version, a version negotiation or a short header matter later.
  Bytes junk(1200, 0);
  junk[0] = 0xc0;
  junk[1] = 0xff;
  expect_need_more(s.feed(junk));
  junk[1] = 0;
  expect_need_more(s.feed(junk));
  junk[0] = 0x40;
  expect_need_more(s.feed(junk));
  expect_need_more(s.feed(Bytes{}));
  EXPECT_TRUE(prefix_is(s, hello(0, 150)));
  expect_name(s.feed(initial_datagram(crypto_frame(150, hello(150, sizeof kClientHello)), 1)));
}

TEST(QuicSniffer, AnotherConnectionIdCoalescedIsIgnored) {
  Packet a;
  a.frames = crypto_frame(0, hello(0, 100));
  Packet other;
  other.dcid = kOtherDcid;
  other.frames = kConnectionClose;
  Packet b;
  b.pn = 1;
  b.frames = crypto_frame(100, hello(100, sizeof kClientHello));
  b.pad_to = 1100;
  QuicSniffer s;
  expect_name(s.feed(cat({protect(a), protect(other), protect(b)})));
}

// ---- not QUIC -----------------------------------------------------------------------------

TEST(QuicSniffer, FirstDatagramUnder1200BytesIsNotQuic) {
  Packet p;
  p.frames = crypto_frame(0, hello());
  p.pad_to = 1199;
  const Bytes d = protect(p);
  ASSERT_EQ(d.size(), 1199u);
  QuicSniffer s;
  expect_outcome(s.feed(d), Outcome::kNotThis);
  EXPECT_EQ(s.feed(d).source, Source::kNone);
  QuicSniffer empty;
  expect_outcome(empty.feed({}), Outcome::kNotThis);
}

TEST(QuicSniffer, OtherFirstPacketsAreNotQuic) {
  const Bytes valid = initial_datagram(crypto_frame(0, hello()));
  Bytes short_header(1200, 0x00);
  short_header[0] = 0x41;
  Bytes version_negotiation = valid;
  version_negotiation[0] = 0x80;
  std::fill(version_negotiation.begin() + 1, version_negotiation.begin() + 5, 0x00);
  Bytes unknown_version = valid;
  unknown_version[1] = 0xff;  // ff000001
  Bytes fixed_bit_clear = valid;
  fixed_bit_clear[0] &= 0xbf;
  Bytes handshake_first = valid;
  handshake_first[0] ^= 0x20;  // v1 type 10: Handshake
  Bytes dcid_too_long = valid;
  dcid_too_long[5] = 21;
  for (const Bytes* d : {&short_header, &version_negotiation, &unknown_version, &fixed_bit_clear,
                         &handshake_first, &dcid_too_long}) {
    QuicSniffer s;
    expect_outcome(s.feed(*d), Outcome::kNotThis);
    expect_outcome(s.feed(valid), Outcome::kNotThis);  // final
  }
}

// ---- broken Initial packets ---------------------------------------------------------------

TEST(QuicSniffer, ConnectionCloseAndUnknownFramesAreMalformed) {
  const Bytes frames[] = {
      kConnectionClose,
      {0x1d, 0x00, 0x00},              // application CONNECTION_CLOSE: not in Initial
      {0x07, 0x01, 0xaa},              // NEW_TOKEN
      {0x08, 0x00, 0x01, 0x61},        // STREAM
      {0x40, 0x06, 0x00, 0x01, 0x01},  // CRYPTO with a two-byte type: not minimal
      {0x1e},                          // HANDSHAKE_DONE
  };
  for (const Bytes& f : frames) {
    QuicSniffer s;
    expect_outcome(s.feed(initial_datagram(cat({crypto_frame(0, hello(0, 10)), f}))),
                   Outcome::kMalformed);
    expect_outcome(s.feed(initial_datagram(crypto_frame(0, hello()))), Outcome::kMalformed);
  }
}

TEST(QuicSniffer, CryptoBeyondTheBoundIsMalformed) {
  {
    QuicSniffer s;  // the last byte within the bound: fine
    expect_need_more(s.feed(initial_datagram(crypto_frame(kMaxClientHello - 1, {0x00}))));
  }
  {
    QuicSniffer s;
    expect_outcome(s.feed(initial_datagram(crypto_frame(kMaxClientHello, {0x00}))),
                   Outcome::kMalformed);
  }
  {
    QuicSniffer s;
    expect_outcome(s.feed(initial_datagram(crypto_frame(kMaxClientHello - 10, Bytes(11, 1)))),
                   Outcome::kMalformed);
  }
  {
    QuicSniffer s;  // an offset near 2^62: no overflow
    expect_outcome(s.feed(initial_datagram(crypto_frame((std::uint64_t{1} << 62) - 1, {0x00}))),
                   Outcome::kMalformed);
  }
  {
    QuicSniffer s;  // a length running past the packet (its PADDING included)
    expect_outcome(s.feed(initial_datagram({0x06, 0x00, 0x7f, 0xff, 0x01})), Outcome::kMalformed);
  }
}

TEST(QuicSniffer, ReservedBitsAndEmptyPayloadAreMalformed) {
  {
    Packet p;
    p.reserved = 0x01;
    p.frames = crypto_frame(0, hello());
    p.pad_to = 1200;
    QuicSniffer s;
    expect_outcome(s.feed(protect(p)), Outcome::kMalformed);
  }
  {
    Packet a;
    a.frames = crypto_frame(0, hello(0, 10));
    a.pad_to = 1200;
    Packet empty;  // 4-byte packet number: the tag alone is the sample
    empty.pn = 1;
    empty.pn_length = 4;
    QuicSniffer s;
    expect_outcome(s.feed(cat({protect(a), protect(empty)})), Outcome::kMalformed);
  }
}

// Every cut of a valid packet's frames, sealed as a valid packet: a frame or varint cut
// short is kMalformed; a cut between frames reads on; the name is never a wrong one.
TEST(QuicSniffer, TruncatedFramesAtEveryPosition) {
  Bytes crypto = {0x06, 0x40, 0x00};  // offset 0 as a two-byte varint
  put_varint(crypto, sizeof kClientHello);
  crypto.insert(crypto.end(), std::begin(kClientHello), std::end(kClientHello));
  const Bytes ack = {0x02, 0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x40, 0x01};
  const Bytes ack_ecn = {0x03, 0x05, 0x00, 0x00, 0x00, 0x40, 0x01, 0x02, 0x03};
  const Bytes frames = cat({crypto, kPing, ack, ack_ecn});
  std::vector<std::size_t> boundaries = {crypto.size(), crypto.size() + 1,
                                         crypto.size() + 1 + ack.size(), frames.size()};
  const Bytes first = initial_datagram(kPing, 0);
  for (std::size_t cut = 0; cut <= frames.size(); ++cut) {
    QuicSniffer s;
    ASSERT_EQ(s.feed(first).outcome, Outcome::kNeedMore);
    Packet p;
    p.pn = 1;
    p.pn_length = 4;  // no sample padding: the plaintext is exactly the cut
    p.frames = Bytes(frames.begin(), frames.begin() + static_cast<std::ptrdiff_t>(cut));
    const Result r = s.feed(protect(p));
    if (std::find(boundaries.begin(), boundaries.end(), cut) != boundaries.end()) {
      expect_name(r);
    } else {
      expect_outcome(r, Outcome::kMalformed);
      EXPECT_NE(r.outcome, Outcome::kName) << cut;
    }
    if (r.outcome == Outcome::kName) {
      EXPECT_EQ(r.name, kName) << cut;
    }
  }
}

// Every prefix of a valid datagram, as a later datagram, is ignored (it no longer
// authenticates, or its fields run past the end) unless it is the whole datagram.
TEST(QuicSniffer, TruncatedDatagramAtEveryPosition) {
  Packet p;
  p.pn = 1;
  p.token.assign(70, 0x33);  // a token length needing a two-byte varint
  p.frames = crypto_frame(0, hello());
  p.pad_to = 1200;
  const Bytes d = protect(p);
  const Bytes first = initial_datagram(kPing, 0);
  for (std::size_t cut = 0; cut < d.size(); ++cut) {
    QuicSniffer s;
    ASSERT_EQ(s.feed(first).outcome, Outcome::kNeedMore);
    const Result r = s.feed(std::span(d).first(cut));
    ASSERT_EQ(r.outcome, Outcome::kNeedMore) << cut;
    ASSERT_TRUE(s.crypto_prefix().empty()) << cut;
  }
  QuicSniffer s;
  ASSERT_EQ(s.feed(first).outcome, Outcome::kNeedMore);
  expect_name(s.feed(d));
}

// A first datagram with any one bit flipped anywhere is not a QUIC Initial we can read:
// the version, type, lengths, connection ID, packet number and payload are all covered by
// the AEAD or break the header, so the answer is kNotThis, never a name, never a crash.
TEST(QuicSniffer, EveryBitFlipOfTheFirstDatagram) {
  Packet p;
  p.token.assign(3, 0x44);
  p.frames = crypto_frame(0, hello());
  p.pad_to = 1200;
  const Bytes d = protect(p);
  for (std::size_t i = 0; i < d.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      Bytes m = d;
      m[i] ^= static_cast<std::uint8_t>(1 << bit);
      QuicSniffer s;
      const Result r = s.feed(m);
      ASSERT_EQ(r.outcome, Outcome::kNotThis) << "byte " << i << " bit " << bit;
    }
  }
}

// Flows are sniffed on several threads at once, one sniffer per flow.
TEST(QuicSniffer, SniffersOnSeveralThreads) {
  std::vector<std::thread> threads;
  std::vector<int> names(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &names] {
      for (int flow = 0; flow < 25; ++flow) {
        Packet a;
        a.dcid = {static_cast<std::uint8_t>(t), static_cast<std::uint8_t>(flow), 1, 2, 3, 4, 5, 6};
        a.frames = crypto_frame(0, hello(0, 100));
        a.pad_to = 1200;
        Packet b = a;
        b.pn = 1;
        b.frames = crypto_frame(100, hello(100, sizeof kClientHello));
        QuicSniffer s;
        if (s.feed(protect(a)).outcome != Outcome::kNeedMore) continue;
        const Result r = s.feed(protect(b));
        if (r.outcome == Outcome::kName && r.name == kName) ++names[static_cast<std::size_t>(t)];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int n : names) EXPECT_EQ(n, 25);
}

}  // namespace
}  // namespace splitd::sniff
