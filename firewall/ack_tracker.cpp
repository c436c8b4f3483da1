#include "firewall/ack_tracker.hpp"

#include <libmnl/libmnl.h>
#include <linux/netlink.h>

#include "firewall/netlink_socket.hpp"

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
  int left = static_cast<int>(datagram.size());
  const auto* nlh = reinterpret_cast<const nlmsghdr*>(datagram.data());
  for (; mnl_nlmsg_ok(nlh, left); nlh = mnl_nlmsg_next(nlh, &left)) {
    if (nlh->nlmsg_pid != portid_) continue;
    const std::uint32_t seq = nlh->nlmsg_seq;
    if (seq < begin_seq_ || seq > end_seq_) continue;  // a reply to an earlier request
    if (nlh->nlmsg_type != NLMSG_ERROR) continue;      // no other replies expected
    Failure f;
    f.seq = seq;
    if (!parse_netlink_error(nlh, f.error, f.ext_message)) return malformed("short ACK");
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
  if (left != 0) return malformed("truncated message");
  return {};
}

}  // namespace splitd::firewall
