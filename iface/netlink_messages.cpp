#include "iface/netlink_messages.hpp"

#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <cerrno>
#include <cstring>

#include "netlink/message.hpp"

namespace splitd::iface {
namespace {

NetlinkFailure fail(NetlinkError code, std::string detail) {
  return NetlinkFailure{code, std::move(detail)};
}

using netlink::parse_attrs;

std::size_t payload_len(const nlattr* a) { return netlink::attr_payload(a).size(); }
const std::uint8_t* payload_of(const nlattr* a) { return netlink::attr_payload(a).data(); }

Expected<std::uint32_t, NetlinkFailure> get_u32(const nlattr* a, const char* what) {
  if (payload_len(a) < sizeof(std::uint32_t)) {
    return unexpected(fail(NetlinkError::kMalformed,
                           std::string(what) + ": expected 4 bytes, got " +
                               std::to_string(payload_len(a))));
  }
  return *netlink::attr_u32(a);
}

// A NUL-terminated string attribute; a string without its NUL is taken up to the payload.
std::string get_str(const nlattr* a) { return netlink::attr_string(a); }

Expected<IpAddress, NetlinkFailure> get_ip(const nlattr* a, std::uint8_t family,
                                           const char* what) {
  const std::size_t want = family == AF_INET ? 4 : 16;
  if (payload_len(a) != want) {
    return unexpected(fail(NetlinkError::kMalformed,
                           std::string(what) + ": address of " +
                               std::to_string(payload_len(a)) + " bytes for family " +
                               std::to_string(family)));
  }
  auto ip = IpAddress::from_bytes({payload_of(a), want});
  return *ip;
}

// Payload of the fixed header (ifinfomsg, ifaddrmsg, rtmsg) and what follows it.
template <typename Hdr>
Expected<const Hdr*, NetlinkFailure> fixed_header(const nlmsghdr& nlh, const char* what) {
  if (nlh.nlmsg_len < NLMSG_LENGTH(sizeof(Hdr))) {
    return unexpected(fail(NetlinkError::kTruncated,
                           std::string(what) + ": message of " + std::to_string(nlh.nlmsg_len) +
                               " bytes is shorter than its header"));
  }
  return reinterpret_cast<const Hdr*>(netlink::payload(nlh).data());
}

Expected<std::optional<Event>, NetlinkFailure> parse_link(const nlmsghdr& nlh) {
  auto hdr = fixed_header<ifinfomsg>(nlh, "link");
  if (!hdr) return unexpected(hdr.error());
  ifinfomsg ifi;
  std::memcpy(&ifi, *hdr, sizeof ifi);
  // Bridge-port (AF_BRIDGE) and other per-family link messages describe one aspect of a
  // link, not the link: a RTM_DELLINK of family AF_BRIDGE only means "left the bridge".
  if (ifi.ifi_family != AF_UNSPEC) return std::optional<Event>();
  auto attrs = parse_attrs<IFLA_MAX>(netlink::attributes(nlh, sizeof(ifinfomsg)), "link");
  if (!attrs) return unexpected(attrs.error());
  if (ifi.ifi_index <= 0) {
    return unexpected(fail(NetlinkError::kMalformed,
                           "link: invalid index " + std::to_string(ifi.ifi_index)));
  }
  LinkMsg link;
  link.index = static_cast<std::uint32_t>(ifi.ifi_index);
  link.type = ifi.ifi_type;
  link.flags = ifi.ifi_flags;
  if (const nlattr* a = (*attrs)[IFLA_IFNAME]) link.name = get_str(a);
  if (link.name.empty()) {
    return unexpected(fail(NetlinkError::kMalformed,
                           "link " + std::to_string(link.index) + ": no name"));
  }
  if (const nlattr* a = (*attrs)[IFLA_MTU]) {
    auto v = get_u32(a, "link mtu");
    if (!v) return unexpected(v.error());
    link.mtu = *v;
  }
  if (const nlattr* a = (*attrs)[IFLA_ADDRESS]) {
    const auto b = netlink::attr_payload(a);
    link.hwaddr.assign(b.begin(), b.end());
  }
  if (const nlattr* a = (*attrs)[IFLA_PARENT_DEV_NAME]) link.parent_dev = get_str(a);
  if (const nlattr* a = (*attrs)[IFLA_LINKINFO]) {
    auto info = parse_attrs<IFLA_INFO_MAX>(netlink::attr_payload(a), "linkinfo");
    if (!info) return unexpected(info.error());
    if (const nlattr* k = (*info)[IFLA_INFO_KIND]) link.kind = get_str(k);
  }
  return std::optional<Event>(LinkEvent{nlh.nlmsg_type == RTM_DELLINK, std::move(link)});
}

Expected<std::optional<Event>, NetlinkFailure> parse_addr(const nlmsghdr& nlh) {
  auto hdr = fixed_header<ifaddrmsg>(nlh, "address");
  if (!hdr) return unexpected(hdr.error());
  ifaddrmsg ifa;
  std::memcpy(&ifa, *hdr, sizeof ifa);
  if (ifa.ifa_family != AF_INET && ifa.ifa_family != AF_INET6) return std::optional<Event>();
  auto attrs = parse_attrs<IFA_MAX>(netlink::attributes(nlh, sizeof(ifaddrmsg)), "address");
  if (!attrs) return unexpected(attrs.error());
  AddrMsg addr;
  addr.index = ifa.ifa_index;
  addr.scope = ifa.ifa_scope;
  addr.flags = ifa.ifa_flags;
  addr.prefix_len = ifa.ifa_prefixlen;
  const unsigned max_prefix = ifa.ifa_family == AF_INET ? 32 : 128;
  if (addr.prefix_len > max_prefix) {
    return unexpected(fail(NetlinkError::kMalformed,
                           "address: prefix length " + std::to_string(addr.prefix_len)));
  }
  // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is always our own address.
  const nlattr* a = (*attrs)[IFA_LOCAL] ? (*attrs)[IFA_LOCAL] : (*attrs)[IFA_ADDRESS];
  if (a == nullptr) {
    return unexpected(fail(NetlinkError::kMalformed, "address: no IFA_LOCAL/IFA_ADDRESS"));
  }
  auto ip = get_ip(a, ifa.ifa_family, "address");
  if (!ip) return unexpected(ip.error());
  addr.address = *ip;
  if (const nlattr* f = (*attrs)[IFA_FLAGS]) {
    auto v = get_u32(f, "address flags");
    if (!v) return unexpected(v.error());
    addr.flags = *v;
  }
  return std::optional<Event>(AddrEvent{nlh.nlmsg_type == RTM_DELADDR, addr});
}

Expected<std::optional<Event>, NetlinkFailure> parse_route(const nlmsghdr& nlh) {
  auto hdr = fixed_header<rtmsg>(nlh, "route");
  if (!hdr) return unexpected(hdr.error());
  rtmsg rtm;
  std::memcpy(&rtm, *hdr, sizeof rtm);
  if (rtm.rtm_family != AF_INET && rtm.rtm_family != AF_INET6) return std::optional<Event>();
  const unsigned max_prefix = rtm.rtm_family == AF_INET ? 32 : 128;
  if (rtm.rtm_dst_len > max_prefix) {
    return unexpected(fail(NetlinkError::kMalformed,
                           "route: destination length " + std::to_string(rtm.rtm_dst_len)));
  }
  auto attrs = parse_attrs<RTA_MAX>(netlink::attributes(nlh, sizeof(rtmsg)), "route");
  if (!attrs) return unexpected(attrs.error());
  RouteMsg r;
  r.family = rtm.rtm_family == AF_INET ? IpAddress::Family::kV4 : IpAddress::Family::kV6;
  r.dst = rtm.rtm_family == AF_INET ? IpAddress() : IpAddress::v6(in6_addr{});
  r.dst_len = rtm.rtm_dst_len;
  r.table = rtm.rtm_table;
  r.type = rtm.rtm_type;
  r.protocol = rtm.rtm_protocol;
  r.scope = rtm.rtm_scope;
  r.tos = rtm.rtm_tos;
  if (const nlattr* a = (*attrs)[RTA_TABLE]) {
    auto v = get_u32(a, "route table");
    if (!v) return unexpected(v.error());
    r.table = *v;
  }
  if (const nlattr* a = (*attrs)[RTA_DST]) {
    auto ip = get_ip(a, rtm.rtm_family, "route destination");
    if (!ip) return unexpected(ip.error());
    r.dst = *ip;
  }
  if (const nlattr* a = (*attrs)[RTA_OIF]) {
    auto v = get_u32(a, "route oif");
    if (!v) return unexpected(v.error());
    r.oif = *v;
  }
  if (const nlattr* a = (*attrs)[RTA_PRIORITY]) {
    auto v = get_u32(a, "route metric");
    if (!v) return unexpected(v.error());
    r.metric = *v;
  }
  if (const nlattr* a = (*attrs)[RTA_GATEWAY]) {
    auto ip = get_ip(a, rtm.rtm_family, "route gateway");
    if (!ip) return unexpected(ip.error());
    r.gateway = *ip;
  }
  if (const nlattr* a = (*attrs)[RTA_PREFSRC]) {
    auto ip = get_ip(a, rtm.rtm_family, "route source");
    if (!ip) return unexpected(ip.error());
    r.prefsrc = *ip;
  }
  if (const nlattr* a = (*attrs)[RTA_MULTIPATH]; a != nullptr && r.oif == 0) {
    // Multipath: take the first nexthop's interface and gateway.
    if (payload_len(a) < sizeof(rtnexthop)) {
      return unexpected(fail(NetlinkError::kTruncated, "route: empty multipath attribute"));
    }
    rtnexthop nh;
    std::memcpy(&nh, payload_of(a), sizeof nh);
    if (nh.rtnh_len < sizeof(rtnexthop) || nh.rtnh_len > payload_len(a)) {
      return unexpected(fail(NetlinkError::kTruncated, "route: multipath nexthop length"));
    }
    r.oif = static_cast<std::uint32_t>(nh.rtnh_ifindex);
    auto nh_attrs = parse_attrs<RTA_MAX>(
        payload_of(a) + RTNH_ALIGN(sizeof nh),
        nh.rtnh_len > RTNH_ALIGN(sizeof nh) ? nh.rtnh_len - RTNH_ALIGN(sizeof nh) : 0,
        "route nexthop");
    if (!nh_attrs) return unexpected(nh_attrs.error());
    if (const nlattr* g = (*nh_attrs)[RTA_GATEWAY]) {
      auto ip = get_ip(g, rtm.rtm_family, "nexthop gateway");
      if (!ip) return unexpected(ip.error());
      r.gateway = *ip;
    }
  }
  return std::optional<Event>(RouteEvent{nlh.nlmsg_type == RTM_DELROUTE, r});
}

}  // namespace

Expected<std::optional<Event>, NetlinkFailure> parse_rtnl_message(const nlmsghdr& nlh) {
  switch (nlh.nlmsg_type) {
    case RTM_NEWLINK:
    case RTM_DELLINK: return parse_link(nlh);
    case RTM_NEWADDR:
    case RTM_DELADDR: return parse_addr(nlh);
    case RTM_NEWROUTE:
    case RTM_DELROUTE: return parse_route(nlh);
    default: return std::optional<Event>();
  }
}

Expected<BatchResult, NetlinkFailure> parse_batch(std::span<const std::uint8_t> buf,
                                                  const BatchExpectation& expect) {
  BatchResult result;
  netlink::MessageReader reader(buf);
  while (const nlmsghdr* m = reader.next()) {
    const nlmsghdr& nlh = *m;
    if (expect.is_dump_reply) {
      if (auto ok = netlink::check_reply(nlh, expect.seq, expect.portid); !ok) {
        return unexpected(ok.error());
      }
      if (nlh.nlmsg_flags & NLM_F_DUMP_INTR) {
        return unexpected(fail(NetlinkError::kDumpInterrupted, ""));
      }
    }
    switch (nlh.nlmsg_type) {
      case NLMSG_NOOP: break;
      case NLMSG_DONE: result.done = true; break;
      case NLMSG_OVERRUN: return unexpected(fail(NetlinkError::kOverrun, "NLMSG_OVERRUN"));
      case NLMSG_ERROR: {
        auto err = netlink::parse_error(nlh);
        if (!err) return unexpected(err.error());
        if (err->error != 0) {
          std::string detail = std::strerror(err->error);
          if (!err->message.empty()) detail += " (" + err->message + ")";
          return unexpected(fail(NetlinkError::kKernelError, std::move(detail)));
        }
        result.done = true;  // an ACK
        break;
      }
      default: {
        auto ev = parse_rtnl_message(nlh);
        if (!ev) return unexpected(ev.error());
        if (ev->has_value()) result.events.push_back(std::move(**ev));
        // A single (non-multipart) reply ends the exchange by itself.
        if (expect.is_dump_reply && !(nlh.nlmsg_flags & NLM_F_MULTI)) result.done = true;
      }
    }
  }
  if (reader.failure()) return unexpected(*reader.failure());
  return result;
}

}  // namespace splitd::iface
