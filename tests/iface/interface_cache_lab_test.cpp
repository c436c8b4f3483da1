// The interface cache against a real kernel: the lab's host namespace.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "iface/interface_cache.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::iface {
namespace {

using namespace std::chrono_literals;
using Family = IpAddress::Family;

// Opens the cache inside the lab's host namespace (its netlink sockets live there).
std::unique_ptr<InterfaceCache> open_in(const lab::Lab& lab, SelectionConfig config = {}) {
  std::unique_ptr<InterfaceCache> cache;
  lab.in_ns(lab.host_ns(), [&] {
    auto c = InterfaceCache::open(config);
    if (!c) throw std::runtime_error(c.error().message());
    cache = std::move(*c);
    cache->start();
  });
  return cache;
}

void run(const lab::Lab& lab, const std::string& cmd) {
  auto r = lab.exec(lab.host_ns(), cmd);
  ASSERT_EQ(r.exit_code, 0) << cmd << ": " << r.err;
}

// Polls until pred(snapshot) holds; returns how long it took, or nullopt after `limit`.
template <typename Pred>
std::optional<std::chrono::milliseconds> within(const InterfaceCache& cache, Pred pred,
                                                std::chrono::milliseconds limit = 200ms) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - start);
    if (pred(*cache.snapshot())) return elapsed;
    if (elapsed > limit) return std::nullopt;
    std::this_thread::sleep_for(2ms);
  }
}

bool has_address(const InterfaceSnapshot& s, const char* itf, const char* ip) {
  const Interface* i = s.by_name(itf);
  if (i == nullptr) return false;
  for (const auto& a : i->addresses) {
    if (a.address.to_string() == ip) return true;
  }
  return false;
}

TEST(InterfaceCacheLab, SeesPhysicalAndTunnel) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{});
  auto cache = open_in(*lab);
  auto snap = cache->snapshot();
  const Interface* phys = snap->by_name(lab::kPhysIf);
  const Interface* tun = snap->by_name(lab::kTunIf);
  ASSERT_NE(phys, nullptr);
  ASSERT_NE(tun, nullptr);
  EXPECT_EQ(phys->link_kind, "veth");
  EXPECT_EQ(tun->kind, InterfaceKind::kTunnel);
  EXPECT_EQ(tun->link_kind, "tun");
  EXPECT_EQ(phys->ipv4->to_string(), lab::kHostPhys4);
  EXPECT_EQ(phys->ipv6->to_string(), lab::kHostPhys6);
  EXPECT_EQ(tun->ipv4->to_string(), lab::kHostTun4);
  EXPECT_EQ(tun->ipv6->to_string(), lab::kHostTun6);
  ASSERT_NE(snap->physical(Family::kV4), nullptr);
  EXPECT_EQ(snap->physical(Family::kV4)->name, lab::kPhysIf);
  EXPECT_EQ(snap->physical(Family::kV6)->name, lab::kPhysIf);
  EXPECT_EQ(snap->physical_route(Family::kV4)->gateway->to_string(), lab::kWanGw4);
  ASSERT_NE(snap->tunnel(), nullptr);
  EXPECT_EQ(snap->tunnel()->name, lab::kTunIf);
  EXPECT_TRUE(snap->tunnel_up());
  EXPECT_EQ(snap->by_address(*IpAddress::parse(lab::kHostTun6))->name, lab::kTunIf);
  EXPECT_EQ(snap->by_mac(phys->mac_string()), phys);
  EXPECT_EQ(snap->by_index(phys->index), phys);
}

TEST(InterfaceCacheLab, VpnDefaultRouteKeepsPhysicalDefault) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{});
  auto cache = open_in(*lab);
  const auto before = cache->generation();
  lab->set_vpn_default_route(true);
  // The VPN's four routes arrive; phys0 stays the physical default for both families.
  auto took = within(*cache, [](const InterfaceSnapshot& s) {
    int half_routes = 0;
    for (const auto& r : s.routes()) half_routes += r.dst_len == 1 ? 1 : 0;
    return half_routes == 4;
  });
  ASSERT_TRUE(took) << "VPN routes not seen within 200 ms";
  EXPECT_GT(cache->generation(), before);
  auto snap = cache->snapshot();
  EXPECT_EQ(snap->physical(Family::kV4)->name, lab::kPhysIf);
  EXPECT_EQ(snap->physical(Family::kV6)->name, lab::kPhysIf);
  EXPECT_EQ(snap->tunnel()->name, lab::kTunIf);
}

TEST(InterfaceCacheLab, ChangesShowWithin200ms) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{});
  auto cache = open_in(*lab);
  std::atomic<int> callbacks{0};
  const auto id = cache->subscribe([&](const auto&) { callbacks++; });

  run(*lab, "ip addr add 198.18.1.77/24 dev phys0");
  auto took = within(*cache, [](const auto& s) { return has_address(s, "phys0", "198.18.1.77"); });
  ASSERT_TRUE(took) << "address add not seen within 200 ms";
  std::printf("address added: seen after %lld ms\n", static_cast<long long>(took->count()));

  run(*lab, "ip addr del 198.18.1.77/24 dev phys0");
  took = within(*cache, [](const auto& s) { return !has_address(s, "phys0", "198.18.1.77"); });
  ASSERT_TRUE(took) << "address removal not seen within 200 ms";

  run(*lab, "ip -6 addr add 2001:db8:ff:1::77/64 dev phys0 nodad");
  took = within(*cache, [](const auto& s) { return has_address(s, "phys0", "2001:db8:ff:1::77"); });
  ASSERT_TRUE(took) << "IPv6 address add not seen within 200 ms";

  run(*lab, "ip link set tun0 down");
  took = within(*cache, [](const auto& s) { return !s.tunnel_up() && s.tunnel() == nullptr; });
  ASSERT_TRUE(took) << "link down not seen within 200 ms";
  run(*lab, "ip link set tun0 up");
  took = within(*cache, [](const auto& s) { return s.tunnel_up(); });
  ASSERT_TRUE(took) << "link up not seen within 200 ms";

  // Default route change: a lower-metric default via tun0 does not make it physical;
  // removing phys0's default leaves no IPv4 physical default; restoring brings it back.
  run(*lab, "ip route add default dev tun0 metric 10");
  run(*lab, "ip route del default via 198.18.1.1 dev phys0 metric 100");
  took = within(*cache, [](const auto& s) { return s.physical(Family::kV4) == nullptr; });
  ASSERT_TRUE(took) << "default route removal not seen within 200 ms";
  run(*lab, "ip route add default via 198.18.1.1 dev phys0 metric 200");
  took = within(*cache, [](const auto& s) {
    const Route* r = s.physical_route(Family::kV4);
    return r != nullptr && r->metric == 200 && s.physical(Family::kV4)->name == "phys0";
  });
  ASSERT_TRUE(took) << "default route change not seen within 200 ms";

  // phys0 down: the kernel flushes its IPv4 routes without telling; the cache re-reads.
  run(*lab, "ip link set phys0 down");
  took = within(*cache, [](const auto& s) {
    return s.physical(Family::kV4) == nullptr && s.physical(Family::kV6) == nullptr;
  });
  ASSERT_TRUE(took) << "physical link down not seen within 200 ms";
  EXPECT_GE(cache->resync_count(), 1u);
  EXPECT_GT(callbacks.load(), 5);
  cache->unsubscribe(id);
}

TEST(InterfaceCacheLab, ConfiguredNames) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{});
  auto cache = open_in(*lab, SelectionConfig{"phys0", "tun0"});
  run(*lab, "ip link set tun0 down");
  auto took = within(*cache, [](const auto& s) { return s.tunnel() != nullptr && !s.tunnel_up(); });
  ASSERT_TRUE(took) << "configured tunnel going down not seen";
  EXPECT_EQ(cache->snapshot()->physical(Family::kV4)->name, "phys0");
}

}  // namespace
}  // namespace splitd::iface
