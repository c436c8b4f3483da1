#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/expected.hpp"
#include "firewall/firewall.hpp"

namespace splitd::firewall {

// Collects the ACKs of one nfnetlink batch: BEGIN has sequence number `begin_seq`, the
// messages begin_seq+1 .. end_seq-1 each carry NLM_F_ACK, END has `end_seq`. The replies
// are untrusted input: messages for another port id or outside the batch are ignored,
// malformed ones are errors. An error ACK for BEGIN or END refers to the batch as a whole
// (EPERM before anything ran, a failed commit). Not thread-safe.
class AckTracker {
 public:
  AckTracker(std::uint32_t begin_seq, std::uint32_t end_seq, std::uint32_t portid);

  // Feeds one datagram of replies.
  Expected<void, FirewallError> feed(std::span<const std::uint8_t> datagram);

  // Every message is acknowledged, or the batch as a whole was refused.
  bool done() const;
  std::size_t missing() const { return missing_; }

  struct Failure {
    std::uint32_t seq = 0;
    int error = 0;            // errno
    std::string ext_message;  // the kernel's extended ACK message, if any
  };
  // The failing message with the lowest sequence number: later errors in a batch are
  // usually consequences of the first one.
  const std::optional<Failure>& failure() const { return failure_; }

 private:
  std::uint32_t begin_seq_;
  std::uint32_t end_seq_;
  std::uint32_t portid_;
  std::vector<bool> acked_;  // index seq - begin_seq - 1
  std::size_t missing_;
  bool batch_failed_ = false;
  std::optional<Failure> failure_;
};

}  // namespace splitd::firewall
