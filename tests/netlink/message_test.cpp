// The untrusted-input helpers against crafted buffers (no sockets, no root).
#include "netlink/message.hpp"

#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace splitd::netlink {
namespace {

constexpr std::uint32_t kSeq = 77;
constexpr std::uint32_t kPortid = 4242;

// A datagram assembled message by message; its storage is 4-byte aligned.
struct Datagram {
  std::vector<std::uint32_t> words;
  std::size_t size = 0;

  std::span<const std::uint8_t> bytes() const {
    return {reinterpret_cast<const std::uint8_t*>(words.data()), size};
  }
  void append(const void* data, std::size_t len) {
    const std::size_t at = (size + 3) & ~std::size_t{3};
    words.resize((at + len + 3) / 4, 0);
    std::memcpy(reinterpret_cast<std::uint8_t*>(words.data()) + at, data, len);
    size = at + len;
  }
};

// One message: header, then `payload` bytes.
std::vector<std::uint8_t> message(std::uint16_t type, std::uint16_t flags, std::uint32_t seq,
                                  std::uint32_t portid, std::vector<std::uint8_t> payload = {}) {
  nlmsghdr h{};
  h.nlmsg_len = static_cast<std::uint32_t>(NLMSG_HDRLEN + payload.size());
  h.nlmsg_type = type;
  h.nlmsg_flags = flags;
  h.nlmsg_seq = seq;
  h.nlmsg_pid = portid;
  std::vector<std::uint8_t> out(NLMSG_ALIGN(sizeof h + payload.size()), 0);
  std::memcpy(out.data(), &h, sizeof h);
  if (!payload.empty()) std::memcpy(out.data() + sizeof h, payload.data(), payload.size());
  return out;
}

void put_attr(std::vector<std::uint8_t>& to, std::uint16_t type, const void* data,
              std::size_t len) {
  nlattr a{static_cast<std::uint16_t>(NLA_HDRLEN + len), type};
  const auto* p = reinterpret_cast<const std::uint8_t*>(&a);
  to.insert(to.end(), p, p + sizeof a);
  const auto* d = static_cast<const std::uint8_t*>(data);
  to.insert(to.end(), d, d + len);
  to.resize(NLA_ALIGN(to.size()), 0);
}

// An NLMSG_ERROR payload: errno, the (capped) request header, then an ext-ack message.
std::vector<std::uint8_t> error_payload(int error, const char* ext = nullptr) {
  nlmsgerr e{};
  e.error = error;
  e.msg.nlmsg_len = NLMSG_HDRLEN + 8;  // the request as it was (only its header is echoed)
  e.msg.nlmsg_seq = kSeq;
  std::vector<std::uint8_t> out(sizeof e);
  std::memcpy(out.data(), &e, sizeof e);
  if (ext != nullptr) put_attr(out, NLMSGERR_ATTR_MSG, ext, std::strlen(ext) + 1);
  return out;
}

std::vector<std::uint8_t> link_payload(std::uint32_t index) {
  ifinfomsg ifi{};
  ifi.ifi_index = static_cast<int>(index);
  std::vector<std::uint8_t> out(sizeof ifi);
  std::memcpy(out.data(), &ifi, sizeof ifi);
  put_attr(out, IFLA_IFNAME, "eth0", 5);
  return out;
}

Datagram datagram(std::initializer_list<std::vector<std::uint8_t>> messages) {
  Datagram d;
  for (const auto& m : messages) d.append(m.data(), m.size());
  return d;
}

// ---- MessageReader ----------------------------------------------------------------------

TEST(MessageReader, WalksEveryMessage) {
  const auto d = datagram({message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(1)),
                           message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(2)),
                           message(NLMSG_DONE, NLM_F_MULTI, kSeq, kPortid, {0, 0, 0, 0})});
  MessageReader r(d.bytes());
  std::vector<std::uint16_t> types;
  while (const nlmsghdr* m = r.next()) types.push_back(m->nlmsg_type);
  EXPECT_FALSE(r.failure());
  EXPECT_EQ(types, (std::vector<std::uint16_t>{RTM_NEWLINK, RTM_NEWLINK, NLMSG_DONE}));
  EXPECT_TRUE(MessageReader({}).next() == nullptr);
}

TEST(MessageReader, TruncatedHeaderIsAnError) {
  auto d = datagram({message(RTM_NEWLINK, 0, kSeq, kPortid, link_payload(1))});
  const std::size_t whole = d.size;
  d.append("\x10\0\0\0\0\0", 6);  // a header cut after 6 bytes
  MessageReader r(d.bytes());
  EXPECT_NE(r.next(), nullptr);  // what came before the problem is still read
  EXPECT_EQ(r.next(), nullptr);
  ASSERT_TRUE(r.failure());
  EXPECT_EQ(r.failure()->code, Error::kTruncated);
  EXPECT_NE(r.failure()->detail.find("6 trailing bytes"), std::string::npos)
      << r.failure()->message();
  EXPECT_EQ(r.next(), nullptr);  // stays failed
  // Every cut of a message is an error, never a read past the end.
  const auto full = datagram({message(RTM_NEWLINK, 0, kSeq, kPortid, link_payload(1))});
  for (std::size_t len = 1; len < whole; ++len) {
    MessageReader cut(full.bytes().first(len));
    EXPECT_EQ(cut.next(), nullptr) << len;
    ASSERT_TRUE(cut.failure()) << len;
    EXPECT_EQ(cut.failure()->code, Error::kTruncated) << len;
  }
}

TEST(MessageReader, LengthBeyondTheBufferOrBelowAHeader) {
  auto msg = message(RTM_NEWLINK, 0, kSeq, kPortid, link_payload(1));
  const std::uint32_t huge = 0xffffffffu;
  std::memcpy(msg.data(), &huge, sizeof huge);
  auto d = datagram({msg});
  MessageReader r(d.bytes());
  EXPECT_EQ(r.next(), nullptr);
  ASSERT_TRUE(r.failure());
  EXPECT_EQ(r.failure()->code, Error::kTruncated);
  EXPECT_NE(r.failure()->message().find("claims 4294967295 bytes"), std::string::npos)
      << r.failure()->message();

  const std::uint32_t tiny = 8;
  std::memcpy(msg.data(), &tiny, sizeof tiny);
  d = datagram({msg});
  MessageReader small(d.bytes());
  EXPECT_EQ(small.next(), nullptr);
  ASSERT_TRUE(small.failure());
  EXPECT_EQ(small.failure()->code, Error::kTruncated);
}

TEST(MessageReader, MisalignedMessageIsMalformed) {
  const auto msg = message(NLMSG_DONE, NLM_F_MULTI, kSeq, kPortid, {0, 0, 0, 0});
  std::vector<std::uint32_t> storage(msg.size() / 4 + 2, 0);
  auto* base = reinterpret_cast<std::uint8_t*>(storage.data()) + 1;
  std::memcpy(base, msg.data(), msg.size());
  MessageReader r({base, msg.size()});
  EXPECT_EQ(r.next(), nullptr);
  ASSERT_TRUE(r.failure());
  EXPECT_EQ(r.failure()->code, Error::kMalformed);
}

TEST(MessageReader, PayloadAttributesAndFixedHeader) {
  const auto d = datagram({message(RTM_NEWLINK, 0, kSeq, kPortid, link_payload(9))});
  MessageReader r(d.bytes());
  const nlmsghdr* m = r.next();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(payload(*m).size(), m->nlmsg_len - NLMSG_HDRLEN);
  auto ifi = fixed_header<ifinfomsg>(*m);
  ASSERT_TRUE(ifi);
  EXPECT_EQ(ifi->ifi_index, 9);
  EXPECT_FALSE(fixed_header<rtnl_link_stats64>(*m));  // longer than the message
  auto attrs = parse_attrs<IFLA_MAX>(attributes(*m, sizeof(ifinfomsg)), "link");
  ASSERT_TRUE(attrs) << attrs.error().message();
  ASSERT_NE((*attrs)[IFLA_IFNAME], nullptr);
  EXPECT_EQ(attr_string((*attrs)[IFLA_IFNAME]), "eth0");
  EXPECT_EQ((*attrs)[IFLA_MTU], nullptr);
  EXPECT_TRUE(attributes(*m, 4096).empty());
}

// ---- seq / portid -------------------------------------------------------------------------

TEST(CheckReply, SeqAndPortid) {
  const auto d = datagram({message(RTM_NEWLINK, 0, kSeq, kPortid, link_payload(1))});
  MessageReader r(d.bytes());
  const nlmsghdr* m = r.next();
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(check_reply(*m, kSeq, kPortid));
  auto seq = check_reply(*m, kSeq + 1, kPortid);
  ASSERT_FALSE(seq);
  EXPECT_EQ(seq.error().code, Error::kUnexpectedSeq);
  EXPECT_EQ(seq.error().detail, "got 77, expected 78");
  auto portid = check_reply(*m, kSeq, kPortid + 1);
  ASSERT_FALSE(portid);
  EXPECT_EQ(portid.error().code, Error::kUnexpectedPortid);
}

// ---- NLMSG_ERROR / NLMSG_DONE -------------------------------------------------------------

const nlmsghdr& only(const Datagram& d) {
  MessageReader r(d.bytes());
  const nlmsghdr* m = r.next();
  EXPECT_NE(m, nullptr);
  return *m;
}

TEST(ParseError, AckAndErrno) {
  const auto ack = datagram({message(NLMSG_ERROR, NLM_F_CAPPED, kSeq, kPortid, error_payload(0))});
  auto a = parse_error(only(ack));
  ASSERT_TRUE(a);
  EXPECT_EQ(a->error, 0);
  EXPECT_TRUE(a->message.empty());
  const auto perm =
      datagram({message(NLMSG_ERROR, NLM_F_CAPPED, kSeq, kPortid, error_payload(-EPERM))});
  auto p = parse_error(only(perm));
  ASSERT_TRUE(p);
  EXPECT_EQ(p->error, EPERM);
}

TEST(ParseError, ExtendedAckMessage) {
  const auto d = datagram({message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, kSeq, kPortid,
                                   error_payload(-EINVAL, "Invalid values in header"))});
  auto e = parse_error(only(d));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->error, EINVAL);
  EXPECT_EQ(e->message, "Invalid values in header");

  // Not capped: the whole request is echoed before the TLVs.
  auto payload = error_payload(-EEXIST);
  payload.resize(payload.size() + 8, 0xee);  // the request's 8 payload bytes
  put_attr(payload, NLMSGERR_ATTR_MSG, "File exists here", 17);
  const auto uncapped =
      datagram({message(NLMSG_ERROR, NLM_F_ACK_TLVS, kSeq, kPortid, std::move(payload))});
  auto u = parse_error(only(uncapped));
  ASSERT_TRUE(u);
  EXPECT_EQ(u->error, EEXIST);
  EXPECT_EQ(u->message, "File exists here");
}

TEST(ParseError, MalformedTlvsLoseOnlyTheMessage) {
  auto payload = error_payload(-ENOENT);
  const nlattr bad{200, NLMSGERR_ATTR_MSG};  // claims more than there is
  const auto* p = reinterpret_cast<const std::uint8_t*>(&bad);
  payload.insert(payload.end(), p, p + sizeof bad);
  const auto d = datagram(
      {message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, kSeq, kPortid, std::move(payload))});
  auto e = parse_error(only(d));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->error, ENOENT);
  EXPECT_TRUE(e->message.empty());
  // An echoed request length that would point past the message.
  auto echo = error_payload(-ENOENT);
  const std::uint32_t huge = 0xfffffffdu;
  std::memcpy(echo.data() + sizeof(int), &huge, sizeof huge);
  const auto d2 = datagram({message(NLMSG_ERROR, NLM_F_ACK_TLVS, kSeq, kPortid, echo)});
  auto e2 = parse_error(only(d2));
  ASSERT_TRUE(e2);
  EXPECT_EQ(e2->error, ENOENT);
}

TEST(ParseError, ShortErrorIsTruncated) {
  const auto d = datagram({message(NLMSG_ERROR, 0, kSeq, kPortid, {0xff, 0xff, 0xff, 0xff})});
  auto e = parse_error(only(d));
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, Error::kTruncated);
}

TEST(ParseDone, StatusAndMessage) {
  EXPECT_EQ(parse_done(only(datagram({message(NLMSG_DONE, NLM_F_MULTI, kSeq, kPortid)}))).error, 0);
  const int status = -EBUSY;
  std::vector<std::uint8_t> payload(sizeof status);
  std::memcpy(payload.data(), &status, sizeof status);
  put_attr(payload, NLMSGERR_ATTR_MSG, "busy", 5);
  const auto d =
      datagram({message(NLMSG_DONE, NLM_F_MULTI | NLM_F_ACK_TLVS, kSeq, kPortid, payload)});
  const Ack a = parse_done(only(d));
  EXPECT_EQ(a.error, EBUSY);
  EXPECT_EQ(a.message, "busy");
}

// ---- ReplyReader ------------------------------------------------------------------------

struct Collected {
  std::vector<std::uint32_t> seqs;
  void operator()(const nlmsghdr& m) { seqs.push_back(m.nlmsg_seq); }
};

TEST(ReplyReader, DumpUntilDone) {
  ReplyReader r(kSeq, kPortid, false);
  Collected got;
  const auto first = datagram({message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(1)),
                               message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(2))});
  ASSERT_TRUE(r.feed(first.bytes(), got));
  EXPECT_FALSE(r.done());
  const auto second = datagram({message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(3)),
                                message(NLMSG_DONE, NLM_F_MULTI, kSeq, kPortid, {0, 0, 0, 0})});
  ASSERT_TRUE(r.feed(second.bytes(), got));
  EXPECT_TRUE(r.done());
  EXPECT_EQ(got.seqs.size(), 3u);
  EXPECT_EQ(r.ack().error, 0);
  EXPECT_FALSE(r.ack().interrupted);
  EXPECT_EQ(r.skipped(), 0u);
}

TEST(ReplyReader, OtherSeqAndPortidAreSkippedNotTheEnd) {
  ReplyReader r(kSeq, kPortid, false);
  Collected got;
  // A stale dump's tail (its DONE must not end ours) and a reply for another socket.
  const auto d = datagram({message(RTM_NEWLINK, NLM_F_MULTI, kSeq - 1, kPortid, link_payload(1)),
                           message(NLMSG_DONE, NLM_F_MULTI, kSeq - 1, kPortid, {0, 0, 0, 0}),
                           message(NLMSG_DONE, NLM_F_MULTI, kSeq, kPortid + 1, {0, 0, 0, 0}),
                           message(NLMSG_ERROR, 0, kSeq, kPortid + 1, error_payload(-EPERM)),
                           message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(2))});
  ASSERT_TRUE(r.feed(d.bytes(), got));
  EXPECT_FALSE(r.done());
  EXPECT_EQ(r.skipped(), 4u);
  EXPECT_EQ(got.seqs, std::vector<std::uint32_t>{kSeq});
  const auto done = datagram({message(NLMSG_DONE, NLM_F_MULTI, kSeq, kPortid, {0, 0, 0, 0})});
  ASSERT_TRUE(r.feed(done.bytes(), got));
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.ack().error, 0);
}

TEST(ReplyReader, DumpInterruptedIsReportedAtTheEnd) {
  ReplyReader r(kSeq, kPortid, false);
  Collected got;
  const auto d =
      datagram({message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(1)),
                message(RTM_NEWLINK, NLM_F_MULTI | NLM_F_DUMP_INTR, kSeq, kPortid, link_payload(2)),
                message(NLMSG_DONE, NLM_F_MULTI | NLM_F_DUMP_INTR, kSeq, kPortid, {0, 0, 0, 0})});
  ASSERT_TRUE(r.feed(d.bytes(), got));
  EXPECT_TRUE(r.done());  // read to its end, so the socket is clean for the retry
  EXPECT_TRUE(r.ack().interrupted);
  EXPECT_EQ(r.ack().error, 0);
  EXPECT_EQ(got.seqs.size(), 2u);
}

TEST(ReplyReader, ErrorWithExtendedAckEndsTheExchange) {
  ReplyReader r(kSeq, kPortid, true);
  Collected got;
  const auto d = datagram({message(NLMSG_ERROR, NLM_F_CAPPED | NLM_F_ACK_TLVS, kSeq, kPortid,
                                   error_payload(-EOPNOTSUPP, "Could not process rule")),
                           message(RTM_NEWLINK, 0, kSeq, kPortid, link_payload(1))});
  ASSERT_TRUE(r.feed(d.bytes(), got));
  EXPECT_TRUE(r.done());
  EXPECT_EQ(r.ack().error, EOPNOTSUPP);
  EXPECT_EQ(r.ack().message, "Could not process rule");
  EXPECT_TRUE(got.seqs.empty());  // nothing after the end is delivered
  EXPECT_EQ(r.skipped(), 1u);
}

TEST(ReplyReader, SingleReplyEndsUnlessAnAckFollows) {
  const auto reply = datagram({message(RTM_NEWLINK, 0, kSeq, kPortid, link_payload(1))});
  ReplyReader plain(kSeq, kPortid, false);
  ASSERT_TRUE(plain.feed(reply.bytes(), [](const nlmsghdr&) {}));
  EXPECT_TRUE(plain.done());

  ReplyReader acked(kSeq, kPortid, true);
  int replies = 0;
  ASSERT_TRUE(acked.feed(reply.bytes(), [&](const nlmsghdr&) { ++replies; }));
  EXPECT_FALSE(acked.done());
  const auto ack =
      datagram({message(NLMSG_ERROR, NLM_F_CAPPED, kSeq, kPortid, error_payload(0))});
  ASSERT_TRUE(acked.feed(ack.bytes(), [&](const nlmsghdr&) { ++replies; }));
  EXPECT_TRUE(acked.done());
  EXPECT_EQ(acked.ack().error, 0);
  EXPECT_EQ(replies, 1);
}

TEST(ReplyReader, MalformedRepliesAreErrors) {
  {
    ReplyReader r(kSeq, kPortid, true);
    const auto d = datagram({message(NLMSG_ERROR, 0, kSeq, kPortid, {1, 0, 0, 0})});
    auto f = r.feed(d.bytes(), [](const nlmsghdr&) {});
    ASSERT_FALSE(f);
    EXPECT_EQ(f.error().code, Error::kTruncated);
  }
  {
    ReplyReader r(kSeq, kPortid, false);
    const auto d = datagram({message(NLMSG_OVERRUN, 0, kSeq, kPortid)});
    auto f = r.feed(d.bytes(), [](const nlmsghdr&) {});
    ASSERT_FALSE(f);
    EXPECT_EQ(f.error().code, Error::kOverrun);
  }
  {
    ReplyReader r(kSeq, kPortid, false);
    auto d = datagram({message(RTM_NEWLINK, NLM_F_MULTI, kSeq, kPortid, link_payload(1))});
    auto f = r.feed(d.bytes().first(d.size - 3), [](const nlmsghdr&) {});
    ASSERT_FALSE(f);
    EXPECT_EQ(f.error().code, Error::kTruncated);
  }
}

// ---- attributes --------------------------------------------------------------------------

TEST(AttrReader, PartialAttributeIsAnError) {
  std::vector<std::uint8_t> attrs;
  const std::uint32_t mtu = 1500;
  put_attr(attrs, IFLA_MTU, &mtu, sizeof mtu);
  const nlattr partial{40, IFLA_IFNAME};
  const auto* p = reinterpret_cast<const std::uint8_t*>(&partial);
  attrs.insert(attrs.end(), p, p + sizeof partial);
  attrs.insert(attrs.end(), {'e', 't', 'h', '0'});
  auto t = parse_attrs<IFLA_MAX>(std::span<const std::uint8_t>(attrs), "link");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Error::kTruncated);
  EXPECT_EQ(t.error().detail, "link: attribute type 3 claims 40 bytes, 8 left");
  // A shorter-than-header length is an error too.
  std::vector<std::uint8_t> tiny(4, 0);
  tiny[0] = 2;
  EXPECT_FALSE(parse_attrs<IFLA_MAX>(std::span<const std::uint8_t>(tiny), "x"));
}

TEST(AttrReader, TypesBeyondTheTableAndPaddingAreIgnored) {
  std::vector<std::uint8_t> attrs;
  const std::uint32_t v = 7;
  put_attr(attrs, 2000, &v, sizeof v);
  put_attr(attrs, NLA_F_NESTED | IFLA_MTU, &v, sizeof v);
  attrs.insert(attrs.end(), {0, 0});  // shorter than an attribute header: padding
  auto t = parse_attrs<IFLA_MAX>(std::span<const std::uint8_t>(attrs), "link");
  ASSERT_TRUE(t) << t.error().message();
  ASSERT_NE((*t)[IFLA_MTU], nullptr);
  EXPECT_EQ(attr_type((*t)[IFLA_MTU]), IFLA_MTU);
  EXPECT_EQ(attr_u32((*t)[IFLA_MTU]), 7u);
  EXPECT_EQ((*t)[2000], nullptr);
}

TEST(AttrReader, ValueAccessorsCheckLengths) {
  std::vector<std::uint8_t> attrs;
  const std::uint16_t two = 2;
  put_attr(attrs, 1, &two, sizeof two);
  put_attr(attrs, 2, "abc", 4);
  put_attr(attrs, 3, "abc", 3);  // no NUL
  put_attr(attrs, 4, "", 0);
  AttrReader r(attrs, "test");
  const nlattr* a1 = r.next();
  const nlattr* a2 = r.next();
  const nlattr* a3 = r.next();
  const nlattr* a4 = r.next();
  ASSERT_TRUE(a1 && a2 && a3 && a4);
  EXPECT_EQ(r.next(), nullptr);
  EXPECT_FALSE(r.failure());
  EXPECT_FALSE(attr_u32(a1));
  EXPECT_EQ(attr_u16(a1), 2u);
  EXPECT_EQ(attr_u8(a1), 2u);
  EXPECT_EQ(attr_nul_string(a2), "abc");
  EXPECT_FALSE(attr_nul_string(a3));
  EXPECT_EQ(attr_string(a3), "abc");
  EXPECT_FALSE(attr_nul_string(a4));
  EXPECT_TRUE(attr_payload(a4).empty());
}

// ---- MessageBuilder -----------------------------------------------------------------------

TEST(MessageBuilder, BuildsWhatTheReaderReads) {
  alignas(nlmsghdr) std::uint8_t buf[128];
  std::memset(buf, 0xaa, sizeof buf);  // garbage the builder must not leave in the message
  MessageBuilder msg(buf, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP);
  msg.put_header<ifinfomsg>().ifi_family = AF_UNSPEC;
  msg.put_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS);
  msg.put_strz(IFLA_IFNAME, "lo");
  msg.put_u8(IFLA_OPERSTATE, 6);
  EXPECT_EQ(msg.header()->nlmsg_len,
            NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(ifinfomsg)) + 8 + 8 + 8);
  EXPECT_EQ(msg.bytes().size(), msg.header()->nlmsg_len);
  MessageReader r(msg.bytes());
  const nlmsghdr* m = r.next();
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->nlmsg_type, RTM_GETLINK);
  EXPECT_EQ(m->nlmsg_flags, NLM_F_REQUEST | NLM_F_DUMP);
  EXPECT_EQ(m->nlmsg_seq, 0u);
  EXPECT_EQ(fixed_header<ifinfomsg>(*m)->ifi_index, 0);
  auto t = parse_attrs<IFLA_MAX>(attributes(*m, sizeof(ifinfomsg)), "link");
  ASSERT_TRUE(t);
  EXPECT_EQ(attr_u32((*t)[IFLA_EXT_MASK]), RTEXT_FILTER_SKIP_STATS);
  EXPECT_EQ(attr_nul_string((*t)[IFLA_IFNAME]), "lo");
  EXPECT_EQ(attr_u8((*t)[IFLA_OPERSTATE]), 6u);
  EXPECT_EQ(r.next(), nullptr);
  EXPECT_FALSE(r.failure());
}

TEST(MessageBuilder, OverflowAndMisalignmentAreProgrammingErrors) {
  alignas(nlmsghdr) std::uint8_t buf[32];
  MessageBuilder msg(buf, RTM_GETLINK, NLM_F_REQUEST);
  EXPECT_THROW(msg.put_strz(IFLA_IFNAME, "a name longer than the room left"), std::length_error);
  EXPECT_THROW(MessageBuilder(std::span(buf).subspan(1), RTM_GETLINK, 0), std::invalid_argument);
  EXPECT_THROW(MessageBuilder(std::span(buf).first(8), RTM_GETLINK, 0), std::length_error);
}

}  // namespace
}  // namespace splitd::netlink
