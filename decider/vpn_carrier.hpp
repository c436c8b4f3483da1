#pragma once

#include <cstdint>
#include <span>

namespace splitd::decider {

// Recognises the first datagram of a VPN client's carrier flow, for clients whose socket
// is not marked yet when they send it. wg-quick sets WireGuard's fwmark only after the
// interface is up, and the interface coming up already makes WireGuard send a handshake
// initiation: unmarked, it would be intercepted and routed into the tunnel it is meant to
// build, and the VPN would wait for WireGuard's 5 s retry. Pure function of the bytes;
// thread-safe.
//
// A WireGuard handshake initiation: message type 1, three reserved zero bytes, exactly
// 148 bytes (type, sender index, ephemeral key, encrypted static key and timestamp, two
// MACs). No other common protocol's first datagram has that shape, but any app can send
// one: the UDP proxy also checks that the sending socket is root's (socket_owner.hpp)
// before it calls the flow a VPN carrier, so an unprivileged app cannot use the shape to
// get past the rules or the kill switch (root can bypass splitd with SO_MARK anyway).
bool is_wireguard_handshake_initiation(std::span<const std::uint8_t> datagram);

}  // namespace splitd::decider
