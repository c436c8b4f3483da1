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
// (add table, delete table, add table, then sets, chains and rules). `table_flags`
// (NFT_TABLE_F_OWNER, kTablePersist) go on the new table: the first add carries none, so
// it neither changes nor fails on a table held with other flags (a crashed run's).
NftBatch install_batch(const FirewallConfig& config, std::uint32_t table_flags = 0);

// NFT_TABLE_F_PERSIST (Linux 6.9; newer than the UAPI headers of Debian 12).
inline constexpr std::uint32_t kTablePersist = 0x4;

// The transaction that deletes `table inet splitd` if it exists.
NftBatch remove_batch();

}  // namespace splitd::firewall
