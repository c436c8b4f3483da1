#include "tests/e2e/udp_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

#include <sstream>

namespace splitd::e2e {

Addr addr(const std::string& ip, std::uint16_t port) {
  Addr a;
  if (ip.find(':') == std::string::npos) {
    auto& s = reinterpret_cast<sockaddr_in&>(a.ss);
    s.sin_family = AF_INET;
    s.sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &s.sin_addr);
    a.len = sizeof s;
  } else {
    auto& s = reinterpret_cast<sockaddr_in6&>(a.ss);
    s.sin6_family = AF_INET6;
    s.sin6_port = htons(port);
    inet_pton(AF_INET6, ip.c_str(), &s.sin6_addr);
    a.len = sizeof s;
  }
  return a;
}

std::pair<std::string, std::uint16_t> text_of(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    const auto& s = reinterpret_cast<const sockaddr_in&>(ss);
    inet_ntop(AF_INET, &s.sin_addr, buf, sizeof buf);
    return {buf, ntohs(s.sin_port)};
  }
  const auto& s = reinterpret_cast<const sockaddr_in6&>(ss);
  inet_ntop(AF_INET6, &s.sin6_addr, buf, sizeof buf);
  return {buf, ntohs(s.sin6_port)};
}

Fd udp_socket(int family, int rcvbuf) {
  Fd fd(::socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (rcvbuf > 0) ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);
  return fd;
}

bool send_to(int fd, const std::string& ip, std::uint16_t port, const std::string& payload) {
  const Addr a = addr(ip, port);
  return ::sendto(fd, payload.data(), payload.size(), 0, reinterpret_cast<const sockaddr*>(&a.ss),
                  a.len) == static_cast<ssize_t>(payload.size());
}

std::optional<Answer> receive(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
  std::string buf(70000, '\0');
  sockaddr_storage from{};
  socklen_t len = sizeof from;
  const ssize_t n = ::recvfrom(fd, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
  if (n < 0) return std::nullopt;
  buf.resize(static_cast<std::size_t>(n));
  Answer a;
  std::tie(a.from_ip, a.from_port) = text_of(from);
  const auto nl = buf.find('\n');
  if (nl == std::string::npos) {
    a.payload = buf;
    return a;
  }
  std::istringstream greeting(buf.substr(0, nl));
  greeting >> a.side >> a.peer_ip >> a.peer_port;
  a.payload = buf.substr(nl + 1);
  return a;
}

std::optional<Answer> exchange(int fd, const std::string& ip, const std::string& payload,
                               std::uint16_t port) {
  if (!send_to(fd, ip, port, payload)) return std::nullopt;
  return receive(fd);
}

}  // namespace splitd::e2e
