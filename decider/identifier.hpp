#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/ip_address.hpp"
#include "decider/decider.hpp"

namespace splitd::decider {

// Who is behind one flow's client socket, as far as it could be found.
struct AppIdentity {
  bool found = false;            // the kernel knew the socket (uid, inode, cgroup id valid)
  std::uint32_t uid = 0;
  std::uint64_t inode = 0;
  std::uint64_t cgroup_id = 0;
  std::string cgroup_path;       // "" when the id could not be mapped to a path
  std::string unit;              // the deepest systemd .service/.scope ("" if none)
  std::string app_id;            // the desktop application id ("" if none)
  std::optional<RouteKind> exec_route;  // in a `splitctl exec` cgroup
  std::int32_t pid = 0;          // filled by find_process() only
  std::string comm;
  std::string exe;
  // How it was found, for the listing: "sock_diag", "sock_diag+cgroup",
  // "sock_diag+cgroup+proc"; or why not: "socket gone", "no identification".
  std::string how;
};

// Finds the app behind a flow (cgroup/ implements it with sock_diag and the cgroup v2
// hierarchy; tests use fakes). Called from every proxy worker at once: thread-safe, and
// identify() must not block (one synchronous netlink request at most).
class Identifier {
 public:
  virtual ~Identifier() = default;
  // Whether flows should be identified even when no app rule exists: `splitctl exec` is in
  // use, or somebody listed connections recently. Cheap (an atomic read or two).
  virtual bool wanted() const = 0;
  // The socket on this side of a flow: `local` is the app's own address:port (the client),
  // `remote` its peer (the original destination).
  virtual AppIdentity identify(Protocol protocol, const IpAddress& local, std::uint16_t local_port,
                               const IpAddress& remote, std::uint16_t remote_port) const = 0;
  // Fills pid, comm and exe of a found identity (costs /proc reads: only when a rule needs
  // them, or a listing shows them).
  virtual void find_process(AppIdentity& app) const = 0;
};

// The one gate for both proxies and the DNS forwarder: looks up the app of `info`'s client
// (info.src:src_port → info.dst:dst_port) when `rules` has app rules or `identifier` wants
// it, the process only when the rules need one, and fills info's app fields. nullopt: not
// looked up (no identifier, not wanted).
std::optional<AppIdentity> identify_client(const Identifier* identifier, const RuleSet& rules, SessionInfo& info);

}  // namespace splitd::decider
