#include "common/ip_address.hpp"

#include <arpa/inet.h>

#include <cstring>

namespace splitd {

IpAddress IpAddress::v4(std::uint32_t host_order) {
  IpAddress a;
  const std::uint32_t n = htonl(host_order);
  std::memcpy(a.bytes_.data(), &n, 4);
  return a;
}

IpAddress IpAddress::v4(const in_addr& in) {
  IpAddress a;
  std::memcpy(a.bytes_.data(), &in, 4);
  return a;
}

IpAddress IpAddress::v6(const in6_addr& in) {
  IpAddress a;
  a.family_ = Family::kV6;
  std::memcpy(a.bytes_.data(), &in, 16);
  return a;
}

std::optional<IpAddress> IpAddress::from_bytes(std::span<const std::uint8_t> bytes) {
  IpAddress a;
  if (bytes.size() == 4) {
    std::memcpy(a.bytes_.data(), bytes.data(), 4);
    return a;
  }
  if (bytes.size() == 16) {
    a.family_ = Family::kV6;
    std::memcpy(a.bytes_.data(), bytes.data(), 16);
    return a;
  }
  return std::nullopt;
}

std::optional<IpAddress> IpAddress::parse(std::string_view text) {
  // inet_pton needs a NUL-terminated string; addresses are short.
  if (text.empty() || text.size() > INET6_ADDRSTRLEN) return std::nullopt;
  char buf[INET6_ADDRSTRLEN + 1];
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  in_addr a4{};
  if (inet_pton(AF_INET, buf, &a4) == 1) return v4(a4);
  in6_addr a6{};
  if (inet_pton(AF_INET6, buf, &a6) == 1) return v6(a6);
  return std::nullopt;
}

in_addr IpAddress::to_in_addr() const {
  in_addr a{};
  std::memcpy(&a, bytes_.data(), 4);
  return a;
}

in6_addr IpAddress::to_in6_addr() const {
  in6_addr a{};
  std::memcpy(&a, bytes_.data(), 16);
  return a;
}

bool IpAddress::is_unspecified() const {
  for (auto b : bytes()) {
    if (b != 0) return false;
  }
  return true;
}

bool IpAddress::is_loopback() const {
  if (is_v4()) return bytes_[0] == 127;
  if (is_v4_mapped()) return unmapped().is_loopback();
  for (int i = 0; i < 15; ++i) {
    if (bytes_[i] != 0) return false;
  }
  return bytes_[15] == 1;
}

bool IpAddress::is_link_local() const {
  if (is_v4()) return bytes_[0] == 169 && bytes_[1] == 254;
  if (is_v4_mapped()) return unmapped().is_link_local();
  return bytes_[0] == 0xfe && (bytes_[1] & 0xc0) == 0x80;
}

bool IpAddress::is_multicast() const {
  if (is_v4()) return (bytes_[0] & 0xf0) == 0xe0;
  if (is_v4_mapped()) return unmapped().is_multicast();
  return bytes_[0] == 0xff;
}

bool IpAddress::is_v4_mapped() const {
  if (!is_v6()) return false;
  for (int i = 0; i < 10; ++i) {
    if (bytes_[i] != 0) return false;
  }
  return bytes_[10] == 0xff && bytes_[11] == 0xff;
}

IpAddress IpAddress::unmapped() const {
  if (!is_v4_mapped()) return *this;
  IpAddress a;
  std::memcpy(a.bytes_.data(), bytes_.data() + 12, 4);
  return a;
}

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN];
  const void* src = bytes_.data();
  if (inet_ntop(af(), src, buf, sizeof buf) == nullptr) return "?";
  return buf;
}

}  // namespace splitd
