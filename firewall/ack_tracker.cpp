#include "firewall/ack_tracker.hpp"

#include <linux/netlink.h>

#include "netlink/message.hpp"

namespace splitd::firewall {

AckTracker::AckTracker(std::uint32_t begin_seq, std::uint32_t end_seq, std::uint32_t portid)
    : begin_seq_(begin_seq),
      end_seq_(end_seq),
      portid_(portid),
      acked_(end_seq > begin_seq + 1 ? end_seq - begin_seq - 1 : 0, false),
      missing_(acked_.size()) {}

bool AckTracker::done() const { return batch_failed_ || missing_ == 0; }

Expected<void, FirewallError> AckTracker::feed(std::span<const std::uint8_t> datagram) {
  const auto malformed = [](const char* what) {
    return unexpected(FirewallError{FirewallErrorCode::kNetlink,
                                    std::string("nfnetlink: malformed reply: ") + what});
  };
  netlink::MessageReader reader(datagram);
  while (const nlmsghdr* nlh = reader.next()) {
    if (nlh->nlmsg_pid != portid_) continue;
    const std::uint32_t seq = nlh->nlmsg_seq;
    if (seq < begin_seq_ || seq > end_seq_) continue;  // a reply to an earlier request
    if (nlh->nlmsg_type != NLMSG_ERROR) continue;      // no other replies expected
    auto ack = netlink::parse_error(*nlh);
    if (!ack) return malformed("short ACK");
    Failure f;
    f.seq = seq;
    f.error = ack->error;
    f.ext_message = std::move(ack->message);
    if (seq == begin_seq_ || seq == end_seq_) {
      if (f.error == 0) continue;  // kernels that ACK the frame messages too
      batch_failed_ = true;
    } else {
      auto slot = acked_.begin() + (seq - begin_seq_ - 1);
      if (*slot) return malformed("two ACKs for one message");
      *slot = true;
      --missing_;
    }
    if (f.error != 0 && (!failure_ || seq < failure_->seq)) failure_ = std::move(f);
  }
  if (reader.failure()) return malformed("truncated message");
  return {};
}

}  // namespace splitd::firewall
