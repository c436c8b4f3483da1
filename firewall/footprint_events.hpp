#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace splitd::firewall {

// What a burst of kernel events says about splitd's footprint. The Firewall reads
// NFNLGRP_NFTABLES (every nftables change of the namespace) and the rtnetlink rule and
// route groups, and folds each datagram into one of these; the daemon repairs on it.
// Events caused by splitd's own sockets are not changes.
struct FootprintEvents {
  bool nftables = false;  // another socket changed `table inet splitd` (or deleted it)
  bool policy = false;    // another socket added or deleted a policy rule (anyone's)
  bool route = false;     // another socket changed a route in splitd's route table
  bool lost = false;      // events were lost (ENOBUFS) or unreadable: check everything
  // Who made the last nftables change to splitd's table, as NFT_MSG_NEWGEN tells it:
  // "nft (pid 4242)". For rtnetlink the sender's netlink port (`ip` binds it to its pid).
  std::string culprit;
  std::uint32_t culprit_pid = 0;      // from NFT_MSG_NEWGEN, 0 if unknown
  std::uint32_t rtnl_portid = 0;      // netlink port of the last foreign rule/route change
  std::size_t messages = 0;           // event messages read (all, relevant or not)

  bool any() const { return nftables || policy || route || lost; }
};

// Folds one datagram of NFNLGRP_NFTABLES events into `out`. `own_portid` is the socket
// splitd changes its table through; `table` is splitd's table (family inet). A change
// is any message naming the table (tables, chains, rules, sets, elements, objects,
// flowtables all carry it as attribute 1); NFT_MSG_NEWGEN closes a transaction and says
// who made it. `awaiting_gen` carries "a foreign change was seen, its NEWGEN not yet"
// between datagrams. Malformed datagrams set `lost` (a full check is the safe answer).
void scan_nft_events(std::span<const std::uint8_t> datagram, std::uint32_t own_portid,
                     const std::string& table, bool& awaiting_gen, FootprintEvents& out);

// Folds one datagram of rtnetlink rule/route events into `out`: RTM_NEWRULE/DELRULE from
// any socket but `own_portid` (splitd's policy routing socket) are policy changes;
// RTM_NEWROUTE/DELROUTE count only for `route_table`.
void scan_rtnl_events(std::span<const std::uint8_t> datagram, std::uint32_t own_portid,
                      std::uint32_t route_table, FootprintEvents& out);

}  // namespace splitd::firewall
