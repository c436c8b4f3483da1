#pragma once

// UDP client helpers for end-to-end tests, talking to the lab's responders (whose
// answer is a greeting line "SIDE PEER-IP PEER-PORT" and then the datagram's payload).
// They act in the calling thread's network namespace (use Lab::in_ns).

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "common/fd.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {

struct Addr {
  sockaddr_storage ss{};
  socklen_t len = 0;
  int family() const { return ss.ss_family; }
};

// ip is an IPv4 or IPv6 literal.
Addr addr(const std::string& ip, std::uint16_t port);
// "ip", port of a socket address.
std::pair<std::string, std::uint16_t> text_of(const sockaddr_storage& ss);

Fd udp_socket(int family, int rcvbuf = 0);
bool send_to(int fd, const std::string& ip, std::uint16_t port, const std::string& payload);

// One datagram as the client sees it: its source, and the responder's greeting split off.
struct Answer {
  std::string from_ip;
  std::uint16_t from_port = 0;
  std::string side, peer_ip;
  std::uint16_t peer_port = 0;
  std::string payload;  // after the greeting line (all of it if there is none)
};

std::optional<Answer> receive(int fd, std::chrono::milliseconds timeout = std::chrono::milliseconds(3000));
std::optional<Answer> exchange(int fd, const std::string& ip, const std::string& payload,
                               std::uint16_t port = lab::kUdpPort);

}  // namespace splitd::e2e
