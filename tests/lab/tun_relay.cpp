// lab-tun-relay: joins two TUN devices that live in two network namespaces, so that
// the lab's `host` and `vpn` namespaces are linked by a real TUN device on each side
// (a VPN without crypto). Every packet read from one device is written to the other.
//
// Usage:
//   lab-tun-relay --netns-a /run/netns/NS1 --name-a tun0
//                 --netns-b /run/netns/NS2 --name-b tun0 [--pidfile FILE]
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
#include <sys/signalfd.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.hpp"
#include "common/log.hpp"

namespace {

using splitd::Fd;

struct Options {
  std::string netns_a, name_a, netns_b, name_b, pidfile;
};

std::string errno_text(int err) { return std::strerror(err); }

[[noreturn]] void fail_errno(const std::string& what, int err) {
  throw std::runtime_error(what + ": " + errno_text(err));
}

void usage(std::FILE* out) {
  std::fputs(
      "usage: lab-tun-relay --netns-a PATH --name-a IFNAME --netns-b PATH --name-b IFNAME "
      "[--pidfile FILE]\n"
      "  PATH is a network namespace file such as /run/netns/NAME (a bare NAME means "
      "/run/netns/NAME).\n",
      out);
}

// Parses argv; nullopt (after printing why) on any error.
std::optional<Options> parse_args(int argc, char** argv) {
  Options o;
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

struct Direction {
  const char* label;
  int from;
  int to;
  uint64_t packets = 0;
  uint64_t bytes = 0;
  uint64_t dropped = 0;
};

// Moves every packet that is ready on d.from to d.to. Returns false on a fatal error.
bool pump(Direction& d, std::vector<uint8_t>& buf) {
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
    const ssize_t w = ::write(d.to, buf.data(), static_cast<size_t>(n));
    if (w == static_cast<ssize_t>(n)) {
      ++d.packets;
      d.bytes += static_cast<uint64_t>(n);
    } else if (w < 0 && errno == EBADF) {
      splitd::log::error("write ", d.label, ": ", errno_text(errno));
      return false;
    } else {
      // A link drops what it cannot deliver (device down, queue full, bad packet);
      // the endpoints' protocols recover, like on a real network.
      ++d.dropped;
    }
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
  std::vector<uint8_t> buf(65535);  // largest IP packet; not zero-filled per packet
  std::array<pollfd, 3> fds{
      {{tun_a.get(), POLLIN, 0}, {tun_b.get(), POLLIN, 0}, {sig.get(), POLLIN, 0}}};
  int exit_code = 0;
  for (;;) {
    const int n = ::poll(fds.data(), fds.size(), -1);
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
    if ((fds[0].revents & POLLIN) != 0 && !pump(a_to_b, buf)) {
      exit_code = 1;
      break;
    }
    if ((fds[1].revents & POLLIN) != 0 && !pump(b_to_a, buf)) {
      exit_code = 1;
      break;
    }
  }
  for (const Direction* d : {&a_to_b, &b_to_a}) {
    splitd::log::info(d->label, ": ", d->packets, " packets, ", d->bytes, " bytes, ", d->dropped,
                      " dropped");
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
