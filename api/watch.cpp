#include "api/watch.hpp"

#include <algorithm>

#include "api/json.hpp"

namespace splitd::api {
namespace {

std::string event(const char* name, const nlohmann::json& data) {
  // One data line: dump() never emits a raw newline.
  return std::string("event: ") + name + "\ndata: " + dump(data) + "\n\n";
}

}  // namespace

std::string WatchState::next(const std::vector<proxy::SessionView>& sessions) {
  std::vector<Sent> now;
  now.reserve(sessions.size());
  for (const auto& s : sessions) {
    now.push_back({s.id, s.bytes_sent, s.bytes_received, s.packets_sent, s.packets_received});
  }
  // The table lists by id; sort anyway so a backend that does not cannot break the merge.
  const bool sorted = std::is_sorted(now.begin(), now.end(), [](const Sent& a, const Sent& b) { return a.id < b.id; });
  std::vector<std::size_t> order(sessions.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  if (!sorted) {
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return sessions[a].id < sessions[b].id; });
    std::vector<Sent> by_id;
    by_id.reserve(now.size());
    for (std::size_t i : order) by_id.push_back(now[i]);
    now = std::move(by_id);
  }

  if (!started_) {
    started_ = true;
    nlohmann::json all = nlohmann::json::array();
    for (std::size_t i : order) all.push_back(connection_json(sessions[i]));
    sent_ = std::move(now);
    return event("snapshot", all);
  }

  nlohmann::json added = nlohmann::json::array();
  nlohmann::json updated = nlohmann::json::array();
  nlohmann::json closed = nlohmann::json::array();
  std::size_t a = 0;  // into sent_
  for (std::size_t k = 0; k < now.size(); ++k) {
    const Sent& n = now[k];
    while (a < sent_.size() && sent_[a].id < n.id) closed.push_back(sent_[a++].id);
    const proxy::SessionView& view = sessions[order[k]];
    if (a < sent_.size() && sent_[a].id == n.id) {
      const Sent& o = sent_[a++];
      if (o.bytes_sent != n.bytes_sent || o.bytes_received != n.bytes_received ||
          o.packets_sent != n.packets_sent || o.packets_received != n.packets_received) {
        updated.push_back(connection_update_json(view));
      }
    } else {
      added.push_back(connection_json(view));
    }
  }
  while (a < sent_.size()) closed.push_back(sent_[a++].id);
  sent_ = std::move(now);
  if (added.empty() && updated.empty() && closed.empty()) return {};
  return event("changes", {{"new", std::move(added)}, {"updated", std::move(updated)}, {"closed", std::move(closed)}});
}

}  // namespace splitd::api
