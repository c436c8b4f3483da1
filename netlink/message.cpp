#include "netlink/message.hpp"

#include <climits>
#include <cstdint>
#include <stdexcept>

namespace splitd::netlink {
namespace {

constexpr std::size_t align4(std::size_t n) { return (n + 3) & ~std::size_t{3}; }

// The extended-ack message among the TLVs in `tlvs`; a malformed TLV only loses it.
std::string ext_ack_message(std::span<const std::uint8_t> tlvs) {
  AttrReader reader(tlvs, "extended ack");
  while (const nlattr* a = reader.next()) {
    if (attr_type(a) != NLMSGERR_ATTR_MSG) continue;
    if (auto s = attr_nul_string(a)) return std::move(*s);
  }
  return {};
}

nlattr attr_header(const nlattr* a) {
  nlattr hdr;
  std::memcpy(&hdr, a, sizeof hdr);
  return hdr;
}

template <typename T>
std::optional<T> attr_value(const nlattr* a) {
  const auto p = attr_payload(a);
  if (p.size() < sizeof(T)) return std::nullopt;
  T v;
  std::memcpy(&v, p.data(), sizeof v);
  return v;
}

}  // namespace

const nlmsghdr* MessageReader::next() {
  if (failure_ || off_ >= buf_.size()) return nullptr;
  const std::size_t left = buf_.size() - off_;
  if (left < sizeof(nlmsghdr)) {
    failure_ = Failure{Error::kTruncated,
                       std::to_string(left) + " trailing bytes, less than a header"};
    return nullptr;
  }
  // Kernel buffers are aligned, but a test's or an attacker's need not be: copy the
  // header and require alignment before handing the message out.
  nlmsghdr hdr;
  std::memcpy(&hdr, buf_.data() + off_, sizeof hdr);
  if (hdr.nlmsg_len < sizeof(nlmsghdr) || hdr.nlmsg_len > left) {
    failure_ = Failure{Error::kTruncated, "message claims " + std::to_string(hdr.nlmsg_len) +
                                              " bytes, " + std::to_string(left) + " received"};
    return nullptr;
  }
  if (reinterpret_cast<std::uintptr_t>(buf_.data() + off_) % alignof(nlmsghdr) != 0) {
    failure_ = Failure{Error::kMalformed, "misaligned message"};
    return nullptr;
  }
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(buf_.data() + off_);
  off_ += align4(hdr.nlmsg_len);  // past the end when the last message lacks its padding
  return nlh;
}

std::span<const std::uint8_t> payload(const nlmsghdr& nlh) {
  if (nlh.nlmsg_len < NLMSG_HDRLEN) return {};
  return {reinterpret_cast<const std::uint8_t*>(&nlh) + NLMSG_HDRLEN, nlh.nlmsg_len - NLMSG_HDRLEN};
}

std::span<const std::uint8_t> attributes(const nlmsghdr& nlh, std::size_t header_size) {
  const auto p = payload(nlh);
  const std::size_t start = align4(header_size);
  return p.size() > start ? p.subspan(start) : std::span<const std::uint8_t>{};
}

Expected<Ack, Failure> parse_error(const nlmsghdr& nlh) {
  const auto p = payload(nlh);
  if (p.size() < sizeof(nlmsgerr)) {
    return unexpected(Failure{Error::kTruncated, "short NLMSG_ERROR"});
  }
  nlmsgerr err;
  std::memcpy(&err, p.data(), sizeof err);
  Ack ack;
  // -errno from the kernel; INT_MIN has no positive counterpart and still means an error.
  ack.error = err.error == INT_MIN ? INT_MAX : err.error < 0 ? -err.error : err.error;
  if ((nlh.nlmsg_flags & NLM_F_ACK_TLVS) == 0) return ack;
  // The TLVs follow the echoed request: only its header when capped, else all of it.
  std::size_t offset = sizeof(nlmsgerr);
  if ((nlh.nlmsg_flags & NLM_F_CAPPED) == 0) {
    if (err.msg.nlmsg_len < sizeof(nlmsghdr)) return ack;
    offset += align4(err.msg.nlmsg_len) - sizeof(nlmsghdr);
  }
  if (offset < p.size()) ack.message = ext_ack_message(p.subspan(offset));
  return ack;
}

Ack parse_done(const nlmsghdr& nlh) {
  Ack ack;
  const auto p = payload(nlh);
  if (p.size() < sizeof(int)) return ack;
  int status = 0;
  std::memcpy(&status, p.data(), sizeof status);
  ack.error = status == INT_MIN ? INT_MAX : status < 0 ? -status : status;
  if ((nlh.nlmsg_flags & NLM_F_ACK_TLVS) != 0 && p.size() > sizeof(int)) {
    ack.message = ext_ack_message(p.subspan(sizeof(int)));
  }
  return ack;
}

Expected<void, Failure> check_reply(const nlmsghdr& nlh, std::uint32_t seq, std::uint32_t portid) {
  if (nlh.nlmsg_seq != seq) {
    return unexpected(Failure{Error::kUnexpectedSeq, "got " + std::to_string(nlh.nlmsg_seq) +
                                                         ", expected " + std::to_string(seq)});
  }
  if (nlh.nlmsg_pid != portid) {
    return unexpected(Failure{Error::kUnexpectedPortid, "got " + std::to_string(nlh.nlmsg_pid) +
                                                            ", expected " + std::to_string(portid)});
  }
  return {};
}

Expected<void, Failure> ReplyReader::feed(std::span<const std::uint8_t> datagram, Callback cb,
                                          void* ctx) {
  MessageReader reader(datagram);
  while (const nlmsghdr* m = reader.next()) {
    const nlmsghdr& nlh = *m;
    // A stale reply of an earlier exchange that failed half-way, or an event.
    if (done_ || !check_reply(nlh, seq_, portid_)) {
      ++skipped_;
      continue;
    }
    if ((nlh.nlmsg_flags & NLM_F_DUMP_INTR) != 0) ack_.interrupted = true;
    switch (nlh.nlmsg_type) {
      case NLMSG_ERROR: {
        auto e = parse_error(nlh);
        if (!e) return unexpected(e.error());
        ack_.error = e->error;
        ack_.message = std::move(e->message);
        done_ = true;
        break;
      }
      case NLMSG_DONE: {
        Ack d = parse_done(nlh);
        ack_.error = d.error;
        ack_.message = std::move(d.message);
        done_ = true;
        break;
      }
      case NLMSG_OVERRUN:
        return unexpected(Failure{Error::kOverrun, "NLMSG_OVERRUN"});
      default:
        if (nlh.nlmsg_type < NLMSG_MIN_TYPE) break;  // NLMSG_NOOP
        cb(nlh, ctx);
        // A single reply ends the exchange by itself unless an ACK follows it.
        if (!acked_ && (nlh.nlmsg_flags & NLM_F_MULTI) == 0) done_ = true;
        break;
    }
  }
  if (reader.failure()) return unexpected(*reader.failure());
  return {};
}

const nlattr* AttrReader::next() {
  if (failure_ || off_ >= data_.size()) return nullptr;
  const std::size_t left = data_.size() - off_;
  if (left < sizeof(nlattr)) {
    off_ = data_.size();
    return nullptr;
  }
  nlattr hdr;
  std::memcpy(&hdr, data_.data() + off_, sizeof hdr);
  if (hdr.nla_len < sizeof(nlattr) || hdr.nla_len > left) {
    failure_ = Failure{Error::kTruncated, std::string(what_) + ": attribute type " +
                                              std::to_string(hdr.nla_type & NLA_TYPE_MASK) +
                                              " claims " + std::to_string(hdr.nla_len) +
                                              " bytes, " + std::to_string(left) + " left"};
    return nullptr;
  }
  const auto* a = reinterpret_cast<const nlattr*>(data_.data() + off_);
  const std::size_t step = align4(hdr.nla_len);
  off_ = step >= left ? data_.size() : off_ + step;
  return a;
}

std::uint16_t attr_type(const nlattr* a) {
  return static_cast<std::uint16_t>(attr_header(a).nla_type & NLA_TYPE_MASK);
}

std::span<const std::uint8_t> attr_payload(const nlattr* a) {
  const nlattr hdr = attr_header(a);
  const std::size_t len = hdr.nla_len > NLA_HDRLEN ? hdr.nla_len - NLA_HDRLEN : 0;
  return {reinterpret_cast<const std::uint8_t*>(a) + NLA_HDRLEN, len};
}

std::optional<std::uint8_t> attr_u8(const nlattr* a) { return attr_value<std::uint8_t>(a); }
std::optional<std::uint16_t> attr_u16(const nlattr* a) { return attr_value<std::uint16_t>(a); }
std::optional<std::uint32_t> attr_u32(const nlattr* a) { return attr_value<std::uint32_t>(a); }
std::optional<std::uint64_t> attr_u64(const nlattr* a) { return attr_value<std::uint64_t>(a); }

std::optional<std::string> attr_nul_string(const nlattr* a) {
  const auto p = attr_payload(a);
  if (p.empty() || p.back() != '\0') return std::nullopt;
  return std::string(reinterpret_cast<const char*>(p.data()));
}

std::string attr_string(const nlattr* a) {
  const auto p = attr_payload(a);
  const auto* s = reinterpret_cast<const char*>(p.data());
  return std::string(s, strnlen(s, p.size()));
}

MessageBuilder::MessageBuilder(std::span<std::uint8_t> buffer, std::uint16_t type,
                               std::uint16_t flags)
    : buf_(buffer) {
  if (reinterpret_cast<std::uintptr_t>(buf_.data()) % NLMSG_ALIGNTO != 0) {
    throw std::invalid_argument("netlink message buffer is not 4-byte aligned");
  }
  if (buf_.size() < NLMSG_HDRLEN) throw std::length_error("netlink message buffer too small");
  std::memset(buf_.data(), 0, NLMSG_HDRLEN);
  nlh_ = reinterpret_cast<nlmsghdr*>(buf_.data());
  nlh_->nlmsg_len = NLMSG_HDRLEN;
  nlh_->nlmsg_type = type;
  nlh_->nlmsg_flags = flags;
}

std::uint8_t* MessageBuilder::reserve(std::size_t len) {
  const std::size_t at = align4(nlh_->nlmsg_len);
  const std::size_t end = at + align4(len);
  if (end > buf_.size()) throw std::length_error("netlink message does not fit its buffer");
  std::memset(buf_.data() + at, 0, end - at);
  nlh_->nlmsg_len = static_cast<std::uint32_t>(end);
  return buf_.data() + at;
}

void MessageBuilder::put_attr(std::uint16_t type, const void* data, std::size_t len) {
  if (len > 0xffff - NLA_HDRLEN) throw std::length_error("netlink attribute too large");
  std::uint8_t* p = reserve(NLA_HDRLEN + len);
  nlattr hdr;
  hdr.nla_len = static_cast<std::uint16_t>(NLA_HDRLEN + len);
  hdr.nla_type = type;
  std::memcpy(p, &hdr, sizeof hdr);
  if (len != 0) std::memcpy(p + NLA_HDRLEN, data, len);
}

void MessageBuilder::put_strz(std::uint16_t type, std::string_view s) {
  if (s.size() + 1 > 0xffff - NLA_HDRLEN) throw std::length_error("netlink attribute too large");
  std::uint8_t* p = reserve(NLA_HDRLEN + s.size() + 1);  // zeroed: the NUL is there
  nlattr hdr;
  hdr.nla_len = static_cast<std::uint16_t>(NLA_HDRLEN + s.size() + 1);
  hdr.nla_type = type;
  std::memcpy(p, &hdr, sizeof hdr);
  if (!s.empty()) std::memcpy(p + NLA_HDRLEN, s.data(), s.size());
}

}  // namespace splitd::netlink
