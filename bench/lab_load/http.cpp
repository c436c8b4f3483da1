// lab-load http: new short HTTP/1.1 connections per second with a fixed number in flight.
// Each worker is one thread with its own edge-triggered epoll loop and its share of the
// connections; --threads only adds workers.
//
// lab-load http-open: the same connections in an open loop: started at a fixed rate,
// whatever the answers do, each one's latency measured from the time it was due to start
// (so a stall is counted in full for every connection it delays: no coordinated
// omission). The loop waits with epoll_pwait2's nanosecond timeout and a 1 ns timer slack,
// so that the start times are not rounded to milliseconds.

#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/prctl.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common.hpp"
#include "modes.hpp"
#include "slot_list.hpp"

namespace splitd::bench {
namespace {

enum ErrorKind : unsigned {
  kConnectRefused,
  kConnectTimeout,
  kReset,
  kTimeout,
  kBadStatus,
  kShortBody,
  kOther,
  kErrorKinds
};
constexpr std::array<const char*, kErrorKinds> kErrorKindNames = {
    "connect_refused", "connect_timeout", "reset", "timeout", "bad_status", "short_body", "other"};

constexpr Nanos kStall = 1'000'000'000;
// After a connect() that fails at once (no local port left, no route) the slot waits this
// long before it tries again, rather than spin through errors at full speed.
constexpr Nanos kBackoff = 10'000'000;
constexpr size_t kMaxHead = 64 * 1024;
constexpr size_t kIoChunk = 64 * 1024;

struct HttpConfig {
  Endpoint target;
  std::string request;
  std::string device;
  Nanos timeout = 0;
  Nanos warm_end = 0;  // connections ending (open loop: due) before this are warmup
  Nanos end = 0;
  // Open loop: one worker's connections are due every `interval` from `t0` + its phase.
  // 0: closed loop.
  Nanos interval = 0;
  Nanos t0 = 0;
};

// A connection of the open loop that started this much after it was due was held back by
// the client (no free slot, or the loop late): reported, as the latency then includes it.
constexpr Nanos kLateStart = 1'000'000;

struct HttpResult {
  std::uint64_t connections = 0;
  std::array<std::uint64_t, kErrorKinds> errors{};
  std::uint64_t stalls = 0;
  std::uint64_t scheduled = 0;    // open loop: connections due inside the measured window
  std::uint64_t late_starts = 0;  // open loop: of those, started kLateStart or more late
  std::uint64_t max_in_flight = 0;
  std::vector<Nanos> latencies;
  std::map<std::string, std::uint64_t> other_reasons;  // for the stderr summary only
  Nanos stopped_at = 0;

  void merge(HttpResult& o) {
    connections += o.connections;
    for (unsigned k = 0; k < kErrorKinds; ++k) errors[k] += o.errors[k];
    stalls += o.stalls;
    scheduled += o.scheduled;
    late_starts += o.late_starts;
    max_in_flight += o.max_in_flight;  // an upper bound of the concurrent total
    latencies.insert(latencies.end(), o.latencies.begin(), o.latencies.end());
    for (const auto& [reason, n] : o.other_reasons) other_reasons[reason] += n;
    stopped_at = std::max(stopped_at, o.stopped_at);
  }
};

enum class Phase : std::uint8_t { kIdle, kConnecting, kSending, kReading, kParked };

// One connection in flight (or a slot waiting out its backoff). Slots are reused: their
// head buffer keeps its capacity, so a steady run allocates nothing per connection.
struct Slot {
  Fd fd;
  Phase phase = Phase::kIdle;
  std::uint32_t gen = 0;  // tells a stale epoll event from one of the current socket
  std::uint32_t prev = kNoSlot;
  std::uint32_t next = kNoSlot;
  Nanos start = 0;  // parked: when to try again
  Nanos due = 0;    // open loop: when it was due to start (its latency counts from here)
  std::uint32_t sent = 0;
  bool readable = false;  // an input edge came that has not been read to EAGAIN yet
  bool head_done = false;
  int status = 0;
  std::int64_t content_length = -1;
  std::uint64_t body = 0;
  std::string head;
};

bool iequals_prefix(std::string_view line, std::string_view prefix) {
  if (line.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    const char c = line[i];
    const char lower = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
    if (lower != prefix[i]) return false;
  }
  return true;
}

// One event loop with `concurrency` slots (open loop: at most that many in flight). Used
// by one thread only.
class HttpWorker {
 public:
  HttpWorker(const HttpConfig& cfg, unsigned concurrency, Nanos phase = 0)
      : cfg_(cfg), slots_(concurrency), active_(slots_), parked_(slots_) {
    result_.latencies.reserve(1 << 16);
    next_due_ = cfg.t0 + phase;
  }

  void run() {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);
    io_ = std::make_unique_for_overwrite<char[]>(kIoChunk);
    std::vector<epoll_event> events(std::min<size_t>(slots_.size(), 1024));
    if (cfg_.interval > 0) {
      run_open(events);
      return;
    }
    for (std::uint32_t i = 0; i < slots_.size(); ++i) start(i);
    for (;;) {
      const Nanos now = now_ns();
      if (now >= cfg_.end || stop_requested()) {
        result_.stopped_at = std::min(now, cfg_.end);
        break;
      }
      expire(now);
      Nanos next = cfg_.end;
      if (!active_.empty()) next = std::min(next, slots_[active_.front()].start + cfg_.timeout);
      if (!parked_.empty()) next = std::min(next, slots_[parked_.front()].start);
      // Round up: waking a little late is harmless, waking early means a wasted loop.
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
        const auto i = static_cast<std::uint32_t>(events[e].data.u64 & 0xffffffffu);
        const auto gen = static_cast<std::uint32_t>(events[e].data.u64 >> 32);
        if (i < slots_.size() && slots_[i].gen == gen) on_event(i, events[e].events);
      }
    }
    for (Slot& s : slots_) s.fd.reset();  // connections still in flight are not counted
  }

  HttpResult& result() { return result_; }

 private:
  // The open loop: starts every connection when due (or as soon as a slot is free) until
  // the end, then lets those in flight finish or time out: a connection due in the
  // measured window is always counted, as a latency or an error.
  void run_open(std::vector<epoll_event>& events) {
    for (std::uint32_t i = static_cast<std::uint32_t>(slots_.size()); i-- > 0;) free_.push_back(i);
    for (;;) {
      Nanos now = now_ns();
      if (stop_requested()) break;
      while (next_due_ < cfg_.end && next_due_ <= now && !free_.empty()) {
        const std::uint32_t i = free_.back();
        free_.pop_back();
        const Nanos due = next_due_;
        next_due_ += cfg_.interval;
        if (due >= cfg_.warm_end) {
          ++result_.scheduled;
          if (now - due >= kLateStart) ++result_.late_starts;
        }
        slots_[i].due = due;
        start(i);
        in_flight_ = slots_.size() - free_.size();
        if (due >= cfg_.warm_end) {
          result_.max_in_flight = std::max<std::uint64_t>(result_.max_in_flight, in_flight_);
        }
        now = now_ns();
      }
      if (next_due_ >= cfg_.end && active_.empty()) break;
      expire(now);
      Nanos next = now + 1'000'000'000;
      if (next_due_ < cfg_.end && !free_.empty()) next = std::min(next, next_due_);
      if (!active_.empty()) next = std::min(next, slots_[active_.front()].start + cfg_.timeout);
      const Nanos wait = std::max<Nanos>(next - now, 0);
      const timespec ts{static_cast<time_t>(wait / 1'000'000'000),
                        static_cast<long>(wait % 1'000'000'000)};
      const int n = ::epoll_pwait2(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                   &ts, &stop_wait_mask());
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno("epoll_pwait2", errno);
      }
      for (int e = 0; e < n; ++e) {
        const auto i = static_cast<std::uint32_t>(events[e].data.u64 & 0xffffffffu);
        const auto gen = static_cast<std::uint32_t>(events[e].data.u64 >> 32);
        if (i < slots_.size() && slots_[i].gen == gen) on_event(i, events[e].events);
      }
    }
    result_.stopped_at = std::min(now_ns(), cfg_.end);
    for (Slot& s : slots_) s.fd.reset();
  }

  bool open_loop() const { return cfg_.interval > 0; }

  // The time a connection's fate is counted by: when it ends (closed loop), when it was
  // due (open loop).
  bool measured(const Slot& s, Nanos now) const {
    const Nanos t = open_loop() ? s.due : now;
    return t >= cfg_.warm_end && t < cfg_.end;
  }

  // A finished connection's slot: the next connection (closed loop) or back to the free
  // ones (open loop).
  void recycle(std::uint32_t i, Nanos now) {
    if (open_loop()) {
      slots_[i].phase = Phase::kIdle;
      free_.push_back(i);
      return;
    }
    if (now < cfg_.end && !stop_requested()) start(i);
  }

  void start(std::uint32_t i) {
    Slot& s = slots_[i];
    ++s.gen;
    s.sent = 0;
    s.readable = false;
    s.head_done = false;
    s.status = 0;
    s.content_length = -1;
    s.body = 0;
    s.head.clear();
    s.start = now_ns();
    const int fd = ::socket(cfg_.target.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) fail_errno("socket", errno);
    s.fd.reset(fd);
    set_bind_device(fd, cfg_.device);
    const int rc = ::connect(fd, cfg_.target.sa(), cfg_.target.len);
    if (rc != 0 && errno != EINPROGRESS) {
      const int err = errno;
      s.fd.reset();
      count_error(connect_error_kind(err), "connect", err, s, now_ns());
      if (open_loop()) {  // one attempt per due time; the slot is free again
        s.phase = Phase::kIdle;
        free_.push_back(i);
        return;
      }
      s.phase = Phase::kParked;
      s.start = now_ns() + kBackoff;
      parked_.push_back(i);
      return;
    }
    epoll_event ev{};
    // Edge-triggered with both directions registered once: no EPOLL_CTL_MOD per phase.
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = static_cast<std::uint64_t>(s.gen) << 32 | i;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) fail_errno("epoll_ctl ADD", errno);
    active_.push_back(i);
    s.phase = rc == 0 ? Phase::kSending : Phase::kConnecting;
    if (rc == 0) send_request(i);
  }

  static ErrorKind connect_error_kind(int err) {
    switch (err) {
      case ECONNREFUSED:
        return kConnectRefused;
      case ETIMEDOUT:
        return kConnectTimeout;
      case ECONNRESET:
        return kReset;
      default:
        return kOther;
    }
  }

  void expire(Nanos now) {
    while (!parked_.empty() && slots_[parked_.front()].start <= now) {
      const std::uint32_t i = parked_.front();
      parked_.remove(i);
      start(i);
    }
    while (!active_.empty() && slots_[active_.front()].start + cfg_.timeout <= now) {
      const std::uint32_t i = active_.front();
      if (slots_[i].phase == Phase::kConnecting) {
        finish(i, kConnectTimeout, "");
      } else {
        finish(i, kTimeout, "");
      }
    }
  }

  void on_event(std::uint32_t i, std::uint32_t events) {
    Slot& s = slots_[i];
    // Input that shows up before the request is out (an early error response) is read
    // once the request is sent: with edge triggering its edge is not reported again.
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0) s.readable = true;
    if (s.phase == Phase::kConnecting) {
      if ((events & EPOLLERR) != 0) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(s.fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        finish(i, connect_error_kind(err), "connect", err);
        return;
      }
      if ((events & EPOLLOUT) == 0) {
        if ((events & EPOLLHUP) != 0) finish(i, kOther, "hangup while connecting");
        return;
      }
      s.phase = Phase::kSending;
    }
    if (s.phase == Phase::kSending) {
      if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
      if (!send_request(i)) return;
    }
    if (s.phase == Phase::kReading && s.readable) read_response(i, events);
  }

  // True once the whole request is out (the slot then reads); false if it waits for
  // EPOLLOUT or the connection failed.
  bool send_request(std::uint32_t i) {
    Slot& s = slots_[i];
    const std::string& req = cfg_.request;
    while (s.sent < req.size()) {
      const ssize_t w = ::send(s.fd.get(), req.data() + s.sent, req.size() - s.sent, MSG_NOSIGNAL);
      if (w < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) return false;
        finish(i, err == EPIPE || err == ECONNRESET ? kReset : kOther, "send", err);
        return false;
      }
      s.sent += static_cast<std::uint32_t>(w);
    }
    s.phase = Phase::kReading;
    return true;
  }

  void read_response(std::uint32_t i, std::uint32_t events) {
    Slot& s = slots_[i];
    // Edge-triggered: read until EAGAIN, or the next edge may never come.
    for (;;) {
      const ssize_t n = ::recv(s.fd.get(), io_.get(), kIoChunk, 0);
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) {
          s.readable = false;
          return;
        }
        finish(i, err == ECONNRESET ? kReset : kOther, "recv", err);
        return;
      }
      if (n == 0) {
        on_eof(i);
        return;
      }
      if (!consume(i, static_cast<size_t>(n))) return;
      // The peer's FIN was in before this wakeup (EPOLLRDHUP) and a short read took all
      // that was queued ahead of it: that is the EOF, without one more recv() to say so.
      if ((events & EPOLLRDHUP) != 0 && static_cast<size_t>(n) < kIoChunk) {
        on_eof(i);
        return;
      }
    }
  }

  // Takes in io_[0, len); false if the response is unusable (the slot is then finished).
  bool consume(std::uint32_t i, size_t len) {
    Slot& s = slots_[i];
    if (s.head_done) {
      s.body += len;
      return true;
    }
    const size_t old = s.head.size();
    s.head.append(io_.get(), len);
    const size_t pos = s.head.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
    if (pos == std::string::npos) {
      if (s.head.size() <= kMaxHead) return true;
      finish(i, kOther, "response head over 64 KiB");
      return false;
    }
    s.head_done = true;
    s.body = s.head.size() - (pos + 4);
    const std::string_view head(s.head.data(), pos + 2);  // every line ends with CRLF
    // "HTTP/1.x NNN ..."
    if (head.size() < 12 || head.substr(0, 7) != "HTTP/1." || head[8] != ' ' ||
        std::from_chars(head.data() + 9, head.data() + 12, s.status).ptr != head.data() + 12) {
      finish(i, kOther, "malformed status line");
      return false;
    }
    size_t line_start = head.find("\r\n") + 2;
    while (line_start < head.size()) {
      const size_t line_end = head.find("\r\n", line_start);
      const std::string_view line = head.substr(line_start, line_end - line_start);
      line_start = line_end + 2;
      if (!iequals_prefix(line, "content-length:")) continue;
      std::string_view value = line.substr(15);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t'))
        value.remove_prefix(1);
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t'))
        value.remove_suffix(1);
      std::uint64_t cl = 0;
      const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), cl);
      if (ec != std::errc() || ptr != value.data() + value.size() || value.empty()) {
        finish(i, kOther, "malformed Content-Length");
        return false;
      }
      s.content_length = static_cast<std::int64_t>(cl);
    }
    return true;
  }

  void on_eof(std::uint32_t i) {
    const Slot& s = slots_[i];
    if (!s.head_done) {
      finish(i, kOther,
             s.head.empty() ? "closed before any response byte"
                            : "closed in the middle of the response head");
    } else if (s.status != 200) {
      finish(i, kBadStatus, "");
    } else if (s.content_length >= 0 && s.body < static_cast<std::uint64_t>(s.content_length)) {
      finish(i, kShortBody, "");
    } else if (s.content_length >= 0 && s.body > static_cast<std::uint64_t>(s.content_length)) {
      finish(i, kOther, "body longer than Content-Length");
    } else {
      finish(i, kErrorKinds, "");  // success
    }
  }

  // Ends slot i's connection (kind kErrorKinds = success), counts it if it ended inside
  // the measured window, and starts the next one. `reason` (and `err`, an errno, if not
  // 0) explain an error of kind kOther on stderr.
  void finish(std::uint32_t i, unsigned kind, const char* reason, int err = 0) {
    const Nanos now = now_ns();
    Slot& s = slots_[i];
    s.fd.reset();
    active_.remove(i);
    s.phase = Phase::kIdle;
    if (kind == kErrorKinds) {
      if (measured(s, now)) {
        const Nanos latency = now - (open_loop() ? s.due : s.start);
        ++result_.connections;
        result_.latencies.push_back(latency);
        if (latency > kStall) ++result_.stalls;
      }
    } else {
      count_error(kind, reason, err, s, now);
    }
    recycle(i, now);
  }

  void count_error(unsigned kind, const char* reason, int err, const Slot& s, Nanos now) {
    if (!measured(s, now)) return;
    ++result_.errors[kind];
    // Only the rare kind builds a string: refusals and timeouts can come by the thousand.
    if (kind == kOther) {
      ++result_.other_reasons[err != 0 ? std::string(reason) + ": " + errno_text(err) : reason];
    }
  }

  const HttpConfig& cfg_;
  std::vector<Slot> slots_;
  SlotList<Slot> active_;  // connecting/sending/reading, in start order
  SlotList<Slot> parked_;  // backing off, in wake-up order
  std::vector<std::uint32_t> free_;  // open loop: slots without a connection
  Nanos next_due_ = 0;               // open loop: when the next connection is due
  size_t in_flight_ = 0;
  Fd epoll_;
  std::unique_ptr<char[]> io_;
  HttpResult result_;
};

bool is_clean_token(std::string_view s) {
  return !s.empty() && std::none_of(s.begin(), s.end(), [](char c) {
    return static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
  });
}

// The request of both modes, from --host and --path.
std::string build_request(const Args& args, const Endpoint& target, std::string_view mode) {
  const std::string host(args.has("--host") ? args.value("--host") : target.host);
  const std::string path(args.value("--path", "/"));
  if (!is_clean_token(host)) {
    throw UsageError(std::string(mode) + ": --host: '" + host + "' is not a host name");
  }
  if (!is_clean_token(path) || path.front() != '/') {
    throw UsageError(std::string(mode) + ": --path: '" + path +
                     "' must start with / and have no spaces");
  }
  return "GET " + path + " HTTP/1.1\r\nHost: " + host +
         "\r\nConnection: close\r\nUser-Agent: lab-load\r\n\r\n";
}

// Runs the workers (one on this thread, more on threads of their own) and merges their
// results.
HttpResult run_workers(std::vector<std::unique_ptr<HttpWorker>>& workers) {
  const size_t threads = workers.size();
  std::vector<std::exception_ptr> failures(threads);
  if (threads == 1) {
    workers[0]->run();
  } else {
    std::vector<std::thread> pool;
    for (size_t t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        try {
          workers[t]->run();
        } catch (...) {
          failures[t] = std::current_exception();
          request_stop();  // the others end too
        }
      });
    }
    for (std::thread& th : pool) th.join();
    for (const std::exception_ptr& f : failures) {
      if (f) std::rethrow_exception(f);
    }
  }
  HttpResult total;
  for (auto& w : workers) total.merge(w->result());
  for (const auto& [reason, n] : total.other_reasons) {
    std::fprintf(stderr, "lab-load http: other error: %s: %llu\n", reason.c_str(),
                 static_cast<unsigned long long>(n));
  }
  return total;
}

// {"errors": N, "error_kinds": {...}} fields of a result.
std::uint64_t add_errors(Json& out, const HttpResult& total) {
  std::uint64_t errors = 0;
  Json kinds;
  for (unsigned k = 0; k < kErrorKinds; ++k) {
    errors += total.errors[k];
    kinds.field(kErrorKindNames[k], total.errors[k]);
  }
  out.field("errors", errors).object("error_kinds", kinds);
  return errors;
}

}  // namespace

int run_http(int argc, char** argv) {
  const Args args("http", argc, argv,
                  {{"--target"},
                   {"--host"},
                   {"--path"},
                   {"--concurrency"},
                   {"--duration"},
                   {"--warmup"},
                   {"--timeout-ms"},
                   {"--bind-dev"},
                   {"--threads"}});
  HttpConfig cfg;
  cfg.target = parse_endpoint(args.required("--target"), "http: --target");
  cfg.request = build_request(args, cfg.target, "http");
  const auto concurrency = static_cast<unsigned>(args.integer("--concurrency", 50, 1, 1'000'000));
  const double duration = args.seconds("--duration", 10.0, 0.001);
  const double warmup = args.seconds("--warmup", 1.0, 0.0);
  cfg.timeout = static_cast<Nanos>(args.integer("--timeout-ms", 2000, 1, 3'600'000)) * 1'000'000;
  const auto threads = static_cast<unsigned>(args.integer("--threads", 1, 1, 64));
  if (threads > concurrency) throw UsageError("http: --threads must not exceed --concurrency");
  cfg.device = args.device();

  const std::uint64_t limit = raise_nofile_limit();
  if (limit < concurrency + 64ull) {
    fail("RLIMIT_NOFILE is " + std::to_string(limit) + ", below --concurrency + 64; raise it " +
         "(ulimit -n)");
  }
  install_stop_signals(/*block=*/true);

  const Nanos t0 = now_ns();
  cfg.warm_end = t0 + seconds_to_ns(warmup);
  cfg.end = cfg.warm_end + seconds_to_ns(duration);

  std::vector<std::unique_ptr<HttpWorker>> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.push_back(std::make_unique<HttpWorker>(
        cfg, concurrency / threads + (t < concurrency % threads ? 1 : 0)));
  }
  HttpResult total = run_workers(workers);
  const double seconds = ns_to_seconds(std::max<Nanos>(total.stopped_at - cfg.warm_end, 0));
  Json out;
  out.field("mode", "http")
      .field("concurrency", std::uint64_t{concurrency})
      .field("duration_s", seconds)
      .field("connections", total.connections)
      .field("rate_per_s", seconds > 0 ? static_cast<double>(total.connections) / seconds : 0.0,
             1);
  add_errors(out, total);
  out.field("stalls", total.stalls).object("latency_us", latency_json(total.latencies));
  print_json(out);
  return 0;
}

int run_http_open(int argc, char** argv) {
  const Args args("http-open", argc, argv,
                  {{"--target"},
                   {"--host"},
                   {"--path"},
                   {"--rate"},
                   {"--max-in-flight"},
                   {"--duration"},
                   {"--warmup"},
                   {"--timeout-ms"},
                   {"--bind-dev"},
                   {"--threads"}});
  HttpConfig cfg;
  cfg.target = parse_endpoint(args.required("--target"), "http-open: --target");
  cfg.request = build_request(args, cfg.target, "http-open");
  const std::uint64_t rate = args.integer("--rate", 2000, 1, 10'000'000);
  const auto max_in_flight =
      static_cast<unsigned>(args.integer("--max-in-flight", 4096, 1, 1'000'000));
  const double duration = args.seconds("--duration", 10.0, 0.001);
  const double warmup = args.seconds("--warmup", 1.0, 0.0);
  cfg.timeout = static_cast<Nanos>(args.integer("--timeout-ms", 2000, 1, 3'600'000)) * 1'000'000;
  const auto threads = static_cast<unsigned>(args.integer("--threads", 1, 1, 64));
  if (threads > max_in_flight) {
    throw UsageError("http-open: --threads must not exceed --max-in-flight");
  }
  cfg.device = args.device();

  const std::uint64_t limit = raise_nofile_limit();
  if (limit < max_in_flight + 64ull) {
    fail("RLIMIT_NOFILE is " + std::to_string(limit) + ", below --max-in-flight + 64; raise it " +
         "(ulimit -n) or lower --max-in-flight");
  }
  install_stop_signals(/*block=*/true);
  // The default slack (50 us) would make every start that much late.
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);

  // Worker t starts connections t, t + threads, t + 2 threads, ... of the schedule.
  const double gap_ns = 1e9 / static_cast<double>(rate);
  cfg.interval = std::max<Nanos>(static_cast<Nanos>(std::llround(gap_ns * threads)), 1);
  cfg.t0 = now_ns();
  cfg.warm_end = cfg.t0 + seconds_to_ns(warmup);
  cfg.end = cfg.warm_end + seconds_to_ns(duration);

  std::vector<std::unique_ptr<HttpWorker>> workers;
  for (unsigned t = 0; t < threads; ++t) {
    workers.push_back(std::make_unique<HttpWorker>(
        cfg, max_in_flight / threads + (t < max_in_flight % threads ? 1 : 0),
        static_cast<Nanos>(std::llround(gap_ns * t))));
  }
  HttpResult total = run_workers(workers);
  const double seconds = ns_to_seconds(cfg.end - cfg.warm_end);
  Json out;
  out.field("mode", "http-open")
      .field("rate_asked", rate)
      .field("max_in_flight", std::uint64_t{max_in_flight})
      .field("duration_s", seconds)
      .field("scheduled", total.scheduled)
      .field("connections", total.connections)
      .field("rate_per_s", seconds > 0 ? static_cast<double>(total.connections) / seconds : 0.0,
             1);
  add_errors(out, total);
  out.field("late_starts", total.late_starts)
      .field("in_flight_max", total.max_in_flight)
      .field("stalls", total.stalls)
      .object("latency_us", latency_json(total.latencies));
  print_json(out);
  return 0;
}

}  // namespace splitd::bench
