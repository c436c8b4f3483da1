#pragma once

#include <string>

namespace splitd::netlink {

// Errors of the netlink layer (sockets, requests, dumps and the checks of what the kernel
// sends). Netlink replies are untrusted input: every one of these is a clear, recoverable
// error, never a crash.
enum class Error {
  kTruncated,         // a header or attribute claims more bytes than were received
  kMalformed,         // lengths or payloads that cannot be right
  kUnexpectedSeq,     // a reply with another sequence number than the request's
  kUnexpectedPortid,  // a reply addressed to another socket
  kKernelError,       // NLMSG_ERROR with a non-zero error code
  kDumpInterrupted,   // NLM_F_DUMP_INTR: the dump changed under us; retry
  kOverrun,           // ENOBUFS: replies or events were lost; resync with a fresh dump
  kTimeout,           // no reply within the deadline
  kSocket,            // socket(2)/bind(2)/send/recv/setsockopt failure
};

const char* to_string(Error e);

// An Error with what happened ("rtnetlink send: Connection refused").
struct Failure {
  Error code = Error::kSocket;
  std::string detail;
  // "<what the code means>: <detail>"
  std::string message() const;
};

}  // namespace splitd::netlink
