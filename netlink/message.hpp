#pragma once

#include <linux/netlink.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "common/expected.hpp"
#include "netlink/error.hpp"

// The helpers every netlink parser in splitd shares: what the kernel sends is untrusted
// input, so each length is checked against the bytes actually received before anything
// is read. Pure functions and small value types over caller-owned buffers; no I/O.
namespace splitd::netlink {

// The outcome of a request or dump: the kernel's errno (0 = success, positive), its
// extended-ack message if any, and whether the dump changed while it ran (NLM_F_DUMP_INTR:
// the result may be inconsistent; retry it).
struct Ack {
  int error = 0;
  std::string message;
  bool interrupted = false;
};

// Walks the messages of one received datagram. next() returns each message whose header
// and nlmsg_len bytes lie inside the buffer, then nullptr: at the end, or at the first
// problem (a partial header, a length beyond the buffer or below a header, a misaligned
// message), which failure() then describes. Messages before a problem are still
// returned, as the kernel's own walk would.
class MessageReader {
 public:
  explicit MessageReader(std::span<const std::uint8_t> buffer) : buf_(buffer) {}
  const nlmsghdr* next();
  const std::optional<Failure>& failure() const { return failure_; }

 private:
  std::span<const std::uint8_t> buf_;
  std::size_t off_ = 0;
  std::optional<Failure> failure_;
};

// The bytes after the netlink header (nlmsg_len of a message MessageReader returned).
std::span<const std::uint8_t> payload(const nlmsghdr& nlh);
// The attributes after a family header of `header_size` bytes (ifinfomsg, rtmsg, ...);
// empty when the message is not longer than that.
std::span<const std::uint8_t> attributes(const nlmsghdr& nlh, std::size_t header_size);

// A copy of the family header T (ifinfomsg, rtmsg, nfgenmsg, ...) that follows the
// netlink header; nullopt when the message is too short to hold one.
template <typename T>
std::optional<T> fixed_header(const nlmsghdr& nlh) {
  static_assert(std::is_trivially_copyable_v<T>);
  const auto p = payload(nlh);
  if (p.size() < sizeof(T)) return std::nullopt;
  T out;
  std::memcpy(&out, p.data(), sizeof out);
  return out;
}

// Parses an NLMSG_ERROR message: its errno (made positive) and the extended-ack message
// (NLMSGERR_ATTR_MSG) when the kernel sent one. kTruncated when it is too short to be one.
Expected<Ack, Failure> parse_error(const nlmsghdr& nlh);
// The status of an NLMSG_DONE message (0, or a positive errno) and its extended-ack
// message; a DONE without a payload means 0.
Ack parse_done(const nlmsghdr& nlh);

// Checks that a reply belongs to the request `seq` sent from the socket `portid`.
// kUnexpectedSeq / kUnexpectedPortid otherwise (with both numbers in the detail).
Expected<void, Failure> check_reply(const nlmsghdr& nlh, std::uint32_t seq, std::uint32_t portid);

// Follows the replies to one request, datagram by datagram: messages of another request
// or socket (stale replies of an earlier exchange, multicast events) are skipped;
// NLM_F_DUMP_INTR is noted; NLMSG_ERROR and NLMSG_DONE end it, and so does a single
// (non-NLM_F_MULTI) reply when the request asked for no ACK. Data messages of the
// exchange go to the callback. Value type, not thread-safe.
class ReplyReader {
 public:
  // `acked`: the request carried NLM_F_ACK, so an NLMSG_ERROR always ends the exchange.
  ReplyReader(std::uint32_t seq, std::uint32_t portid, bool acked)
      : seq_(seq), portid_(portid), acked_(acked) {}

  using Callback = void (*)(const nlmsghdr&, void*);
  // Feeds one datagram. A malformed datagram, a malformed NLMSG_ERROR or NLMSG_OVERRUN is
  // an error; the exchange is then unusable.
  Expected<void, Failure> feed(std::span<const std::uint8_t> datagram, Callback cb, void* ctx);
  template <typename F>
  Expected<void, Failure> feed(std::span<const std::uint8_t> datagram, F&& on_message) {
    using Fn = std::remove_reference_t<F>;
    return feed(
        datagram, [](const nlmsghdr& m, void* c) { (*static_cast<Fn*>(c))(m); }, &on_message);
  }

  bool done() const { return done_; }
  // Valid once done().
  const Ack& ack() const { return ack_; }
  // Messages skipped as not belonging to this exchange.
  std::size_t skipped() const { return skipped_; }

 private:
  std::uint32_t seq_;
  std::uint32_t portid_;
  bool acked_;
  bool done_ = false;
  std::size_t skipped_ = 0;
  Ack ack_;
};

// Walks the attributes in a buffer (a message's, or a nested attribute's payload).
// Unlike mnl_attr_parse, a partial attribute is an error (kTruncated, "WHAT: attribute
// type T claims N bytes, M left") rather than silently the end of the list; trailing
// bytes shorter than an attribute header are padding.
class AttrReader {
 public:
  AttrReader(std::span<const std::uint8_t> data, const char* what) : data_(data), what_(what) {}
  // The next attribute, or nullptr at the end or on a problem (see failure()). The
  // pointer is into the buffer and may be misaligned: read it with the attr_* helpers.
  const nlattr* next();
  const std::optional<Failure>& failure() const { return failure_; }

 private:
  std::span<const std::uint8_t> data_;
  const char* what_;
  std::size_t off_ = 0;
  std::optional<Failure> failure_;
};

// The attribute type without the NLA_F_NESTED / NLA_F_NET_BYTEORDER bits.
std::uint16_t attr_type(const nlattr* a);
std::span<const std::uint8_t> attr_payload(const nlattr* a);
// Fixed-size values: nullopt when the payload is shorter than the value.
std::optional<std::uint8_t> attr_u8(const nlattr* a);
std::optional<std::uint16_t> attr_u16(const nlattr* a);
std::optional<std::uint32_t> attr_u32(const nlattr* a);
std::optional<std::uint64_t> attr_u64(const nlattr* a);
// A NUL-terminated string attribute (libmnl's MNL_TYPE_NUL_STRING: non-empty and its last
// byte NUL); nullopt otherwise.
std::optional<std::string> attr_nul_string(const nlattr* a);
// A string attribute taken leniently: up to its first NUL or the end of the payload.
std::string attr_string(const nlattr* a);

// Attributes indexed by type. Types beyond kMax are ignored (newer kernels add
// attributes; that must not be an error); of repeated types the last one counts.
template <std::size_t kMax>
struct AttrTable {
  std::array<const nlattr*, kMax + 1> at{};
  const nlattr* operator[](std::size_t t) const { return t <= kMax ? at[t] : nullptr; }
};

template <std::size_t kMax>
Expected<AttrTable<kMax>, Failure> parse_attrs(std::span<const std::uint8_t> data,
                                               const char* what) {
  AttrTable<kMax> table;
  AttrReader reader(data, what);
  while (const nlattr* a = reader.next()) {
    const std::size_t type = attr_type(a);
    if (type <= kMax) table.at[type] = a;
  }
  if (reader.failure()) return unexpected(*reader.failure());
  return table;
}

template <std::size_t kMax>
Expected<AttrTable<kMax>, Failure> parse_attrs(const void* data, std::size_t len,
                                               const char* what) {
  return parse_attrs<kMax>(std::span(static_cast<const std::uint8_t*>(data), len), what);
}

// Builds one request message in a caller's buffer (4-byte aligned; the header and
// everything put are zero-filled as they are added, the rest is not touched). Running out
// of room is a programming error: std::length_error. Value type over the buffer.
class MessageBuilder {
 public:
  MessageBuilder(std::span<std::uint8_t> buffer, std::uint16_t type, std::uint16_t flags);

  // The family header (ifinfomsg, rtmsg, fib_rule_hdr, ...), zeroed; put it before any
  // attribute.
  template <typename T>
  T& put_header() {
    static_assert(std::is_trivially_copyable_v<T> && alignof(T) <= NLMSG_ALIGNTO);
    return *reinterpret_cast<T*>(reserve(sizeof(T)));
  }
  void put_attr(std::uint16_t type, const void* data, std::size_t len);
  void put_u8(std::uint16_t type, std::uint8_t v) { put_attr(type, &v, sizeof v); }
  void put_u16(std::uint16_t type, std::uint16_t v) { put_attr(type, &v, sizeof v); }
  void put_u32(std::uint16_t type, std::uint32_t v) { put_attr(type, &v, sizeof v); }
  // With its terminating NUL.
  void put_strz(std::uint16_t type, std::string_view s);

  nlmsghdr* header() const { return nlh_; }
  std::span<const std::uint8_t> bytes() const { return buf_.first(nlh_->nlmsg_len); }

 private:
  std::uint8_t* reserve(std::size_t len);  // zeroed, at the aligned end of the message

  std::span<std::uint8_t> buf_;
  nlmsghdr* nlh_;
};

}  // namespace splitd::netlink
