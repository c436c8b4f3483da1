#include "daemon/run.hpp"

#include "daemon/notify.hpp"
#include "daemon/privileges.hpp"
#include "daemon/runtime.hpp"

#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/version.hpp"
#include "config/config.hpp"
#include "firewall/firewall.hpp"
#include "firewall/vpn_coexistence.hpp"

namespace splitd::daemon {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitConfig = 1;
constexpr int kExitRuntime = 2;
constexpr int kCapNetAdmin = 12;

bool has_net_admin() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      const unsigned long long caps = std::stoull(line.substr(7), nullptr, 16);
      return (caps >> kCapNetAdmin) & 1;
    }
  }
  return false;
}

// glibc raises its mmap threshold to the size of any mmapped block freed (up to 32 MiB)
// and its trim threshold to twice that: after one large block is freed (an API answer
// listing thousands of sessions, a grown hash table) a worker's arena keeps up to 64 MiB
// of freed flow records resident for good, and malloc_trim() cannot return a non-main
// arena's top. Measured in the load test: 12 MiB kept after 9,250 TCP sessions and 18,500
// UDP flows ended, one run in three. Fixed thresholds end the adjustment: blocks above
// 256 KiB are their own mappings, and an arena gives back a free top above 1 MiB.
// GLIBC_TUNABLES that set either still win.
void fix_malloc_thresholds() {
#if defined(__GLIBC__)
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && (std::strstr(tunables, "glibc.malloc.mmap_threshold") != nullptr ||
                              std::strstr(tunables, "glibc.malloc.trim_threshold") != nullptr)) {
    return;
  }
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);
#endif
}

// Each TCP session holds two sockets and each UDP mapping one, plus reply sockets: the
// soft limit of 1024 would cap us at ~500 flows, and a hard limit of 20k (common for
// containers) at ~10k. Ask for what max_sessions needs; a privileged splitd
// (CAP_SYS_RESOURCE, as root) may raise the hard limit too, up to fs.nr_open.
void raise_fd_limit(std::uint32_t max_sessions) {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  rlim_t want = 3 * static_cast<rlim_t>(max_sessions) + 8192;
  rlim_t nr_open = 1048576;
  std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
  want = std::min(want, nr_open);
  if (lim.rlim_cur >= want) return;
  if (lim.rlim_max < want) {
    const rlimit raised{want, want};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) return;
  }
  lim.rlim_cur = std::min(want, lim.rlim_max);
  setrlimit(RLIMIT_NOFILE, &lim);
  if (lim.rlim_cur < 2 * static_cast<rlim_t>(max_sessions)) {
    log::warn("the open-file limit (", lim.rlim_cur, ") allows fewer than max_sessions (", max_sessions,
              ") TCP sessions; raise it (ulimit -n) or lower proxy.max_sessions");
  }
}

// The instance lock: an abstract unix socket name, per network namespace, gone with the
// process even after SIGKILL. Invalid (errno set) when another splitd holds it.
Fd claim_instance() {
  Fd instance(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const char name[] = "\0splitd-instance";
  std::memcpy(addr.sun_path, name, sizeof name - 1);
  if (!instance || ::bind(instance.get(), reinterpret_cast<sockaddr*>(&addr),
                          static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + sizeof name - 1)) != 0) {
    return Fd();
  }
  return instance;
}

std::optional<config::Config> load(const std::string& path, bool path_given) {
  if (!path_given && access(path.c_str(), F_OK) != 0) {
    log::info("no config at ", path, ": using built-in defaults");
    return config::Config();
  }
  auto c = config::load_file(path);
  if (!c) {
    for (const auto& d : c.error()) std::fprintf(stderr, "%s\n", d.to_string().c_str());
    return std::nullopt;
  }
  return *c;
}

}  // namespace

int check(const std::string& path) {
  auto c = config::load_file(path);
  if (!c) {
    for (const auto& d : c.error()) std::fprintf(stdout, "%s\n", d.to_string().c_str());
    std::fprintf(stdout, "%s: %zu error%s\n", path.c_str(), c.error().size(),
                 c.error().size() == 1 ? "" : "s");
    return kExitConfig;
  }
  std::fprintf(stdout, "%s: ok: %s\n", path.c_str(), config::summary(*c).c_str());
  return kExitOk;
}

int cleanup() {
  if (!has_net_admin()) {
    log::error("splitd cleanup needs CAP_NET_ADMIN: run it as root");
    return kExitRuntime;
  }
  // A running splitd's footprint is not a leftover: removing it would switch its
  // interception and kill switch off.
  const Fd instance = claim_instance();
  if (!instance) {
    log::error("splitd cleanup: a splitd is running in this network namespace; stop it first "
               "(it removes its footprint when it stops)");
    return kExitRuntime;
  }
  int rc = kExitOk;
  if (auto coexistence = firewall::VpnCoexistence::remove_leftovers(); !coexistence) {
    log::error("cleanup: rules in VPN clients' tables: ", coexistence.error().message);
    rc = kExitRuntime;
  }
  auto fw = firewall::Firewall::open();
  if (!fw) {
    log::error("cleanup: ", fw.error().message);
    return kExitRuntime;
  }
  if (auto r = (*fw)->remove(); !r) {
    log::error("cleanup: ", r.error().message);
    rc = kExitRuntime;
  }
  return rc;
}

int run(const std::string& path, bool path_given) {
  auto cfg = load(path, path_given);
  if (!cfg) return kExitConfig;
  log::set_level(cfg->daemon.log_level);
  log::info("splitd ", kVersion, " (git ", kGitRevision, ") starting: ", config::summary(*cfg));

  if (!has_net_admin()) {
    log::error("splitd needs CAP_NET_ADMIN (nftables, policy routing, transparent sockets): run it "
               "as root, or grant it with `setcap cap_net_admin,cap_net_raw+ep /path/to/splitd`");
    return kExitRuntime;
  }
  raise_fd_limit(cfg->proxy.max_sessions);
  fix_malloc_thresholds();

  // Stop signals are blocked in every thread and read from a signalfd by the Runtime's
  // control executor.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  // One splitd per network namespace: a second one would share the listeners
  // (SO_REUSEPORT) and replace the table with its own.
  Fd instance = claim_instance();
  if (!instance) {
    log::error("another splitd is already running in this network namespace (",
               std::strerror(errno), "); stop it first");
    return kExitRuntime;
  }

  Runtime runtime(*cfg, path);
  if (const int rc = runtime.start(); rc != kExitOk) return rc;
  // Setup is done (table, policy routing, listeners, API socket, state dir, exec cgroups)
  // and the workers run: the drop reaches every thread. A daemon that cannot drop stops
  // through ~Runtime, which removes its footprint.
  if (auto dropped = drop_privileges(*cfg); !dropped) {
    log::error("privileges: ", dropped.error(), "; stopping");
    return kExitRuntime;
  }
  // Only now: systemd's READY=1 promises the daemon it keeps running, privileges included.
  notify_ready();
  return runtime.run();
}

}  // namespace splitd::daemon
