#include "common.hpp"

#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace splitd::bench {

void fail(const std::string& what) { throw std::runtime_error(what); }

void fail_errno(const std::string& what, int err) {
  throw std::runtime_error(what + ": " + std::strerror(err));
}

Nanos now_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<Nanos>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

Nanos seconds_to_ns(double seconds) noexcept {
  return static_cast<Nanos>(std::llround(seconds * 1e9));
}

double ns_to_seconds(Nanos ns) noexcept { return static_cast<double>(ns) / 1e9; }

Endpoint parse_endpoint(std::string_view text, std::string_view option) {
  const auto bad = [&](std::string_view why) {
    return UsageError(std::string(option) + ": '" + std::string(text) + "': " + std::string(why) +
                      " (expected IP:PORT or [IPv6]:PORT)");
  };
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      throw bad("malformed bracketed address");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) throw bad("no port");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) throw bad("IPv6 addresses need brackets");
  }
  unsigned port_value = 0;
  const auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), port_value);
  if (ec != std::errc() || ptr != port.data() + port.size() || port_value == 0 ||
      port_value > 65535) {
    throw bad("port must be 1-65535");
  }
  if (host.empty()) throw bad("no address");

  // getaddrinfo rather than inet_pton: it also takes IPv6 scope ids (fe80::1%eth0).
  addrinfo hints{};
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string host_str(host);
  const std::string port_str(port);
  if (::getaddrinfo(host_str.c_str(), port_str.c_str(), &hints, &res) != 0 || res == nullptr) {
    throw bad("not a numeric IP address");
  }
  Endpoint ep;
  std::memcpy(&ep.addr, res->ai_addr, res->ai_addrlen);
  ep.len = res->ai_addrlen;
  ::freeaddrinfo(res);
  ep.text = std::string(text);
  if (ep.family() == AF_INET6) {
    ep.host = "[" + host_str + "]";
    const auto& a6 = reinterpret_cast<const sockaddr_in6&>(ep.addr);
    ep.wildcard = IN6_IS_ADDR_UNSPECIFIED(&a6.sin6_addr);
  } else {
    ep.host = host_str;
    ep.wildcard = reinterpret_cast<const sockaddr_in&>(ep.addr).sin_addr.s_addr == INADDR_ANY;
  }
  return ep;
}

Args::Args(std::string_view mode, int argc, char** argv, std::initializer_list<OptionSpec> spec)
    : mode_(mode) {
  for (int i = 0; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const auto it =
        std::find_if(spec.begin(), spec.end(), [&](const OptionSpec& o) { return o.name == arg; });
    if (it == spec.end()) {
      throw UsageError(std::string(mode) + ": unknown argument '" + std::string(arg) + "'");
    }
    if (!it->takes_value) {
      values_.emplace_back(arg, std::string_view());
      continue;
    }
    if (i + 1 >= argc)
      throw UsageError(std::string(mode) + ": " + std::string(arg) + " needs a value");
    values_.emplace_back(arg, argv[++i]);
  }
}

bool Args::has(std::string_view name) const {
  return std::any_of(values_.begin(), values_.end(),
                     [&](const auto& v) { return v.first == name; });
}

std::string_view Args::value(std::string_view name, std::string_view fallback) const {
  for (auto it = values_.rbegin(); it != values_.rend(); ++it) {
    if (it->first == name) return it->second;
  }
  return fallback;
}

std::vector<std::string_view> Args::all(std::string_view name) const {
  std::vector<std::string_view> out;
  for (const auto& v : values_) {
    if (v.first == name) out.push_back(v.second);
  }
  return out;
}

std::string_view Args::required(std::string_view name) const {
  if (!has(name)) throw UsageError(std::string(mode_) + ": " + std::string(name) + " is required");
  return value(name);
}

double Args::seconds(std::string_view name, double fallback, double min_value) const {
  if (!has(name)) return fallback;
  const std::string text(value(name));
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(text.c_str(), &end);
  // A week bounds the value so that nanosecond arithmetic can never overflow.
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || !std::isfinite(v) ||
      v < min_value || v > 7 * 86400.0) {
    char range[64];
    std::snprintf(range, sizeof range, "%g", min_value);
    throw UsageError(std::string(mode_) + ": " + std::string(name) + ": '" + text +
                     "' is not a number of seconds >= " + range);
  }
  return v;
}

std::uint64_t Args::integer(std::string_view name, std::uint64_t fallback, std::uint64_t min_value,
                            std::uint64_t max_value) const {
  if (!has(name)) return fallback;
  const std::string_view text = value(name);
  std::uint64_t v = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size() || text.empty() || v < min_value ||
      v > max_value) {
    throw UsageError(std::string(mode_) + ": " + std::string(name) + ": '" + std::string(text) +
                     "' is not an integer in " + std::to_string(min_value) + ".." +
                     std::to_string(max_value));
  }
  return v;
}

std::string Args::device() const {
  const std::string_view dev = value("--bind-dev");
  if (has("--bind-dev") && (dev.empty() || dev.size() >= IFNAMSIZ)) {
    throw UsageError(std::string(mode_) + ": --bind-dev: '" + std::string(dev) +
                     "' is not an interface name (1-15 characters)");
  }
  return std::string(dev);
}

void Json::key(std::string_view k) {
  if (!body_.empty()) body_ += ',';
  body_ += '"';
  body_ += k;
  body_ += "\":";
}

Json& Json::field(std::string_view k, std::uint64_t value) {
  key(k);
  body_ += std::to_string(value);
  return *this;
}

Json& Json::field(std::string_view k, double value, int decimals) {
  key(k);
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, std::isfinite(value) ? value : 0.0);
  body_ += text;
  return *this;
}

Json& Json::field(std::string_view k, std::string_view value) {
  key(k);
  body_ += '"';
  for (const char c : value) {
    if (c == '"' || c == '\\') {
      body_ += '\\';
      body_ += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char esc[8];
      std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(c));
      body_ += esc;
    } else {
      body_ += c;
    }
  }
  body_ += '"';
  return *this;
}

Json& Json::object(std::string_view k, const Json& value) {
  key(k);
  body_ += value.str();
  return *this;
}

Json latency_json(std::vector<Nanos>& samples) {
  std::sort(samples.begin(), samples.end());
  const auto rank = [&](std::uint64_t per_mille) -> double {
    if (samples.empty()) return 0.0;
    // Nearest rank: the smallest sample with at least p of all samples at or below it.
    const std::uint64_t n = samples.size();
    const std::uint64_t idx = std::max<std::uint64_t>((n * per_mille + 999) / 1000, 1) - 1;
    return static_cast<double>(samples[std::min(idx, n - 1)]) / 1e3;
  };
  Json j;
  j.field("p50", rank(500), 1)
      .field("p90", rank(900), 1)
      .field("p99", rank(990), 1)
      .field("p999", rank(999), 1)
      .field("max", samples.empty() ? 0.0 : static_cast<double>(samples.back()) / 1e3, 1);
  return j;
}

void print_json(const Json& json) {
  const std::string text = json.str() + "\n";
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

std::uint64_t raise_nofile_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &rl) != 0) ::getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur;
}

void write_file_atomically(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "we");
  if (f == nullptr) fail_errno("cannot write " + tmp, errno);
  const bool written = std::fwrite(content.data(), 1, content.size(), f) == content.size();
  const int err = errno;
  if (std::fclose(f) != 0 || !written) fail_errno("cannot write " + tmp, written ? errno : err);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_errno("cannot rename " + tmp, errno);
}

void set_int_option(int fd, int level, int name, int value, const char* label) {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) fail_errno(label, errno);
}

void set_bind_device(int fd, const std::string& device) {
  if (device.empty()) return;
  if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, device.c_str(),
                   static_cast<socklen_t>(device.size() + 1)) != 0) {
    fail_errno("SO_BINDTODEVICE " + device, errno);
  }
}

void set_buffer_sizes(int fd, int bytes) {
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  }
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) != 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
  }
}

Fd connected_udp_socket(const Endpoint& target, const std::string& device, int buffer,
                        const std::string& what) {
  Fd fd(::socket(target.family(), SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) fail_errno(what, errno);
  if (buffer > 0) set_buffer_sizes(fd.get(), buffer);
  set_bind_device(fd.get(), device);
  if (::connect(fd.get(), target.sa(), target.len) != 0) fail_errno("connect " + target.text, errno);
  return fd;
}

namespace {

std::atomic<bool> g_stop{false};
sigset_t g_wait_mask;

extern "C" void on_stop_signal(int) { g_stop.store(true, std::memory_order_relaxed); }

}  // namespace

void install_stop_signals(bool block) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocked recv() must return EINTR and see the flag
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::pthread_sigmask(SIG_SETMASK, nullptr, &g_wait_mask);
  sigdelset(&g_wait_mask, SIGINT);
  sigdelset(&g_wait_mask, SIGTERM);
  if (block) {
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    ::pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  }
}

bool stop_requested() noexcept { return g_stop.load(std::memory_order_relaxed); }

void request_stop() noexcept { g_stop.store(true, std::memory_order_relaxed); }

const sigset_t& stop_wait_mask() noexcept { return g_wait_mask; }

std::string errno_text(int err) {
  const char* name = ::strerrorname_np(err);
  return std::string(name != nullptr ? name : "E?") + " (" + std::strerror(err) + ")";
}

}  // namespace splitd::bench
