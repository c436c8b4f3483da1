// lab-load udp: datagrams per second through a UDP echo server with a window of
// outstanding datagrams, batched with sendmmsg/recvmmsg on one connected socket.

#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "common.hpp"
#include "modes.hpp"
#include "slot_list.hpp"

namespace splitd::bench {
namespace {

constexpr Nanos kLossTimeout = 200'000'000;
constexpr unsigned kBatch = 64;
constexpr size_t kMaxSize = 65507;  // the largest IPv4 UDP payload
constexpr int kSocketBuffer = 4 * 1024 * 1024;

// One place in the window. Its datagrams carry sequence numbers gen * window + index, so
// an echo finds its slot by a modulo and a stale echo (of a datagram already counted
// lost) does not match the slot's current number.
struct Slot {
  std::uint64_t seq = 0;
  std::uint64_t gen = 0;
  Nanos sent_at = 0;
  std::uint32_t prev = kNoSlot;
  std::uint32_t next = kNoSlot;
  bool busy = false;
  bool measured = false;  // sent inside the measured window
};

struct UdpOptions {
  Endpoint target;
  size_t size = 1400;
  std::uint32_t window = 256;
  Nanos warm_end = 0;
  Nanos end = 0;
  std::string device;
};

// The client: one socket, one epoll loop, one thread.
class UdpClient {
 public:
  explicit UdpClient(const UdpOptions& o) : o_(o), slots_(o.window), pending_(slots_) {}

  void run() {
    fd_ = connected_udp_socket(o_.target, o_.device, kSocketBuffer);
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);
    set_interest(EPOLLIN);

    // Payloads are written once; only the sequence number changes per datagram.
    send_buf_ = std::make_unique<char[]>(kBatch * o_.size);
    recv_buf_ = std::make_unique_for_overwrite<char[]>(kBatch * o_.size);
    for (unsigned j = 0; j < kBatch; ++j) {
      send_iov_[j] = {send_buf_.get() + j * o_.size, o_.size};
      send_msgs_[j].msg_hdr.msg_iov = &send_iov_[j];
      send_msgs_[j].msg_hdr.msg_iovlen = 1;
      recv_iov_[j] = {recv_buf_.get() + j * o_.size, o_.size};
      recv_msgs_[j].msg_hdr.msg_iov = &recv_iov_[j];
      recv_msgs_[j].msg_hdr.msg_iovlen = 1;
    }
    for (std::uint32_t i = o_.window; i-- > 0;) free_.push_back(i);

    std::array<epoll_event, 4> events{};
    bool draining = false;
    Nanos drain_end = 0;
    for (;;) {
      const Nanos now = now_ns();
      if (!draining && (now >= o_.end || stop_requested())) {
        // Stop sending; the echoes of the last datagrams get their 200 ms to arrive.
        draining = true;
        stopped_at_ = std::min(now, o_.end);
        drain_end = now + kLossTimeout;
      }
      expire(now);
      if (draining && (pending_.empty() || now >= drain_end)) break;
      if (!draining) send_some();
      Nanos next = draining ? drain_end : o_.end;
      if (!pending_.empty()) next = std::min(next, slots_[pending_.front()].sent_at + kLossTimeout);
      const int timeout_ms =
          next <= now ? 0
                      : static_cast<int>(std::min<Nanos>((next - now + 999'999) / 1'000'000, 1000));
      const int n = ::epoll_pwait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                  timeout_ms, &stop_wait_mask());
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno("epoll_wait", errno);
      }
      for (int e = 0; e < n; ++e) {
        if ((events[e].events & (EPOLLIN | EPOLLERR)) != 0) receive_all();
        if ((events[e].events & EPOLLOUT) != 0) set_interest(EPOLLIN);
      }
    }
    for (std::uint32_t i = pending_.front(); i != kNoSlot; i = slots_[i].next) {
      if (slots_[i].measured) ++lost_;
    }
    if (refused_ > 0 || (received_ == 0 && sent_ > 0)) {
      // sendmmsg swallows most port-unreachable errors, so the count is a lower bound.
      std::fprintf(stderr,
                   "lab-load udp: no echo from %s for %llu datagrams, %llu port unreachable "
                   "errors seen: is a UDP echo server there?\n",
                   o_.target.text.c_str(), static_cast<unsigned long long>(lost_),
                   static_cast<unsigned long long>(refused_));
    }
    if (odd_ > 0) {
      std::fprintf(stderr, "lab-load udp: %llu echoes of the wrong size ignored\n",
                   static_cast<unsigned long long>(odd_));
    }
    if (late_ > 0) {
      std::fprintf(stderr, "lab-load udp: %llu echoes came after 200 ms (counted lost) or twice\n",
                   static_cast<unsigned long long>(late_));
    }
  }

  std::uint64_t sent() const { return sent_; }
  std::uint64_t received() const { return received_; }
  std::uint64_t lost() const { return lost_; }
  Nanos stopped_at() const { return stopped_at_; }

 private:
  void set_interest(std::uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    const int op = interest_ == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (events == interest_) return;
    if (::epoll_ctl(epoll_.get(), op, fd_.get(), &ev) != 0) fail_errno("epoll_ctl", errno);
    interest_ = events;
  }

  // Fills the window: a datagram for every free slot, kBatch per sendmmsg. A short count
  // is not a full buffer: sendmmsg also stops at an error (a pending ICMP port
  // unreachable) and drops its code, so go on until EAGAIN says the buffer is full.
  void send_some() {
    for (int round = 0; round < 64 && !free_.empty(); ++round) {
      const auto k = static_cast<unsigned>(std::min<size_t>(free_.size(), kBatch));
      for (unsigned j = 0; j < k; ++j) {
        const std::uint32_t i = free_[free_.size() - 1 - j];
        Slot& s = slots_[i];
        s.seq = s.gen * o_.window + i;
        std::memcpy(send_buf_.get() + j * o_.size, &s.seq, sizeof s.seq);
      }
      int sent = ::sendmmsg(fd_.get(), send_msgs_.data(), k, 0);
      if (sent < 0) {
        if (errno == ECONNREFUSED) {
          ++refused_;  // reported for an earlier datagram; this one was not sent
          sent = 0;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
          set_interest(EPOLLIN | EPOLLOUT);
          return;
        } else if (errno != EINTR) {
          fail_errno("sendmmsg", errno);
        }
      }
      const Nanos t = now_ns();
      const bool measured = t >= o_.warm_end && t < o_.end;
      for (int j = 0; j < sent; ++j) {
        const std::uint32_t i = free_.back();
        free_.pop_back();
        Slot& s = slots_[i];
        ++s.gen;
        s.busy = true;
        s.sent_at = t;
        s.measured = measured;
        if (measured) ++sent_;
        pending_.push_back(i);
      }
    }
  }

  void receive_all() {
    for (int round = 0; round < 16; ++round) {
      const int n = ::recvmmsg(fd_.get(), recv_msgs_.data(), kBatch, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == ECONNREFUSED) {
          ++refused_;
          continue;
        }
        if (errno == EINTR) continue;
        fail_errno("recvmmsg", errno);
      }
      for (int j = 0; j < n; ++j) {
        if (recv_msgs_[j].msg_len != o_.size ||
            (recv_msgs_[j].msg_hdr.msg_flags & MSG_TRUNC) != 0) {
          ++odd_;
          continue;
        }
        std::uint64_t seq = 0;
        std::memcpy(&seq, recv_buf_.get() + static_cast<size_t>(j) * o_.size, sizeof seq);
        const auto i = static_cast<std::uint32_t>(seq % o_.window);
        Slot& s = slots_[i];
        if (!s.busy || s.seq != seq) {
          ++late_;
          continue;
        }
        if (s.measured) ++received_;
        release(i);
      }
      if (static_cast<unsigned>(n) < kBatch) return;
    }
  }

  void expire(Nanos now) {
    while (!pending_.empty() && slots_[pending_.front()].sent_at + kLossTimeout <= now) {
      const std::uint32_t i = pending_.front();
      if (slots_[i].measured) ++lost_;
      release(i);
    }
  }

  void release(std::uint32_t i) {
    pending_.remove(i);
    slots_[i].busy = false;
    free_.push_back(i);
  }

  const UdpOptions& o_;
  std::vector<Slot> slots_;
  SlotList<Slot> pending_;  // sent, not yet echoed, in send order
  std::vector<std::uint32_t> free_;
  Fd fd_;
  Fd epoll_;
  std::uint32_t interest_ = 0;
  std::unique_ptr<char[]> send_buf_;
  std::unique_ptr<char[]> recv_buf_;
  std::array<iovec, kBatch> send_iov_{};
  std::array<iovec, kBatch> recv_iov_{};
  std::array<mmsghdr, kBatch> send_msgs_{};
  std::array<mmsghdr, kBatch> recv_msgs_{};
  std::uint64_t sent_ = 0;
  std::uint64_t received_ = 0;
  std::uint64_t lost_ = 0;
  std::uint64_t refused_ = 0;
  std::uint64_t odd_ = 0;
  std::uint64_t late_ = 0;
  Nanos stopped_at_ = 0;
};

}  // namespace

int run_udp(int argc, char** argv) {
  const Args args(
      "udp", argc, argv,
      {{"--target"}, {"--size"}, {"--window"}, {"--duration"}, {"--warmup"}, {"--bind-dev"}});
  UdpOptions o;
  o.target = parse_endpoint(args.required("--target"), "udp: --target");
  o.size = static_cast<size_t>(args.integer("--size", 1400, 8, kMaxSize));
  o.window = static_cast<std::uint32_t>(args.integer("--window", 256, 1, 65536));
  const double duration = args.seconds("--duration", 10.0, 0.001);
  const double warmup = args.seconds("--warmup", 0.5, 0.0);
  o.device = args.device();
  install_stop_signals(/*block=*/true);

  const Nanos t0 = now_ns();
  o.warm_end = t0 + seconds_to_ns(warmup);
  o.end = o.warm_end + seconds_to_ns(duration);
  UdpClient client(o);
  client.run();

  const double seconds = ns_to_seconds(std::max<Nanos>(client.stopped_at() - o.warm_end, 0));
  const auto received = static_cast<double>(client.received());
  print_json(
      Json()
          .field("mode", "udp")
          .field("size", std::uint64_t{o.size})
          .field("window", std::uint64_t{o.window})
          .field("sent", client.sent())
          .field("received", client.received())
          .field("lost", client.lost())
          .field("loss_pct", loss_pct(client.lost(), client.sent()))
          .field("datagrams_per_s", seconds > 0 ? received / seconds : 0.0, 1)
          .field("mbit_per_s",
                 seconds > 0 ? received * static_cast<double>(o.size) * 8 / seconds / 1e6 : 0.0));
  return 0;
}

}  // namespace splitd::bench
