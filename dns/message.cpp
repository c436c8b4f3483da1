#include "dns/message.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <numeric>

// libknot's headers carry no extern "C" guards.
extern "C" {
#include <libknot/codes.h>
#include <libknot/consts.h>
#include <libknot/descriptor.h>
#include <libknot/dname.h>
#include <libknot/packet/pkt.h>
#include <libknot/packet/wire.h>
#include <libknot/rrset.h>
#include <libknot/rrtype/opt.h>
#include <libknot/rrtype/rdname.h>
}

namespace splitd::dns {
namespace {

constexpr std::size_t kHeaderSize = KNOT_WIRE_HEADER_SIZE;
constexpr std::size_t kMaxMessage = 65535;
constexpr std::size_t kMinUdpLimit = 512;
constexpr std::uint16_t kOurUdpSize = 1232;  // DNS flag day 2020
constexpr std::size_t kOptRrSize = 11;       // root owner, type, class, ttl, rdlength 0
constexpr std::size_t kMaxChainLinks = 16;
// A standard query carries at most an OPT and a TSIG/SIG(0) besides its question. More is
// refused before libknot sees it: libknot follows every name's pointer chain afresh, so a
// 64 KB packet of records whose owners point down one long chain costs ~20 ms of CPU
// (measured), and clients may send as many of those as they like.
constexpr std::size_t kMaxQueryRecords = 8;
constexpr std::uint16_t kSvcParamIpv4Hint = 4;
constexpr std::uint16_t kSvcParamIpv6Hint = 6;
constexpr std::uint8_t kFlags1Qr = 0x80;
constexpr std::uint8_t kFlags1OpcodeMask = 0x78;
constexpr std::uint8_t kFlags1Tc = 0x02;
constexpr std::uint8_t kFlags1Rd = 0x01;
constexpr std::uint8_t kFlags2Ra = 0x80;
constexpr std::uint8_t kFlags2Cd = 0x10;

struct PktDeleter {
  void operator()(knot_pkt_t* pkt) const { knot_pkt_free(pkt); }
};
using PktPtr = std::unique_ptr<knot_pkt_t, PktDeleter>;

std::uint16_t read_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}
std::uint32_t read_u32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
}
void write_u16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v);
}
void write_u32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }
std::uint8_t ascii_lower(std::uint8_t c) { return (c >= 'A' && c <= 'Z') ? static_cast<std::uint8_t>(c - 'A' + 'a') : c; }

bool iequals(const std::string& a, const std::string& b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

// RFC 2181 section 8: a TTL with the top bit set is treated as zero.
std::uint32_t effective_ttl(std::uint32_t ttl) { return (ttl & 0x80000000u) != 0 ? 0 : ttl; }

// Parses `wire` with libknot. libknot wants a mutable wire: knot_pkt_parse writes to it only
// to strip a TSIG record (and lower its ARCOUNT), which KNOT_PF_KEEPWIRE turns off, so the
// caller's bytes are read in place, never copied nor written.
Expected<PktPtr, WireError> parse_packet(std::span<const std::uint8_t> wire) {
  if (knot_wire_get_qdcount(wire.data()) != 1) {
    return unexpected(WireError::kBadQuestion);
  }
  PktPtr pkt(knot_pkt_new(const_cast<std::uint8_t*>(wire.data()), static_cast<std::uint16_t>(wire.size()), nullptr));
  if (!pkt) {
    return unexpected(WireError::kMalformed);  // out of memory; the packet is not to blame, but it is dropped
  }
  // knot_pkt_parse does not say where it failed, so the question is checked alone first.
  if (knot_pkt_parse_question(pkt.get()) != KNOT_EOK) {
    return unexpected(WireError::kBadQuestion);
  }
  // KNOT_ETRAIL (trailing bytes) is refused as well: nothing splitd forwards may carry them.
  if (knot_pkt_parse(pkt.get(), KNOT_PF_KEEPWIRE) != KNOT_EOK) {
    return unexpected(WireError::kMalformed);
  }
  return pkt;
}

// Presentation form as libknot prints it, lowercased, without the trailing dot.
std::string presentation(const knot_dname_t* name) {
  knot_dname_txt_storage_t buf;
  if (name == nullptr || knot_dname_to_str(buf, name, sizeof buf) == nullptr) {
    return {};
  }
  std::string s(buf);
  if (!s.empty() && s.back() == '.') {
    s.pop_back();  // the root label; an escaped dot before it stays ("a\.")
  }
  for (char& c : s) {
    c = ascii_lower(c);
  }
  return s;
}

// A wire name (uncompressed, as libknot stores parsed names) lowercased into fixed storage.
struct LowerName {
  knot_dname_storage_t bytes;
  std::size_t size = 0;

  explicit LowerName(const knot_dname_t* name) {
    knot_dname_copy_lower(bytes, name);
    size = knot_dname_size(bytes);
  }
  bool operator==(const LowerName& o) const { return size == o.size && std::memcmp(bytes, o.bytes, size) == 0; }
};

// Where a message's question ends, walked without libknot (for buffers the caller holds
// that may not have been parsed): QDCOUNT 1, uncompressed name of at most 255 bytes.
std::optional<std::size_t> question_end_of(std::span<const std::uint8_t> wire) {
  if (wire.size() < kHeaderSize || read_u16(wire.data() + 4) != 1) {
    return std::nullopt;
  }
  std::size_t off = kHeaderSize;
  while (true) {
    if (off >= wire.size()) {
      return std::nullopt;
    }
    const std::uint8_t len = wire[off];
    if (len == 0) {
      ++off;
      break;
    }
    if (len > KNOT_DNAME_MAXLABELLEN) {
      return std::nullopt;  // a pointer or an extended label type
    }
    off += 1u + len;
    if (off - kHeaderSize > KNOT_DNAME_MAXLEN) {
      return std::nullopt;
    }
  }
  if (off - kHeaderSize > KNOT_DNAME_MAXLEN || wire.size() - off < 4) {
    return std::nullopt;
  }
  return off + 4;
}

// The length of the name at `pos` as it sits in the wire (labels up to the root label or up
// to and including a compression pointer), without following pointers.
std::optional<std::size_t> name_length_in_place(std::span<const std::uint8_t> wire, std::size_t pos) {
  std::size_t off = pos;
  while (off < wire.size() && off - pos <= KNOT_DNAME_MAXLEN) {
    const std::uint8_t len = wire[off];
    if (len == 0) {
      return off + 1 - pos;
    }
    if ((len & 0xC0) == 0xC0) {
      return off + 2 <= wire.size() ? std::optional<std::size_t>(off + 2 - pos) : std::nullopt;
    }
    if (len > KNOT_DNAME_MAXLABELLEN) {
      return std::nullopt;
    }
    off += 1u + len;
  }
  return std::nullopt;
}

void append_opt(std::vector<std::uint8_t>& out, std::uint8_t ext_rcode, bool do_bit) {
  const std::uint8_t opt[kOptRrSize] = {
      0,                                            // root owner
      0, KNOT_RRTYPE_OPT,                           // type
      static_cast<std::uint8_t>(kOurUdpSize >> 8),  // class = udp payload size
      static_cast<std::uint8_t>(kOurUdpSize & 0xff),
      ext_rcode, 0,                                 // extended rcode, version 0
      static_cast<std::uint8_t>(do_bit ? 0x80 : 0), 0,  // DO, Z
      0, 0,                                         // rdlength
  };
  out.insert(out.end(), std::begin(opt), std::end(opt));
}

// ipv4hint/ipv6hint of one SVCB/HTTPS rdata (RFC 9460 section 2.2), bounded by `len`.
void svcb_hints(const std::uint8_t* p, std::size_t len, std::uint32_t ttl, std::vector<LearnedAddress>& out) {
  if (len < 3 || read_u16(p) == 0) {
    return;  // AliasMode: SvcParams must be ignored
  }
  std::size_t off = 2;
  while (true) {  // TargetName, never compressed
    if (off >= len) {
      return;
    }
    const std::uint8_t label = p[off];
    if (label == 0) {
      ++off;
      break;
    }
    if (label > KNOT_DNAME_MAXLABELLEN) {
      return;
    }
    off += 1u + label;
  }
  while (off <= len && len - off >= 4) {
    const std::uint16_t key = read_u16(p + off);
    const std::uint16_t vlen = read_u16(p + off + 2);
    off += 4;
    if (vlen > len - off) {
      return;
    }
    const std::size_t width = key == kSvcParamIpv4Hint ? 4 : key == kSvcParamIpv6Hint ? 16 : 0;
    if (width != 0 && vlen % width == 0) {
      for (std::size_t i = 0; i < vlen; i += width) {
        if (auto ip = IpAddress::from_bytes({p + off + i, width})) {
          out.push_back({*ip, ttl});
        }
      }
    }
    off += vlen;
  }
}

// Drops repeated ips, keeping the first position and the smallest TTL; O(n log n).
void dedupe(std::vector<LearnedAddress>& v) {
  if (v.size() < 2) {
    return;
  }
  std::vector<std::size_t> order(v.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return v[a].ip < v[b].ip; });
  std::vector<bool> keep(v.size(), false);
  for (std::size_t i = 0; i < order.size();) {
    std::size_t j = i;
    std::uint32_t ttl = v[order[i]].ttl;
    while (j < order.size() && v[order[j]].ip == v[order[i]].ip) {
      ttl = std::min(ttl, v[order[j]].ttl);
      ++j;
    }
    keep[order[i]] = true;  // stable sort: the first position of the group
    v[order[i]].ttl = ttl;
    i = j;
  }
  std::size_t w = 0;
  for (std::size_t r = 0; r < v.size(); ++r) {
    if (keep[r]) {
      v[w++] = v[r];
    }
  }
  v.resize(w);
}

}  // namespace

const char* to_string(WireError e) {
  switch (e) {
    case WireError::kTooShort: return "message shorter than a DNS header";
    case WireError::kNotQuery: return "not a standard query";
    case WireError::kNotResponse: return "not a response";
    case WireError::kBadQuestion: return "bad question section";
    case WireError::kMalformed: return "malformed message";
  }
  return "unknown DNS wire error";
}

Expected<Query, WireError> parse_query(std::span<const std::uint8_t> wire) {
  if (wire.size() < kHeaderSize) {
    return unexpected(WireError::kTooShort);
  }
  if (wire.size() > kMaxMessage) {
    return unexpected(WireError::kMalformed);
  }
  if (knot_wire_get_qr(wire.data()) != 0 || knot_wire_get_opcode(wire.data()) != KNOT_OPCODE_QUERY) {
    return unexpected(WireError::kNotQuery);
  }
  if (std::size_t{knot_wire_get_ancount(wire.data())} + knot_wire_get_nscount(wire.data()) +
          knot_wire_get_arcount(wire.data()) > kMaxQueryRecords) {
    return unexpected(knot_wire_get_qdcount(wire.data()) != 1 ? WireError::kBadQuestion : WireError::kMalformed);
  }
  auto parsed = parse_packet(wire);
  if (!parsed) {
    return unexpected(parsed.error());
  }
  const knot_pkt_t* pkt = parsed->get();
  Query q;
  q.id = knot_wire_get_id(wire.data());
  q.opcode = knot_wire_get_opcode(wire.data());
  q.rd = knot_wire_get_rd(wire.data()) != 0;
  q.cd = knot_wire_get_cd(wire.data()) != 0;
  q.name = presentation(knot_pkt_qname(pkt));
  q.qtype = knot_pkt_qtype(pkt);
  q.qclass = knot_pkt_qclass(pkt);
  q.question_end = kHeaderSize + knot_pkt_question_size(pkt);
  if (pkt->opt_rr != nullptr) {
    q.edns = true;
    q.edns_udp_size = knot_edns_get_payload(pkt->opt_rr);
    q.do_bit = knot_edns_do(pkt->opt_rr);
  }
  return q;
}

Expected<AnswerInfo, WireError> parse_answer(std::span<const std::uint8_t> wire, const Query& query) {
  if (wire.size() < kHeaderSize) {
    return unexpected(WireError::kTooShort);
  }
  if (wire.size() > kMaxMessage) {
    return unexpected(WireError::kMalformed);
  }
  if (knot_wire_get_qr(wire.data()) == 0) {
    return unexpected(WireError::kNotResponse);
  }
  auto parsed = parse_packet(wire);
  if (!parsed) {
    return unexpected(parsed.error());
  }
  const knot_pkt_t* pkt = parsed->get();
  AnswerInfo info;
  info.id = knot_wire_get_id(wire.data());
  info.rcode = knot_wire_get_rcode(wire.data());
  info.tc = knot_wire_get_tc(wire.data()) != 0;
  info.question_matches = knot_pkt_qtype(pkt) == query.qtype && knot_pkt_qclass(pkt) == query.qclass &&
                          iequals(presentation(knot_pkt_qname(pkt)), query.name);

  const knot_pktsection_t* answer = knot_pkt_section(pkt, KNOT_ANSWER);

  // TTL offsets and the smallest TTL. libknot 3 keeps one rrset per wire RR (no merging),
  // and knows where each starts; the TTL follows the owner (as sent) and type and class.
  bool any_ttl = false;
  std::uint32_t min_ttl = 0;
  for (int s = KNOT_ANSWER; s <= KNOT_ADDITIONAL; ++s) {
    const knot_pktsection_t* section = knot_pkt_section(pkt, static_cast<knot_section_t>(s));
    for (std::uint16_t i = 0; i < section->count; ++i) {
      const knot_rrset_t* rr = knot_pkt_rr(section, i);
      if (rr->type == KNOT_RRTYPE_OPT) {
        continue;
      }
      const std::size_t pos = knot_pkt_rr_offset(section, i);
      if (auto owner_len = name_length_in_place(wire, pos); owner_len && pos + *owner_len + 8 <= wire.size()) {
        info.ttl_offsets.push_back(static_cast<std::uint16_t>(pos + *owner_len + 4));
      }
      if (s == KNOT_ADDITIONAL) {
        continue;
      }
      std::uint32_t ttl = effective_ttl(rr->ttl);
      if (s == KNOT_AUTHORITY && rr->type == KNOT_RRTYPE_SOA && rr->rrs.count > 0 && rr->rrs.rdata->len >= 4) {
        const knot_rdata_t* rd = rr->rrs.rdata;
        ttl = std::min(ttl, effective_ttl(read_u32(rd->data + rd->len - 4)));  // SOA MINIMUM is last
      }
      min_ttl = any_ttl ? std::min(min_ttl, ttl) : ttl;
      any_ttl = true;
    }
  }
  info.min_ttl = min_ttl;

  info.names.push_back(query.name);
  if (!info.question_matches) {
    return info;
  }

  // The CNAME chain from the queried name, bounded in links; a target already seen ends it.
  std::vector<LowerName> chain;
  chain.reserve(kMaxChainLinks + 1);
  chain.emplace_back(knot_pkt_qname(pkt));
  while (chain.size() <= kMaxChainLinks) {
    const LowerName* next_owner = &chain.back();
    const knot_rdata_t* target = nullptr;
    for (std::uint16_t i = 0; i < answer->count && target == nullptr; ++i) {
      const knot_rrset_t* rr = knot_pkt_rr(answer, i);
      if (rr->type == KNOT_RRTYPE_CNAME && rr->rclass == KNOT_CLASS_IN && rr->rrs.count > 0 &&
          rr->rrs.rdata->len > 0 && LowerName(rr->owner) == *next_owner) {
        target = rr->rrs.rdata;
      }
    }
    if (target == nullptr) {
      break;
    }
    LowerName name(knot_cname_name(target));
    if (std::find(chain.begin(), chain.end(), name) != chain.end()) {
      break;  // a loop
    }
    chain.push_back(name);
    info.names.push_back(presentation(knot_cname_name(target)));
  }

  for (std::uint16_t i = 0; i < answer->count; ++i) {
    const knot_rrset_t* rr = knot_pkt_rr(answer, i);
    if (rr->rclass != KNOT_CLASS_IN ||
        (rr->type != KNOT_RRTYPE_A && rr->type != KNOT_RRTYPE_AAAA && rr->type != KNOT_RRTYPE_SVCB &&
         rr->type != KNOT_RRTYPE_HTTPS)) {
      continue;
    }
    if (std::find(chain.begin(), chain.end(), LowerName(rr->owner)) == chain.end()) {
      continue;
    }
    const std::uint32_t ttl = effective_ttl(rr->ttl);
    const knot_rdata_t* rd = rr->rrs.rdata;
    for (std::uint16_t k = 0; k < rr->rrs.count; ++k, rd = knot_rdataset_next(const_cast<knot_rdata_t*>(rd))) {
      if (rr->type == KNOT_RRTYPE_A || rr->type == KNOT_RRTYPE_AAAA) {
        const std::size_t want = rr->type == KNOT_RRTYPE_A ? 4 : 16;
        if (rd->len == want) {
          if (auto ip = IpAddress::from_bytes({rd->data, want})) {
            info.addresses.push_back({*ip, ttl});
          }
        }
      } else {
        svcb_hints(rd->data, rd->len, ttl, info.addresses);
      }
    }
  }
  dedupe(info.addresses);
  return info;
}

std::vector<std::uint8_t> make_response(std::span<const std::uint8_t> query_wire, const Query& q, std::uint8_t rcode) {
  const bool has_question = q.question_end >= kHeaderSize + 5 && q.question_end <= query_wire.size();
  std::vector<std::uint8_t> out(kHeaderSize, 0);
  out.reserve((has_question ? q.question_end : kHeaderSize) + (q.edns ? kOptRrSize : 0));
  write_u16(out.data(), q.id);
  out[2] = static_cast<std::uint8_t>(kFlags1Qr | ((q.opcode << 3) & kFlags1OpcodeMask) | (q.rd ? kFlags1Rd : 0));
  out[3] = static_cast<std::uint8_t>(kFlags2Ra | (q.cd ? kFlags2Cd : 0) | (rcode & 0x0f));
  write_u16(out.data() + 4, has_question ? 1 : 0);
  write_u16(out.data() + 10, q.edns ? 1 : 0);
  if (has_question) {
    out.insert(out.end(), query_wire.begin() + kHeaderSize, query_wire.begin() + static_cast<std::ptrdiff_t>(q.question_end));
  }
  if (q.edns) {
    append_opt(out, static_cast<std::uint8_t>(rcode >> 4), q.do_bit);
  }
  return out;
}

std::optional<std::vector<std::uint8_t>> formerr_for(std::span<const std::uint8_t> wire) {
  if (wire.size() < kHeaderSize || knot_wire_get_qr(wire.data()) != 0) {
    return std::nullopt;
  }
  std::vector<std::uint8_t> out(kHeaderSize, 0);
  out[0] = wire[0];
  out[1] = wire[1];
  out[2] = static_cast<std::uint8_t>(kFlags1Qr | (wire[2] & kFlags1OpcodeMask));
  out[3] = KNOT_RCODE_FORMERR;
  return out;
}

std::size_t udp_limit(const Query& q) {
  if (!q.edns) {
    return kMinUdpLimit;
  }
  return std::clamp<std::size_t>(q.edns_udp_size, kMinUdpLimit, kMaxMessage);
}

bool truncate_to(std::vector<std::uint8_t>& answer, const Query& q, std::size_t limit) {
  if (answer.size() <= limit || answer.size() < kHeaderSize) {
    return false;
  }
  const std::optional<std::size_t> qend = question_end_of(answer);
  answer.resize(qend.value_or(kHeaderSize));
  answer[2] |= kFlags1Tc;
  write_u16(answer.data() + 4, qend ? 1 : 0);
  write_u16(answer.data() + 6, 0);
  write_u16(answer.data() + 8, 0);
  write_u16(answer.data() + 10, q.edns ? 1 : 0);
  if (q.edns) {
    append_opt(answer, 0, q.do_bit);
  }
  return true;
}

bool restore_question(std::vector<std::uint8_t>& answer, std::span<const std::uint8_t> query_wire, const Query& q) {
  const std::size_t end = q.question_end;
  if (end < kHeaderSize + 5 || query_wire.size() < end || answer.size() < end) {
    return false;
  }
  if (question_end_of(answer) != end) {
    return false;
  }
  // The name may differ only in case (labels lengths are < 64, below 'A'); type and class not at all.
  for (std::size_t i = kHeaderSize; i < end; ++i) {
    const bool in_name = i < end - 4;
    const std::uint8_t a = in_name ? ascii_lower(answer[i]) : answer[i];
    const std::uint8_t b = in_name ? ascii_lower(query_wire[i]) : query_wire[i];
    if (a != b) {
      return false;
    }
  }
  answer[0] = query_wire[0];
  answer[1] = query_wire[1];
  std::copy(query_wire.begin() + kHeaderSize, query_wire.begin() + static_cast<std::ptrdiff_t>(end),
            answer.begin() + kHeaderSize);
  return true;
}

void age_ttls(std::span<std::uint8_t> wire, std::span<const std::uint16_t> offsets, std::uint32_t elapsed) {
  for (const std::uint16_t off : offsets) {
    if (std::size_t{off} + 4 > wire.size()) {
      continue;
    }
    const std::uint32_t ttl = read_u32(wire.data() + off);
    write_u32(wire.data() + off, ttl > elapsed ? ttl - elapsed : 0);
  }
}

void set_id(std::span<std::uint8_t> wire, std::uint16_t id) {
  if (wire.size() >= 2) {
    write_u16(wire.data(), id);
  }
}

}  // namespace splitd::dns
