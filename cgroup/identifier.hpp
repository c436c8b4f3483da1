#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "cgroup/cgroup_map.hpp"
#include "cgroup/exec_cgroups.hpp"
#include "cgroup/process_finder.hpp"
#include "cgroup/sock_diag.hpp"
#include "decider/identifier.hpp"

namespace splitd::cgroup {

// The owner of one local socket by its 4-tuple (`local` = the socket's own address), with
// one exact NETLINK_SOCK_DIAG request on the calling thread's own netlink socket (opened on
// first use in that thread's network namespace). kNoSocket: none (closed already).
Expected<SocketIdentity, DiagError> lookup_socket(bool tcp, const IpAddress& local, std::uint16_t local_port,
                                                  const IpAddress& remote, std::uint16_t remote_port);

// The app behind a flow, for the proxies' classifier: one exact SOCK_DIAG_BY_FAMILY request
// on the client socket's 4-tuple (uid, inode, cgroup id; each calling thread keeps its own
// netlink socket, so no lock), the cgroup id mapped to its path by CgroupMap, the systemd
// unit and app id parsed from the path, whether it is one of splitd's exec cgroups; pid,
// comm and exe only through find_process() (ProcessFinder, cached). Owned by the daemon's
// Runtime, which keeps it alive longer than the proxies. Thread-safe.
class Identifier final : public decider::Identifier {
 public:
  // `exec` may be nullptr (no exec cgroups could be made).
  Identifier(std::unique_ptr<CgroupMap> map, std::unique_ptr<ExecCgroups> exec, std::string mount);

  bool wanted() const override;
  decider::AppIdentity identify(decider::Protocol protocol, const IpAddress& local,
                                std::uint16_t local_port, const IpAddress& remote,
                                std::uint16_t remote_port) const override;
  void find_process(decider::AppIdentity& app) const override;

  // A listing asked for apps: identify every flow for the next while (kListingInterest).
  void note_listing();
  // `splitctl exec` is in use (set on a move; cleared by refresh() once both are empty).
  void note_exec() { exec_in_use_.store(true, std::memory_order_relaxed); }
  // The control plane's periodic tick: drains cgroup events, rechecks exec use.
  void refresh();

  CgroupMap& map() { return *map_; }
  ExecCgroups* exec() { return exec_.get(); }
  ProcessFinder& processes() const { return processes_; }

  struct Stats {
    std::uint64_t identified = 0;    // the socket was found
    std::uint64_t socket_gone = 0;   // no such socket (closed already, another netns)
    std::uint64_t failed = 0;        // netlink errors, bad replies
    std::uint64_t no_path = 0;       // found, but its cgroup id has no known path
    std::uint64_t processes = 0;     // find_process() calls that found the process
    std::uint64_t no_process = 0;    // ... that did not
  };
  Stats stats() const;

  static constexpr std::chrono::minutes kListingInterest{10};

 private:
  std::unique_ptr<CgroupMap> map_;
  std::unique_ptr<ExecCgroups> exec_;
  mutable ProcessFinder processes_;
  std::atomic<bool> exec_in_use_{false};
  std::atomic<std::int64_t> listing_until_{0};  // steady_clock ticks
  mutable std::atomic<std::uint64_t> identified_{0}, socket_gone_{0}, failed_{0}, no_path_{0},
      processes_found_{0}, no_process_{0};
};

}  // namespace splitd::cgroup
