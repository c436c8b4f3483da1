#pragma once

#include <sys/types.h>

#include <optional>

#include "proxy/session_table.hpp"

namespace splitd::proxy {

// The owner (uid) of the local UDP socket that sent a datagram from `client` to `peer`,
// asked of the kernel with one exact NETLINK_SOCK_DIAG request on that 4-tuple (the
// socket that would receive the peer's answer: bound to the client's address and port,
// connected or not). nullopt when there is none (closed already), the kernel refuses, or
// the reply does not make sense. Costs a netlink round trip: for rare decisions only, such
// as whether a WireGuard-shaped datagram comes from a root process (a VPN client) rather
// than from any app. Works in the calling thread's network namespace; thread-safe.
std::optional<uid_t> udp_socket_owner(const Endpoint& client, const Endpoint& peer);

}  // namespace splitd::proxy
