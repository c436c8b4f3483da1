// libFuzzer target for what the firewall reads from the kernel: the footprint event scans
// (scan_nft_events over NFNLGRP_NFTABLES datagrams, scan_rtnl_events over rule/route
// events), VpnCoexistence::is_relevant_event, and the ACKs of an nftables batch
// (AckTracker). Input: one flag byte, then one datagram.
//   flags bit 0: splitd's own port id is 4242 (else 0: none known)
//         bit 1: a foreign change is already awaiting its NFT_MSG_NEWGEN
//         bits 4-7: the batch the AckTracker expects has 2 + N messages after BEGIN,
//                   BEGIN's sequence number being the first message's minus (N & 3)
// Build with clang (see tests/firewall/CMakeLists.txt); run:
//   fuzz_firewall_netlink -max_total_time=60 -max_len=4096 tests/firewall/corpus/fuzz_firewall_netlink
#include <linux/netlink.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "firewall/ack_tracker.hpp"
#include "firewall/footprint_events.hpp"
#include "firewall/vpn_coexistence.hpp"
#include "netlink/message.hpp"

using namespace splitd;
using namespace splitd::firewall;

namespace {

constexpr std::uint32_t kOwnPortid = 4242;
constexpr std::uint32_t kRouteTable = 1501;
const std::string kTable = "splitd";

void check_events(const FootprintEvents& ev, std::size_t messages, bool walk_failed) {
  if (ev.messages != messages) __builtin_trap();
  if (walk_failed && !ev.lost) __builtin_trap();  // an unreadable datagram is never ignored
  if (ev.culprit_pid != 0 && ev.culprit.find(" (pid " + std::to_string(ev.culprit_pid) + ")") ==
                                 std::string::npos) {
    __builtin_trap();
  }
  if (ev.any() != (ev.nftables || ev.policy || ev.route || ev.lost)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t flags = data[0];
  // Kernel buffers are aligned; MessageReader refuses misaligned ones (tested elsewhere).
  std::vector<std::uint32_t> storage((size - 1 + 3) / 4);
  if (size > 1) std::memcpy(storage.data(), data + 1, size - 1);
  const std::span<const std::uint8_t> buf(reinterpret_cast<const std::uint8_t*>(storage.data()), size - 1);
  const std::uint32_t own = (flags & 1) != 0 ? kOwnPortid : 0;

  std::size_t messages = 0;
  bool walk_failed = false;
  bool saw_error = false;
  nlmsghdr first{};
  {
    netlink::MessageReader reader(buf);
    while (const nlmsghdr* m = reader.next()) {
      if (messages++ == 0) std::memcpy(&first, m, sizeof first);
      saw_error = saw_error || m->nlmsg_type == NLMSG_ERROR || m->nlmsg_type == NLMSG_OVERRUN;
    }
    walk_failed = reader.failure().has_value();
  }

  // (a) The footprint's event scans.
  {
    FootprintEvents ev;
    bool awaiting = (flags & 2) != 0;
    scan_nft_events(buf, own, kTable, awaiting, ev);
    check_events(ev, messages, walk_failed);
    if (ev.policy || ev.route) __builtin_trap();  // not nftables' to say
    // A second datagram folds into the same result: counts add up, nothing is forgotten.
    FootprintEvents twice = ev;
    scan_nft_events(buf, own, kTable, awaiting, twice);
    if (twice.messages != 2 * messages || (ev.nftables && !twice.nftables) || (ev.lost && !twice.lost)) {
      __builtin_trap();
    }
  }
  {
    FootprintEvents ev;
    scan_rtnl_events(buf, own, kRouteTable, ev);
    check_events(ev, messages, walk_failed);
    if (ev.nftables || !ev.culprit.empty() || ev.culprit_pid != 0) __builtin_trap();
    if ((ev.policy || ev.route) && own != 0 && ev.rtnl_portid == own) __builtin_trap();
  }
  // An error, an overrun or an unreadable datagram always asks for a reconcile.
  const bool relevant = VpnCoexistence::is_relevant_event(buf, own);
  if ((saw_error || walk_failed) && !relevant) __builtin_trap();

  // (b) The ACKs of one batch, the way NftBatch::commit reads them.
  {
    const std::uint32_t n = 2u + (flags >> 4);
    const std::uint32_t begin = first.nlmsg_seq - ((flags >> 4) & 3u);
    const std::uint32_t end = begin + n + 1;
    AckTracker acks(begin, end, first.nlmsg_pid);
    const std::size_t missing_before = acks.missing();
    auto fed = acks.feed(buf);
    if (acks.missing() > missing_before) __builtin_trap();
    if (const auto& f = acks.failure()) {
      if (f->error <= 0) __builtin_trap();
      if (end > begin && (f->seq < begin || f->seq > end)) __builtin_trap();
    }
    if (fed && !acks.done()) {
      // Feeding the same replies again acknowledges nothing new.
      const std::size_t missing = acks.missing();
      (void)acks.feed(buf);
      if (acks.missing() > missing) __builtin_trap();
    }
  }
  return 0;
}
