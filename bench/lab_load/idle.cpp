// lab-load idle: opens N TCP connections (a bounded number of connects at a time), makes
// one 1-byte echo round trip on each so that a proxy in between has set up both legs,
// reports readiness in a file and holds them idle until told to stop.

#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "common.hpp"
#include "modes.hpp"
#include "slot_list.hpp"

namespace splitd::bench {
namespace {

enum class Phase : std::uint8_t { kUnused, kConnecting, kEcho, kHeld, kClosed };

struct Slot {
  Fd fd;
  Phase phase = Phase::kUnused;
  bool sent = false;
  std::uint32_t prev = kNoSlot;
  std::uint32_t next = kNoSlot;
  Nanos start = 0;
};

struct IdleOptions {
  Endpoint target;
  std::uint32_t count = 0;
  std::uint32_t parallel = 256;
  std::string ready_file;
  bool hold_limited = false;
  double hold = 0;
  Nanos timeout = 0;
  std::string device;
};

// Owns the N connections and the epoll loop that sets them up and then watches them.
// Single-threaded.
class IdleClient {
 public:
  explicit IdleClient(const IdleOptions& o) : o_(o), slots_(o.count), pending_(slots_) {}

  // Returns the result JSON; throws if interrupted before every connection is done.
  std::string run() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);
    const Nanos t0 = now_ns();
    fill();
    while (connected_ + failed_ < o_.count) {
      if (stop_requested()) fail("interrupted before all connections were set up");
      const Nanos now = now_ns();
      while (!pending_.empty() && slots_[pending_.front()].start + o_.timeout <= now) {
        give_up(pending_.front(), "timeout");
      }
      fill();
      if (connected_ + failed_ == o_.count) break;
      int timeout_ms = 1000;
      if (!pending_.empty()) {
        const Nanos left = slots_[pending_.front()].start + o_.timeout - now;
        timeout_ms = static_cast<int>(std::clamp<Nanos>((left + 999'999) / 1'000'000, 0, 1000));
      }
      wait(timeout_ms);
      fill();
    }
    const Nanos ready = now_ns();
    char seconds[32];
    std::snprintf(seconds, sizeof seconds, "%.3f", ns_to_seconds(ready - t0));
    const std::string json = Json()
                                 .field("mode", "idle")
                                 .field("requested", std::uint64_t{o_.count})
                                 .field("connected", connected_)
                                 .field("failed", failed_)
                                 .field("seconds_to_ready", ns_to_seconds(ready - t0))
                                 .str();
    for (const auto& [reason, n] : reasons_) {
      std::fprintf(stderr, "lab-load idle: failed: %s: %llu\n", reason.c_str(),
                   static_cast<unsigned long long>(n));
    }
    std::fprintf(stderr, "lab-load idle: %llu of %u connections ready after %s s; holding\n",
                 static_cast<unsigned long long>(connected_), o_.count, seconds);
    if (!o_.ready_file.empty()) write_file_atomically(o_.ready_file, json + "\n");

    const Nanos hold_end = o_.hold_limited ? ready + seconds_to_ns(o_.hold) : 0;
    while (!stop_requested()) {
      int timeout_ms = 1000;
      if (o_.hold_limited) {
        const Nanos left = hold_end - now_ns();
        if (left <= 0) break;
        timeout_ms = static_cast<int>(std::min<Nanos>((left + 999'999) / 1'000'000, 1000));
      }
      wait(timeout_ms);
    }
    if (dropped_ > 0) {
      std::fprintf(stderr, "lab-load idle: %llu held connections were closed by the peer\n",
                   static_cast<unsigned long long>(dropped_));
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
    for (int e = 0; e < n; ++e) on_event(events_[e].data.u32, events_[e].events);
  }

  // Starts connections up to --parallel in flight. Called from the loop, not from the
  // completion paths, so that a run of failing connects iterates instead of recursing.
  void fill() {
    while (in_flight_ < o_.parallel && next_ < o_.count) start(next_++);
  }

  void start(std::uint32_t i) {
    Slot& s = slots_[i];
    s.start = now_ns();
    s.phase = Phase::kConnecting;
    ++in_flight_;
    pending_.push_back(i);
    const int fd = ::socket(o_.target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      give_up(i, "socket: " + errno_text(errno));
      return;
    }
    s.fd.reset(fd);
    set_bind_device(fd, o_.device);
    if (::connect(fd, o_.target.sa(), o_.target.len) != 0 && errno != EINPROGRESS) {
      give_up(i, "connect: " + errno_text(errno));
      return;
    }
    epoll_event ev{};
    // Edge-triggered: set once, it serves the connect, the echo and the idle watch.
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u32 = i;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) fail_errno("epoll_ctl ADD", errno);
  }

  void on_event(std::uint32_t i, std::uint32_t events) {
    if (i >= slots_.size()) return;
    Slot& s = slots_[i];
    switch (s.phase) {
      case Phase::kConnecting:
        if ((events & EPOLLERR) != 0) {
          int err = 0;
          socklen_t len = sizeof err;
          ::getsockopt(s.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
          give_up(i, "connect: " + errno_text(err));
          return;
        }
        if ((events & EPOLLOUT) == 0) {
          if ((events & EPOLLHUP) != 0) give_up(i, "hangup while connecting");
          return;
        }
        s.phase = Phase::kEcho;
        [[fallthrough]];
      case Phase::kEcho:
        if (!s.sent) {
          const char byte = 'x';
          const ssize_t w = ::send(s.fd.get(), &byte, 1, MSG_NOSIGNAL);
          if (w == 1) {
            s.sent = true;
          } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
            give_up(i, "send: " + errno_text(errno));
            return;
          }
        }
        if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0) return;
        switch (drain(s)) {
          case Drain::kData:
            if (!s.sent) return;
            pending_.remove(i);
            --in_flight_;
            ++connected_;
            s.phase = Phase::kHeld;
            return;
          case Drain::kNothing:
            return;
          case Drain::kClosed:
            give_up(i, "closed by the peer before the echo");
            return;
          case Drain::kError:
            give_up(i, "recv: " + errno_text(errno));
            return;
        }
        return;
      case Phase::kHeld:
        if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0) return;
        if (const Drain d = drain(s); d == Drain::kClosed || d == Drain::kError) {
          s.fd.reset();
          s.phase = Phase::kClosed;
          ++dropped_;
        }
        return;
      default:
        return;
    }
  }

  enum class Drain { kNothing, kData, kClosed, kError };

  // Reads (and drops) everything there is, as edge triggering requires.
  static Drain drain(Slot& s) {
    char buf[512];
    Drain result = Drain::kNothing;
    for (;;) {
      const ssize_t n = ::recv(s.fd.get(), buf, sizeof buf, 0);
      if (n > 0) {
        result = Drain::kData;
        continue;
      }
      if (n == 0) return Drain::kClosed;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return result;
      return Drain::kError;
    }
  }

  void give_up(std::uint32_t i, const std::string& reason) {
    Slot& s = slots_[i];
    s.fd.reset();
    s.phase = Phase::kClosed;
    pending_.remove(i);
    --in_flight_;
    ++failed_;
    ++reasons_[reason];
  }

  const IdleOptions& o_;
  std::vector<Slot> slots_;
  SlotList<Slot> pending_;  // connecting or waiting for the echo, in start order
  std::vector<epoll_event> events_ = std::vector<epoll_event>(1024);
  Fd epoll_;
  std::uint32_t next_ = 0;
  std::uint32_t in_flight_ = 0;
  std::uint64_t connected_ = 0;
  std::uint64_t failed_ = 0;
  std::uint64_t dropped_ = 0;
  std::map<std::string, std::uint64_t> reasons_;
};

}  // namespace

int run_idle(int argc, char** argv) {
  const Args args("idle", argc, argv,
                  {{"--target"},
                   {"--count"},
                   {"--parallel"},
                   {"--ready-file"},
                   {"--hold"},
                   {"--bind-dev"},
                   {"--timeout-ms"}});
  IdleOptions o;
  o.target = parse_endpoint(args.required("--target"), "idle: --target");
  args.required("--count");
  o.count = static_cast<std::uint32_t>(args.integer("--count", 0, 1, 10'000'000));
  o.parallel = static_cast<std::uint32_t>(args.integer("--parallel", 256, 1, 1'000'000));
  o.ready_file = std::string(args.value("--ready-file"));
  o.hold_limited = args.has("--hold");
  o.hold = args.seconds("--hold", 0.0, 0.0);
  o.timeout = static_cast<Nanos>(args.integer("--timeout-ms", 5000, 1, 3'600'000)) * 1'000'000;
  o.device = args.device();

  const std::uint64_t limit = raise_nofile_limit();
  if (limit < o.count + 64ull) {
    fail("RLIMIT_NOFILE is " + std::to_string(limit) + " (after raising the soft limit to the " +
         "hard one), below --count + 64 = " + std::to_string(o.count + 64ull) +
         "; raise the hard limit (ulimit -Hn, LimitNOFILE=)");
  }
  install_stop_signals(/*block=*/true);
  IdleClient client(o);
  const std::string json = client.run();
  std::fwrite(json.data(), 1, json.size(), stdout);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  return 0;
}

}  // namespace splitd::bench
