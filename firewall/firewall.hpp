#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/cidr.hpp"
#include "common/expected.hpp"
#include "firewall/footprint_events.hpp"

namespace splitd::firewall {

// What the interception footprint looks like ([firewall] and [proxy] port of the config).
struct FirewallConfig {
  std::uint32_t mark = 0x5d1;         // fwmark on intercepted packets
  std::uint32_t bypass_mark = 0x5d2;  // SO_MARK of splitd's own upstream sockets: never intercepted
  std::uint32_t route_table = 1501;   // policy routing table holding `local default dev lo`
  std::uint32_t rule_priority = 1501;  // priority of the `fwmark MARK lookup TABLE` ip rules
  std::uint16_t port = 15001;          // TPROXY port (TCP and UDP)
  bool ipv6 = true;                    // false: IPv6 packets are neither marked nor routed
  bool intercept_tcp = true;
  bool intercept_udp = false;
  // DNS capture: UDP and TCP to dns_intercept_port, any destination (loopback stubs too),
  // go to splitd's forwarder on dns_port. 0: no capture (DNS is ordinary UDP/TCP).
  std::uint16_t dns_port = 0;
  std::uint16_t dns_intercept_port = 53;
  bool block_dot = false;  // refuse TCP/UDP 853 (DNS over TLS) so clients fall back to plain DNS
  std::vector<Cidr> never_intercept = default_never_intercept();
  // Servers of VPN clients that do not mark their sockets, found from their host routes
  // (InterfaceSnapshot::vpn_servers): their carrier flows are never intercepted.
  std::vector<Cidr> vpn_servers;
  // Own the table (NFT_TABLE_F_OWNER, Linux >= 5.12): while splitd runs no other program
  // can change or delete it, and `nft flush ruleset` passes it by. false: anyone may;
  // splitd then repairs every change it hears of (within milliseconds).
  bool own_table = true;
  // With own_table: the table outlives a crash of splitd (NFT_TABLE_F_PERSIST, Linux
  // >= 6.9) and the next start takes it over: the kill switch stays closed while splitd is
  // dead. false: the kernel removes the table with the process (the host falls back to its
  // own routes). When the kernel cannot keep an owned table, persist_table wins: the table
  // is not owned (a crash must not open the kill switch) and changes are repaired instead.
  bool persist_table = true;

  // 127.0.0.0/8, ::1/128, 169.254.0.0/16, fe80::/10, 224.0.0.0/4, ff00::/8.
  static std::vector<Cidr> default_never_intercept();
};

enum class FirewallErrorCode {
  kInvalidConfig,  // a value the footprint cannot take (port 0, mark 0, mark == bypass_mark, ...)
  kPermission,     // EPERM/EACCES: needs CAP_NET_ADMIN in this network namespace
  kUnsupported,    // the kernel lacks a feature (an nft expression, IPv6, policy routing)
  kKernel,         // the kernel refused an object for another reason (errno in the message)
  kNetlink,        // socket or protocol trouble: open/send/receive failed, bad or missing reply
};

// message names the object that failed and what to do, e.g.
// "rule 'intercept TCP' in chain output: Operation not supported".
struct FirewallError {
  FirewallErrorCode code = FirewallErrorCode::kNetlink;
  std::string message;
};

const char* to_string(FirewallErrorCode code);

// What the daemon drives; tests of the daemon substitute a fake.
class FirewallBackend {
 public:
  virtual ~FirewallBackend() = default;
  virtual Expected<void, FirewallError> install(const FirewallConfig& config) = 0;
  virtual Expected<void, FirewallError> remove() = 0;
  virtual bool installed() const = 0;
};

// splitd's kernel footprint in one network namespace: `table inet splitd` (one atomic
// nfnetlink batch per change) plus, per family, the ip rule `fwmark MARK lookup TABLE` and
// the route `local default dev lo table TABLE`. Routes and rules carry the route protocol
// kRouteProtocol, which is how leftovers of a crashed run (even with another mark, table
// or priority) are found and how remove() deletes exactly splitd's own.
//
// One per network namespace. open() binds its netlink sockets to the calling thread's
// network namespace; afterwards any one thread at a time may use it (not thread-safe).
// The destructor leaves the footprint in place: call remove() on orderly shutdown.
class Firewall final : public FirewallBackend {
 public:
  // rtm_protocol / FRA_PROTOCOL of splitd's routes and rules (`proto 93` in `ip rule`,
  // `ip route`; unassigned in iproute2's rt_protos).
  static constexpr std::uint8_t kRouteProtocol = 93;

  static Expected<std::unique_ptr<Firewall>, FirewallError> open();
  ~Firewall() override;
  Firewall(const Firewall&) = delete;
  Firewall& operator=(const Firewall&) = delete;

  // Removes leftovers (stale table, rules, routes of a crashed run or of another config)
  // and creates the footprint for `config`. Idempotent: installing twice gives the same
  // state, without duplicates. The nftables table is replaced atomically. On failure
  // nothing of splitd's is left behind (best effort) and the error names the object.
  Expected<void, FirewallError> install(const FirewallConfig& config) override;

  // Removes table inet splitd and every rule and route of splitd's (kRouteProtocol), in
  // both families. Succeeds if they are already gone.
  Expected<void, FirewallError> remove() override;

  // Whether `table inet splitd` exists right now (asks the kernel; false on errors, which
  // are logged). For self-repair after another program deleted the table.
  bool installed() const override;

  // Whether the whole footprint of `config` is in place: the table with the chains and
  // rules splitd installed (a flushed chain or a rule added or deleted by another program
  // is not intact), and per family the
  // fwmark rule, ahead of every other program's rule, and the local route of its table.
  // Another program (a VPN client, a network manager, `ip rule flush`) may remove either
  // or put a rule before splitd's (wg-quick coming up after splitd); the daemon
  // re-installs then, moving splitd's rules before the other program's.
  bool intact(const FirewallConfig& config) const;

  // How the table is held right now (after the last install).
  struct Ownership {
    bool owned = false;       // NFT_TABLE_F_OWNER: other programs get EPERM
    bool persistent = false;  // NFT_TABLE_F_PERSIST: it outlives a crash of splitd
  };
  Ownership ownership() const;

  // The kernel's change events: rule_events_fd() is readable when a policy rule (either
  // family) or a route of splitd's table changed, nft_events_fd() when any nftables
  // change happened in the namespace. drain_events() reads what is queued on both
  // (bounded) and says what concerned splitd's footprint and who did it; splitd's own
  // changes are not reported. The daemon repairs on it, not on a timer.
  int rule_events_fd() const;
  int nft_events_fd() const;
  FootprintEvents drain_events();

  static std::vector<Cidr> default_never_intercept() {
    return FirewallConfig::default_never_intercept();
  }

 private:
  struct Impl;
  explicit Firewall(std::unique_ptr<Impl> impl);
  // The priority splitd's rules take: the configured one, or the one they were moved to,
  // or just before another program's rule that would otherwise come first.
  Expected<std::uint32_t, FirewallError> rule_priority_for(const FirewallConfig& config);
  // The table's flags for `config` on this kernel, and the batch that installs it (retried
  // with fewer flags when the kernel refuses them).
  std::uint32_t wanted_flags(const FirewallConfig& config) const;
  Expected<void, FirewallError> commit_table(const FirewallConfig& config);
  Expected<std::vector<std::pair<std::string, std::vector<std::uint64_t>>>, FirewallError> read_signature() const;
  std::unique_ptr<Impl> impl_;
};

}  // namespace splitd::firewall
