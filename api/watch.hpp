#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "proxy/session_table.hpp"

namespace splitd::api {

// One watch stream's memory of what it has sent: the ids and their last counters, so each
// interval sends only what changed. Owned by one watcher, not thread-safe.
class WatchState {
 public:
  // The next event for `sessions` (sorted by id, already filtered): the snapshot on the
  // first call, then "changes" (new, updated, closed), or "" when nothing changed.
  std::string next(const std::vector<proxy::SessionView>& sessions);

 private:
  struct Sent {
    std::uint64_t id;
    std::uint64_t bytes_sent, bytes_received, packets_sent, packets_received;
  };
  bool started_ = false;
  std::vector<Sent> sent_;  // sorted by id
};

}  // namespace splitd::api
