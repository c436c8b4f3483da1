#pragma once

#include <bitset>
#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "decider/decider.hpp"
#include "decider/identifier.hpp"
#include "proxy/session_table.hpp"
#include "sniff/sniff.hpp"

namespace splitd::proxy {

// What a proxy knows of a new flow when it asks where the flow goes.
struct FlowFacts {
  decider::Protocol protocol = decider::Protocol::kTcp;
  Endpoint client;       // TCP: the accepted socket's peer; UDP: the datagram's source
  Endpoint destination;  // the original destination
  std::span<const std::uint8_t> first_bytes;  // UDP: the first datagram; TCP: empty
  // What the flow's first bytes named, when they were sniffed (null: not sniffed).
  const sniff::Result* sniffed = nullptr;
};

// dns.sniff, dns.sniff_ports and dns.sniff_timeout.
struct SniffOptions {
  decider::SniffMode mode = decider::SniffMode::kUnknown;
  std::vector<std::uint16_t> ports = {80, 443};
  std::chrono::milliseconds timeout{300};
  // dns.ech_public_names: the outer SNI of a real Encrypted Client Hello (see classify()).
  std::vector<std::string> ech_public_names = {"cloudflare-ech.com"};
};

// The one place a new flow is classified, for both proxies: who sent it (the app, once
// identification exists), by which name (learned from captured DNS, or sniffed from the
// flow's first bytes), and the decider's route. Returns everything the session records. Called from every worker thread at
// once; const and lock-free (the decider reads atomically swapped snapshots).
class Classifier {
 public:
  // `names` (may be nullptr) gives the listing a flow's name when no domain rule decided it.
  // `identifier` (may be nullptr) finds the app behind the flow; it is asked only when an
  // app rule exists or it says it is wanted (exec in use, a recent listing), and for the
  // process (pid, comm, exe) only when a rule needs one.
  explicit Classifier(const decider::RuleDecider& decider, const decider::IpNames* names = nullptr,
                      const decider::Identifier* identifier = nullptr)
      : decider_(decider), names_(names), identifier_(identifier) {
    set_sniff(SniffOptions{});
  }
  SessionSpec classify(const FlowFacts& flow) const;

  // Set before the proxies start (not thread-safe against should_sniff()).
  void set_sniff(const SniffOptions& options);
  // Whether a new flow to `destination` waits for its first bytes: sniffing is on, the
  // port is one of sniff_ports and, in mode "unknown", captured DNS named no destination.
  // Only client-first protocols are on those ports (TLS, HTTP, QUIC): a server-first one
  // (SMTP, SSH) on another port never waits. Lock-free, no allocation.
  bool should_sniff(const Endpoint& destination) const;
  std::chrono::milliseconds sniff_timeout() const { return sniff_.timeout; }

 private:
  SniffOptions sniff_;
  std::bitset<65536> sniff_ports_;
  decider::DomainMatcher ech_public_;
  const decider::RuleDecider& decider_;
  const decider::IpNames* names_;
  const decider::Identifier* identifier_;
};

}  // namespace splitd::proxy
