#pragma once

#include <cstdint>
#include <span>

#include "decider/decider.hpp"
#include "decider/identifier.hpp"
#include "proxy/session_table.hpp"

namespace splitd::proxy {

// What a proxy knows of a new flow when it asks where the flow goes.
struct FlowFacts {
  decider::Protocol protocol = decider::Protocol::kTcp;
  Endpoint client;       // TCP: the accepted socket's peer; UDP: the datagram's source
  Endpoint destination;  // the original destination
  std::span<const std::uint8_t> first_bytes;  // UDP: the first datagram; TCP: empty
};

// The one place a new flow is classified, for both proxies: who sent it (the app, once
// identification exists), by which name (learned from captured DNS), and the decider's
// route. Returns everything the session records. Called from every worker thread at
// once; const and lock-free (the decider reads atomically swapped snapshots).
class Classifier {
 public:
  // `names` (may be nullptr) gives the listing a flow's name when no domain rule decided it.
  // `identifier` (may be nullptr) finds the app behind the flow; it is asked only when an
  // app rule exists or it says it is wanted (exec in use, a recent listing), and for the
  // process (pid, comm, exe) only when a rule needs one.
  explicit Classifier(const decider::RuleDecider& decider, const decider::IpNames* names = nullptr,
                      const decider::Identifier* identifier = nullptr)
      : decider_(decider), names_(names), identifier_(identifier) {}
  SessionSpec classify(const FlowFacts& flow) const;

 private:
  const decider::RuleDecider& decider_;
  const decider::IpNames* names_;
  const decider::Identifier* identifier_;
};

}  // namespace splitd::proxy
