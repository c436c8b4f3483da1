#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/expected.hpp"
#include "common/ip_address.hpp"

// The DNS wire view: bounded parsing of client queries and upstream answers, and the few
// answers splitd builds itself. Free functions over caller-owned buffers, no state, safe to
// call from any thread. Only dns/message.cpp sees the wire library (libknot).
namespace splitd::dns {

enum class WireError : std::uint8_t {
  kTooShort,     // shorter than a header
  kNotQuery,     // QR set, or opcode not QUERY (for parse_query)
  kNotResponse,  // QR clear (for parse_answer)
  kBadQuestion,  // QDCOUNT != 1, malformed/oversized qname, truncated question
  kMalformed,    // anything else libknot refuses: bogus counts, compression loops, bad RR, trailing garbage
};
const char* to_string(WireError e);

struct Query {
  std::uint16_t id = 0;
  std::uint8_t opcode = 0;
  bool rd = false, cd = false;
  // The queried name: lowercase ASCII presentation without the trailing dot ("" = root).
  // Bytes outside [A-Za-z0-9-_*/] are escaped as libknot prints them: punctuation other
  // than '#' as \c (a dot inside a label is "\."), everything else as \DDD.
  std::string name;
  std::uint16_t qtype = 0, qclass = 0;
  // Wire offset just past the question: bytes [12, question_end) are the question exactly
  // as sent (0x20 mixed case kept).
  std::size_t question_end = 0;
  bool edns = false;                // an OPT record was present
  std::uint16_t edns_udp_size = 0;  // its advertised size (as sent; callers clamp)
  bool do_bit = false;
};
// A client's query. Anything other than one well-formed question is an error.
Expected<Query, WireError> parse_query(std::span<const std::uint8_t> wire);

struct LearnedAddress {
  IpAddress ip;
  std::uint32_t ttl = 0;  // of the A/AAAA record (or of the HTTPS/SVCB record for hints)

  friend bool operator==(const LearnedAddress&, const LearnedAddress&) = default;
};
struct AnswerInfo {
  std::uint16_t id = 0;
  std::uint8_t rcode = 0;  // the 4-bit header RCODE (EDNS extended bits not merged)
  bool tc = false;
  // Exactly one question, same name (case-insensitive), qtype and qclass as `query`.
  bool question_matches = false;
  // query.name then each CNAME target of the chain, in order (lowercase, no trailing dot);
  // chain followed only from the queried name, at most 16 links, no loops. Only
  // {query.name} when the question does not match (nothing is learned from such an answer).
  std::vector<std::string> names;
  // A/AAAA (class IN) in the answer section whose owner is any of `names`; plus the
  // ipv4hint/ipv6hint of HTTPS/SVCB records (answer section, ServiceMode) whose owner is any
  // of `names`; no duplicate ip (the first occurrence's position, the smallest TTL). Empty
  // when the question does not match.
  std::vector<LearnedAddress> addresses;
  // Smallest TTL of the answer and authority sections (0 if both empty); an SOA in the
  // authority section counts as min(ttl, minimum) (RFC 2308 negative caching).
  std::uint32_t min_ttl = 0;
  // Wire offset of the 4-byte TTL of every RR in answer/authority/additional except OPT
  // (for age_ttls).
  std::vector<std::uint16_t> ttl_offsets;
};
// An upstream's answer to `query`. Does not check the id (the caller does).
Expected<AnswerInfo, WireError> parse_answer(std::span<const std::uint8_t> wire, const Query& query);

// A response made by splitd for `query_wire` (already parsed as `q`): the client's id, QR,
// its opcode, RD and CD, RA set, the given rcode, the question echoed byte for byte, and an
// OPT record (udp size 1232, no options, DO echoed) if the query had EDNS. Used for SERVFAIL
// (upstreams failed / kill switch), NXDOMAIN (the Firefox canary), REFUSED.
std::vector<std::uint8_t> make_response(std::span<const std::uint8_t> query_wire, const Query& q,
                                        std::uint8_t rcode);
// For a packet parse_query refused: a FORMERR header-only answer (12 bytes, the packet's id,
// QR set, opcode copied, all counts 0) when the packet is at least a header with QR clear;
// nullopt (drop it) otherwise.
std::optional<std::vector<std::uint8_t>> formerr_for(std::span<const std::uint8_t> wire);
// The UDP size limit for a client: 512 without EDNS, else clamp(edns_udp_size, 512, 65535).
std::size_t udp_limit(const Query& q);
// If answer is larger than limit: cut it to the header and its question (+ an OPT record,
// udp size 1232, if q.edns), set TC, zero AN/NS/AR counts (AR = 1 if OPT kept). Returns true
// if it truncated. An answer whose own question cannot be walked is cut to the header with
// QDCOUNT 0.
bool truncate_to(std::vector<std::uint8_t>& answer, const Query& q, std::size_t limit);
// Puts the client's id and the client's question bytes (query_wire[12, q.question_end)) into
// an upstream answer whose question has the same length (0x20 case restored byte for byte).
// Returns false (answer untouched) if the answer is shorter than that, its question length
// differs or its question name differs other than in ASCII case (compression pointers into
// the question would otherwise change meaning).
bool restore_question(std::vector<std::uint8_t>& answer, std::span<const std::uint8_t> query_wire,
                      const Query& q);
// Subtracts `elapsed` seconds from every TTL at `offsets` (floor 0): a cached answer served
// later. Offsets whose 4 bytes do not fit in `wire` are skipped.
void age_ttls(std::span<std::uint8_t> wire, std::span<const std::uint16_t> offsets, std::uint32_t elapsed);
// Sets the message id (first two bytes), big-endian. No-op on a buffer shorter than 2.
void set_id(std::span<std::uint8_t> wire, std::uint16_t id);

}  // namespace splitd::dns
