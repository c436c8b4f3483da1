#pragma once

#include <linux/if_addr.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>

#include <memory>
#include <mutex>

#include "common/atomic_shared_ptr.hpp"
#include "iface/interface_cache.hpp"

namespace splitd::fakes {

inline constexpr std::uint32_t kUpRunning = IFF_UP | IFF_RUNNING;

inline IpAddress ip(const char* text) { return *IpAddress::parse(text); }

inline iface::LinkEvent link(std::uint32_t index, const char* name, const char* kind,
                             std::uint32_t flags, std::uint16_t type = ARPHRD_ETHER) {
  iface::LinkMsg l;
  l.index = index;
  l.name = name;
  l.kind = kind;
  l.flags = flags;
  l.type = type;
  l.mtu = 1500;
  if (type == ARPHRD_ETHER) l.hwaddr = {0x02, 0, 0, 0, 0, static_cast<std::uint8_t>(index)};
  return {false, l};
}

inline iface::AddrEvent addr(std::uint32_t index, const char* address, std::uint8_t len,
                             std::uint8_t scope = RT_SCOPE_UNIVERSE, std::uint32_t flags = 0) {
  return {false, iface::AddrMsg{index, ip(address), len, scope, flags}};
}

inline iface::RouteEvent route(const char* dst, std::uint8_t len, std::uint32_t oif,
                               std::uint32_t metric, const char* gw = nullptr,
                               std::uint32_t table = RT_TABLE_MAIN) {
  iface::RouteMsg r;
  r.dst = ip(dst);
  r.family = r.dst.family();
  r.dst_len = len;
  r.oif = oif;
  r.metric = metric;
  r.table = table;
  r.type = RTN_UNICAST;
  if (gw) r.gateway = ip(gw);
  return {false, r};
}

// The lab's host namespace as the cache would see it: lo (1), phys0 (2, veth, default
// routes metric 100), tun0 (3); optionally a VPN's 0/1 + 128/1 and ::/1 + 8000::/1.
inline iface::NetlinkState lab_host_state(bool vpn_routes) {
  iface::NetlinkState s;
  s.apply(link(1, "lo", "", kUpRunning | IFF_LOOPBACK, ARPHRD_LOOPBACK));
  s.apply(link(2, "phys0", "veth", kUpRunning));
  s.apply(link(3, "tun0", "tun", kUpRunning | IFF_POINTOPOINT | IFF_NOARP, ARPHRD_NONE));
  s.apply(addr(1, "127.0.0.1", 8, RT_SCOPE_HOST));
  s.apply(addr(2, "fe80::1", 64, RT_SCOPE_LINK));
  s.apply(addr(2, "198.18.1.2", 24));
  s.apply(addr(2, "2001:db8:ff:1::2", 64));
  s.apply(addr(3, "198.18.2.2", 24));
  s.apply(addr(3, "2001:db8:ff:2::2", 64));
  s.apply(route("0.0.0.0", 0, 2, 100, "198.18.1.1"));
  s.apply(route("::", 0, 2, 100, "2001:db8:ff:1::1"));
  if (vpn_routes) {
    s.apply(route("0.0.0.0", 1, 3, 0));
    s.apply(route("128.0.0.0", 1, 3, 0));
    s.apply(route("::", 1, 3, 0));
    s.apply(route("8000::", 1, 3, 0));
  }
  return s;
}

// An InterfaceSource whose snapshot the test sets.
class FakeInterfaceSource final : public iface::InterfaceSource {
 public:
  explicit FakeInterfaceSource(const iface::NetlinkState& state,
                               iface::SelectionConfig config = {})
      : snap_(iface::InterfaceSnapshot::build(state, config)) {}
  void set(const iface::NetlinkState& state, iface::SelectionConfig config = {}) {
    snap_.store(iface::InterfaceSnapshot::build(state, config));
  }
  std::shared_ptr<const iface::InterfaceSnapshot> snapshot() const override { return snap_.load(); }
  std::uint64_t subscribe(Callback) override { return 1; }
  void unsubscribe(std::uint64_t) override {}

 private:
  AtomicSharedPtr<const iface::InterfaceSnapshot> snap_;
};

}  // namespace splitd::fakes
