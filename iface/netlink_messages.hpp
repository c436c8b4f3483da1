#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "common/expected.hpp"
#include "common/ip_address.hpp"
#include "netlink/error.hpp"

struct nlmsghdr;

namespace splitd::iface {

// The netlink layer's errors (netlink/error.hpp) are iface's: a parse failure of an
// rtnetlink message is one of them too (kTruncated, kMalformed).
using NetlinkError = netlink::Error;
using NetlinkFailure = netlink::Failure;
using netlink::to_string;

// One link as rtnetlink describes it (RTM_NEWLINK / RTM_DELLINK).
struct LinkMsg {
  std::uint32_t index = 0;
  std::string name;
  std::uint16_t type = 0;   // ARPHRD_*
  std::uint32_t flags = 0;  // IFF_*
  std::uint32_t mtu = 0;
  std::vector<std::uint8_t> hwaddr;
  std::string kind;        // IFLA_INFO_KIND: "veth", "tun", "wireguard", ... ("" for hardware)
  std::string parent_dev;  // IFLA_PARENT_DEV_NAME: set for devices with a bus parent
  friend bool operator==(const LinkMsg&, const LinkMsg&) = default;
};

// One address (RTM_NEWADDR / RTM_DELADDR).
struct AddrMsg {
  std::uint32_t index = 0;
  IpAddress address;
  std::uint8_t prefix_len = 0;
  std::uint8_t scope = 0;   // RT_SCOPE_*
  std::uint32_t flags = 0;  // IFA_F_*
  friend bool operator==(const AddrMsg&, const AddrMsg&) = default;
};

// One route (RTM_NEWROUTE / RTM_DELROUTE).
struct RouteMsg {
  IpAddress::Family family = IpAddress::Family::kV4;
  IpAddress dst;  // unspecified of the family when dst_len == 0
  std::uint8_t dst_len = 0;
  std::uint32_t table = 0;
  std::uint8_t type = 0;      // RTN_*
  std::uint8_t protocol = 0;  // RTPROT_*
  std::uint8_t scope = 0;
  std::uint8_t tos = 0;
  std::uint32_t oif = 0;  // first nexthop's interface for multipath routes
  std::optional<IpAddress> gateway;
  std::optional<IpAddress> prefsrc;
  std::uint32_t metric = 0;
  friend bool operator==(const RouteMsg&, const RouteMsg&) = default;
};

struct LinkEvent { bool removed; LinkMsg link; };
struct AddrEvent { bool removed; AddrMsg addr; };
struct RouteEvent { bool removed; RouteMsg route; };
using Event = std::variant<LinkEvent, AddrEvent, RouteEvent>;

// Parses one rtnetlink message whose header and payload (nlh->nlmsg_len bytes) have
// already been checked to lie inside the received buffer. nullopt: a well-formed message
// of a type we do not track.
Expected<std::optional<Event>, NetlinkFailure> parse_rtnl_message(const nlmsghdr& nlh);

// What a walk over a received buffer found.
struct BatchResult {
  std::vector<Event> events;
  bool done = false;  // NLMSG_DONE or the final ACK was seen
};

// Checks for a batch of messages: dump replies must carry `seq` and `portid`;
// notifications (multicast events) are not checked for either.
struct BatchExpectation {
  bool is_dump_reply = false;
  std::uint32_t seq = 0;
  std::uint32_t portid = 0;
};

// Walks every message in `buf`: validates each header's length against the buffer,
// seq/portid for dump replies, NLMSG_ERROR, NLM_F_DUMP_INTR, NLMSG_DONE, and parses the
// messages of interest. The first problem aborts the walk with a failure.
Expected<BatchResult, NetlinkFailure> parse_batch(std::span<const std::uint8_t> buf,
                                                  const BatchExpectation& expect);

}  // namespace splitd::iface
