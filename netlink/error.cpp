#include "netlink/error.hpp"

namespace splitd::netlink {

const char* to_string(Error e) {
  switch (e) {
    case Error::kTruncated: return "truncated netlink message";
    case Error::kMalformed: return "malformed netlink message";
    case Error::kUnexpectedSeq: return "netlink reply with unexpected sequence number";
    case Error::kUnexpectedPortid: return "netlink reply for another socket";
    case Error::kKernelError: return "kernel returned an error";
    case Error::kDumpInterrupted: return "netlink dump interrupted";
    case Error::kOverrun: return "netlink receive buffer overrun";
    case Error::kTimeout: return "no netlink reply in time";
    case Error::kSocket: return "netlink socket error";
  }
  return "netlink error";
}

std::string Failure::message() const {
  return detail.empty() ? std::string(to_string(code)) : std::string(to_string(code)) + ": " + detail;
}

}  // namespace splitd::netlink
