#include "proxy/classifier.hpp"

#include "common/log.hpp"
#include "decider/vpn_carrier.hpp"
#include "proxy/socket_owner.hpp"

namespace splitd::proxy {

SessionSpec Classifier::classify(const FlowFacts& flow) const {
  decider::SessionInfo info;
  info.protocol = flow.protocol;
  info.src = flow.client.address;
  info.src_port = flow.client.port;
  info.dst = flow.destination.address;
  info.dst_port = flow.destination.port;
  // A WireGuard handshake from a root-owned socket is a VPN client's carrier that is not
  // marked yet (wg-quick sets the fwmark after bringing the interface up).
  if (flow.protocol == decider::Protocol::kUdp && decider::is_wireguard_handshake_initiation(flow.first_bytes)) {
    const auto owner = udp_socket_owner(flow.client, flow.destination);
    info.vpn_carrier = owner && *owner == 0;
    log::info("udp ", flow.client.to_string(), " -> ", flow.destination.to_string(), ": a WireGuard handshake from ",
              owner ? (*owner == 0 ? std::string("root: a VPN carrier, direct")
                                   : "uid " + std::to_string(*owner) + ": not a VPN client, the rules decide")
                    : std::string("an unknown socket: the rules decide"));
  }
  SessionSpec spec;
  // The app: only as far as the rules need it (nothing at all without app rules, unless
  // exec is in use or a listing asked), the process only for comm/path rules.
  if (!info.vpn_carrier) {
    if (auto id = decider::identify_client(identifier_, *decider_.rules(), info)) {
      spec.app.pid = id->pid;
      spec.app.comm = std::move(id->comm);
      spec.app.exe = std::move(id->exe);
      spec.app.cgroup = std::move(id->cgroup_path);
      spec.app.unit = std::move(id->unit);
      spec.app.app_id = std::move(id->app_id);
      if (id->found) spec.app.uid = id->uid;
      spec.app.inode = id->inode;
      spec.app.how = std::move(id->how);
    }
  }
  spec.protocol = flow.protocol;
  spec.client = flow.client;
  spec.destination = flow.destination;
  spec.route = decider_.decide(info);
  spec.domain = spec.route.domain;
  // A flow that a domain rule did not decide still shows the name its IP was resolved
  // from (the most recently learned), for the listing.
  if (spec.domain.empty() && names_ != nullptr) {
    struct First final : decider::NameVisitor {
      std::string name;
      bool operator()(std::string_view n) override {
        name.assign(n);
        return true;
      }
    } first;
    names_->visit_names(info.dst.unmapped(), first);
    spec.domain = std::move(first.name);
  }
  return spec;
}

}  // namespace splitd::proxy
