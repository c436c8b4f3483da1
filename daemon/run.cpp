#include "daemon/run.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/version.hpp"
#include "config/config.hpp"
#include "decider/decider.hpp"
#include "firewall/firewall.hpp"
#include "firewall/vpn_coexistence.hpp"
#include "iface/interface_cache.hpp"
#include "proxy/session_table.hpp"
#include "proxy/tcp_proxy.hpp"
#include "proxy/udp_proxy.hpp"

namespace splitd::daemon {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitConfig = 1;
constexpr int kExitRuntime = 2;
constexpr int kCapNetAdmin = 12;
constexpr auto kRepairEvery = std::chrono::seconds(5);
constexpr auto kSummaryEvery = std::chrono::seconds(60);

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

// Strict reverse-path filtering drops the replies of bypassed flows: they arrive on the
// physical interface while the main table's (VPN) routes point at the tunnel. Loose mode
// on the physical interface keeps them; the old value is restored on exit.
class RpFilterGuard {
 public:
  void loosen(const std::string& itf) {
    if (itf.empty() || saved_.count(itf)) return;
    const int all = read("all");
    const int dev = read(itf);
    if (std::max(all, dev) != 1) return;  // 0 (off) and 2 (loose) are fine
    if (write(itf, 2)) {
      saved_[itf] = dev;
      log::info("rp_filter: ", itf, " set to loose (2) so bypassed flows' replies are accepted",
                " (was strict); restored on exit");
    } else {
      log::warn("rp_filter is strict on ", itf, " and could not be loosened: bypassed flows may fail");
    }
  }
  ~RpFilterGuard() {
    for (const auto& [itf, value] : saved_) write(itf, value);
  }

 private:
  static std::string path(const std::string& itf) {
    return "/proc/sys/net/ipv4/conf/" + itf + "/rp_filter";
  }
  static int read(const std::string& itf) {
    std::ifstream in(path(itf));
    int v = 0;
    in >> v;
    return v;
  }
  static bool write(const std::string& itf, int v) {
    std::ofstream out(path(itf));
    out << v;
    return static_cast<bool>(out.flush());
  }
  std::map<std::string, int> saved_;
};

// The servers of VPN clients that do not mark their sockets, learned from their host
// routes (InterfaceSnapshot::vpn_servers) while a tunnel interface exists, on the
// interface cache's thread, and applied to the firewall by the main loop. A server once
// seen stays known while splitd runs: a client restarted in TLS mode talks to its server
// before it puts its host route back, and the kill switch would otherwise refuse that
// handshake. Thread-safe (one mutex).
class VpnServers {
 public:
  // Cache thread. Returns true when a server was learned (the main loop must apply it).
  bool learn(const iface::InterfaceSnapshot& snap) {
    // Only while a tunnel interface exists: a host route via a gateway on a machine without
    // a VPN (a DHCP option-121 route, one the user added) is not a VPN's.
    if (snap.tunnel() == nullptr) return false;
    std::lock_guard lock(mu_);
    bool added = false;
    for (const IpAddress& ip : snap.vpn_servers()) {
      if (known_.insert(ip).second) {
        added = true;
        log::info("VPN carrier: never intercepting ", ip.to_string(),
                  " (a VPN client's host route to its server through the physical gateway)");
      }
    }
    return added;
  }
  std::vector<Cidr> cidrs() const {
    std::lock_guard lock(mu_);
    std::vector<Cidr> out;
    for (const IpAddress& ip : known_) {
      out.emplace_back(ip, static_cast<std::uint8_t>(ip.family() == IpAddress::Family::kV4 ? 32 : 128));
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::set<IpAddress> known_;
};

std::shared_ptr<const decider::RuleSet> rules_of(const config::Config& c) {
  decider::RuleSpec spec;
  spec.mode = c.split.mode;
  spec.on_tunnel_down = c.firewall.on_tunnel_down;
  spec.ips = c.split.ips;
  spec.domains = c.split.domains;
  for (const config::AppRule& a : c.split.apps) {
    spec.apps.push_back({a.name, a.cgroup, a.comm, a.path});
  }
  return decider::build_rules(spec);
}

firewall::FirewallConfig firewall_of(const config::Config& c) {
  firewall::FirewallConfig f;
  f.mark = c.firewall.mark;
  f.bypass_mark = c.firewall.bypass_mark;
  f.route_table = c.firewall.route_table;
  f.port = c.proxy.port;
  f.ipv6 = c.firewall.ipv6;
  f.intercept_tcp = true;
  f.intercept_udp = true;
  f.never_intercept = c.firewall.never_intercept;
  return f;
}

std::string describe(const iface::InterfaceSnapshot& snap) {
  const auto name = [](const iface::Interface* i) { return i ? i->name : std::string("none"); };
  std::ostringstream s;
  s << "physical IPv4 " << name(snap.physical(IpAddress::Family::kV4)) << ", IPv6 "
    << name(snap.physical(IpAddress::Family::kV6)) << "; tunnel " << name(snap.tunnel())
    << (snap.tunnel() ? (snap.tunnel_up() ? " (up)" : " (down)") : "");
  return s.str();
}

void log_sessions(const proxy::SessionTable& table) {
  const auto list = table.list();
  const auto t = table.totals();
  log::info("sessions: ", t.active, " active, ", t.total, " total, ", t.refused, " refused, ",
            t.blocked, " blocked, ", t.failed, " failed; sent ", t.bytes_sent, "B received ",
            t.bytes_received, "B");
  for (const auto& s : list) {
    log::info("  #", s.id, " ", decider::to_string(s.protocol), " ", s.client.to_string(), " -> ",
              s.destination.to_string(), " ", decider::to_string(s.route.kind),
              s.route.interface.empty() ? "" : " via " + s.route.interface, " rule '", s.route.rule,
              "' sent ", s.bytes_sent, "B/", s.packets_sent, "pkts received ", s.bytes_received,
              "B/", s.packets_received, "pkts idle ", s.idle.count(), "ms");
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

  // Stop signals are blocked in every thread and read from a signalfd by the main loop.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) sigaddset(&signals, sig);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  Fd signal_fd(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  // The interface cache's thread wakes the main loop when a VPN server appeared, so the
  // firewall learns it at once rather than at the next tick.
  Fd wake_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!signal_fd || !wake_fd) {
    log::error("signalfd/eventfd: ", std::strerror(errno));
    return kExitRuntime;
  }
  signal(SIGPIPE, SIG_IGN);

  // One splitd per network namespace: a second one would share the listeners
  // (SO_REUSEPORT) and replace the table with its own.
  Fd instance = claim_instance();
  if (!instance) {
    log::error("another splitd is already running in this network namespace (",
               std::strerror(errno), "); stop it first");
    return kExitRuntime;
  }

  // Declared before the cache: its thread calls loosen() and learn() until the cache is
  // destroyed.
  RpFilterGuard rp_filter;
  VpnServers vpn_servers;
  iface::SelectionConfig selection;
  if (cfg->interfaces.physical != "auto") selection.physical = cfg->interfaces.physical;
  if (cfg->interfaces.tunnel != "auto") selection.tunnel = cfg->interfaces.tunnel;
  auto cache = iface::InterfaceCache::open(selection);
  if (!cache) {
    log::error("cannot read interfaces over rtnetlink: ", cache.error().message());
    return kExitRuntime;
  }
  const int wake = wake_fd.get();
  const auto on_interfaces = [&rp_filter, &vpn_servers,
                              wake](const std::shared_ptr<const iface::InterfaceSnapshot>& snap) {
    log::info("interfaces: ", describe(*snap));
    for (auto f : {IpAddress::Family::kV4, IpAddress::Family::kV6}) {
      if (const auto* p = snap->physical(f)) rp_filter.loosen(p->name);
    }
    if (vpn_servers.learn(*snap)) {
      const std::uint64_t one = 1;
      [[maybe_unused]] const ssize_t w = ::write(wake, &one, sizeof one);
    }
  };
  on_interfaces((*cache)->snapshot());
  (*cache)->subscribe(on_interfaces);
  (*cache)->start();

  decider::RuleDecider decider(**cache, rules_of(*cfg));
  proxy::SessionTable sessions;
  const proxy::Classifier classifier(decider);
  proxy::TcpProxyOptions popts;
  popts.port = cfg->proxy.port;
  popts.bypass_mark = cfg->firewall.bypass_mark;
  popts.max_sessions = cfg->proxy.max_sessions;
  popts.connect_timeout = cfg->proxy.connect_timeout;
  popts.idle_timeout = cfg->proxy.idle_timeout;
  popts.ipv6 = cfg->firewall.ipv6;
  proxy::TcpProxy tcp(popts, classifier, sessions);
  // Listeners first: the rules must never steer flows to a port nobody listens on.
  if (auto r = tcp.start(); !r) {
    log::error("tcp proxy: ", r.error());
    return kExitRuntime;
  }
  proxy::UdpProxyOptions uopts;
  uopts.port = cfg->proxy.port;
  uopts.bypass_mark = cfg->firewall.bypass_mark;
  uopts.max_sessions = cfg->proxy.max_sessions;
  uopts.idle_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(cfg->proxy.udp_idle_timeout);
  uopts.ipv6 = cfg->firewall.ipv6;
  proxy::UdpProxy udp(uopts, classifier, sessions);
  if (auto r = udp.start(); !r) {
    log::error("udp proxy: ", r.error());
    tcp.stop();
    return kExitRuntime;
  }

  auto fw = firewall::Firewall::open();
  if (!fw) {
    log::error("firewall: ", fw.error().message);
    udp.stop();
    tcp.stop();
    return kExitRuntime;
  }
  firewall::FirewallConfig fwcfg = firewall_of(*cfg);
  fwcfg.vpn_servers = vpn_servers.cidrs();
  if (auto r = (*fw)->install(fwcfg); !r) {
    log::error("firewall: ", r.error().message);
    udp.stop();
    tcp.stop();
    return kExitRuntime;
  }
  // Whatever ends this function (an exception included), the rules do not outlive it.
  struct RemoveRules {
    firewall::Firewall& fw;
    bool armed = true;
    ~RemoveRules() {
      if (armed) fw.remove();
    }
  } remove_rules{**fw};
  // VPN firewalls that would drop splitd's loopback replies (wg-quick's anti-spoofing
  // rule) get splitd's allow rule, kept in place by a watcher until stop().
  auto coexistence = firewall::VpnCoexistence::open();
  if (!coexistence) {
    log::warn("VPN coexistence: ", coexistence.error().message,
              "; if wg-quick runs, its anti-spoofing rule will drop proxied flows");
  } else if (auto r = (*coexistence)->start(); !r) {
    log::warn("VPN coexistence: ", r.error().message);
  }
  log::info("ready: intercepting TCP and UDP to port ", cfg->proxy.port, ", mark 0x", std::hex,
            cfg->firewall.mark, ", bypass mark 0x", cfg->firewall.bypass_mark, std::dec, ", table ",
            cfg->firewall.route_table, ", mode ", decider::to_string(cfg->split.mode));

  auto last_repair = std::chrono::steady_clock::now();
  auto last_summary = last_repair;
  auto repair_not_before = last_repair;
  int exit_code = kExitOk;
  for (;;) {
    // Signals, the cache's wake-up, and other programs' policy-rule changes (wg-quick
    // coming up puts its rules before splitd's): each is handled within milliseconds.
    pollfd fds[3] = {{signal_fd.get(), POLLIN, 0}, {wake_fd.get(), POLLIN, 0},
                     {(*fw)->rule_events_fd(), POLLIN, 0}};
    if (::poll(fds, 3, 1000) < 0 && errno != EINTR) {
      log::error("main loop: poll: ", std::strerror(errno));
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    int sig = 0;
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info{};
      if (::read(signal_fd.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
        sig = static_cast<int>(info.ssi_signo);
      }
    }
    if (fds[1].revents & POLLIN) {
      std::uint64_t n = 0;
      [[maybe_unused]] const ssize_t r = ::read(wake_fd.get(), &n, sizeof n);
    }
    // Automatic repairs that fail wait a second before the next try (a failure must not
    // spin on the events its own attempt caused).
    const auto now_repair = std::chrono::steady_clock::now();
    const bool may_repair = now_repair >= repair_not_before;
    if ((fds[2].revents & POLLIN) && (*fw)->drain_rule_events() && may_repair && !(*fw)->intact(fwcfg)) {
      log::warn("policy routing changed by another program: restoring splitd's rules ahead of it");
      if (auto r = (*fw)->install(fwcfg); !r) {
        log::error("firewall: ", r.error().message, "; retrying in 1 s");
        repair_not_before = now_repair + std::chrono::seconds(1);
      }
    }
    if (sig == SIGINT || sig == SIGTERM) {
      log::info("received ", sig == SIGINT ? "SIGINT" : "SIGTERM", ": stopping");
      break;
    }
    if (sig == SIGUSR1) log_sessions(sessions);
    if (auto servers = vpn_servers.cidrs(); servers != fwcfg.vpn_servers && may_repair) {
      firewall::FirewallConfig next = fwcfg;
      next.vpn_servers = std::move(servers);
      if (auto r = (*fw)->install(next); r) {
        fwcfg = std::move(next);
      } else {
        log::error("firewall: adding VPN servers: ", r.error().message, "; retrying in 1 s");
        repair_not_before = now_repair + std::chrono::seconds(1);
      }
    }
    if (sig == SIGHUP) {
      // A file that is missing now (an editor replacing it) keeps the running config;
      // the built-in defaults apply only when splitd starts without a file.
      auto next = access(path.c_str(), F_OK) == 0 ? load(path, true) : std::nullopt;
      if (!next) {
        log::error("reload: ", path, " is missing or has errors; keeping the running config");
      } else {
        decider.set_rules(rules_of(*next));
        log::info("reload: rules applied to new flows: ", config::summary(*next));
        std::string later;
        if (!(next->proxy == cfg->proxy)) later += " [proxy]";
        if (next->firewall.bypass_mark != cfg->firewall.bypass_mark) later += " firewall.bypass_mark";
        // The interception footprint (never_intercept, mark, route_table, ipv6) is
        // replaced in one transaction; the proxy's port and bypass mark stay, since live
        // sockets carry them. A failed install puts the old footprint back.
        firewall::FirewallConfig fw_next = firewall_of(*next);
        fw_next.vpn_servers = fwcfg.vpn_servers;
        fw_next.port = fwcfg.port;
        fw_next.bypass_mark = fwcfg.bypass_mark;
        if (fw_next.mark != fwcfg.mark || fw_next.route_table != fwcfg.route_table ||
            fw_next.ipv6 != fwcfg.ipv6 || fw_next.never_intercept != fwcfg.never_intercept) {
          if (auto r = (*fw)->install(fw_next); r) {
            fwcfg = fw_next;
            cfg->firewall.mark = next->firewall.mark;
            cfg->firewall.route_table = next->firewall.route_table;
            cfg->firewall.ipv6 = next->firewall.ipv6;
            cfg->firewall.never_intercept = next->firewall.never_intercept;
            log::info("reload: firewall footprint replaced");
          } else {
            log::error("reload: firewall: ", r.error().message, "; restoring the previous footprint");
            if (auto back = (*fw)->install(fwcfg); !back) log::error("firewall: ", back.error().message);
          }
        }
        if (!(next->interfaces == cfg->interfaces)) later += " [interfaces]";
        if (!(next->daemon == cfg->daemon)) later += " [daemon]";
        if (!(next->dns == cfg->dns)) later += " [dns]";
        if (!later.empty()) log::warn("reload: changes to", later, " take effect at the next restart");
        // The kill switch is part of the rules and applies now; keep it in the record.
        cfg->split = next->split;
        cfg->firewall.on_tunnel_down = next->firewall.on_tunnel_down;
      }
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_repair >= kRepairEvery) {
      last_repair = now;
      if (!(*fw)->intact(fwcfg)) {
        log::warn("table inet splitd or its policy routing was removed by another program: restoring it");
        if (auto r = (*fw)->install(fwcfg); !r) log::error("firewall: ", r.error().message);
      }
    }
    if (now - last_summary >= kSummaryEvery) {
      last_summary = now;
      const auto t = sessions.totals();
      log::info("summary: ", t.active, " active sessions, ", t.total, " total, sent ", t.bytes_sent,
                "B received ", t.bytes_received, "B");
    }
  }

  // Stop accepting and reset every session first, then remove the rules: packets of a
  // live flow must never follow the system's routing after the rules are gone (a
  // tunnel-bound flow would leak out the physical side). New flows meanwhile meet a
  // closed port and fail, which is the safe way to fail.
  tcp.stop();
  udp.stop(std::chrono::milliseconds(300));
  if (coexistence) (*coexistence)->stop();  // removes splitd's rules from the VPN's tables
  remove_rules.armed = false;
  if (auto r = (*fw)->remove(); !r) {
    log::error("firewall: removing rules: ", r.error().message);
    exit_code = kExitRuntime;
  }
  (*cache)->stop();
  const auto t = sessions.totals();
  log::info("stopped: ", t.total, " sessions served, sent ", t.bytes_sent, "B received ",
            t.bytes_received, "B");
  return exit_code;
}

}  // namespace splitd::daemon
