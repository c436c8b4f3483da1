#pragma once

#include <cstdint>
#include <string>

#include "common/expected.hpp"
#include "firewall/firewall.hpp"
#include "firewall/nft_batch.hpp"

namespace splitd::firewall {

inline constexpr char kTableName[] = "splitd";
// The loopback device is ifindex 1 in every network namespace (LOOPBACK_IFINDEX).
inline constexpr std::uint32_t kLoopbackIfindex = 1;

// "0x5d1".
std::string to_hex(std::uint32_t value);

// Refuses values the footprint cannot take, before anything reaches the kernel.
Expected<void, FirewallError> validate(const FirewallConfig& config);

// The transaction that replaces any `table inet splitd` with the one for `config`
// (add table, delete table, add table, then sets, chains and rules).
NftBatch install_batch(const FirewallConfig& config);

// The transaction that deletes `table inet splitd` if it exists.
NftBatch remove_batch();

}  // namespace splitd::firewall
