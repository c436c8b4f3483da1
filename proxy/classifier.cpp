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
  if (flow.sniffed != nullptr) {
    const sniff::Result& r = *flow.sniffed;
    if (r.outcome == sniff::Outcome::kName) {
      info.sniffed_name = r.name;
      info.sniffed_from = sniff::to_string(r.source);
    } else if (r.outcome == sniff::Outcome::kEch) {
      // The outer SNI of a real Encrypted Client Hello is the provider's public name (e.g.
      // cloudflare-ech.com), shared by every site behind it: routing by it would send them
      // all one way, so the IP rules decide. But Chrome and Firefox send an ECH extension
      // (GREASE, random bytes) in every hello for which they have no ECH config, and its
      // outer SNI is the real name: the two look alike on the wire, so the known public
      // names tell them apart.
      if (r.name.empty()) {
        info.sniff_note = "ECH, no name to route by";
      } else if (ech_public_.match(r.name) != nullptr) {
        info.sniff_note = "ECH: outer SNI " + r.name + " is a provider's public name, not used";
      } else {
        info.sniffed_name = r.name;
        info.sniffed_from = sniff::to_string(r.source);
        info.sniff_note = "ECH extension, outer SNI not a known public name (GREASE)";
      }
    }
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
  if (!spec.domain.empty()) {
    spec.domain_source = !info.sniffed_name.empty() && spec.domain == info.sniffed_name ? flow.sniffed->source
                                                                                         : sniff::Source::kDns;
  } else if (!info.sniffed_name.empty()) {
    spec.domain = std::move(info.sniffed_name);  // for the listing: the name the flow gave
    spec.domain_source = flow.sniffed->source;
  } else if (names_ != nullptr) {
    // A flow that a domain rule did not decide still shows the name its IP was resolved
    // from (the most recently learned), for the listing.
    struct First final : decider::NameVisitor {
      std::string name;
      bool operator()(std::string_view n) override {
        name.assign(n);
        return true;
      }
    } first;
    names_->visit_names(info.dst.unmapped(), first);
    spec.domain = std::move(first.name);
    if (!spec.domain.empty()) spec.domain_source = sniff::Source::kDns;
  }
  return spec;
}

void Classifier::set_sniff(const SniffOptions& options) {
  sniff_ = options;
  sniff_ports_.reset();
  for (std::uint16_t p : options.ports) sniff_ports_.set(p);
  ech_public_ = decider::DomainMatcher();
  for (const std::string& n : options.ech_public_names) ech_public_.add(n);
}

bool Classifier::should_sniff(const Endpoint& destination) const {
  if (sniff_.mode == decider::SniffMode::kOff || !sniff_ports_.test(destination.port)) return false;
  if (sniff_.mode == decider::SniffMode::kAlways || names_ == nullptr) return true;
  struct Any final : decider::NameVisitor {
    bool found = false;
    bool operator()(std::string_view) override { return found = true; }
  } any;
  names_->visit_names(destination.address.unmapped(), any);
  return !any.found;
}

}  // namespace splitd::proxy
