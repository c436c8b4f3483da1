#include "decider/vpn_carrier.hpp"

namespace splitd::decider {

bool is_wireguard_handshake_initiation(std::span<const std::uint8_t> d) {
  constexpr std::size_t kInitiationSize = 148;
  return d.size() == kInitiationSize && d[0] == 1 && d[1] == 0 && d[2] == 0 && d[3] == 0;
}

}  // namespace splitd::decider
