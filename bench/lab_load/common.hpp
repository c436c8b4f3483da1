#pragma once
// Shared pieces of lab-load: fd ownership, errors and exit codes, the monotonic clock,
// endpoint and option parsing, JSON output, exact percentiles and stop signals.
// Everything here is plain libc/libstdc++ so the tool builds on its own.

#include <signal.h>
#include <sys/socket.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/fd.hpp"

namespace splitd::bench {

// The project's owning file descriptor.
using Fd = splitd::Fd;

// A bad command line: main() prints it with the usage and exits with status 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runtime failures are std::runtime_error: main() prints them and exits with status 1.
[[noreturn]] void fail(const std::string& what);
[[noreturn]] void fail_errno(const std::string& what, int err);

// Monotonic time in nanoseconds (CLOCK_MONOTONIC; clock_gettime is a vDSO call).
using Nanos = std::int64_t;
Nanos now_ns() noexcept;
Nanos seconds_to_ns(double seconds) noexcept;
double ns_to_seconds(Nanos ns) noexcept;

// A numeric IPv4 or IPv6 socket address from "IP:PORT" or "[IPv6]:PORT".
struct Endpoint {
  sockaddr_storage addr{};
  socklen_t len = 0;
  std::string text;  // as given, for messages
  std::string host;  // the address as it appears in a Host header ("[::1]" for IPv6)
  bool wildcard = false;

  int family() const noexcept { return addr.ss_family; }
  const sockaddr* sa() const noexcept { return reinterpret_cast<const sockaddr*>(&addr); }
};
Endpoint parse_endpoint(std::string_view text, std::string_view option);

// The options of one mode: "--name value" pairs and "--flag"s, checked against a spec.
// A repeated option keeps its last value (all() returns every value, for --listen).
struct OptionSpec {
  std::string_view name;
  bool takes_value = true;
};

class Args {
 public:
  Args(std::string_view mode, int argc, char** argv, std::initializer_list<OptionSpec> spec);

  bool has(std::string_view name) const;
  std::string_view value(std::string_view name, std::string_view fallback = {}) const;
  std::vector<std::string_view> all(std::string_view name) const;
  std::string_view required(std::string_view name) const;

  double seconds(std::string_view name, double fallback, double min_value) const;
  std::uint64_t integer(std::string_view name, std::uint64_t fallback, std::uint64_t min_value,
                        std::uint64_t max_value) const;
  // --bind-dev: an interface name that fits IFNAMSIZ, or "" when not given.
  std::string device() const;

 private:
  std::string_view mode_;
  std::vector<std::pair<std::string_view, std::string_view>> values_;
};

// A flat JSON object written field by field; numbers only ever come from us, strings are
// escaped. Doubles use fixed notation; NaN/inf (which JSON lacks) become 0.
class Json {
 public:
  Json& field(std::string_view key, std::uint64_t value);
  Json& field(std::string_view key, double value, int decimals = 3);
  Json& field(std::string_view key, std::string_view value);
  Json& object(std::string_view key, const Json& value);
  std::string str() const { return "{" + body_ + "}"; }

 private:
  void key(std::string_view k);
  std::string body_;
};

// {"p50","p90","p99","p999","max"} in microseconds of `samples_ns` (sorted in place);
// nearest-rank percentiles, exact. All zero when there are no samples.
Json latency_json(std::vector<Nanos>& samples_ns);

// Prints `json` and a newline on stdout and flushes.
void print_json(const Json& json);

// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the resulting soft limit.
std::uint64_t raise_nofile_limit();

// Writes FILE.tmp and renames it over FILE, so a reader sees all of it or nothing.
void write_file_atomically(const std::string& path, const std::string& content);

void set_int_option(int fd, int level, int name, int value, const char* label);
void set_bind_device(int fd, const std::string& device);
// Asks for a large socket buffer: SO_*BUFFORCE works for root beyond net.core.*mem_max,
// plain SO_*BUF is capped there (best effort, never fails).
void set_buffer_sizes(int fd, int bytes);
// A non-blocking UDP socket connected to `target`, bound to `device` when not empty,
// with `buffer` bytes of socket buffers when > 0 (set_buffer_sizes). Fails the run on
// error, naming `what` (e.g. "flow 12").
Fd connected_udp_socket(const Endpoint& target, const std::string& device, int buffer,
                        const std::string& what = "socket");
// 100 * lost / sent, 0 when nothing was sent.
inline double loss_pct(std::uint64_t lost, std::uint64_t sent) {
  return sent > 0 ? 100.0 * static_cast<double>(lost) / static_cast<double>(sent) : 0.0;
}

// SIGINT/SIGTERM set a flag that the loops poll. With block=true they are blocked in the
// calling thread (and threads it starts); epoll_pwait(..., &stop_wait_mask()) lets them in
// only while waiting, so a signal can never slip in between a check and the wait.
// Without blocking (the blocking-socket rr mode) they interrupt syscalls with EINTR.
void install_stop_signals(bool block);
bool stop_requested() noexcept;
void request_stop() noexcept;
const sigset_t& stop_wait_mask() noexcept;

// "ECONNREFUSED (Connection refused)" style text for stderr summaries.
std::string errno_text(int err);

}  // namespace splitd::bench
