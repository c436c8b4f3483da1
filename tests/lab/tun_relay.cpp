// lab-tun-relay: joins two TUN devices that live in two network namespaces, so that
// the lab's `host` and `vpn` namespaces are linked by a real TUN device on each side
// (a VPN without crypto). Every packet read from one device is written to the other.
//
// Usage:
//   lab-tun-relay --netns-a /run/netns/NS1 --name-a tun0
//                 --netns-b /run/netns/NS2 --name-b tun0 [--pidfile FILE] [--delay-ms N]
//
// --delay-ms N (0..1000, default 0) writes every packet N ms after it was read, in both
// directions and in order, like a link with a one-way latency of N ms (RTT 2N): benchmarks
// use it to count round trips. The packets waiting are held in a fixed 16 MiB ring per
// direction; what does not fit is dropped and counted in the exit log. With 0 a packet is
// written as soon as it is read, with no copy and no queue.
//
// The devices are created (non-persistent) when the relay starts and vanish when it
// exits, so killing the relay is enough to remove them. The pid file is written once
// both devices exist: the lab script waits for it before configuring addresses.
// Runs until SIGTERM or SIGINT. Single-threaded.

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"

namespace {

using splitd::Fd;

constexpr int kMaxDelayMs = 1000;
// Bytes of packets (and their 16-byte records) that may wait per direction: at the largest
// delay this still holds 16 MiB/s, far more than a lab test sends through a delayed link.
constexpr std::size_t kDelayQueueBytes = std::size_t{16} << 20;

struct Options {
  std::string netns_a, name_a, netns_b, name_b, pidfile;
  int delay_ms = 0;
};

std::string errno_text(int err) { return std::strerror(err); }

[[noreturn]] void fail_errno(const std::string& what, int err) {
  throw std::runtime_error(what + ": " + errno_text(err));
}

void usage(std::FILE* out) {
  std::fputs(
      "usage: lab-tun-relay --netns-a PATH --name-a IFNAME --netns-b PATH --name-b IFNAME "
      "[--pidfile FILE] [--delay-ms N]\n"
      "  PATH is a network namespace file such as /run/netns/NAME (a bare NAME means "
      "/run/netns/NAME).\n"
      "  --delay-ms N  write each packet N ms after reading it, both ways, in order "
      "(0..1000, default 0)\n",
      out);
}

// Parses argv; nullopt (after printing why) on any error.
std::optional<Options> parse_args(int argc, char** argv) {
  Options o;
  std::string delay = "0";
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      usage(stdout);
      std::exit(0);
    }
    std::string* target = nullptr;
    if (arg == "--netns-a")
      target = &o.netns_a;
    else if (arg == "--name-a")
      target = &o.name_a;
    else if (arg == "--netns-b")
      target = &o.netns_b;
    else if (arg == "--name-b")
      target = &o.name_b;
    else if (arg == "--pidfile")
      target = &o.pidfile;
    else if (arg == "--delay-ms")
      target = &delay;
    if (target == nullptr) {
      std::fprintf(stderr, "lab-tun-relay: unknown argument '%s'\n", argv[i]);
      usage(stderr);
      return std::nullopt;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "lab-tun-relay: %s needs a value\n", argv[i]);
      return std::nullopt;
    }
    *target = argv[++i];
  }
  if (o.netns_a.empty() || o.name_a.empty() || o.netns_b.empty() || o.name_b.empty()) {
    std::fputs("lab-tun-relay: --netns-a, --name-a, --netns-b and --name-b are required\n", stderr);
    usage(stderr);
    return std::nullopt;
  }
  for (const std::string* name : {&o.name_a, &o.name_b}) {
    // IFNAMSIZ includes the terminating NUL; '/' and whitespace are rejected by the kernel.
    if (name->size() >= IFNAMSIZ || name->find_first_of("/ \t\n:") != std::string::npos) {
      std::fprintf(stderr, "lab-tun-relay: invalid interface name '%s'\n", name->c_str());
      return std::nullopt;
    }
  }
  const char* const end = delay.data() + delay.size();
  const auto [ptr, ec] = std::from_chars(delay.data(), end, o.delay_ms);
  if (delay.empty() || ec != std::errc{} || ptr != end || o.delay_ms < 0 || o.delay_ms > kMaxDelayMs) {
    std::fprintf(stderr, "lab-tun-relay: invalid --delay-ms '%s' (whole milliseconds, 0..%d)\n",
                 delay.c_str(), kMaxDelayMs);
    usage(stderr);
    return std::nullopt;
  }
  for (std::string* ns : {&o.netns_a, &o.netns_b}) {
    if (ns->find('/') == std::string::npos) *ns = "/run/netns/" + *ns;
  }
  return o;
}

Fd open_netns(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail_errno("cannot open network namespace " + path, errno);
  return fd;
}

// Creates TUN device `name` in the namespace `ns` (the calling thread moves there).
Fd create_tun(const Fd& ns, const std::string& ns_path, const std::string& name) {
  if (::setns(ns.get(), CLONE_NEWNET) != 0) fail_errno("setns into " + ns_path, errno);
  Fd fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK));
  if (!fd) fail_errno("cannot open /dev/net/tun", errno);
  ifreq ifr{};
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) != 0) {
    fail_errno(
        "TUNSETIFF " + name + " in " + ns_path + " (does a device of that name already exist?)",
        errno);
  }
  return fd;
}

void write_pidfile(const std::string& path) {
  // Write then rename, so a reader never sees an empty or partial file.
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "we");
  if (f == nullptr) fail_errno("cannot write pid file " + tmp, errno);
  std::fprintf(f, "%ld\n", static_cast<long>(::getpid()));
  if (std::fclose(f) != 0) fail_errno("cannot write pid file " + tmp, errno);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) fail_errno("cannot rename " + tmp, errno);
}

std::int64_t now_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The packets of one direction waiting for their due time (--delay-ms), oldest first, in
// one fixed byte ring: no allocation per packet. A record is a Header and the packet,
// padded to 8 bytes; a record that does not fit before the ring's end starts at offset 0,
// behind a wrap marker (or none when not even a Header fits there). Owned by its
// Direction; single-threaded.
class DelayQueue {
 public:
  explicit DelayQueue(std::size_t capacity)
      : buf_(new std::uint8_t[capacity]), cap_(capacity) {}  // not zero-filled

  // False (nothing stored) when the ring has no room for it.
  bool push(std::int64_t due_ns, const std::uint8_t* data, std::size_t len) {
    const std::size_t need = record_size(len);
    if (count_ == 0) head_ = tail_ = 0;
    std::size_t at = tail_;
    if (count_ > 0 && tail_ <= head_) {
      if (tail_ == head_ || tail_ + need > head_) return false;  // full, or not enough before head
    } else if (tail_ + need > cap_) {
      if (count_ == 0 || need > head_) return false;  // larger than the ring, or full
      if (cap_ - tail_ >= sizeof(Header)) write_header(tail_, Header{0, 0, 1});
      at = 0;
    }
    write_header(at, Header{due_ns, static_cast<std::uint32_t>(len), 0});
    std::memcpy(buf_.get() + at + sizeof(Header), data, len);
    tail_ = at + need;
    ++count_;
    bytes_ += len;
    return true;
  }
  bool empty() const { return count_ == 0; }
  std::size_t packets() const { return count_; }
  std::uint64_t bytes() const { return bytes_; }
  std::int64_t front_due() const { return read_header(head_).due_ns; }
  const std::uint8_t* front_data() const { return buf_.get() + head_ + sizeof(Header); }
  std::size_t front_len() const { return read_header(head_).len; }
  void pop() {
    const std::size_t len = front_len();
    head_ += record_size(len);
    bytes_ -= len;
    if (--count_ == 0) {
      head_ = tail_ = 0;
    } else if (cap_ - head_ < sizeof(Header) || read_header(head_).wrap != 0) {
      head_ = 0;  // the next record was written at the start
    }
  }

 private:
  struct Header {
    std::int64_t due_ns;
    std::uint32_t len;
    std::uint32_t wrap;  // 1: no record here, the next one is at offset 0
  };
  static std::size_t record_size(std::size_t len) { return sizeof(Header) + ((len + 7) & ~std::size_t{7}); }
  void write_header(std::size_t at, const Header& h) { std::memcpy(buf_.get() + at, &h, sizeof h); }
  Header read_header(std::size_t at) const {
    Header h;
    std::memcpy(&h, buf_.get() + at, sizeof h);
    return h;
  }

  std::unique_ptr<std::uint8_t[]> buf_;
  std::size_t cap_;
  std::size_t head_ = 0;  // the oldest record
  std::size_t tail_ = 0;  // where the next record goes (or wraps from)
  std::size_t count_ = 0;
  std::uint64_t bytes_ = 0;
};

struct Direction {
  const char* label;
  int from;
  int to;
  uint64_t packets = 0;
  uint64_t bytes = 0;
  uint64_t dropped = 0;
  std::unique_ptr<DelayQueue> queue = nullptr;  // only with --delay-ms > 0
  uint64_t queue_dropped = 0;         // packets that did not fit in the queue
};

// Writes one packet; false on a fatal error. A failed write is a drop, as on a link.
bool deliver(Direction& d, const std::uint8_t* data, std::size_t n) {
  const ssize_t w = ::write(d.to, data, n);
  if (w == static_cast<ssize_t>(n)) {
    ++d.packets;
    d.bytes += n;
  } else if (w < 0 && errno == EBADF) {
    splitd::log::error("write ", d.label, ": ", errno_text(errno));
    return false;
  } else {
    // A link drops what it cannot deliver (device down, queue full, bad packet);
    // the endpoints' protocols recover, like on a real network.
    ++d.dropped;
  }
  return true;
}

// Moves every packet that is ready on d.from to d.to, or with a delay into d's queue, due
// delay_ns from now. Returns false on a fatal error.
bool pump(Direction& d, std::vector<uint8_t>& buf, std::int64_t delay_ns) {
  // Bounded batch, so one busy direction cannot starve the other or the signal fd.
  for (int i = 0; i < 256; ++i) {
    const ssize_t n = ::read(d.from, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      splitd::log::error("read ", d.label, ": ", errno_text(errno));
      return false;
    }
    if (n == 0) return true;
    if (d.queue == nullptr) {
      if (!deliver(d, buf.data(), static_cast<size_t>(n))) return false;
    } else if (!d.queue->push(now_ns() + delay_ns, buf.data(), static_cast<size_t>(n))) {
      ++d.queue_dropped;
    }
  }
  return true;
}

// Writes the queued packets of d that are due by now. Returns false on a fatal error.
bool flush_due(Direction& d, std::int64_t now) {
  while (!d.queue->empty() && d.queue->front_due() <= now) {
    if (!deliver(d, d.queue->front_data(), d.queue->front_len())) return false;
    d.queue->pop();
  }
  return true;
}

int run(const Options& o) {
  // Signals arrive through a signalfd, so the poll loop needs no async handler.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) fail_errno("sigprocmask", errno);
  Fd sig(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!sig) fail_errno("signalfd", errno);

  const Fd ns_a = open_netns(o.netns_a);
  const Fd ns_b = open_netns(o.netns_b);
  const Fd tun_a = create_tun(ns_a, o.netns_a, o.name_a);
  // The relay stays in namespace B afterwards, so `ip netns pids` of B lists it.
  const Fd tun_b = create_tun(ns_b, o.netns_b, o.name_b);
  if (!o.pidfile.empty()) write_pidfile(o.pidfile);
  splitd::log::info("relaying ", o.netns_a, ":", o.name_a, " <-> ", o.netns_b, ":", o.name_b);

  Direction a_to_b{"a->b", tun_a.get(), tun_b.get()};
  Direction b_to_a{"b->a", tun_b.get(), tun_a.get()};
  const std::int64_t delay_ns = std::int64_t{o.delay_ms} * 1'000'000;
  if (o.delay_ms > 0) {
    a_to_b.queue = std::make_unique<DelayQueue>(kDelayQueueBytes);
    b_to_a.queue = std::make_unique<DelayQueue>(kDelayQueueBytes);
    // The default 50 us timer slack would add up to that to every wake-up for a due packet.
    ::prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
    splitd::log::info("delaying every packet by ", o.delay_ms, " ms each way");
  }
  std::vector<uint8_t> buf(65535);  // largest IP packet; not zero-filled per packet
  std::array<pollfd, 3> fds{
      {{tun_a.get(), POLLIN, 0}, {tun_b.get(), POLLIN, 0}, {sig.get(), POLLIN, 0}}};
  int exit_code = 0;
  for (;;) {
    // Without a delay, wait for packets only; with one, also until the next packet is due.
    timespec wait{};
    timespec* timeout = nullptr;
    if (delay_ns > 0) {
      std::int64_t next = -1;
      for (const Direction* d : {&a_to_b, &b_to_a}) {
        if (!d->queue->empty() && (next < 0 || d->queue->front_due() < next)) next = d->queue->front_due();
      }
      if (next >= 0) {
        const std::int64_t left = std::max<std::int64_t>(0, next - now_ns());
        wait.tv_sec = static_cast<time_t>(left / 1'000'000'000);
        wait.tv_nsec = static_cast<long>(left % 1'000'000'000);
        timeout = &wait;
      }
    }
    const int n = ::ppoll(fds.data(), fds.size(), timeout, nullptr);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("poll", errno);
    }
    if (fds[2].revents != 0) {
      signalfd_siginfo si{};
      [[maybe_unused]] const ssize_t r = ::read(sig.get(), &si, sizeof si);
      splitd::log::info("signal ", si.ssi_signo, ", exiting");
      break;
    }
    const short bad = POLLERR | POLLHUP | POLLNVAL;
    if ((fds[0].revents & bad) != 0 || (fds[1].revents & bad) != 0) {
      splitd::log::error("TUN device error (revents a=", fds[0].revents, " b=", fds[1].revents,
                         ")");
      exit_code = 1;
      break;
    }
    if ((fds[0].revents & POLLIN) != 0 && !pump(a_to_b, buf, delay_ns)) {
      exit_code = 1;
      break;
    }
    if ((fds[1].revents & POLLIN) != 0 && !pump(b_to_a, buf, delay_ns)) {
      exit_code = 1;
      break;
    }
    if (delay_ns > 0) {
      const std::int64_t now = now_ns();
      if (!flush_due(a_to_b, now) || !flush_due(b_to_a, now)) {
        exit_code = 1;
        break;
      }
    }
  }
  for (const Direction* d : {&a_to_b, &b_to_a}) {
    if (d->queue == nullptr) {
      splitd::log::info(d->label, ": ", d->packets, " packets, ", d->bytes, " bytes, ", d->dropped,
                        " dropped");
    } else {
      splitd::log::info(d->label, ": ", d->packets, " packets, ", d->bytes, " bytes, ", d->dropped,
                        " dropped, ", d->queue_dropped, " dropped by the full delay queue, ",
                        d->queue->packets(), " still queued at exit");
    }
  }
  if (!o.pidfile.empty()) ::unlink(o.pidfile.c_str());
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Options> opts = parse_args(argc, argv);
  if (!opts) return 2;
  try {
    return run(*opts);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lab-tun-relay: %s\n", e.what());
    return 1;
  }
}
