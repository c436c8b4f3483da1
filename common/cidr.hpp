#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/ip_address.hpp"

namespace splitd {

// An address block "a.b.c.d/n" or "x::/n"; a bare address is a /32 or /128. The stored
// address has its host bits cleared. IPv4-mapped IPv6 blocks (::ffff:a.b.c.d/n, n ≥ 96)
// are normalised to IPv4.
class Cidr {
 public:
  Cidr() = default;
  Cidr(IpAddress network, std::uint8_t prefix_len);

  // nullopt with *error set to what is wrong ("prefix length 33 exceeds 32", ...).
  static std::optional<Cidr> parse(std::string_view text, std::string* error = nullptr);

  const IpAddress& network() const { return network_; }
  std::uint8_t prefix_len() const { return prefix_len_; }
  IpAddress::Family family() const { return network_.family(); }
  // The last address of the block (for nftables interval sets).
  IpAddress last() const;
  bool contains(const IpAddress& ip) const;  // mapped addresses compare as IPv4
  std::string to_string() const;

  friend bool operator==(const Cidr&, const Cidr&) = default;

 private:
  IpAddress network_;
  std::uint8_t prefix_len_ = 0;
};

}  // namespace splitd
