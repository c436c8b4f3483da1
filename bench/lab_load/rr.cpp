// lab-load rr: request/response round trips on one long-lived TCP connection. Blocking
// socket: one send and one recv per round trip, so the figure is the path's latency and
// not an event loop's.

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "modes.hpp"

namespace splitd::bench {
namespace {

constexpr size_t kMaxSize = 16 * 1024 * 1024;
constexpr size_t kMaxGreeting = 4096;

void set_timeout(int fd, int option, Nanos ns) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
  tv.tv_usec = static_cast<suseconds_t>(ns % 1'000'000'000 / 1000);
  if (::setsockopt(fd, SOL_SOCKET, option, &tv, sizeof tv) != 0) fail_errno("SO_*TIMEO", errno);
}

// Reads and drops one line (the lab responder's greeting). Nothing has been sent yet, so
// any byte after the newline is a protocol error.
void skip_line(int fd) {
  std::string line;
  const Nanos deadline = now_ns() + 5'000'000'000;
  char buf[512];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      line.append(buf, static_cast<size_t>(n));
      const size_t nl = line.find('\n');
      if (nl != std::string::npos) {
        if (nl + 1 != line.size()) fail("unexpected bytes after the greeting line");
        return;
      }
      if (line.size() > kMaxGreeting) fail("no newline in the first 4 KiB (--skip-line)");
      continue;
    }
    if (n == 0) fail("connection closed before the greeting line");
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) fail_errno("recv", errno);
    if (stop_requested()) fail("interrupted while waiting for the greeting line");
    if (now_ns() >= deadline) fail("no greeting line within 5 s (--skip-line)");
  }
}

// One round trip; false if it was abandoned because the run ended while it waited.
// Large messages are sent without blocking and interleaved with reading: an echo server
// that stops reading while its echo is pending would otherwise deadlock us both.
bool round_trip(int fd, const char* out, char* in, size_t size, Nanos end) {
  size_t sent = 0;
  size_t got = 0;
  while (got < size) {
    if (sent < size) {
      const ssize_t w = ::send(fd, out + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0) {
        sent += static_cast<size_t>(w);
      } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fail_errno("send", errno);
      }
    }
    const bool all_sent = sent == size;
    const ssize_t r = ::recv(fd, in + got, size - got, all_sent ? 0 : MSG_DONTWAIT);
    if (r > 0) {
      got += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) fail("the peer closed the connection");
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) fail_errno("recv", errno);
    // The blocking recv waits at most SO_RCVTIMEO: that is when the end is noticed.
    if (stop_requested() || now_ns() >= end) return false;
    if (!all_sent) {
      pollfd p{fd, POLLIN | POLLOUT, 0};
      ::poll(&p, 1, 100);
    }
  }
  return true;
}

}  // namespace

int run_rr(int argc, char** argv) {
  const Args args("rr", argc, argv,
                  {{"--target"},
                   {"--size"},
                   {"--duration"},
                   {"--warmup"},
                   {"--skip-line", false},
                   {"--bind-dev"}});
  const Endpoint target = parse_endpoint(args.required("--target"), "rr: --target");
  const auto size = static_cast<size_t>(args.integer("--size", 64, 1, kMaxSize));
  const double duration = args.seconds("--duration", 10.0, 0.001);
  const double warmup = args.seconds("--warmup", 0.5, 0.0);
  const std::string device = args.device();
  install_stop_signals(/*block=*/false);

  Fd fd(::socket(target.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) fail_errno("socket", errno);
  set_bind_device(fd.get(), device);
  set_int_option(fd.get(), IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
  set_timeout(fd.get(), SO_SNDTIMEO, 5'000'000'000);  // bounds the blocking connect
  if (::connect(fd.get(), target.sa(), target.len) != 0) {
    fail_errno("connect " + target.text, errno == EINPROGRESS ? ETIMEDOUT : errno);
  }
  set_timeout(fd.get(), SO_RCVTIMEO, 100'000'000);
  if (args.has("--skip-line")) skip_line(fd.get());

  auto out = std::make_unique_for_overwrite<char[]>(size);
  auto in = std::make_unique_for_overwrite<char[]>(size);
  for (size_t i = 0; i < size; ++i) out[i] = static_cast<char>('a' + i % 26);

  std::vector<Nanos> latencies;
  latencies.reserve(1 << 16);
  const Nanos t0 = now_ns();
  const Nanos warm_end = t0 + seconds_to_ns(warmup);
  const Nanos end = warm_end + seconds_to_ns(duration);
  Nanos stopped_at = end;
  for (;;) {
    const Nanos start = now_ns();
    if (start >= end || stop_requested()) {
      stopped_at = std::min(start, end);
      break;
    }
    if (!round_trip(fd.get(), out.get(), in.get(), size, end)) continue;
    const Nanos done = now_ns();
    if (std::memcmp(out.get(), in.get(), size) != 0) {
      fail("the echo differs from what was sent (a greeting line? try --skip-line)");
    }
    if (done >= warm_end && done < end) latencies.push_back(done - start);
  }
  if (latencies.empty()) fail("no round trip completed in the measured time");

  const double seconds = ns_to_seconds(std::max<Nanos>(stopped_at - warm_end, 0));
  const std::uint64_t n = latencies.size();
  print_json(Json()
                 .field("mode", "rr")
                 .field("size", std::uint64_t{size})
                 .field("round_trips", n)
                 .field("rate_per_s", seconds > 0 ? static_cast<double>(n) / seconds : 0.0, 1)
                 .object("latency_us", latency_json(latencies)));
  return 0;
}

}  // namespace splitd::bench
