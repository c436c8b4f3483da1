#pragma once

#include <cerrno>

#include "firewall/firewall.hpp"
#include "netlink/error.hpp"
#include "netlink/message.hpp"

// Where the netlink layer's errors become firewall's (private to firewall/).
namespace splitd::firewall {

// Socket or protocol trouble (open/send/receive failed, a bad or missing reply).
inline FirewallError netlink_error(const netlink::Failure& f) {
  return FirewallError{FirewallErrorCode::kNetlink, f.message()};
}

// The errno a request's or dump's outcome stands for: the kernel's, or EINTR for a dump
// that otherwise succeeded but changed while it ran (NLM_F_DUMP_INTR; retry it).
inline int ack_errno(const netlink::Ack& ack) {
  if (ack.error != 0) return ack.error;
  return ack.interrupted ? EINTR : 0;
}

}  // namespace splitd::firewall
