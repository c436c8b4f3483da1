#include "firewall/footprint_events.hpp"

#include <linux/fib_rules.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <endian.h>

#include "netlink/message.hpp"

namespace splitd::firewall {

void scan_nft_events(std::span<const std::uint8_t> datagram, std::uint32_t own_portid,
                     const std::string& table, bool& awaiting_gen, FootprintEvents& out) {
  netlink::MessageReader reader(datagram);
  while (const nlmsghdr* m = reader.next()) {
    out.messages++;
    if ((m->nlmsg_type >> 8) != NFNL_SUBSYS_NFTABLES) continue;
    const auto type = static_cast<std::uint16_t>(m->nlmsg_type & 0xff);
    const auto gen = netlink::fixed_header<nfgenmsg>(*m);
    if (!gen) {
      out.lost = true;
      continue;
    }
    auto attrs = netlink::parse_attrs<NFTA_GEN_MAX>(netlink::attributes(*m, sizeof(nfgenmsg)), "nftables event");
    if (!attrs) {
      out.lost = true;
      continue;
    }
    if (type == NFT_MSG_NEWGEN) {
      if (!awaiting_gen) continue;
      awaiting_gen = false;
      const auto pid = (*attrs)[NFTA_GEN_PROC_PID] ? netlink::attr_u32((*attrs)[NFTA_GEN_PROC_PID]) : std::nullopt;
      const std::string name =
          (*attrs)[NFTA_GEN_PROC_NAME] ? netlink::attr_string((*attrs)[NFTA_GEN_PROC_NAME]) : std::string();
      out.culprit_pid = pid ? be32toh(*pid) : 0;
      out.culprit = (name.empty() ? std::string("a process") : name) +
                    (out.culprit_pid != 0 ? " (pid " + std::to_string(out.culprit_pid) + ")" : std::string());
      continue;
    }
    if (m->nlmsg_pid == own_portid && own_portid != 0) continue;  // splitd's own change
    if (gen->nfgen_family != NFPROTO_INET) continue;
    // NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
    // NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE and NFTA_FLOWTABLE_TABLE are all attribute 1.
    static_assert(NFTA_TABLE_NAME == 1 && NFTA_CHAIN_TABLE == 1 && NFTA_RULE_TABLE == 1 &&
                  NFTA_SET_TABLE == 1 && NFTA_SET_ELEM_LIST_TABLE == 1 && NFTA_OBJ_TABLE == 1 &&
                  NFTA_FLOWTABLE_TABLE == 1);
    const nlattr* name = (*attrs)[1];
    if (name == nullptr || netlink::attr_string(name) != table) continue;
    out.nftables = true;
    awaiting_gen = true;
  }
  if (reader.failure()) out.lost = true;
}

void scan_rtnl_events(std::span<const std::uint8_t> datagram, std::uint32_t own_portid,
                      std::uint32_t route_table, FootprintEvents& out) {
  netlink::MessageReader reader(datagram);
  while (const nlmsghdr* m = reader.next()) {
    out.messages++;
    const bool own = own_portid != 0 && m->nlmsg_pid == own_portid;
    switch (m->nlmsg_type) {
      case RTM_NEWRULE:
      case RTM_DELRULE:
        if (own) break;
        out.policy = true;
        out.rtnl_portid = m->nlmsg_pid;
        break;
      case RTM_NEWROUTE:
      case RTM_DELROUTE: {
        if (own) break;
        const auto rt = netlink::fixed_header<rtmsg>(*m);
        if (!rt) {
          out.lost = true;
          break;
        }
        std::uint32_t t = rt->rtm_table;
        auto attrs = netlink::parse_attrs<RTA_MAX>(netlink::attributes(*m, NLMSG_ALIGN(sizeof(rtmsg))), "route event");
        if (!attrs) {
          out.lost = true;
          break;
        }
        if (const nlattr* a = (*attrs)[RTA_TABLE]) {
          if (auto v = netlink::attr_u32(a)) t = *v;
        }
        if (t != route_table) break;
        out.route = true;
        out.rtnl_portid = m->nlmsg_pid;
        break;
      }
      default:
        break;
    }
  }
  if (reader.failure()) out.lost = true;
}

}  // namespace splitd::firewall
