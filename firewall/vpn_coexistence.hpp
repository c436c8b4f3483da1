#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/expected.hpp"
#include "firewall/firewall.hpp"

namespace splitd::firewall {

// Keeps splitd's transparent proxy working next to wg-quick's anti-spoofing rule. The proxy
// answers local apps through lo with the remote server's address as source and the tunnel
// address as destination, which wg-quick's raw prerouting rule (`iifname != "wg0" ip daddr
// TUNNEL-ADDRESS fib saddr type != local drop`) drops. So splitd puts `iifname "lo" accept`
// at the head of each such chain: packets that come in through lo were sent by this host,
// so anti-spoofing loses nothing. The chains, per family ip and ip6:
//   - wg-quick's own `table ip|ip6 wg-quick-IFACE`, base chain `preraw` (wg-quick with nft);
//   - iptables-nft's `table ip|ip6 raw`, chain `PREROUTING`, while it holds a rule whose
//     comment contains "wg-quick(8) rule for" (wg-quick without nft, via iptables-restore).
// splitd's rule carries kRuleComment (it starts with kCommentPrefix), which is how it is
// found again: a rule left by a crashed run is adopted, never duplicated, and removed by
// remove_all(). Each change to one chain is one nftables transaction.
//
// One per network namespace, owned by the daemon's Runtime. open() binds its netlink
// sockets to the calling thread's network namespace. reconcile(), remove_all() and the
// accessors may be called from any thread (one mutex guards the state and the request
// socket; the watcher thread takes it too). start() and stop() must be called from one
// thread (the daemon's main thread), never concurrently with each other or the destructor.
class VpnCoexistence {
 public:
  static constexpr std::string_view kCommentPrefix = "splitd:";
  static constexpr std::string_view kRuleComment =
      "splitd: accept loopback (splitd proxy answers to local apps); removed when splitd stops";
  // Tables wg-quick creates ("wg-quick-" + interface) and the chain that holds its rule.
  static constexpr std::string_view kWgQuickTablePrefix = "wg-quick-";
  static constexpr std::string_view kWgQuickChain = "preraw";
  // The comment of wg-quick's iptables rules ("wg-quick(8) rule for wg0").
  static constexpr std::string_view kWgQuickMarker = "wg-quick(8) rule for";

  enum class Form {
    kWgQuickTable,  // table ip|ip6 wg-quick-IFACE, chain preraw
    kIptablesNft,   // table ip|ip6 raw, chain PREROUTING (iptables-nft), with wg-quick's rule
  };

  // splitd's rule in one anti-spoofing chain.
  struct Placement {
    Form form = Form::kWgQuickTable;
    std::uint8_t family = 0;  // NFPROTO_IPV4 or NFPROTO_IPV6
    std::string table;
    std::string chain;
    std::uint64_t handle = 0;
    // "chain ip wg-quick-wg0 preraw"
    std::string describe() const;
  };

  // What one reconcile() or remove_all() did; each entry was also logged.
  struct Report {
    std::vector<Placement> placed;      // inserted at a chain's head
    std::vector<Placement> adopted;     // already at the head (an earlier run's), now tracked
    std::vector<Placement> removed;     // deleted: duplicates, no longer needed, remove_all()
    std::vector<Placement> forgotten;   // tracked, but its chain is gone (wg-quick down)
    std::vector<std::string> failures;  // chains where the rule could not be placed, with the fix
    bool changed() const { return !placed.empty() || !removed.empty(); }
  };

  // Opens the netlink sockets in the calling thread's network namespace. Changes nothing.
  static Expected<std::unique_ptr<VpnCoexistence>, FirewallError> open();
  // Stops the watcher if it runs (which removes the rules, as stop() does); otherwise the
  // rules stay in place: call remove_all() on orderly shutdown.
  ~VpnCoexistence();
  VpnCoexistence(const VpnCoexistence&) = delete;
  VpnCoexistence& operator=(const VpnCoexistence&) = delete;

  // Brings every anti-spoofing chain to the wanted state: splitd's rule once, ahead of the
  // VPN's rules (inserted, or moved to the head when the VPN inserted its rule before it);
  // removed from an iptables-nft chain whose wg-quick rule is gone; forgotten when its
  // table is gone. Idempotent. A chain where the rule cannot be placed is logged (warn,
  // with the command that fixes it by hand) and listed in Report::failures; the error
  // return is for failures to list the ruleset at all.
  Expected<Report, FirewallError> reconcile();

  // Deletes every rule with splitd's comment from the chains above (the rules this object
  // placed, and leftovers of a crashed run), by handle, and nothing else. Succeeds when
  // there is none.
  Expected<Report, FirewallError> remove_all();

  // Reconciles once, then runs a watcher thread that listens to nftables events
  // (NFNLGRP_NFTABLES) and reconciles within milliseconds of a change to an ip/ip6 table
  // called wg-quick-* or raw by another program, after lost events (ENOBUFS), and every
  // kSafetyInterval. Its own changes do not wake it. No-op when already running.
  Expected<void, FirewallError> start();
  // Joins the watcher thread, then remove_all() (errors are logged). No-op when not running.
  void stop();
  bool running() const;

  // The rules this object tracks now.
  std::vector<Placement> placements() const;
  // How many reconciles the watcher thread ran (tests wait on it).
  std::uint64_t watcher_reconciles() const;

  // For `splitd cleanup`: removes splitd's rules from the anti-spoofing chains of the
  // calling thread's network namespace, without a running instance.
  static Expected<Report, FirewallError> remove_leftovers();

  // Whether an nftables event datagram is worth a reconcile: a table, chain or rule of
  // family ip/ip6 in a table called wg-quick-* or raw changed, and not by `own_portid`.
  // Malformed messages count as relevant (a resync is always safe).
  static bool is_relevant_event(std::span<const std::uint8_t> datagram, std::uint32_t own_portid);

  static constexpr int kSafetyIntervalMs = 1000;

 private:
  struct Impl;
  explicit VpnCoexistence(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace splitd::firewall
