#include "tests/e2e/tcp_client.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace splitd::e2e {

ConnectResult tcp_connect(const std::string& ip, std::uint16_t port,
                          std::chrono::milliseconds timeout) {
  sockaddr_storage ss{};
  socklen_t len = 0;
  auto* a4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* a6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, ip.c_str(), &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    len = sizeof *a4;
  } else if (inet_pton(AF_INET6, ip.c_str(), &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    len = sizeof *a6;
  } else {
    return {Fd(), EINVAL};
  }
  Fd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return {Fd(), errno};
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
    if (errno != EINPROGRESS) return {Fd(), errno};
    pollfd p{fd.get(), POLLOUT, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (rc <= 0) return {Fd(), rc == 0 ? ETIMEDOUT : errno};
    int err = 0;
    socklen_t elen = sizeof err;
    ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0) return {Fd(), err};
  }
  // Back to blocking: the tests read and write with poll-bounded calls.
  const int one = 0;
  ::ioctl(fd.get(), FIONBIO, &one);
  return {std::move(fd), 0};
}

long recv_some(int fd, void* buf, std::size_t len, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  const int rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
  if (rc == 0) return -ETIMEDOUT;
  if (rc < 0) return -errno;
  const ssize_t n = ::recv(fd, buf, len, MSG_DONTWAIT);
  if (n < 0) return -errno;
  return n;
}

std::string read_line(int fd, std::chrono::milliseconds timeout) {
  std::string line;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char c;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (recv_some(fd, &c, 1, left) != 1) return "";
    line.push_back(c);
    if (c == '\n') return line;
  }
  return "";
}

std::string read_to_eof(int fd, int* error, std::chrono::milliseconds timeout) {
  std::string out;
  char buf[65536];
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (error) *error = 0;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    const long n = recv_some(fd, buf, sizeof buf, left.count() > 0 ? left : std::chrono::milliseconds(0));
    if (n > 0) {
      out.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && error) *error = static_cast<int>(n);
    return out;
  }
}

bool send_all(int fd, const void* data, std::size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    const ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace splitd::e2e
