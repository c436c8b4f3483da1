#include "proxy/socket_owner.hpp"

#include "cgroup/identifier.hpp"

namespace splitd::proxy {

std::optional<uid_t> udp_socket_owner(const Endpoint& client, const Endpoint& peer) {
  auto id = cgroup::lookup_socket(false, client.address, client.port, peer.address, peer.port);
  if (!id) return std::nullopt;
  return static_cast<uid_t>(id->uid);
}

}  // namespace splitd::proxy
