// libFuzzer target for the rtnetlink parsers the interface cache trusts with kernel
// replies: parse_batch() (dump replies and multicast events), parse_rtnl_message() on each
// message on its own, and the shared reply walk (netlink::ReplyReader, parse_error,
// parse_done) a dump goes through. Input: one flag byte, then one datagram.
//   flags bit 0: check as a dump reply (seq and portid of the first message)
//         bit 1: the request carried NLM_F_ACK (ReplyReader)
// Build with clang (see tests/iface/CMakeLists.txt); run:
//   fuzz_iface_netlink -max_total_time=60 -max_len=4096 tests/iface/corpus/fuzz_iface_netlink
#include <linux/netlink.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <variant>
#include <vector>

#include "iface/netlink_messages.hpp"
#include "netlink/message.hpp"

using namespace splitd;
using namespace splitd::iface;

namespace {

unsigned max_prefix(IpAddress::Family f) { return f == IpAddress::Family::kV4 ? 32 : 128; }

// What every parsed event promises its users (interface_snapshot.cpp relies on these).
void check_event(const Event& ev) {
  if (const auto* l = std::get_if<LinkEvent>(&ev)) {
    if (l->link.index == 0 || l->link.name.empty()) __builtin_trap();
    if (l->link.name.find('\0') != std::string::npos) __builtin_trap();
  } else if (const auto* a = std::get_if<AddrEvent>(&ev)) {
    if (a->addr.prefix_len > max_prefix(a->addr.address.family())) __builtin_trap();
  } else if (const auto* r = std::get_if<RouteEvent>(&ev)) {
    const RouteMsg& m = r->route;
    if (m.dst_len > max_prefix(m.family) || m.dst.family() != m.family) __builtin_trap();
    if (m.gateway && m.gateway->family() != m.family) __builtin_trap();
    if (m.prefsrc && m.prefsrc->family() != m.family) __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::uint8_t flags = data[0];
  // Kernel buffers are aligned; MessageReader refuses misaligned ones (tested elsewhere).
  std::vector<std::uint32_t> storage((size - 1 + 3) / 4);
  if (size > 1) std::memcpy(storage.data(), data + 1, size - 1);
  const std::span<const std::uint8_t> buf(reinterpret_cast<const std::uint8_t*>(storage.data()), size - 1);

  BatchExpectation expect;
  expect.is_dump_reply = (flags & 1) != 0;
  if (buf.size() >= sizeof(nlmsghdr)) {
    nlmsghdr first;
    std::memcpy(&first, buf.data(), sizeof first);
    expect.seq = first.nlmsg_seq;
    expect.portid = first.nlmsg_pid;
  }

  // Each message on its own, as parse_batch would see it.
  std::size_t parsed_events = 0;
  bool walk_ok = true;
  netlink::MessageReader reader(buf);
  while (const nlmsghdr* m = reader.next()) {
    if (m->nlmsg_len < sizeof(nlmsghdr) || m->nlmsg_len > buf.size()) __builtin_trap();
    if (m->nlmsg_type == NLMSG_ERROR) {
      if (auto e = netlink::parse_error(*m); e && e->error < 0) __builtin_trap();
    } else if (m->nlmsg_type == NLMSG_DONE) {
      if (netlink::parse_done(*m).error < 0) __builtin_trap();
    }
    if (m->nlmsg_type < NLMSG_MIN_TYPE) continue;
    auto ev = parse_rtnl_message(*m);
    if (!ev) {
      walk_ok = false;
      continue;
    }
    if (ev->has_value()) {
      check_event(**ev);
      ++parsed_events;
    }
  }

  auto batch = parse_batch(buf, expect);
  if (batch) {
    for (const Event& ev : batch->events) check_event(ev);
    // A batch that went through has walked and parsed every message, as the walk above
    // did, and found the same events.
    if (reader.failure() || !walk_ok || batch->events.size() != parsed_events) __builtin_trap();
  } else {
    (void)to_string(batch.error().code);
    (void)batch.error().message();
  }

  netlink::ReplyReader replies(expect.seq, expect.portid, (flags & 2) != 0);
  std::size_t delivered = 0;
  auto fed = replies.feed(buf, [&](const nlmsghdr& m) {
    if (m.nlmsg_seq != expect.seq || m.nlmsg_pid != expect.portid) __builtin_trap();
    if (m.nlmsg_type < NLMSG_MIN_TYPE) __builtin_trap();
    ++delivered;
  });
  if (fed && replies.done() && replies.ack().error < 0) __builtin_trap();
  (void)delivered;
  return 0;
}
