#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/cidr.hpp"
#include "common/ip_address.hpp"
#include "iface/interface_cache.hpp"

namespace splitd::decider {

enum class Protocol : std::uint8_t { kTcp, kUdp };
const char* to_string(Protocol p);

// "exclude": everything through the tunnel except matches; "include": only matches.
enum class Mode : std::uint8_t { kExclude, kInclude };
const char* to_string(Mode m);

// The kill switch: what happens to tunnel-bound flows while no tunnel is up.
enum class OnTunnelDown : std::uint8_t { kBlock, kDirect };
const char* to_string(OnTunnelDown o);

enum class RouteKind : std::uint8_t { kTunnel, kDirect, kBlock };
const char* to_string(RouteKind k);

// What the decider knows about a new flow.
struct SessionInfo {
  Protocol protocol = Protocol::kTcp;
  IpAddress src;
  std::uint16_t src_port = 0;
  IpAddress dst;  // the original destination
  std::uint16_t dst_port = 0;
};

// The decider's answer: where the flow goes, bound to what, and why.
struct Route {
  RouteKind kind = RouteKind::kBlock;
  std::uint32_t ifindex = 0;
  std::string interface;           // empty for kBlock
  std::optional<IpAddress> source; // the interface's address of the flow's family
  std::string rule;                // what decided: "ip 10.0.0.0/8", "default", "kill switch"
};

// Decides the route of new flows. Implementations are called from every proxy thread at
// once and must not block.
class Decider {
 public:
  virtual ~Decider() = default;
  virtual Route decide(const SessionInfo& info) const = 0;
};

// The rules of the current config, immutable once built (swapped whole on reload).
struct RuleSet {
  Mode mode = Mode::kExclude;
  OnTunnelDown on_tunnel_down = OnTunnelDown::kBlock;
  std::vector<Cidr> ips;
};

// The rule engine's first version: IP/CIDR rules with include/exclude mode and the kill
// switch, resolved against the current interface snapshot. Reads rules and interfaces
// from atomically swapped snapshots: decide() takes no lock.
class RuleDecider final : public Decider {
 public:
  RuleDecider(const iface::InterfaceSource& interfaces, std::shared_ptr<const RuleSet> rules);
  Route decide(const SessionInfo& info) const override;
  void set_rules(std::shared_ptr<const RuleSet> rules) { rules_.store(std::move(rules)); }
  std::shared_ptr<const RuleSet> rules() const { return rules_.load(); }

 private:
  const iface::InterfaceSource& interfaces_;
  std::atomic<std::shared_ptr<const RuleSet>> rules_;
};

// Resolves a route kind to an interface of the snapshot (used by RuleDecider; exposed for
// tests). Tunnel-bound flows with no tunnel up follow on_tunnel_down.
Route resolve(RouteKind wanted, const IpAddress& dst, const iface::InterfaceSnapshot& snap,
              OnTunnelDown on_tunnel_down, std::string rule);

}  // namespace splitd::decider
