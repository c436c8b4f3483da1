#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace splitd {

// An IPv4 or IPv6 address as a plain value (16 bytes + family). IPv4 is stored in the
// first 4 bytes. Cheap to copy, comparable, hashable by callers via bytes().
class IpAddress {
 public:
  enum class Family : std::uint8_t { kV4 = 4, kV6 = 6 };

  IpAddress() = default;  // 0.0.0.0
  static IpAddress v4(std::uint32_t host_order);
  static IpAddress v4(const in_addr& a);
  static IpAddress v6(const in6_addr& a);
  // From raw network-order bytes: 4 bytes = IPv4, 16 = IPv6, anything else = nullopt.
  static std::optional<IpAddress> from_bytes(std::span<const std::uint8_t> bytes);
  static std::optional<IpAddress> parse(std::string_view text);

  Family family() const { return family_; }
  bool is_v4() const { return family_ == Family::kV4; }
  bool is_v6() const { return family_ == Family::kV6; }
  int af() const { return is_v4() ? AF_INET : AF_INET6; }
  std::span<const std::uint8_t> bytes() const { return {bytes_.data(), is_v4() ? 4u : 16u}; }
  in_addr to_in_addr() const;    // requires is_v4()
  in6_addr to_in6_addr() const;  // requires is_v6()

  bool is_unspecified() const;
  bool is_loopback() const;
  bool is_link_local() const;  // 169.254.0.0/16, fe80::/10
  bool is_multicast() const;   // 224.0.0.0/4, ff00::/8
  bool is_v4_mapped() const;   // ::ffff:a.b.c.d
  // ::ffff:a.b.c.d → a.b.c.d; anything else unchanged.
  IpAddress unmapped() const;

  std::string to_string() const;

  friend bool operator==(const IpAddress&, const IpAddress&) = default;
  friend auto operator<=>(const IpAddress&, const IpAddress&) = default;

 private:
  Family family_ = Family::kV4;
  std::array<std::uint8_t, 16> bytes_{};
};

}  // namespace splitd
