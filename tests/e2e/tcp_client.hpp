#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "common/fd.hpp"

namespace splitd::e2e {

// Blocking TCP client helpers for tests; they act in the calling thread's network
// namespace (use Lab::in_ns).
struct ConnectResult {
  Fd fd;       // valid on success
  int error;   // errno on failure (ETIMEDOUT after the timeout)
};
ConnectResult tcp_connect(const std::string& ip, std::uint16_t port,
                          std::chrono::milliseconds timeout = std::chrono::milliseconds(3000));

// Receives once with a timeout: bytes read, 0 on EOF, -errno on error (-ETIMEDOUT).
long recv_some(int fd, void* buf, std::size_t len,
               std::chrono::milliseconds timeout = std::chrono::milliseconds(3000));
// Reads up to and including '\n'; "" on EOF/error/timeout before any newline.
std::string read_line(int fd, std::chrono::milliseconds timeout = std::chrono::milliseconds(3000));
// Reads until EOF; returns the data, with *error = -errno if it ended by an error.
std::string read_to_eof(int fd, int* error = nullptr,
                        std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
bool send_all(int fd, const void* data, std::size_t len);
inline bool send_all(int fd, const std::string& s) { return send_all(fd, s.data(), s.size()); }

}  // namespace splitd::e2e
