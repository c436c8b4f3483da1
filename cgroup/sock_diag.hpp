#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/expected.hpp"

namespace splitd::cgroup {

// One socket to look up with NETLINK_SOCK_DIAG (SOCK_DIAG_BY_FAMILY, exact match). "local" is
// the app's socket's own address and port, "remote" its peer: for an intercepted flow, local =
// the client's address:port and remote = the original destination (TCP and UDP alike).
// Addresses in network byte order, the first 4 bytes for AF_INET; ports in host byte order.
struct SocketQuery {
  bool tcp = true;
  int family = 0;  // AF_INET or AF_INET6
  std::array<std::uint8_t, 16> local_addr{};
  std::uint16_t local_port = 0;
  std::array<std::uint8_t, 16> remote_addr{};
  std::uint16_t remote_port = 0;
};

// The size of the request build_request() writes (nlmsghdr + inet_diag_req_v2).
std::size_t request_size();

// Writes the SOCK_DIAG_BY_FAMILY request for `q` (NLM_F_REQUEST, no dump, all states, no
// cookie, no extensions) into `out`; returns its length, or 0 if `out` is too small or the
// family is neither AF_INET nor AF_INET6. Pure; thread-safe.
//
// The kernel's exact lookups read the id differently per protocol: TCP
// (inet_diag_find_one_icsk) takes idiag_src/sport as the socket's local side, UDP
// (udp_dump_one → __udp4_lib_lookup(net, src, sport, dst, dport)) takes idiag_src/sport as
// the remote side and idiag_dst/dport as the local one. This function hides that.
std::size_t build_request(const SocketQuery& q, std::uint32_t seq, std::span<std::uint8_t> out);

// What the kernel knows of a socket's owner.
struct SocketIdentity {
  std::uint32_t uid = 0;
  std::uint64_t inode = 0;
  std::uint64_t cgroup_id = 0;  // INET_DIAG_CGROUP_ID; 0 if absent (kernel without it)
  friend bool operator==(const SocketIdentity&, const SocketIdentity&) = default;
};

enum class DiagErrc {
  kTruncated,       // a header or attribute claims more bytes than the datagram holds
  kMalformed,       // lengths or payloads that cannot be right
  kUnexpectedSeq,   // a reply to another request
  kUnexpectedType,  // neither SOCK_DIAG_BY_FAMILY nor NLMSG_ERROR
  kNoSocket,        // NLMSG_ERROR -ENOENT: no socket with that 4-tuple (it closed)
  kKernel,          // NLMSG_ERROR with another errno
};

const char* to_string(DiagErrc e);

// A DiagErrc and, for kKernel, the errno. Small and allocation-free (the data path returns it).
struct DiagError {
  DiagErrc code = DiagErrc::kMalformed;
  int sys_errno = 0;
  std::string message() const;
};

// Parses the kernel's reply to build_request() (untrusted input: every length is checked,
// nothing beyond the datagram is read, alignment is not assumed). Pure; thread-safe.
Expected<SocketIdentity, DiagError> parse_reply(std::span<const std::uint8_t> datagram,
                                                std::uint32_t seq);

}  // namespace splitd::cgroup
