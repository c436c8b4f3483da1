#include "common/cidr.hpp"

#include <array>
#include <charconv>
#include <cstring>

namespace splitd {
namespace {

std::array<std::uint8_t, 16> masked(const IpAddress& ip, unsigned len, bool fill_ones) {
  std::array<std::uint8_t, 16> b{};
  const auto src = ip.bytes();
  std::memcpy(b.data(), src.data(), src.size());
  for (unsigned i = 0; i < src.size(); ++i) {
    const unsigned bit = i * 8;
    std::uint8_t keep;
    if (bit + 8 <= len) keep = 0xff;
    else if (bit >= len) keep = 0;
    else keep = static_cast<std::uint8_t>(0xff << (8 - (len - bit)));
    b[i] = fill_ones ? static_cast<std::uint8_t>(b[i] | ~keep) : static_cast<std::uint8_t>(b[i] & keep);
  }
  return b;
}

}  // namespace

Cidr::Cidr(IpAddress network, std::uint8_t prefix_len) {
  if (network.is_v4_mapped() && prefix_len >= 96) {
    network = network.unmapped();
    prefix_len = static_cast<std::uint8_t>(prefix_len - 96);
  }
  const unsigned max = network.is_v4() ? 32 : 128;
  prefix_len_ = static_cast<std::uint8_t>(prefix_len > max ? max : prefix_len);
  const auto b = masked(network, prefix_len_, false);
  network_ = *IpAddress::from_bytes({b.data(), network.bytes().size()});
}

std::optional<Cidr> Cidr::parse(std::string_view text, std::string* error) {
  const auto set_error = [error](std::string msg) {
    if (error) *error = std::move(msg);
    return std::nullopt;
  };
  const std::size_t slash = text.find('/');
  const std::string_view addr_text = text.substr(0, slash);
  const auto addr = IpAddress::parse(addr_text);
  if (!addr) return set_error("'" + std::string(addr_text) + "' is not an IPv4 or IPv6 address");
  const unsigned max = addr->is_v4() ? 32 : 128;
  unsigned len = max;
  if (slash != std::string_view::npos) {
    const std::string_view len_text = text.substr(slash + 1);
    const auto* end = len_text.data() + len_text.size();
    auto [ptr, ec] = std::from_chars(len_text.data(), end, len);
    if (len_text.empty() || ec != std::errc() || ptr != end) {
      return set_error("prefix length '" + std::string(len_text) + "' is not a number");
    }
    if (len > max) {
      return set_error("prefix length " + std::to_string(len) + " exceeds " + std::to_string(max));
    }
  }
  return Cidr(*addr, static_cast<std::uint8_t>(len));
}

IpAddress Cidr::last() const {
  const auto b = masked(network_, prefix_len_, true);
  return *IpAddress::from_bytes({b.data(), network_.bytes().size()});
}

bool Cidr::contains(const IpAddress& ip) const {
  const IpAddress x = ip.unmapped();
  if (x.family() != network_.family()) return false;
  const auto b = masked(x, prefix_len_, false);
  const auto n = network_.bytes();
  return std::memcmp(b.data(), n.data(), n.size()) == 0;
}

std::string Cidr::to_string() const {
  return network_.to_string() + "/" + std::to_string(prefix_len_);
}

}  // namespace splitd
