#include "dns/message.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace splitd::dns {
namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::uint16_t kA = 1, kNs = 2, kCname = 5, kSoa = 6, kAaaa = 28, kOpt = 41, kSvcb = 64, kHttps = 65;
constexpr std::uint16_t kIn = 1;

// "Www.Example.com" -> 3Www7Example3com0, labels as given (no case change, no escapes).
Bytes name(const std::string& text) {
  Bytes out;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t dot = text.find('.', start);
    if (dot == std::string::npos) dot = text.size();
    out.push_back(static_cast<std::uint8_t>(dot - start));
    out.insert(out.end(), text.begin() + static_cast<std::ptrdiff_t>(start),
               text.begin() + static_cast<std::ptrdiff_t>(dot));
    start = dot + 1;
  }
  out.push_back(0);
  return out;
}
Bytes ptr(std::uint16_t offset) {
  return {static_cast<std::uint8_t>(0xC0 | (offset >> 8)), static_cast<std::uint8_t>(offset)};
}
void put16(Bytes& b, std::uint16_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}
void put32(Bytes& b, std::uint32_t v) {
  put16(b, static_cast<std::uint16_t>(v >> 16));
  put16(b, static_cast<std::uint16_t>(v));
}
std::uint16_t get16(const Bytes& b, std::size_t off) {
  return static_cast<std::uint16_t>((b[off] << 8) | b[off + 1]);
}
Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const Bytes& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// A small DNS message builder. Records are appended in the order given; the caller keeps
// the sections in wire order (answer, authority, additional).
class Msg {
 public:
  enum Section { kAn = 6, kNsSec = 8, kAr = 10 };

  explicit Msg(std::uint16_t id = 0xbeef, bool response = false) : wire_(12, 0) {
    wire_[0] = static_cast<std::uint8_t>(id >> 8);
    wire_[1] = static_cast<std::uint8_t>(id);
    wire_[2] = response ? 0x81 : 0x01;  // RD
    wire_[3] = response ? 0x80 : 0x00;  // RA
  }
  Msg& flags(std::uint8_t f1, std::uint8_t f2) {
    wire_[2] = f1;
    wire_[3] = f2;
    return *this;
  }
  Msg& rcode(std::uint8_t r) {
    wire_[3] = static_cast<std::uint8_t>((wire_[3] & 0xf0) | r);
    return *this;
  }
  Msg& question(const Bytes& qname, std::uint16_t type = kA, std::uint16_t cls = kIn) {
    bump(4);
    append(qname);
    put16(wire_, type);
    put16(wire_, cls);
    return *this;
  }
  Msg& rr(Section s, const Bytes& owner, std::uint16_t type, std::uint32_t ttl, const Bytes& rdata,
          std::uint16_t cls = kIn) {
    bump(static_cast<std::size_t>(s));
    append(owner);
    put16(wire_, type);
    put16(wire_, cls);
    put32(wire_, ttl);
    put16(wire_, static_cast<std::uint16_t>(rdata.size()));
    append(rdata);
    return *this;
  }
  Msg& opt(std::uint16_t udp = 4096, bool do_bit = false) {
    return rr(kAr, {0}, kOpt, do_bit ? 0x8000u : 0u, {}, udp);
  }
  Msg& raw(const Bytes& b) {
    append(b);
    return *this;
  }
  Msg& count(Section s, std::uint16_t n) {
    wire_[static_cast<std::size_t>(s)] = static_cast<std::uint8_t>(n >> 8);
    wire_[static_cast<std::size_t>(s) + 1] = static_cast<std::uint8_t>(n);
    return *this;
  }
  Bytes wire() const { return wire_; }
  std::size_t size() const { return wire_.size(); }

 private:
  void bump(std::size_t off) {
    std::uint16_t n = get16(wire_, off);
    ++n;
    wire_[off] = static_cast<std::uint8_t>(n >> 8);
    wire_[off + 1] = static_cast<std::uint8_t>(n);
  }
  void append(const Bytes& b) { wire_.insert(wire_.end(), b.begin(), b.end()); }
  Bytes wire_;
};

Bytes v4(std::uint8_t a, std::uint8_t b, std::uint8_t c, std::uint8_t d) { return {a, b, c, d}; }
Bytes v6(std::uint8_t last) {
  Bytes b(16, 0);
  b[0] = 0x20;
  b[1] = 0x01;
  b[2] = 0x0d;
  b[3] = 0xb8;
  b[15] = last;
  return b;
}
IpAddress ip(const char* text) { return *IpAddress::parse(text); }

Query parsed_query(const Bytes& wire) {
  auto q = parse_query(wire);
  EXPECT_TRUE(q.has_value()) << (q ? "" : to_string(q.error()));
  return q ? *q : Query{};
}
Query query_for(const std::string& qname, std::uint16_t type = kA) {
  return parsed_query(Msg().question(name(qname), type).wire());
}
AnswerInfo parsed_answer(const Bytes& wire, const Query& q) {
  auto a = parse_answer(wire, q);
  EXPECT_TRUE(a.has_value()) << (a ? "" : to_string(a.error()));
  return a ? *a : AnswerInfo{};
}
WireError query_error(const Bytes& wire) {
  auto q = parse_query(wire);
  EXPECT_FALSE(q.has_value());
  return q ? WireError{} : q.error();
}
WireError answer_error(const Bytes& wire, const Query& q) {
  auto a = parse_answer(wire, q);
  EXPECT_FALSE(a.has_value());
  return a ? WireError{} : a.error();
}
bool has_ip(const AnswerInfo& a, const char* text, std::uint32_t ttl) {
  return std::find(a.addresses.begin(), a.addresses.end(), LearnedAddress{ip(text), ttl}) != a.addresses.end();
}

// ---- queries ----

TEST(ParseQuery, PlainQueryWithMixedCaseKeepsQuestionBytes) {
  const Bytes wire = Msg(0x1234).question(name("WwW.ExAmPle.COM"), kAaaa).wire();
  const Query q = parsed_query(wire);
  EXPECT_EQ(q.id, 0x1234);
  EXPECT_EQ(q.opcode, 0);
  EXPECT_TRUE(q.rd);
  EXPECT_FALSE(q.cd);
  EXPECT_EQ(q.name, "www.example.com");
  EXPECT_EQ(q.qtype, kAaaa);
  EXPECT_EQ(q.qclass, kIn);
  EXPECT_EQ(q.question_end, wire.size());
  const Bytes question(wire.begin() + 12, wire.begin() + static_cast<std::ptrdiff_t>(q.question_end));
  EXPECT_EQ(question, cat({name("WwW.ExAmPle.COM"), {0, kAaaa, 0, kIn}}));
  EXPECT_FALSE(q.edns);
  EXPECT_FALSE(q.do_bit);
}

TEST(ParseQuery, EdnsSizeAndDoBit) {
  const Query q = parsed_query(Msg().flags(0x00, 0x10).question(name("example.com")).opt(4096, true).wire());
  EXPECT_TRUE(q.edns);
  EXPECT_EQ(q.edns_udp_size, 4096);
  EXPECT_TRUE(q.do_bit);
  EXPECT_FALSE(q.rd);
  EXPECT_TRUE(q.cd);
  EXPECT_EQ(q.question_end, 12u + 13 + 4);

  const Query small = parsed_query(Msg().question(name("example.com")).opt(100).wire());
  EXPECT_EQ(small.edns_udp_size, 100);  // as sent
  EXPECT_FALSE(small.do_bit);
}

TEST(ParseQuery, RootAndEscapedNames) {
  EXPECT_EQ(parsed_query(Msg().question({0}, kNs).wire()).name, "");
  // A dot inside a label and a non-ASCII byte: libknot prints "\." and "\DDD".
  const Bytes odd = {3, 'a', '.', 'B', 2, 0xC3, 0xA9, 3, 'c', 'o', 'm', 0};
  EXPECT_EQ(parsed_query(Msg().question(odd).wire()).name, "a\\.b.\\195\\169.com");
}

TEST(ParseQuery, QuestionCountMustBeOne) {
  EXPECT_EQ(query_error(Msg().wire()), WireError::kBadQuestion);
  EXPECT_EQ(query_error(Msg().question(name("a.com")).question(name("b.com")).wire()), WireError::kBadQuestion);
}

TEST(ParseQuery, ResponsesAndOtherOpcodesAreNotQueries) {
  EXPECT_EQ(query_error(Msg(1, true).question(name("a.com")).wire()), WireError::kNotQuery);
  EXPECT_EQ(query_error(Msg().flags(0x04 << 3, 0).question(name("a.com")).wire()), WireError::kNotQuery);  // NOTIFY
  EXPECT_EQ(query_error(Msg().flags(0x05 << 3, 0).question(name("a.com")).wire()), WireError::kNotQuery);  // UPDATE
}

TEST(ParseQuery, TruncatedPackets) {
  const Bytes full = Msg().question(name("example.com")).wire();
  EXPECT_EQ(query_error({}), WireError::kTooShort);
  EXPECT_EQ(query_error(Bytes(full.begin(), full.begin() + 11)), WireError::kTooShort);
  for (std::size_t len = 12; len < full.size(); ++len) {
    EXPECT_EQ(query_error(Bytes(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(len))),
              WireError::kBadQuestion)
        << len;
  }
  // An OPT record cut short.
  const Bytes edns = Msg().question(name("example.com")).opt().wire();
  EXPECT_EQ(query_error(Bytes(edns.begin(), edns.end() - 1)), WireError::kMalformed);
}

TEST(ParseQuery, CompressionInQuestionIsRefused) {
  EXPECT_EQ(query_error(Msg().question(ptr(12)).wire()), WireError::kBadQuestion);  // a loop onto itself
  EXPECT_EQ(query_error(Msg().question(cat({{1, 'a'}, ptr(12)})).wire()), WireError::kBadQuestion);
  EXPECT_EQ(query_error(Msg().question(ptr(2)).wire()), WireError::kBadQuestion);
}

TEST(ParseQuery, BadPointersInRecordsAreMalformed) {
  const Msg base = Msg().question(name("example.com"));
  // owner pointing at itself (a loop)
  EXPECT_EQ(query_error(Msg(base).rr(Msg::kAr, ptr(static_cast<std::uint16_t>(base.size())), kA, 1, v4(1, 2, 3, 4)).wire()),
            WireError::kMalformed);
  // forward pointer
  EXPECT_EQ(query_error(Msg(base).rr(Msg::kAr, ptr(static_cast<std::uint16_t>(base.size() + 4)), kA, 1, v4(1, 2, 3, 4)).wire()),
            WireError::kMalformed);
  // out of range
  EXPECT_EQ(query_error(Msg(base).rr(Msg::kAr, ptr(0x3fff), kA, 1, v4(1, 2, 3, 4)).wire()), WireError::kMalformed);
  // a backward pointer to the question is fine
  EXPECT_TRUE(parse_query(Msg(base).rr(Msg::kAr, ptr(12), kA, 1, v4(1, 2, 3, 4)).wire()).has_value());
}

TEST(ParseQuery, OversizedLabelsAndNames) {
  Bytes label64 = {64};
  label64.insert(label64.end(), 64, 'a');
  label64.push_back(0);
  EXPECT_EQ(query_error(Msg().question(label64).wire()), WireError::kBadQuestion);
  EXPECT_EQ(query_error(Msg().question({0x40, 'a', 0}).wire()), WireError::kBadQuestion);  // extended label type

  Bytes long_name;  // 5 labels of 63 = 320 bytes > 255
  for (int i = 0; i < 5; ++i) {
    long_name.push_back(63);
    long_name.insert(long_name.end(), 63, 'x');
  }
  long_name.push_back(0);
  EXPECT_EQ(query_error(Msg().question(long_name).wire()), WireError::kBadQuestion);

  Bytes max_name;  // 3 x 63 + 61 + 5 = 255 bytes: the longest legal name
  for (int i = 0; i < 3; ++i) {
    max_name.push_back(63);
    max_name.insert(max_name.end(), 63, 'y');
  }
  max_name.push_back(61);
  max_name.insert(max_name.end(), 61, 'z');
  max_name.push_back(0);
  ASSERT_EQ(max_name.size(), 255u);
  EXPECT_EQ(parsed_query(Msg().question(max_name).wire()).question_end, 12u + 255 + 4);
}

TEST(ParseQuery, BogusCountsTrailingDataAndSpecialRecords) {
  const Msg base = Msg().question(name("example.com"));
  EXPECT_EQ(query_error(Msg(base).count(Msg::kAn, 5).wire()), WireError::kMalformed);
  EXPECT_EQ(query_error(Msg(base).count(Msg::kAn, 0xffff).wire()), WireError::kMalformed);
  EXPECT_EQ(query_error(Msg(base).count(Msg::kAr, 1).opt().wire()), WireError::kMalformed);  // AR says 2
  EXPECT_EQ(query_error(Msg(base).raw({0, 0, 0}).wire()), WireError::kMalformed);            // trailing garbage
  EXPECT_EQ(query_error(Msg(base).opt().opt().wire()), WireError::kMalformed);                // two OPT
  EXPECT_EQ(query_error(Msg(base).rr(Msg::kAn, {0}, kOpt, 0, {}, 512).wire()), WireError::kMalformed);  // OPT in answer
  EXPECT_EQ(query_error(Msg(base).rr(Msg::kAr, {0}, kA, 1, {1, 2, 3}).wire()), WireError::kMalformed);  // short A
  EXPECT_EQ(query_error(Msg(base).rr(Msg::kAr, name("k"), 250, 0, {1, 2, 3}).wire()), WireError::kMalformed);  // bad TSIG
  // More records than a query ever carries.
  Msg many(base);
  for (int i = 0; i < 9; ++i) many.rr(Msg::kAr, ptr(12), kA, 1, v4(1, 2, 3, static_cast<std::uint8_t>(i)));
  EXPECT_EQ(query_error(many.wire()), WireError::kMalformed);
  // rdlength beyond the end
  Bytes cut = Msg(base).rr(Msg::kAr, {0}, kA, 1, v4(1, 2, 3, 4)).wire();
  cut.pop_back();
  EXPECT_EQ(query_error(cut), WireError::kMalformed);
  // OPT with options is fine
  EXPECT_TRUE(parse_query(Msg(base).rr(Msg::kAr, {0}, kOpt, 0, {0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8}, 1232).wire()).has_value());
}

TEST(ParseQuery, RandomGarbageNeverCrashes) {
  std::mt19937 rng(7);
  for (int i = 0; i < 20000; ++i) {
    Bytes b(rng() % 300);
    for (auto& x : b) x = static_cast<std::uint8_t>(rng());
    if (b.size() > 2 && (i & 1)) b[2] &= 0x07;  // a query header half the time
    (void)parse_query(b);
    (void)parse_answer(b, Query{});
    (void)formerr_for(b);
  }
}

TEST(ParseQuery, OversizedInputIsMalformed) {
  Bytes huge = Msg().question(name("a.com")).wire();
  huge.resize(70000, 0);
  EXPECT_EQ(query_error(huge), WireError::kMalformed);
}

// ---- answers ----

Msg answer_to(const std::string& qname, std::uint16_t type = kA, std::uint16_t id = 0xbeef) {
  return Msg(id, true).question(name(qname), type);
}

TEST(ParseAnswer, SingleA) {
  const Query q = query_for("Example.com");
  const Bytes wire = answer_to("example.com").rr(Msg::kAn, ptr(12), kA, 300, v4(93, 184, 216, 34)).wire();
  const AnswerInfo a = parsed_answer(wire, q);
  EXPECT_EQ(a.id, 0xbeef);
  EXPECT_EQ(a.rcode, 0);
  EXPECT_FALSE(a.tc);
  EXPECT_TRUE(a.question_matches);
  EXPECT_EQ(a.names, std::vector<std::string>{"example.com"});
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].ip, ip("93.184.216.34"));
  EXPECT_EQ(a.addresses[0].ttl, 300u);
  EXPECT_EQ(a.min_ttl, 300u);
  ASSERT_EQ(a.ttl_offsets.size(), 1u);
  EXPECT_EQ(a.ttl_offsets[0], 12u + 13 + 4 + 2 + 4);
}

TEST(ParseAnswer, Aaaa) {
  const Query q = query_for("v6.example", kAaaa);
  const AnswerInfo a = parsed_answer(answer_to("v6.example", kAaaa)
                                         .rr(Msg::kAn, ptr(12), kAaaa, 60, v6(1))
                                         .rr(Msg::kAn, ptr(12), kAaaa, 120, v6(2))
                                         .wire(),
                                     q);
  EXPECT_EQ(a.addresses.size(), 2u);
  EXPECT_TRUE(has_ip(a, "2001:db8::1", 60));
  EXPECT_TRUE(has_ip(a, "2001:db8::2", 120));
  EXPECT_EQ(a.min_ttl, 60u);
}

TEST(ParseAnswer, QuestionCaseInsensitiveAndMismatches) {
  const Query q = query_for("example.com");
  const Bytes upper = answer_to("EXAMPLE.COM").rr(Msg::kAn, ptr(12), kA, 5, v4(1, 1, 1, 1)).wire();
  EXPECT_TRUE(parsed_answer(upper, q).question_matches);
  EXPECT_EQ(parsed_answer(upper, q).addresses.size(), 1u);

  const AnswerInfo other = parsed_answer(answer_to("evil.com").rr(Msg::kAn, ptr(12), kA, 5, v4(6, 6, 6, 6)).wire(), q);
  EXPECT_FALSE(other.question_matches);
  EXPECT_TRUE(other.addresses.empty());
  EXPECT_EQ(other.names, std::vector<std::string>{"example.com"});

  EXPECT_FALSE(parsed_answer(answer_to("example.com", kAaaa).wire(), q).question_matches);
  EXPECT_FALSE(parsed_answer(Msg(1, true).question(name("example.com"), kA, 3).wire(), q).question_matches);
  EXPECT_EQ(answer_error(Msg(1, true).wire(), q), WireError::kBadQuestion);
  EXPECT_EQ(answer_error(Msg(1, false).question(name("example.com")).wire(), q), WireError::kNotResponse);
  EXPECT_EQ(answer_error(Bytes(5, 0x80), q), WireError::kTooShort);
}

TEST(ParseAnswer, CnameChainIsFollowed) {
  const Query q = query_for("a.test");
  // a.test CNAME b.test CNAME c.test, A for c.test; names compressed against earlier ones.
  Msg m = answer_to("a.test");
  const std::uint16_t b_off = static_cast<std::uint16_t>(m.size() + 2 + 10);
  m.rr(Msg::kAn, ptr(12), kCname, 300, cat({{1, 'B'}, ptr(14)}));  // "B" + "test" from the question
  const std::uint16_t c_off = static_cast<std::uint16_t>(m.size() + 2 + 10);
  m.rr(Msg::kAn, ptr(b_off), kCname, 200, cat({{1, 'c'}, ptr(14)}));
  m.rr(Msg::kAn, ptr(c_off), kA, 100, v4(10, 0, 0, 1));
  m.rr(Msg::kAn, ptr(c_off), kA, 100, v4(10, 0, 0, 2));
  const AnswerInfo a = parsed_answer(m.wire(), q);
  EXPECT_EQ(a.names, (std::vector<std::string>{"a.test", "b.test", "c.test"}));
  EXPECT_EQ(a.addresses.size(), 2u);
  EXPECT_TRUE(has_ip(a, "10.0.0.1", 100));
  EXPECT_TRUE(has_ip(a, "10.0.0.2", 100));
  EXPECT_EQ(a.min_ttl, 100u);
  EXPECT_EQ(a.ttl_offsets.size(), 4u);
}

TEST(ParseAnswer, CnameChainOrderInAnswerDoesNotMatter) {
  const Query q = query_for("a.test");
  const AnswerInfo a = parsed_answer(answer_to("a.test")
                                         .rr(Msg::kAn, name("c.test"), kA, 100, v4(10, 0, 0, 3))
                                         .rr(Msg::kAn, name("b.test"), kCname, 300, name("c.test"))
                                         .rr(Msg::kAn, name("a.test"), kCname, 300, name("b.test"))
                                         .wire(),
                                     q);
  EXPECT_EQ(a.names, (std::vector<std::string>{"a.test", "b.test", "c.test"}));
  EXPECT_TRUE(has_ip(a, "10.0.0.3", 100));
}

TEST(ParseAnswer, CnameLoopStops) {
  const Query q = query_for("a.test");
  const AnswerInfo a = parsed_answer(answer_to("a.test")
                                         .rr(Msg::kAn, name("a.test"), kCname, 300, name("b.test"))
                                         .rr(Msg::kAn, name("b.test"), kCname, 300, name("A.test"))
                                         .rr(Msg::kAn, name("b.test"), kA, 300, v4(10, 0, 0, 4))
                                         .wire(),
                                     q);
  EXPECT_EQ(a.names, (std::vector<std::string>{"a.test", "b.test"}));
  EXPECT_TRUE(has_ip(a, "10.0.0.4", 300));
}

TEST(ParseAnswer, ChainLongerThanSixteenIsCut) {
  const Query q = query_for("n0.test");
  Msg m = answer_to("n0.test");
  for (int i = 0; i < 20; ++i) {
    m.rr(Msg::kAn, name("n" + std::to_string(i) + ".test"), kCname, 60, name("n" + std::to_string(i + 1) + ".test"));
  }
  m.rr(Msg::kAn, name("n16.test"), kA, 60, v4(10, 0, 0, 16));
  m.rr(Msg::kAn, name("n17.test"), kA, 60, v4(10, 0, 0, 17));
  m.rr(Msg::kAn, name("n20.test"), kA, 60, v4(10, 0, 0, 20));
  const AnswerInfo a = parsed_answer(m.wire(), q);
  ASSERT_EQ(a.names.size(), 17u);
  EXPECT_EQ(a.names.back(), "n16.test");
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].ip, ip("10.0.0.16"));
}

TEST(ParseAnswer, UnrelatedOwnersAreIgnored) {
  const Query q = query_for("a.test");
  const AnswerInfo a = parsed_answer(answer_to("a.test")
                                         .rr(Msg::kAn, name("a.test"), kA, 60, v4(10, 0, 0, 1))
                                         .rr(Msg::kAn, name("bank.example"), kA, 60, v4(6, 6, 6, 6))
                                         .rr(Msg::kAn, name("x.test"), kCname, 60, name("y.test"))
                                         .rr(Msg::kAn, name("y.test"), kA, 60, v4(6, 6, 6, 7))
                                         .rr(Msg::kAn, name("a.test"), kA, 60, v4(6, 6, 6, 8), 3)  // class CH
                                         .rr(Msg::kAr, name("a.test"), kA, 60, v4(6, 6, 6, 9))    // additional
                                         .wire(),
                                     q);
  EXPECT_EQ(a.names, std::vector<std::string>{"a.test"});
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].ip, ip("10.0.0.1"));
}

Bytes svcb_rdata(std::uint16_t priority, const Bytes& target, const std::vector<std::pair<std::uint16_t, Bytes>>& params) {
  Bytes r;
  put16(r, priority);
  r.insert(r.end(), target.begin(), target.end());
  for (const auto& [key, value] : params) {
    put16(r, key);
    put16(r, static_cast<std::uint16_t>(value.size()));
    r.insert(r.end(), value.begin(), value.end());
  }
  return r;
}

TEST(ParseAnswer, HttpsHints) {
  const Query q = query_for("svc.test", kHttps);
  const Bytes alpn = {2, 'h', '2'};
  const Bytes hints4 = cat({v4(192, 0, 2, 1), v4(192, 0, 2, 2)});
  const Bytes hints6 = cat({v6(7), v6(8)});
  const AnswerInfo a =
      parsed_answer(answer_to("svc.test", kHttps)
                        .rr(Msg::kAn, ptr(12), kHttps, 600,
                            svcb_rdata(1, {0}, {{1, alpn}, {4, hints4}, {6, hints6}}))
                        .rr(Msg::kAn, ptr(12), kHttps, 500, svcb_rdata(2, name("Alt.test"), {{4, v4(192, 0, 2, 1)}}))
                        .rr(Msg::kAn, ptr(12), kHttps, 500, svcb_rdata(0, name("alias.test"), {{4, v4(192, 0, 2, 99)}}))
                        .rr(Msg::kAn, ptr(12), kSvcb, 400, svcb_rdata(1, {0}, {{4, {1, 2, 3}}, {6, v6(9)}}))
                        .rr(Msg::kAn, ptr(12), kHttps, 400, cat({svcb_rdata(1, {0}, {}), {0, 4, 0, 40}, v4(6, 6, 6, 6)}))  // vlen > rest
                        .wire(),
                    q);
  EXPECT_EQ(a.addresses.size(), 5u);
  EXPECT_TRUE(has_ip(a, "192.0.2.1", 500));  // the duplicate keeps the smaller TTL
  EXPECT_TRUE(has_ip(a, "192.0.2.2", 600));
  EXPECT_TRUE(has_ip(a, "2001:db8::7", 600));
  EXPECT_TRUE(has_ip(a, "2001:db8::8", 600));
  EXPECT_TRUE(has_ip(a, "2001:db8::9", 400));  // after a bad-length ipv4hint
  EXPECT_EQ(a.addresses[0].ip, ip("192.0.2.1"));  // first-seen order
}

TEST(ParseAnswer, DuplicateAddressesAreMerged) {
  const Query q = query_for("a.test");
  const AnswerInfo a = parsed_answer(answer_to("a.test")
                                         .rr(Msg::kAn, ptr(12), kA, 60, v4(10, 0, 0, 1))
                                         .rr(Msg::kAn, ptr(12), kA, 30, v4(10, 0, 0, 1))
                                         .wire(),
                                     q);
  ASSERT_EQ(a.addresses.size(), 1u);
  EXPECT_EQ(a.addresses[0].ttl, 30u);
}

Bytes soa_rdata(std::uint32_t minimum) {
  Bytes r = cat({name("ns.test"), name("hostmaster.test")});
  put32(r, 2024010101);
  put32(r, 7200);
  put32(r, 3600);
  put32(r, 1209600);
  put32(r, minimum);
  return r;
}

TEST(ParseAnswer, NegativeAnswersUseSoaMinimum) {
  const Query q = query_for("nope.test");
  const AnswerInfo nx =
      parsed_answer(answer_to("nope.test").rcode(3).rr(Msg::kNsSec, name("test"), kSoa, 3600, soa_rdata(300)).wire(), q);
  EXPECT_EQ(nx.rcode, 3);
  EXPECT_EQ(nx.min_ttl, 300u);
  EXPECT_TRUE(nx.addresses.empty());
  ASSERT_EQ(nx.ttl_offsets.size(), 1u);

  const AnswerInfo nodata =
      parsed_answer(answer_to("nope.test").rr(Msg::kNsSec, name("test"), kSoa, 60, soa_rdata(300)).wire(), q);
  EXPECT_EQ(nodata.rcode, 0);
  EXPECT_EQ(nodata.min_ttl, 60u);

  EXPECT_EQ(parsed_answer(answer_to("nope.test").rcode(2).wire(), q).min_ttl, 0u);  // nothing to cache by
}

TEST(ParseAnswer, TtlOffsetsAndAging) {
  const Query q = query_for("a.test");
  Bytes wire = answer_to("a.test")
                   .rr(Msg::kAn, ptr(12), kA, 300, v4(10, 0, 0, 1))
                   .rr(Msg::kAn, name("a.test"), kA, 50, v4(10, 0, 0, 2))
                   .rr(Msg::kNsSec, name("test"), kNs, 86400, name("ns.test"))
                   .rr(Msg::kAr, name("ns.test"), kA, 86400, v4(10, 9, 9, 9))
                   .opt(1232)
                   .wire();
  const AnswerInfo a = parsed_answer(wire, q);
  ASSERT_EQ(a.ttl_offsets.size(), 4u);  // all but OPT
  EXPECT_EQ(a.min_ttl, 50u);
  age_ttls(wire, a.ttl_offsets, 100);
  const AnswerInfo aged = parsed_answer(wire, q);
  EXPECT_TRUE(has_ip(aged, "10.0.0.1", 200));
  EXPECT_TRUE(has_ip(aged, "10.0.0.2", 0));  // floor 0
  EXPECT_EQ(aged.min_ttl, 0u);
  EXPECT_EQ(aged.ttl_offsets, a.ttl_offsets);
  // The OPT record is untouched: its "TTL" holds flags.
  EXPECT_TRUE(parse_answer(wire, q).has_value());
  const std::size_t opt_ttl = wire.size() - 6;
  EXPECT_EQ(Bytes(wire.begin() + static_cast<std::ptrdiff_t>(opt_ttl), wire.begin() + static_cast<std::ptrdiff_t>(opt_ttl) + 4),
            Bytes(4, 0));
  // Offsets past the end are skipped.
  const std::uint16_t bad[] = {0xfffe};
  age_ttls(wire, bad, 1);
}

TEST(ParseAnswer, TsigIsKeptInPlace) {
  // TSIG (type 250) rdata: algorithm name, time (48 bit), fudge, mac size + mac, original id,
  // error, other len.
  Bytes tsig = name("hmac-sha256");
  put16(tsig, 0);
  put32(tsig, 1700000000);
  put16(tsig, 300);
  put16(tsig, 4);
  tsig.insert(tsig.end(), {1, 2, 3, 4});
  put16(tsig, 0xbeef);
  put16(tsig, 0);
  put16(tsig, 0);
  const Query q = query_for("a.test");
  const Bytes wire = answer_to("a.test").rr(Msg::kAn, ptr(12), kA, 60, v4(10, 0, 0, 1)).rr(Msg::kAr, name("key"), 250, 0, tsig, 255).wire();
  const Bytes copy = wire;
  const AnswerInfo a = parsed_answer(wire, q);
  EXPECT_EQ(wire, copy);  // libknot did not strip it from the caller's buffer
  EXPECT_EQ(a.ttl_offsets.size(), 2u);
  // TSIG not last in the additional section
  EXPECT_EQ(answer_error(answer_to("a.test").rr(Msg::kAr, name("key"), 250, 0, tsig, 255).opt().wire(), q),
            WireError::kMalformed);
}

// ---- building ----

TEST(MakeResponse, EchoesQuestionWithoutEdns) {
  const Bytes qwire = Msg(0x4242).question(name("Canary.Example"), kAaaa).wire();
  const Query q = parsed_query(qwire);
  const Bytes r = make_response(qwire, q, 3);
  ASSERT_EQ(r.size(), q.question_end);
  EXPECT_EQ(Bytes(r.begin() + 12, r.end()), Bytes(qwire.begin() + 12, qwire.end()));
  EXPECT_EQ(r[2], 0x81);  // QR, opcode 0, RD
  EXPECT_EQ(r[3], 0x83);  // RA, NXDOMAIN
  const AnswerInfo a = parsed_answer(r, q);
  EXPECT_EQ(a.id, 0x4242);
  EXPECT_EQ(a.rcode, 3);
  EXPECT_TRUE(a.question_matches);
  EXPECT_EQ(get16(r, 10), 0);
}

TEST(MakeResponse, AddsOptWhenQueryHadEdns) {
  const Bytes qwire = Msg(7).flags(0x00, 0x10).question(name("x.test")).opt(4096, true).wire();
  const Query q = parsed_query(qwire);
  const Bytes r = make_response(qwire, q, 2);
  ASSERT_EQ(r.size(), q.question_end + 11);
  EXPECT_EQ(get16(r, 10), 1);
  EXPECT_EQ(r[2], 0x80);  // no RD
  EXPECT_EQ(r[3], 0x92);  // RA, CD, SERVFAIL
  EXPECT_EQ(get16(r, q.question_end + 3), 1232);
  const AnswerInfo a = parsed_answer(r, q);
  EXPECT_EQ(a.rcode, 2);
  EXPECT_TRUE(a.question_matches);
  EXPECT_TRUE(a.ttl_offsets.empty());
}

TEST(FormErr, HeaderOnlyAnswer) {
  Bytes junk = Msg(0x0102).flags(0x02 << 3 | 0x01, 0).question(name("a.test")).wire();  // opcode STATUS
  junk.push_back(0xff);
  const auto f = formerr_for(junk);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(*f, (Bytes{0x01, 0x02, 0x80 | (0x02 << 3), 0x01, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_FALSE(formerr_for(Bytes(11, 0)).has_value());
  EXPECT_FALSE(formerr_for(Msg(1, true).wire()).has_value());
  EXPECT_TRUE(formerr_for(Bytes(12, 0)).has_value());
}

TEST(UdpLimit, ClampsEdnsSize) {
  Query q;
  EXPECT_EQ(udp_limit(q), 512u);
  q.edns = true;
  q.edns_udp_size = 100;
  EXPECT_EQ(udp_limit(q), 512u);
  q.edns_udp_size = 1232;
  EXPECT_EQ(udp_limit(q), 1232u);
  q.edns_udp_size = 65535;
  EXPECT_EQ(udp_limit(q), 65535u);
}

Bytes big_answer(const std::string& qname, int records, bool edns) {
  Msg m = answer_to(qname);
  for (int i = 0; i < records; ++i) {
    m.rr(Msg::kAn, ptr(12), kA, 60, v4(10, 1, static_cast<std::uint8_t>(i >> 8), static_cast<std::uint8_t>(i)));
  }
  if (edns) m.opt(4096);
  return m.wire();
}

TEST(TruncateTo, WithoutEdns) {
  const Query q = query_for("big.test");
  Bytes wire = big_answer("big.test", 60, false);
  ASSERT_GT(wire.size(), 512u);
  EXPECT_FALSE(truncate_to(wire, q, 65535));
  ASSERT_TRUE(truncate_to(wire, q, udp_limit(q)));
  EXPECT_LE(wire.size(), 512u);
  EXPECT_EQ(wire.size(), q.question_end);
  const AnswerInfo a = parsed_answer(wire, q);
  EXPECT_TRUE(a.tc);
  EXPECT_TRUE(a.question_matches);
  EXPECT_TRUE(a.addresses.empty());
  EXPECT_EQ(get16(wire, 6) + get16(wire, 8) + get16(wire, 10), 0);
}

TEST(TruncateTo, WithEdns) {
  const Bytes qwire = Msg().question(name("big.test")).opt(1232).wire();
  const Query q = parsed_query(qwire);
  Bytes wire = big_answer("big.test", 200, true);
  ASSERT_GT(wire.size(), 1232u);
  ASSERT_TRUE(truncate_to(wire, q, udp_limit(q)));
  EXPECT_LE(wire.size(), 1232u);
  EXPECT_EQ(wire.size(), q.question_end + 11);
  EXPECT_EQ(get16(wire, 10), 1);
  const AnswerInfo a = parsed_answer(wire, q);
  EXPECT_TRUE(a.tc);
  EXPECT_TRUE(a.question_matches);
  EXPECT_EQ(get16(wire, 6), 0);
}

TEST(RestoreQuestion, PutsBackClientIdAndCase) {
  const Bytes qwire = Msg(0x1111).question(name("MiXeD.CaSe.test")).wire();
  const Query q = parsed_query(qwire);
  // The upstream saw a lowercased question under another id.
  Bytes answer = Msg(0x9999, true).question(name("mixed.case.test")).rr(Msg::kAn, ptr(12), kA, 60, v4(10, 0, 0, 1)).wire();
  ASSERT_TRUE(restore_question(answer, qwire, q));
  EXPECT_EQ(get16(answer, 0), 0x1111);
  EXPECT_EQ(Bytes(answer.begin() + 12, answer.begin() + static_cast<std::ptrdiff_t>(q.question_end)),
            Bytes(qwire.begin() + 12, qwire.end()));
  const AnswerInfo a = parsed_answer(answer, q);
  EXPECT_TRUE(a.question_matches);
  EXPECT_TRUE(has_ip(a, "10.0.0.1", 60));
}

TEST(RestoreQuestion, RefusesOtherQuestions) {
  const Bytes qwire = Msg(0x1111).question(name("abc.test")).wire();
  const Query q = parsed_query(qwire);
  Bytes longer = Msg(2, true).question(name("abcd.test")).wire();
  Bytes copy = longer;
  EXPECT_FALSE(restore_question(longer, qwire, q));
  EXPECT_EQ(longer, copy);
  Bytes same_length = Msg(2, true).question(name("xyz.test")).wire();
  copy = same_length;
  EXPECT_FALSE(restore_question(same_length, qwire, q));
  EXPECT_EQ(same_length, copy);
  Bytes other_type = Msg(2, true).question(name("abc.test"), kAaaa).wire();
  EXPECT_FALSE(restore_question(other_type, qwire, q));
  Bytes short_answer(qwire.begin(), qwire.end() - 1);
  copy = short_answer;
  EXPECT_FALSE(restore_question(short_answer, qwire, q));
  EXPECT_EQ(short_answer, copy);
}

TEST(SetId, WritesBigEndian) {
  Bytes b = {0, 0, 9};
  set_id(b, 0xabcd);
  EXPECT_EQ(b, (Bytes{0xab, 0xcd, 9}));
  Bytes one = {7};
  set_id(one, 0xabcd);
  EXPECT_EQ(one, Bytes{7});
}

TEST(WireError, HasMessages) {
  for (WireError e : {WireError::kTooShort, WireError::kNotQuery, WireError::kNotResponse, WireError::kBadQuestion,
                      WireError::kMalformed}) {
    EXPECT_NE(std::string(to_string(e)), "");
  }
}

// ---- randomized ----

// Mutates valid packets and feeds every function. Properties checked: parsers never crash;
// a parsed query always yields a response that parses and matches; a parsed answer can be
// aged and truncated, and the truncated result parses.
TEST(Randomized, MutatedPacketsNeverCrash) {
  const Query fixed = query_for("a.test");
  Msg chain = answer_to("a.test");
  chain.rr(Msg::kAn, ptr(12), kCname, 300, name("b.test"))
      .rr(Msg::kAn, name("b.test"), kA, 60, v4(10, 0, 0, 1))
      .rr(Msg::kAn, name("a.test"), kHttps, 60, svcb_rdata(1, {0}, {{4, v4(1, 2, 3, 4)}, {6, v6(1)}}))
      .rr(Msg::kNsSec, name("test"), kSoa, 3600, soa_rdata(300))
      .rr(Msg::kAr, name("b.test"), kAaaa, 60, v6(2))
      .opt(1232, true);
  const std::vector<Bytes> seeds = {
      Msg().question(name("a.test")).wire(),
      Msg().question(name("WwW.Example.COM"), kHttps).opt(4096, true).wire(),
      chain.wire(),
      answer_to("a.test").rcode(3).rr(Msg::kNsSec, ptr(14), kSoa, 3600, soa_rdata(300)).wire(),
      big_answer("a.test", 40, true),
  };
  std::mt19937 rng(12345);
  int queries = 0, answers = 0;
  for (int iter = 0; iter < 100000; ++iter) {
    Bytes b = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 6) {
        case 0:  // flip a byte
          if (!b.empty()) b[rng() % b.size()] = static_cast<std::uint8_t>(rng());
          break;
        case 1:  // flip a bit
          if (!b.empty()) b[rng() % b.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
          break;
        case 2:  // truncate
          if (!b.empty()) b.resize(rng() % b.size());
          break;
        case 3:  // insert bytes
          b.insert(b.begin() + static_cast<std::ptrdiff_t>(b.empty() ? 0 : rng() % b.size()), 1 + rng() % 4,
                   static_cast<std::uint8_t>(rng()));
          break;
        case 4:  // a compression pointer somewhere
          if (b.size() > 2) {
            const std::size_t at = rng() % (b.size() - 1);
            b[at] = static_cast<std::uint8_t>(0xC0 | (rng() % 4));
            b[at + 1] = static_cast<std::uint8_t>(rng());
          }
          break;
        default:  // a count field
          if (b.size() >= 12) {
            const std::size_t at = 4 + 2 * (rng() % 4);
            b[at + 1] = static_cast<std::uint8_t>(b[at + 1] + (rng() % 3) - 1);
          }
          break;
      }
    }
    if (auto q = parse_query(b)) {
      ++queries;
      ASSERT_LE(q->question_end, b.size());
      const Bytes r = make_response(b, *q, 2);
      auto ra = parse_answer(r, *q);
      ASSERT_TRUE(ra.has_value()) << to_string(ra.error());
      ASSERT_TRUE(ra->question_matches);
      Bytes echo = r;
      ASSERT_TRUE(restore_question(echo, b, *q));
    } else {
      (void)formerr_for(b);
    }
    if (auto a = parse_answer(b, fixed)) {
      ++answers;
      ASSERT_LE(a->names.size(), 17u);
      // Aging may break a mutant whose compression pointers run through TTL bytes (no real
      // server writes those), so only the truncation property is checked after it.
      for (std::size_t i = 0; i < a->ttl_offsets.size(); ++i) {
        ASSERT_LE(a->ttl_offsets[i] + 4u, b.size());
        if (i > 0) {
          ASSERT_GT(a->ttl_offsets[i], a->ttl_offsets[i - 1] + 4);
        }
      }
      age_ttls(b, a->ttl_offsets, rng() % 1000);
      if (truncate_to(b, fixed, 12 + rng() % 200)) {
        auto t = parse_answer(b, fixed);
        ASSERT_TRUE(t.has_value()) << to_string(t.error());
        ASSERT_TRUE(t->tc);
      }
    }
  }
  // The mutations must leave enough valid packets for the properties to mean something.
  EXPECT_GT(queries, 1000);
  EXPECT_GT(answers, 1000);
}

}  // namespace
}  // namespace splitd::dns
