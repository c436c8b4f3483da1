// lab-load udp-idle: opens N UDP flows (a connected socket each, so each its own source
// port), each sending one datagram to a UDP echo server and waiting for its echo (a proxy
// in between has then set up the flow both ways), a bounded number at a time; reports
// readiness in a file and holds the sockets, silent, until told to stop.

#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "common.hpp"
#include "modes.hpp"
#include "slot_list.hpp"

namespace splitd::bench {
namespace {

enum class Phase : std::uint8_t { kUnused, kWaiting, kHeld, kFailed };

struct Slot {
  Fd fd;
  Phase phase = Phase::kUnused;
  std::uint8_t tries = 0;
  std::uint32_t prev = kNoSlot;
  std::uint32_t next = kNoSlot;
  Nanos sent_at = 0;
};

struct UdpIdleOptions {
  Endpoint target;
  std::uint32_t count = 0;
  std::uint32_t parallel = 200;
  std::uint32_t tries = 3;
  std::string ready_file;
  bool hold_limited = false;
  double hold = 0;
  Nanos timeout = 0;
  std::string device;
};

// Owns the N sockets and the loop. Single-threaded.
class UdpIdleClient {
 public:
  explicit UdpIdleClient(const UdpIdleOptions& o) : o_(o), slots_(o.count), pending_(slots_) {}

  std::string run() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);
    const Nanos t0 = now_ns();
    fill();
    while (answered_ + failed_ < o_.count) {
      if (stop_requested()) fail("interrupted before every flow was set up");
      const Nanos now = now_ns();
      while (!pending_.empty() && slots_[pending_.front()].sent_at + o_.timeout <= now) {
        retry_or_fail(pending_.front(), now);
      }
      fill();
      if (answered_ + failed_ == o_.count) break;
      int timeout_ms = 1000;
      if (!pending_.empty()) {
        const Nanos left = slots_[pending_.front()].sent_at + o_.timeout - now;
        timeout_ms = static_cast<int>(std::clamp<Nanos>((left + 999'999) / 1'000'000, 0, 1000));
      }
      wait(timeout_ms);
    }
    const Nanos ready = now_ns();
    const std::string json = Json()
                                 .field("mode", "udp-idle")
                                 .field("requested", std::uint64_t{o_.count})
                                 .field("answered", answered_)
                                 .field("failed", failed_)
                                 .field("retries", retries_)
                                 .field("seconds_to_ready", ns_to_seconds(ready - t0))
                                 .str();
    for (const auto& [reason, n] : reasons_) {
      std::fprintf(stderr, "lab-load udp-idle: failed: %s: %llu\n", reason.c_str(),
                   static_cast<unsigned long long>(n));
    }
    std::fprintf(stderr, "lab-load udp-idle: %llu of %u flows answered after %.3f s; holding\n",
                 static_cast<unsigned long long>(answered_), o_.count, ns_to_seconds(ready - t0));
    if (!o_.ready_file.empty()) write_file_atomically(o_.ready_file, json + "\n");

    const Nanos hold_end = o_.hold_limited ? ready + seconds_to_ns(o_.hold) : 0;
    while (!stop_requested()) {
      int timeout_ms = 1000;
      if (o_.hold_limited) {
        const Nanos left = hold_end - now_ns();
        if (left <= 0) break;
        timeout_ms = static_cast<int>(std::min<Nanos>((left + 999'999) / 1'000'000, 1000));
      }
      wait(timeout_ms);  // late echoes are read and dropped
    }
    for (Slot& s : slots_) s.fd.reset();
    return json;
  }

 private:
  void wait(int timeout_ms) {
    const int n = ::epoll_pwait(epoll_.get(), events_.data(), static_cast<int>(events_.size()),
                                timeout_ms, &stop_wait_mask());
    if (n < 0) {
      if (errno == EINTR) return;
      fail_errno("epoll_wait", errno);
    }
    for (int e = 0; e < n; ++e) on_readable(events_[e].data.u32);
  }

  void fill() {
    while (in_flight_ < o_.parallel && next_ < o_.count) start(next_++);
  }

  void start(std::uint32_t i) {
    Slot& s = slots_[i];
    const int fd = ::socket(o_.target.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      give_up(i, "socket: " + errno_text(errno), /*pending=*/false);
      return;
    }
    s.fd.reset(fd);
    set_bind_device(fd, o_.device);
    if (::connect(fd, o_.target.sa(), o_.target.len) != 0) {
      give_up(i, "connect: " + errno_text(errno), /*pending=*/false);
      return;
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = i;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) fail_errno("epoll_ctl ADD", errno);
    s.phase = Phase::kWaiting;
    ++in_flight_;
    send_probe(i, now_ns());
  }

  void send_probe(std::uint32_t i, Nanos now) {
    Slot& s = slots_[i];
    ++s.tries;
    s.sent_at = now;
    pending_.push_back(i);
    // 8 bytes, as the echo clients send: a sequence number (never a download request).
    const std::uint64_t payload = i;
    if (::send(s.fd.get(), &payload, sizeof payload, 0) < 0 && errno != EAGAIN &&
        errno != EWOULDBLOCK && errno != ENOBUFS && errno != ECONNREFUSED && errno != EINTR) {
      give_up(i, "send: " + errno_text(errno), /*pending=*/true);
    }
  }

  void retry_or_fail(std::uint32_t i, Nanos now) {
    pending_.remove(i);
    if (slots_[i].tries >= o_.tries) {
      give_up(i, "no echo after " + std::to_string(o_.tries) + " tries", /*pending=*/false);
      return;
    }
    ++retries_;
    send_probe(i, now);
  }

  void on_readable(std::uint32_t i) {
    if (i >= slots_.size()) return;
    Slot& s = slots_[i];
    char buf[64];
    bool echoed = false;
    for (;;) {
      const ssize_t n = ::recv(s.fd.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n >= 0) {
        echoed = true;
        continue;
      }
      if (errno == EINTR || errno == ECONNREFUSED) continue;  // refused: it will time out
      break;
    }
    if (!echoed || s.phase != Phase::kWaiting) return;
    pending_.remove(i);
    s.phase = Phase::kHeld;
    --in_flight_;
    ++answered_;
  }

  void give_up(std::uint32_t i, const std::string& reason, bool pending) {
    Slot& s = slots_[i];
    if (pending) pending_.remove(i);
    if (s.phase == Phase::kWaiting) --in_flight_;
    s.fd.reset();
    s.phase = Phase::kFailed;
    ++failed_;
    ++reasons_[reason];
  }

  const UdpIdleOptions& o_;
  std::vector<Slot> slots_;
  SlotList<Slot> pending_;  // waiting for the echo, in send order
  std::vector<epoll_event> events_ = std::vector<epoll_event>(1024);
  Fd epoll_;
  std::uint32_t next_ = 0;
  std::uint32_t in_flight_ = 0;
  std::uint64_t answered_ = 0;
  std::uint64_t failed_ = 0;
  std::uint64_t retries_ = 0;
  std::map<std::string, std::uint64_t> reasons_;
};

}  // namespace

int run_udp_idle(int argc, char** argv) {
  const Args args("udp-idle", argc, argv,
                  {{"--target"},
                   {"--count"},
                   {"--parallel"},
                   {"--tries"},
                   {"--ready-file"},
                   {"--hold"},
                   {"--bind-dev"},
                   {"--timeout-ms"}});
  UdpIdleOptions o;
  o.target = parse_endpoint(args.required("--target"), "udp-idle: --target");
  args.required("--count");
  o.count = static_cast<std::uint32_t>(args.integer("--count", 0, 1, 10'000'000));
  o.parallel = static_cast<std::uint32_t>(args.integer("--parallel", 200, 1, 1'000'000));
  o.tries = static_cast<std::uint32_t>(args.integer("--tries", 3, 1, 100));
  o.ready_file = std::string(args.value("--ready-file"));
  o.hold_limited = args.has("--hold");
  o.hold = args.seconds("--hold", 0.0, 0.0);
  o.timeout = static_cast<Nanos>(args.integer("--timeout-ms", 1000, 1, 3'600'000)) * 1'000'000;
  o.device = args.device();

  const std::uint64_t limit = raise_nofile_limit();
  if (limit < o.count + 64ull) {
    fail("RLIMIT_NOFILE is " + std::to_string(limit) + " (after raising the soft limit to the " +
         "hard one), below --count + 64 = " + std::to_string(o.count + 64ull) +
         "; raise the hard limit (ulimit -Hn, LimitNOFILE=)");
  }
  install_stop_signals(/*block=*/true);
  UdpIdleClient client(o);
  const std::string json = client.run();
  std::fwrite(json.data(), 1, json.size(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace splitd::bench
