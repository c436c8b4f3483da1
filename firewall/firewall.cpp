#include "firewall/firewall.hpp"

#include <linux/netlink.h>
#include <sys/socket.h>

#include <algorithm>

#include "common/log.hpp"
#include "firewall/nft_batch.hpp"
#include "firewall/policy_routing.hpp"
#include "firewall/ruleset.hpp"

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

struct Firewall::Impl {
  NetlinkSocket nft;
  PolicyRouting routing;
};

Firewall::Firewall(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Firewall::~Firewall() = default;

Expected<std::unique_ptr<Firewall>, FirewallError> Firewall::open() {
  auto nft = NetlinkSocket::open(NETLINK_NETFILTER, "nfnetlink");
  if (!nft) return unexpected(nft.error());
  auto routing = PolicyRouting::open();
  if (!routing) return unexpected(routing.error());
  auto impl = std::make_unique<Impl>(Impl{std::move(*nft), std::move(*routing)});
  return std::unique_ptr<Firewall>(new Firewall(std::move(impl)));
}

Expected<void, FirewallError> Firewall::install(const FirewallConfig& config) {
  if (auto v = validate(config); !v) return v;
  // Routes and rules first: until the table marks packets they change nothing.
  auto result = impl_->routing.install(config);
  if (result) {
    NftBatch batch = install_batch(config);
    result = batch.commit(impl_->nft);
  }
  if (!result) {
    // A half-installed footprint could send marked packets nowhere; take it all away.
    if (auto r = remove(); !r) {
      log::warn("firewall: cleanup after a failed install failed too: ", r.error().message);
    }
    return result;
  }
  log::info("firewall: installed table inet ", kTableName, " (mark ", to_hex(config.mark),
            ", bypass mark ", to_hex(config.bypass_mark), ", route table ", config.route_table,
            ", port ", config.port, config.ipv6 ? ", IPv4+IPv6" : ", IPv4 only",
            config.intercept_tcp ? ", TCP" : "", config.intercept_udp ? ", UDP" : "", ")");
  return {};
}

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
  for (int family : {AF_INET, AF_INET6}) {
    if (family == AF_INET6 && !config.ipv6) continue;
    auto rules = impl_->routing.rules(family);
    auto routes = impl_->routing.routes(family);
    if (!rules || !routes) return false;
    const bool has_rule = std::any_of(rules->begin(), rules->end(), [&](const PolicyRule& r) {
      return r.fwmark == config.mark && r.table == config.route_table &&
             r.priority == config.rule_priority;
    });
    const bool has_route = std::any_of(routes->begin(), routes->end(), [&](const PolicyRoute& r) {
      return r.table == config.route_table && r.dst_len == 0;
    });
    if (!has_rule || !has_route) return false;
  }
  return true;
}

}  // namespace splitd::firewall
