// lab-load udp-flows: many concurrent UDP flows through a UDP echo server. Each flow is a
// connected socket of its own (its own source port) playing ping-pong: one datagram out,
// the next when its echo is back or after 200 ms without one (counted lost). One epoll
// loop, one thread; round trips per second, loss and the round-trip percentiles.

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
constexpr size_t kMaxSize = 65507;

// One flow. Its datagrams carry the flow's own sequence number, so a late echo (of one
// already counted lost) does not match the one outstanding.
struct Flow {
  Fd fd;
  std::uint64_t seq = 0;
  Nanos sent_at = 0;
  std::uint32_t prev = kNoSlot;
  std::uint32_t next = kNoSlot;
  bool busy = false;
  bool measured = false;  // sent inside the measured window
};

struct FlowsOptions {
  Endpoint target;
  std::uint32_t flows = 1000;
  size_t size = 1200;
  Nanos warm_end = 0;
  Nanos end = 0;
  std::string device;
};

// Owns the flows and the loop. Single-threaded.
class FlowsClient {
 public:
  explicit FlowsClient(const FlowsOptions& o) : o_(o), flows_(o.flows), pending_(flows_) {
    latencies_.reserve(1 << 18);
  }

  void run() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);
    out_ = std::make_unique<char[]>(o_.size);
    in_ = std::make_unique_for_overwrite<char[]>(o_.size);
    for (std::uint32_t i = 0; i < o_.flows; ++i) {
      Flow& f = flows_[i];
      f.fd = connected_udp_socket(o_.target, o_.device, 0, "socket (flow " + std::to_string(i) + ")");
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.u32 = i;
      if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, f.fd.get(), &ev) != 0) {
        fail_errno("epoll_ctl", errno);
      }
    }
    for (std::uint32_t i = 0; i < o_.flows; ++i) send_next(i, now_ns());

    std::vector<epoll_event> events(std::min<std::uint32_t>(o_.flows, 1024));
    bool draining = false;
    Nanos drain_end = 0;
    for (;;) {
      const Nanos now = now_ns();
      if (!draining && (now >= o_.end || stop_requested())) {
        // No new datagrams; the last ones get their 200 ms.
        draining = true;
        stopped_at_ = std::min(now, o_.end);
        drain_end = now + kLossTimeout;
      }
      expire(now, draining);
      if (draining && (pending_.empty() || now >= drain_end)) break;
      Nanos next = draining ? drain_end : o_.end;
      if (!pending_.empty()) next = std::min(next, flows_[pending_.front()].sent_at + kLossTimeout);
      const int timeout_ms =
          next <= now ? 0
                      : static_cast<int>(std::min<Nanos>((next - now + 999'999) / 1'000'000, 1000));
      const int n = ::epoll_pwait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                  timeout_ms, &stop_wait_mask());
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno("epoll_wait", errno);
      }
      for (int e = 0; e < n; ++e) receive(events[e].data.u32, draining);
    }
    for (std::uint32_t i = pending_.front(); i != kNoSlot; i = flows_[i].next) {
      if (flows_[i].measured) ++lost_;
    }
    if (refused_ > 0 || (received_ == 0 && sent_ > 0)) {
      std::fprintf(stderr,
                   "lab-load udp-flows: %llu of %llu datagrams not echoed by %s, %llu port "
                   "unreachable errors: is a UDP echo server there?\n",
                   static_cast<unsigned long long>(lost_), static_cast<unsigned long long>(sent_),
                   o_.target.text.c_str(), static_cast<unsigned long long>(refused_));
    }
    if (odd_ > 0) {
      std::fprintf(stderr, "lab-load udp-flows: %llu echoes of the wrong size ignored\n",
                   static_cast<unsigned long long>(odd_));
    }
    if (late_ > 0) {
      std::fprintf(stderr,
                   "lab-load udp-flows: %llu echoes came after 200 ms (counted lost) or twice\n",
                   static_cast<unsigned long long>(late_));
    }
  }

  std::uint64_t sent() const { return sent_; }
  std::uint64_t received() const { return received_; }
  std::uint64_t lost() const { return lost_; }
  std::uint64_t send_errors() const { return send_errors_; }
  Nanos stopped_at() const { return stopped_at_; }
  std::vector<Nanos>& latencies() { return latencies_; }

 private:
  void send_next(std::uint32_t i, Nanos now) {
    Flow& f = flows_[i];
    ++f.seq;
    std::memcpy(out_.get(), &f.seq, sizeof f.seq);
    const ssize_t w = ::send(f.fd.get(), out_.get(), o_.size, 0);
    const bool measured = now >= o_.warm_end && now < o_.end;
    if (w < 0) {
      if (errno == ECONNREFUSED) {
        ++refused_;  // reported for an earlier datagram; this one was not sent
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS && errno != EINTR) {
        fail_errno("send", errno);
      }
      // Not sent: it times out like a lost one and the flow tries again.
      ++send_errors_;
    }
    f.busy = true;
    f.sent_at = now;
    f.measured = measured;
    if (measured) ++sent_;
    pending_.push_back(i);
  }

  void receive(std::uint32_t i, bool draining) {
    if (i >= flows_.size()) return;
    Flow& f = flows_[i];
    for (;;) {
      const ssize_t n = ::recv(f.fd.get(), in_.get(), o_.size, MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == ECONNREFUSED) {
          ++refused_;
          continue;
        }
        if (errno == EINTR) continue;
        fail_errno("recv", errno);
      }
      if (static_cast<size_t>(n) != o_.size) {
        ++odd_;
        continue;
      }
      std::uint64_t seq = 0;
      std::memcpy(&seq, in_.get(), sizeof seq);
      if (!f.busy || seq != f.seq) {
        ++late_;
        continue;
      }
      const Nanos now = now_ns();
      if (f.measured) {
        ++received_;
        latencies_.push_back(now - f.sent_at);
      }
      pending_.remove(i);
      f.busy = false;
      if (!draining) send_next(i, now);
    }
  }

  void expire(Nanos now, bool draining) {
    while (!pending_.empty() && flows_[pending_.front()].sent_at + kLossTimeout <= now) {
      const std::uint32_t i = pending_.front();
      Flow& f = flows_[i];
      if (f.measured) ++lost_;
      pending_.remove(i);
      f.busy = false;
      if (!draining) send_next(i, now);
    }
  }

  const FlowsOptions& o_;
  std::vector<Flow> flows_;
  SlotList<Flow> pending_;  // sent, not yet echoed, in send order
  Fd epoll_;
  std::unique_ptr<char[]> out_;
  std::unique_ptr<char[]> in_;
  std::vector<Nanos> latencies_;
  std::uint64_t sent_ = 0;
  std::uint64_t received_ = 0;
  std::uint64_t lost_ = 0;
  std::uint64_t refused_ = 0;
  std::uint64_t send_errors_ = 0;
  std::uint64_t odd_ = 0;
  std::uint64_t late_ = 0;
  Nanos stopped_at_ = 0;
};

}  // namespace

int run_udp_flows(int argc, char** argv) {
  const Args args(
      "udp-flows", argc, argv,
      {{"--target"}, {"--flows"}, {"--size"}, {"--duration"}, {"--warmup"}, {"--bind-dev"}});
  FlowsOptions o;
  o.target = parse_endpoint(args.required("--target"), "udp-flows: --target");
  o.flows = static_cast<std::uint32_t>(args.integer("--flows", 1000, 1, 1'000'000));
  o.size = static_cast<size_t>(args.integer("--size", 1200, 8, kMaxSize));
  const double duration = args.seconds("--duration", 10.0, 0.001);
  const double warmup = args.seconds("--warmup", 0.5, 0.0);
  o.device = args.device();
  const std::uint64_t limit = raise_nofile_limit();
  if (limit < o.flows + 64ull) {
    fail("RLIMIT_NOFILE is " + std::to_string(limit) + ", below --flows + 64; raise it " +
         "(ulimit -n)");
  }
  install_stop_signals(/*block=*/true);

  const Nanos t0 = now_ns();
  o.warm_end = t0 + seconds_to_ns(warmup);
  o.end = o.warm_end + seconds_to_ns(duration);
  FlowsClient client(o);
  client.run();

  const double seconds = ns_to_seconds(std::max<Nanos>(client.stopped_at() - o.warm_end, 0));
  const auto received = static_cast<double>(client.received());
  print_json(
      Json()
          .field("mode", "udp-flows")
          .field("flows", std::uint64_t{o.flows})
          .field("size", std::uint64_t{o.size})
          .field("sent", client.sent())
          .field("received", client.received())
          .field("lost", client.lost())
          .field("loss_pct", loss_pct(client.lost(), client.sent()))
          .field("send_errors", client.send_errors())
          .field("datagrams_per_s", seconds > 0 ? received / seconds : 0.0, 1)
          .field("mbit_per_s",
                 seconds > 0 ? received * static_cast<double>(o.size) * 8 / seconds / 1e6 : 0.0)
          .object("rtt_us", latency_json(client.latencies())));
  return 0;
}

}  // namespace splitd::bench
