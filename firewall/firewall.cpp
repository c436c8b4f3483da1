#include "firewall/firewall.hpp"

#include <linux/fib_rules.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include "common/log.hpp"
#include "firewall/netlink_errors.hpp"
#include "firewall/nft_batch.hpp"
#include "firewall/policy_routing.hpp"
#include "firewall/ruleset.hpp"
#include "netlink/socket.hpp"

#include <cstring>
#include <fstream>

namespace splitd::firewall {

const char* to_string(FirewallErrorCode code) {
  switch (code) {
    case FirewallErrorCode::kInvalidConfig:
      return "invalid config";
    case FirewallErrorCode::kPermission:
      return "permission denied";
    case FirewallErrorCode::kUnsupported:
      return "unsupported by the kernel";
    case FirewallErrorCode::kKernel:
      return "refused by the kernel";
    case FirewallErrorCode::kNetlink:
      return "netlink failure";
  }
  return "unknown";
}

std::vector<Cidr> FirewallConfig::default_never_intercept() {
  std::vector<Cidr> out;
  for (const char* text :
       {"127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "224.0.0.0/4", "ff00::/8"}) {
    out.push_back(*Cidr::parse(text));
  }
  return out;
}

// The chains of the installed table and the handles of their rules, in order: another
// program's flush, deletion or addition changes it.
using TableSignature = std::vector<std::pair<std::string, std::vector<std::uint64_t>>>;

struct Firewall::Impl {
  netlink::Socket nft;  // every change to the table goes through it: it owns the table
  PolicyRouting routing;
  netlink::Socket rule_events;  // rtnetlink: anyone's policy rules, and routes (filtered to ours)
  netlink::Socket nft_events;   // NFNLGRP_NFTABLES: every nftables change of the namespace
  std::uint32_t priority = 0;   // of splitd's rules as installed (may be below the config's)
  // NFT_TABLE_F_* the kernel accepted; `refused_flags` those it refused (seen once, so
  // later installs do not retry flags this kernel lacks).
  std::uint32_t table_flags = 0;
  std::uint32_t refused_flags = 0;
  std::uint32_t route_table = 0;  // of the last install, to filter route events
  bool awaiting_gen = false;
  TableSignature signature;
};

namespace {

// Whether, in the kernel's evaluation order `rules`, some other program's rule (not the
// `lookup local` rule at priority 0; a foreign rule at 0 counts, and cannot be passed)
// comes before splitd's; *first_foreign is the
// priority of the first such rule. With `ours_present` false, whether one comes at or
// before `priority` (where splitd's rule would be added: after rules of equal priority).
bool foreign_rule_first(const std::vector<PolicyRule>& rules, std::uint32_t priority,
                        std::uint32_t* first_foreign) {
  for (const PolicyRule& r : rules) {
    if (r.priority == 0 && r.table == RT_TABLE_LOCAL) continue;  // `lookup local` comes first
    if (r.protocol == Firewall::kRouteProtocol && r.priority == priority) return false;
    if (r.protocol == Firewall::kRouteProtocol) continue;  // a leftover, deleted by install
    if (r.priority <= priority) {
      *first_foreign = r.priority;
      return true;
    }
    return false;
  }
  return false;
}

}  // namespace

Firewall::Firewall(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Firewall::~Firewall() = default;

Expected<std::unique_ptr<Firewall>, FirewallError> Firewall::open() {
  auto nft = netlink::Socket::open(NETLINK_NETFILTER, "nfnetlink");
  if (!nft) return unexpected(netlink_error(nft.error()));
  auto routing = PolicyRouting::open();
  if (!routing) return unexpected(routing.error());
  auto events = netlink::Socket::open(NETLINK_ROUTE, "rtnetlink rule and route events",
                                      {.nonblocking = true, .strict_check = true});
  if (!events) return unexpected(netlink_error(events.error()));
  for (unsigned group : {RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE}) {
    if (auto j = events->join_group(group); !j) return unexpected(netlink_error(j.error()));
  }
  auto nft_events = netlink::Socket::open(NETLINK_NETFILTER, "nftables events", {.nonblocking = true});
  if (!nft_events) return unexpected(netlink_error(nft_events.error()));
  if (auto j = nft_events->join_group(NFNLGRP_NFTABLES); !j) return unexpected(netlink_error(j.error()));
  // A wipe of a big ruleset (`nft flush ruleset`) or a host's route churn is a burst;
  // losing it means a full check (ENOBUFS), which is correct but slower.
  events->ensure_receive_buffer(1 << 20);
  nft_events->ensure_receive_buffer(1 << 20);
  auto impl = std::make_unique<Impl>(
      Impl{std::move(*nft), std::move(*routing), std::move(*events), std::move(*nft_events), 0, 0, 0, 0, false, {}});
  return std::unique_ptr<Firewall>(new Firewall(std::move(impl)));
}

Expected<std::uint32_t, FirewallError> Firewall::rule_priority_for(const FirewallConfig& config) {
  // Marked packets must meet splitd's rule before any other program's: wg-quick's `not
  // fwmark 0xca6c lookup 51820` (which the kernel places just before the lowest existing
  // rule when wg-quick comes up after splitd) would send them into the tunnel instead of
  // through lo to the proxy. splitd's rule matches only its own mark, so going first
  // changes nothing for anyone else's packets.
  std::uint32_t priority = impl_->priority != 0 ? impl_->priority : config.rule_priority;
  for (int family : {AF_INET, AF_INET6}) {
    if (family == AF_INET6 && !config.ipv6) continue;
    auto rules = impl_->routing.all_rules(family);
    if (!rules) return unexpected(rules.error());
    std::uint32_t first = 0;
    if (foreign_rule_first(*rules, priority, &first)) {
      if (first <= 1) {
        return unexpected(FirewallError{
            FirewallErrorCode::kKernel,
            "another program's policy rule at priority " + std::to_string(first) +
                " comes before splitd's fwmark rule and none can go before it; move that rule "
                "(ip rule del/add with a higher priority)"});
      }
      log::warn("policy routing: another program's rule at priority ", first,
                " comes before splitd's (", priority, "); splitd's rules move to ", first - 1,
                " so intercepted packets still reach the proxy");
      priority = first - 1;
    }
  }
  return priority;
}

Expected<void, FirewallError> Firewall::install(const FirewallConfig& requested) {
  if (auto v = validate(requested); !v) return v;
  FirewallConfig config = requested;
  if (impl_->priority > requested.rule_priority) {
    impl_->priority = 0;  // a config asking for an earlier place than the moved one
  }
  auto priority = rule_priority_for(config);
  if (!priority) return unexpected(priority.error());
  config.rule_priority = *priority;
  // A repair or a reload that fails keeps what is in place (the table of the previous
  // transaction, with its kill switch) rather than leaving nothing; only a first install
  // that fails takes its half-made footprint away.
  auto present = nft_table_exists(impl_->nft, kTableName);
  const bool replacing = present && *present;
  // Routes and rules first: until the table marks packets they change nothing.
  auto result = impl_->routing.install(config);
  if (result) {
    impl_->priority = config.rule_priority;
    result = commit_table(config);
  }
  if (!result && replacing) {
    log::warn("firewall: the change failed; the previous table inet ", kTableName, " stays in place");
    return result;
  }
  if (!result) {
    // A half-installed footprint could send marked packets nowhere; take it all away.
    if (auto r = remove(); !r) {
      log::warn("firewall: cleanup after a failed install failed too: ", r.error().message);
    }
    return result;
  }
  impl_->route_table = config.route_table;
  if (auto sig = read_signature(); sig) {
    impl_->signature = std::move(*sig);
  } else {
    impl_->signature.clear();  // intact() then checks the table's existence only
    log::warn("firewall: reading back table inet ", kTableName, ": ", sig.error().message);
  }
  log::info("firewall: installed table inet ", kTableName, " (mark ", to_hex(config.mark),
            ", bypass mark ", to_hex(config.bypass_mark), ", route table ", config.route_table,
            ", port ", config.port, config.ipv6 ? ", IPv4+IPv6" : ", IPv4 only",
            config.intercept_tcp ? ", TCP" : "", config.intercept_udp ? ", UDP" : "",
            config.dns_port != 0 ? ", DNS port " + std::to_string(config.dns_intercept_port) + " to " +
                                       std::to_string(config.dns_port)
                                 : std::string(),
            config.block_dot ? ", DNS over TLS refused" : "",
            (impl_->table_flags & NFT_TABLE_F_OWNER) != 0
                ? ((impl_->table_flags & kTablePersist) != 0 ? ", owned, kept after a crash" : ", owned")
                : ", not owned",
            ")");
  return {};
}

std::uint32_t Firewall::wanted_flags(const FirewallConfig& config) const {
  if (!config.own_table) return 0;
  const std::uint32_t wanted = NFT_TABLE_F_OWNER | (config.persist_table ? kTablePersist : 0);
  if ((impl_->refused_flags & wanted) == 0) return wanted;
  // This kernel refused some of them. Without persistence an owned table would vanish
  // with a crashed splitd and open the kill switch: then rather not own it.
  if (config.persist_table) return 0;
  return (impl_->refused_flags & NFT_TABLE_F_OWNER) != 0 ? 0 : NFT_TABLE_F_OWNER;
}

Expected<void, FirewallError> Firewall::commit_table(const FirewallConfig& config) {
  const std::uint32_t flags = wanted_flags(config);
  NftBatch batch = install_batch(config, flags);
  auto result = batch.commit(impl_->nft);
  if (result) {
    impl_->table_flags = flags;
    return result;
  }
  const int err = batch.failure_errno();
  if (flags == 0 || (err != EOPNOTSUPP && err != EINVAL)) return result;
  // Old kernels: NFT_TABLE_F_OWNER before 5.12, NFT_TABLE_F_PERSIST before 6.9. The same
  // errors can have other causes (an expression this kernel lacks): the flags are taken
  // for the culprit only if the batch goes through without them, and then for good.
  const std::uint32_t refused =
      (flags & kTablePersist) != 0 ? kTablePersist : static_cast<std::uint32_t>(NFT_TABLE_F_OWNER);
  const std::uint32_t saved = impl_->refused_flags;
  impl_->refused_flags |= refused;
  if (wanted_flags(config) != flags) {
    if (auto retried = commit_table(config); retried) {
      log::warn("firewall: this kernel cannot ", refused == kTablePersist ? "keep an owned table after a crash"
                                                                           : "give a table an owner",
                " (", std::strerror(err), "); ",
                config.persist_table || refused == NFT_TABLE_F_OWNER
                    ? "the table is not owned and splitd repairs any change to it"
                    : "the table is owned but goes with the process");
      return retried;
    }
  }
  impl_->refused_flags = saved;
  return result;
}

Expected<TableSignature, FirewallError> Firewall::read_signature() const {
  auto chains = nft_list_chains(impl_->nft, NFPROTO_INET);
  if (!chains) return unexpected(chains.error());
  TableSignature sig;
  for (const NftChainInfo& c : *chains) {
    if (c.table != kTableName) continue;
    auto rules = nft_list_rules(impl_->nft, NFPROTO_INET, kTableName, c.name);
    if (!rules) return unexpected(rules.error());
    std::vector<std::uint64_t> handles;
    handles.reserve(rules->size());
    for (const NftRuleInfo& r : *rules) handles.push_back(r.handle);
    sig.emplace_back(c.name, std::move(handles));
  }
  std::sort(sig.begin(), sig.end());
  return sig;
}

Firewall::Ownership Firewall::ownership() const {
  if (!impl_) return {};
  return Ownership{(impl_->table_flags & NFT_TABLE_F_OWNER) != 0, (impl_->table_flags & kTablePersist) != 0};
}

int Firewall::nft_events_fd() const { return impl_->nft_events.fd(); }

FootprintEvents Firewall::drain_events() {
  FootprintEvents ev;
  // Bounded per call: a program rewriting rules without pause must not hold the main
  // loop; what is left is read on the next call.
  for (int i = 0; i < 256; ++i) {
    auto d = impl_->nft_events.try_receive();
    if (!d) {
      ev.lost = true;  // ENOBUFS: a burst overran the buffer; check everything
      impl_->awaiting_gen = false;
      continue;
    }
    if (d->empty()) break;
    scan_nft_events(*d, impl_->nft.portid(), kTableName, impl_->awaiting_gen, ev);
  }
  for (int i = 0; i < 256; ++i) {
    auto d = impl_->rule_events.try_receive();
    if (!d) {
      ev.lost = true;
      continue;
    }
    if (d->empty()) break;
    scan_rtnl_events(*d, impl_->routing.portid(), impl_->route_table, ev);
  }
  if (ev.culprit.empty() && ev.rtnl_portid != 0 && (ev.policy || ev.route)) {
    // `ip` and most rtnetlink users bind their first socket to their pid.
    std::string comm;
    std::ifstream("/proc/" + std::to_string(ev.rtnl_portid) + "/comm") >> comm;
    ev.culprit = comm.empty() ? "netlink port " + std::to_string(ev.rtnl_portid)
                              : comm + " (pid " + std::to_string(ev.rtnl_portid) + ")";
  }
  return ev;
}

int Firewall::rule_events_fd() const { return impl_->rule_events.fd(); }

Expected<void, FirewallError> Firewall::remove() {
  // The table first, so nothing is marked any more when the routes go.
  NftBatch batch = remove_batch();
  auto nft = batch.commit(impl_->nft);
  auto routing = impl_->routing.remove();
  if (!nft) return nft;
  if (!routing) return routing;
  log::info("firewall: removed table inet ", kTableName, " and its policy routing");
  return {};
}

bool Firewall::installed() const {
  auto exists = nft_table_exists(impl_->nft, kTableName);
  if (!exists) {
    log::warn("firewall: ", exists.error().message);
    return false;
  }
  return *exists;
}

bool Firewall::intact(const FirewallConfig& config) const {
  if (!installed()) return false;
  if (!impl_->signature.empty()) {
    auto now = read_signature();
    if (!now || *now != impl_->signature) return false;
  }
  for (int family : {AF_INET, AF_INET6}) {
    if (family == AF_INET6 && !config.ipv6) continue;
    // One dump of every rule: splitd's must be there, and no other program's before it.
    auto rules = impl_->routing.all_rules(family);
    auto routes = impl_->routing.routes(family);
    if (!rules || !routes) return false;
    const std::uint32_t priority = impl_->priority != 0 ? impl_->priority : config.rule_priority;
    const bool has_rule = std::any_of(rules->begin(), rules->end(), [&](const PolicyRule& r) {
      return r.protocol == kRouteProtocol && r.fwmark == config.mark &&
             r.table == config.route_table && r.priority == priority;
    });
    std::uint32_t first = 0;
    if (foreign_rule_first(*rules, priority, &first)) return false;
    const bool has_route = std::any_of(routes->begin(), routes->end(), [&](const PolicyRoute& r) {
      return r.table == config.route_table && r.dst_len == 0;
    });
    if (!has_rule || !has_route) return false;
  }
  return true;
}

}  // namespace splitd::firewall
