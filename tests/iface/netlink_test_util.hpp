#pragma once

#include <linux/netlink.h>

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

namespace splitd::iface::testing {

// Hex text → bytes (test data is stored as hex).
inline std::vector<std::uint8_t> from_hex(std::string_view hex) {
  std::vector<std::uint8_t> out;
  auto nibble = [](char c) -> std::uint8_t {
    return static_cast<std::uint8_t>(c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  };
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
  }
  return out;
}

inline nlmsghdr header_of(const std::vector<std::uint8_t>& msg) {
  nlmsghdr h;
  std::memcpy(&h, msg.data(), sizeof h);
  return h;
}

inline void set_header(std::vector<std::uint8_t>& msg, const nlmsghdr& h) {
  std::memcpy(msg.data(), &h, sizeof h);
}

// Sets seq and portid of a captured message (they were the capturing socket's).
inline std::vector<std::uint8_t> with_seq(std::vector<std::uint8_t> msg, std::uint32_t seq,
                                          std::uint32_t portid) {
  nlmsghdr h = header_of(msg);
  h.nlmsg_seq = seq;
  h.nlmsg_pid = portid;
  set_header(msg, h);
  return msg;
}

inline std::vector<std::uint8_t> done_message(std::uint32_t seq, std::uint32_t portid) {
  std::vector<std::uint8_t> msg(NLMSG_LENGTH(sizeof(int)), 0);
  nlmsghdr h{};
  h.nlmsg_len = static_cast<std::uint32_t>(msg.size());
  h.nlmsg_type = NLMSG_DONE;
  h.nlmsg_flags = NLM_F_MULTI;
  h.nlmsg_seq = seq;
  h.nlmsg_pid = portid;
  set_header(msg, h);
  return msg;
}

inline void append(std::vector<std::uint8_t>& to, const std::vector<std::uint8_t>& msg) {
  to.insert(to.end(), msg.begin(), msg.end());
  to.resize(NLMSG_ALIGN(to.size()), 0);
}

}  // namespace splitd::iface::testing
