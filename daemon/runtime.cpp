#include "daemon/runtime.hpp"

#include "daemon/notify.hpp"

#include <signal.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>

#include "api/server.hpp"
#include "cgroup/hierarchy.hpp"
#include "cgroup/identifier.hpp"
#include "common/log.hpp"
#include "common/version.hpp"
#include "decider/decider.hpp"
#include "dns/forwarder.hpp"
#include "dns/name_store.hpp"
#include "firewall/firewall.hpp"
#include "firewall/vpn_coexistence.hpp"
#include "iface/interface_cache.hpp"
#include "proxy/classifier.hpp"
#include "proxy/session_table.hpp"
#include "proxy/tcp_proxy.hpp"
#include "proxy/udp_proxy.hpp"

namespace splitd::daemon {

namespace asio = net::asio;

namespace {

constexpr int kExitOk = 0;
constexpr int kExitRuntime = 2;
constexpr auto kRepairEvery = std::chrono::seconds(5);
constexpr auto kSummaryEvery = std::chrono::seconds(60);
// Learned names are written to the state dir this often (and at stop), so that a crash
// loses at most this much of them.
constexpr auto kNamesSaveEvery = std::chrono::minutes(5);
constexpr auto kRepairBackoff = std::chrono::seconds(1);
// More than kFightRepairs repairs within kFightWindow is a fight with another program:
// each further repair waits twice as long as the last (from 100 ms up to 5 s).
constexpr std::size_t kFightRepairs = 20;
constexpr auto kFightWindow = std::chrono::seconds(10);
constexpr auto kFightFirstDelay = std::chrono::milliseconds(100);
constexpr auto kFightMaxDelay = std::chrono::seconds(5);
constexpr int kControlNice = 10;

std::shared_ptr<const decider::RuleSet> rules_of(const config::SplitSection& split,
                                                 decider::OnTunnelDown on_tunnel_down) {
  decider::RuleSpec spec;
  spec.mode = split.mode;
  spec.on_tunnel_down = on_tunnel_down;
  spec.ips = split.ips;
  spec.domains = split.domains;
  for (const config::AppRule& a : split.apps) {
    decider::AppSpec app{a.name, a.cgroup, a.comm, a.path, a.unit, a.app_id, a.user, std::nullopt};
    // The user was checked when the rule was loaded; one removed since matches nobody.
    if (!a.user.empty()) {
      if (auto uid = config::resolve_user(a.user)) {
        app.uid = *uid;
      } else {
        log::warn("app rule '", a.name, "': user: ", uid.error(), "; the user part matches nothing");
      }
    }
    spec.apps.push_back(std::move(app));
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
  f.dns_port = c.dns.enabled ? c.dns.forwarder_port : 0;
  f.dns_intercept_port = c.dns.intercept_port;
  f.block_dot = c.dns.block_dot;
  f.own_table = c.firewall.table_owner;
  // The kill switch stays closed while splitd is dead only if the table outlives it.
  f.persist_table = c.firewall.on_tunnel_down == decider::OnTunnelDown::kBlock;
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

}  // namespace

// Strict reverse-path filtering drops the replies of bypassed flows: they arrive on the
// physical interface while the main table's (VPN) routes point at the tunnel. Loose mode
// on the physical interface keeps them; the old value is restored on exit. Called from
// the interface cache's thread only.
class Runtime::RpFilterGuard {
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
  static std::string path(const std::string& itf) { return "/proc/sys/net/ipv4/conf/" + itf + "/rp_filter"; }
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
// interface cache's thread, and applied to the firewall by the control executor. A server
// once seen stays known while splitd runs: a client restarted in TLS mode talks to its
// server before it puts its host route back, and the kill switch would otherwise refuse
// that handshake. Thread-safe (one mutex).
class Runtime::VpnServers {
 public:
  // Cache thread. Returns true when a server was learned (the executor must apply it).
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

void Runtime::StopStack::push(std::string name, std::function<void()> stop) {
  stops_.emplace_back(std::move(name), std::move(stop));
}

void Runtime::StopStack::unwind() {
  while (!stops_.empty()) {
    auto [name, stop] = std::move(stops_.back());
    stops_.pop_back();
    log::debug("stopping ", name);
    stop();
  }
}

Runtime::Runtime(config::Config config, std::string config_path)
    : cfg_(std::move(config)),
      config_path_(std::move(config_path)),
      store_(cfg_.split, cfg_.daemon.state_dir) {}

Runtime::~Runtime() { stop(); }

int Runtime::fail(const std::string& what) {
  log::error(what);
  stop();
  return kExitRuntime;
}

int Runtime::start() {
  if (auto warning = store_.load()) {
    log::warn("rules: ", *warning);
    warnings_.push_back(*warning);
  }
  enabled_ = store_.enabled();

  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGUSR1}) sigaddset(&signals, sig);
  signal_fd_.reset(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  // The interface cache's thread wakes the executor when a VPN server appeared, so the
  // firewall learns it at once rather than at the next tick.
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!signal_fd_ || !wake_fd_) return fail(std::string("signalfd/eventfd: ") + std::strerror(errno));

  rp_filter_ = std::make_unique<RpFilterGuard>();
  vpn_servers_ = std::make_unique<VpnServers>();
  iface::SelectionConfig selection;
  if (cfg_.interfaces.physical != "auto") selection.physical = cfg_.interfaces.physical;
  if (cfg_.interfaces.tunnel != "auto") selection.tunnel = cfg_.interfaces.tunnel;
  auto cache = iface::InterfaceCache::open(selection);
  if (!cache) return fail("cannot read interfaces over rtnetlink: " + cache.error().message());
  cache_ = std::move(*cache);
  const int wake = wake_fd_.get();
  const auto on_interfaces = [this, wake](const std::shared_ptr<const iface::InterfaceSnapshot>& snap) {
    log::info("interfaces: ", describe(*snap));
    for (auto f : {IpAddress::Family::kV4, IpAddress::Family::kV6}) {
      if (const auto* p = snap->physical(f)) rp_filter_->loosen(p->name);
    }
    if (vpn_servers_->learn(*snap)) {
      const std::uint64_t one = 1;
      [[maybe_unused]] const ssize_t w = ::write(wake, &one, sizeof one);
    }
  };
  on_interfaces(cache_->snapshot());
  cache_->subscribe(on_interfaces);
  cache_->start();
  stack_.push("interface cache", [this] { cache_->stop(); });

  dns::NameStore::Options nopts;
  nopts.max_entries = cfg_.dns.max_names;
  nopts.ttl_floor = std::chrono::duration_cast<std::chrono::seconds>(cfg_.dns.ttl_floor);
  nopts.grace = std::chrono::duration_cast<std::chrono::seconds>(cfg_.dns.grace);
  names_ = std::make_unique<dns::NameStore>(nopts);
  if (cfg_.dns.enabled) {
    // The names learned before a restart still name the connections apps open with
    // answers they cached.
    if (auto n = names_->load(names_path()); !n) {
      log::warn("dns: ", n.error(), "; starting with no learned names");
    } else if (*n > 0) {
      log::info("dns: ", *n, " learned names kept from ", names_path());
    }
  }
  decider_ = std::make_unique<decider::RuleDecider>(
      *cache_, rules_of(store_.effective(), cfg_.firewall.on_tunnel_down), names_.get());
  sessions_ = std::make_unique<proxy::SessionTable>();
  start_identification();
  classifier_ = std::make_unique<proxy::Classifier>(*decider_, cfg_.dns.enabled ? names_.get() : nullptr,
                                                    identifier_.get());
  proxy::SniffOptions sniff;
  sniff.mode = cfg_.dns.sniff;
  sniff.ports = cfg_.dns.sniff_ports;
  sniff.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(cfg_.dns.sniff_timeout);
  sniff.ech_public_names = cfg_.dns.ech_public_names;
  classifier_->set_sniff(sniff);
  if (sniff.mode != decider::SniffMode::kOff && !sniff.ports.empty()) {
    std::string ports;
    for (auto p : sniff.ports) ports += (ports.empty() ? "" : ",") + std::to_string(p);
    log::info("sniffing the name of flows to ports ", ports, " (TLS SNI, HTTP Host, QUIC) ",
              sniff.mode == decider::SniffMode::kAlways ? "always" : "when DNS named no destination",
              ", waiting at most ", sniff.timeout.count(), "ms for a client's first bytes");
  }

  // The API socket exists from here on; requests wait until the executor runs, and get
  // 503 until everything below is up.
  api::ServerOptions aopts;
  aopts.unix_path = cfg_.daemon.api_socket;
  aopts.tcp_listen = cfg_.daemon.api_listen;
  aopts.token_file = cfg_.daemon.api_token_file;
  api_ = std::make_unique<api::Server>(ctx_, *this, aopts);
  if (auto r = api_->start(); !r) return fail("REST API: " + r.error());
  stack_.push("REST API", [this] { api_->stop(); });

  // The footprint's handle comes before the proxies so its removal comes after them: on
  // the way down every session is reset first, and packets of a live flow never follow
  // the system's routing (a tunnel-bound flow would leak out the physical side).
  auto fw = firewall::Firewall::open();
  if (!fw) return fail("firewall: " + fw.error().message);
  firewall_ = std::move(*fw);
  fwcfg_ = std::make_unique<firewall::FirewallConfig>(firewall_of(cfg_));
  fwcfg_->vpn_servers = vpn_servers_->cidrs();
  stack_.push("interception", [this] {
    if (firewall_->installed()) {
      if (auto r = firewall_->remove(); !r) {
        log::error("firewall: removing rules: ", r.error().message);
        exit_code_ = kExitRuntime;
      }
    }
  });

  proxy::TcpProxyOptions popts;
  popts.port = cfg_.proxy.port;
  popts.bypass_mark = cfg_.firewall.bypass_mark;
  popts.max_sessions = cfg_.proxy.max_sessions;
  popts.connect_timeout = cfg_.proxy.connect_timeout;
  popts.idle_timeout = cfg_.proxy.idle_timeout;
  popts.ipv6 = cfg_.firewall.ipv6;
  // The data path's threads: one reactor per CPU, both proxies on each.
  reactors_ = std::make_unique<proxy::ReactorPool>();
  if (auto r = reactors_->start(); !r) return fail("reactors: " + r.error());
  stack_.push("reactors", [this] { reactors_->stop(); });
  tcp_ = std::make_unique<proxy::TcpProxy>(popts, *classifier_, *sessions_, *reactors_);
  // Listeners first: the rules must never steer flows to a port nobody listens on.
  if (auto r = tcp_->start(); !r) return fail("tcp proxy: " + r.error());
  stack_.push("tcp proxy", [this] { tcp_->stop(); });
  proxy::UdpProxyOptions uopts;
  uopts.port = cfg_.proxy.port;
  uopts.bypass_mark = cfg_.firewall.bypass_mark;
  uopts.max_sessions = cfg_.proxy.max_sessions;
  uopts.idle_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(cfg_.proxy.udp_idle_timeout);
  uopts.ipv6 = cfg_.firewall.ipv6;
  udp_ = std::make_unique<proxy::UdpProxy>(uopts, *classifier_, *sessions_, *reactors_);
  if (auto r = udp_->start(); !r) return fail("udp proxy: " + r.error());
  stack_.push("udp proxy", [this] { udp_->stop(); });

  if (int rc = start_dns(); rc != kExitOk) return rc;

  if (enabled_) {
    if (auto r = firewall_->install(*fwcfg_); !r) return fail("firewall: " + r.error().message);
  } else {
    // A crashed run's table (kept to hold its kill switch closed) must not outlive a
    // start that was told to stay out of the way.
    if (auto r = firewall_->remove(); !r) return fail("firewall: removing an earlier run's table: " + r.error().message);
    log::warn("interception is disabled (splitctl disable, kept in ", store_.path(),
              "): traffic follows the system's routing until `splitctl enable`");
  }
  // VPN firewalls that would drop splitd's loopback replies (wg-quick's anti-spoofing
  // rule) get splitd's allow rule, kept in place by a watcher until stop().
  if (auto coexistence = firewall::VpnCoexistence::open(); !coexistence) {
    log::warn("VPN coexistence: ", coexistence.error().message,
              "; if wg-quick runs, its anti-spoofing rule will drop proxied flows");
  } else {
    coexistence_ = std::move(*coexistence);
    if (auto r = coexistence_->start(); !r) log::warn("VPN coexistence: ", r.error().message);
    stack_.push("VPN coexistence", [this] { coexistence_->stop(); });  // removes our rules from their tables
  }

  // Policy-rule events (wg-quick coming up puts its rules before splitd's) wake the
  // executor; a dup so that the descriptor's close leaves the firewall's socket alone.
  signal_desc_ = std::make_unique<asio::posix::stream_descriptor>(ctx_, ::fcntl(signal_fd_.get(), F_DUPFD_CLOEXEC, 0));
  wake_desc_ = std::make_unique<asio::posix::stream_descriptor>(ctx_, ::fcntl(wake_fd_.get(), F_DUPFD_CLOEXEC, 0));
  rule_events_desc_ = std::make_unique<asio::posix::stream_descriptor>(ctx_, ::fcntl(firewall_->rule_events_fd(), F_DUPFD_CLOEXEC, 0));
  nft_events_desc_ = std::make_unique<asio::posix::stream_descriptor>(ctx_, ::fcntl(firewall_->nft_events_fd(), F_DUPFD_CLOEXEC, 0));
  wait_signal();
  wait_wake();
  wait_footprint_events(*rule_events_desc_);
  wait_footprint_events(*nft_events_desc_);
  arm_repair_timer();
  arm_summary_timer();
  stack_.push("control executor", [this] {
    boost::system::error_code ec;
    for (auto* d : {signal_desc_.get(), wake_desc_.get(), rule_events_desc_.get(), nft_events_desc_.get()}) {
      d->close(ec);
    }
    repair_timer_.cancel();
    backoff_timer_.cancel();
    summary_timer_.cancel();
    watchdog_timer_.cancel();
  });

  // The control executor yields to the data path: a dashboard fetching /connections in
  // a loop must not take CPU time from accepting and moving flows (measured in lab-bench:
  // at nice 0 such a loop cost the data path a quarter of its connection rate on 2
  // vCPUs). The workers were created above, at the default priority; nice is per thread.
  if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kControlNice) != 0) {
    log::debug("setpriority: ", std::strerror(errno), "; the control executor keeps the default priority");
  }
  api_->set_ready(true);
  log::info("ready: intercepting TCP and UDP to port ", cfg_.proxy.port, ", mark 0x", std::hex, cfg_.firewall.mark,
            ", bypass mark 0x", cfg_.firewall.bypass_mark, std::dec, ", table ", cfg_.firewall.route_table, ", mode ",
            decider::to_string(store_.effective().mode), "; API on ", cfg_.daemon.api_socket,
            cfg_.daemon.api_listen.empty() ? "" : " and " + cfg_.daemon.api_listen);
  return kExitOk;
}

int Runtime::run() {
  if (const auto every = watchdog_interval(); every.count() > 0) arm_watchdog(every / 2);
  ctx_.run();
  stop();
  return exit_code_;
}

void Runtime::stop() {
  if (stopped_) return;
  stopped_ = true;
  notify_stopping();
  if (api_) api_->set_ready(false);
  stack_.unwind();
  if (sessions_) {
    const auto t = sessions_->totals();
    log::info("stopped: ", t.total, " sessions served, sent ", t.bytes_sent, "B received ", t.bytes_received, "B");
  }
}

// ---- DNS -------------------------------------------------------------------------------

// App identification: the cgroup2 hierarchy's map and splitd's exec cgroups. Without a
// cgroup2 mount splitd still runs; app rules then match nothing, and it says so.
void Runtime::start_identification() {
  auto mount = cgroup::cgroup2_mount();
  if (!mount) {
    // No cgroup2 where this process looks (a cgroup v1 host, or a mount namespace with a
    // fresh /sys such as `ip netns exec` makes): mount the hierarchy privately for splitd.
    const std::string own = cfg_.daemon.state_dir + "/cgroup2";
    if (auto made = make_dirs(own); made && ::mount("cgroup2", own.c_str(), "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) == 0) {
      log::info("apps: no cgroup2 mounted here; mounted it at ", own);
      mount = own;
      stack_.push("cgroup2 mount", [own] { ::umount2(own.c_str(), MNT_DETACH); });
    } else {
      log::warn("apps: ", mount.error().message(), " (and mounting one at ", own, " failed: ", std::strerror(errno),
                "); app rules and `splitctl exec` will match nothing");
      return;
    }
  }
  auto map = cgroup::CgroupMap::open(*mount);
  if (!map) {
    log::warn("apps: cgroup map of ", *mount, ": ", map.error().message(), "; app rules will match nothing");
    return;
  }
  std::string base = cfg_.daemon.exec_cgroup;
  if (base.empty()) {
    auto own = cgroup::own_cgroup();
    base = (own && *own != "/" ? *own : std::string()) + "/splitd-exec";
  }
  std::unique_ptr<cgroup::ExecCgroups> exec;
  if (auto e = cgroup::ExecCgroups::create(*mount, base)) {
    exec = std::move(*e);
  } else {
    log::warn("apps: exec cgroups below ", base, ": ", e.error().message(), "; `splitctl exec` is unavailable");
  }
  log::info("apps: cgroup2 at ", *mount, ", ", (*map)->size(), " cgroups known",
            exec ? "; exec cgroups " + exec->path(cgroup::Route::kDirect) + " and " + exec->path(cgroup::Route::kTunnel)
                 : std::string());
  identifier_ = std::make_unique<cgroup::Identifier>(std::move(*map), std::move(exec), *mount);
  stack_.push("exec cgroups", [this] {
    if (identifier_->exec() == nullptr) return;
    if (auto r = identifier_->exec()->remove(); !r) {
      log::info("apps: exec cgroups kept: ", r.error().message(), " (their processes keep their route when splitd starts again)");
    }
  });
}

std::string Runtime::names_path() const { return cfg_.daemon.state_dir + "/dns-names"; }

int Runtime::start_dns() {
  if (!cfg_.dns.enabled) {
    log::info("dns: capture off (dns.enabled = false): DNS is ordinary UDP/TCP under the IP rules");
    return kExitOk;
  }
  dns::ForwarderOptions o;
  o.port = cfg_.dns.forwarder_port;
  o.ipv6 = cfg_.firewall.ipv6;
  o.bypass_mark = cfg_.firewall.bypass_mark;
  o.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(cfg_.dns.timeout);
  o.cache_ttl = std::chrono::duration_cast<std::chrono::seconds>(cfg_.dns.cache_ttl);
  o.doh_canary = cfg_.dns.doh_canary;
  o.threads = cfg_.dns.threads;
  o.identifier = identifier_.get();
  forwarder_ = std::make_unique<dns::Forwarder>(*decider_, *names_, o);
  dns::Upstreams up;
  up.tunnel = cfg_.dns.servers;
  up.direct = cfg_.dns.direct_servers;
  if (up.direct.empty()) up.system = dns::system_resolvers();
  // Listeners first, like the proxies: the capture must never steer queries to a port
  // nobody listens on.
  if (auto r = forwarder_->start(up); !r) return fail(r.error());
  stack_.push("dns forwarder", [this] {
    forwarder_->stop();
    save_names();
  });
  const auto list = [](const std::vector<IpAddress>& v) {
    std::string out;
    for (const auto& ip : v) out += (out.empty() ? "" : ", ") + ip.to_string();
    return out.empty() ? std::string("none") : out;
  };
  log::info("dns: capturing port ", cfg_.dns.intercept_port, " (UDP and TCP, local stubs too; ", forwarder_->threads(),
            " forwarder threads); tunnel names via ",
            list(up.tunnel), ", direct names via ",
            up.direct.empty() ? list(up.system) + " (the system's)" : list(up.direct));
  if (up.direct.empty() && up.system.empty()) {
    log::warn("dns: dns.direct_servers is empty and the system names no non-local resolver: names routed "
              "direct get SERVFAIL until one appears in /etc/resolv.conf");
  }
  return kExitOk;
}

// The system's resolvers change with the network (DHCP, NetworkManager, resolved):
// re-read on the repair tick when direct_servers is not configured.
void Runtime::refresh_dns_upstreams() {
  if (!forwarder_ || !cfg_.dns.direct_servers.empty()) return;
  dns::Upstreams up = forwarder_->upstreams();
  auto system = dns::system_resolvers();
  if (system == up.system) return;
  up.system = std::move(system);
  std::string text;
  for (const auto& ip : up.system) text += " " + ip.to_string();
  log::info("dns: the system's resolvers are now", text.empty() ? " none" : text);
  forwarder_->set_upstreams(std::move(up));
}

void Runtime::save_names() const {
  if (!names_ || !cfg_.dns.enabled) return;
  names_saved_at_ = std::chrono::steady_clock::now();
  if (!make_dirs(cfg_.daemon.state_dir)) {
    log::warn("dns: cannot create ", cfg_.daemon.state_dir, ": ", std::strerror(errno), "; learned names not saved");
    return;
  }
  if (auto r = names_->save(names_path()); !r) log::warn("dns: saving learned names: ", r.error());
}

std::vector<api::DnsEntry> Runtime::dns_cache() const {
  std::vector<api::DnsEntry> out;
  if (!names_) return out;
  for (auto& e : names_->list()) {
    api::DnsEntry d;
    d.ip = e.ip;
    d.names = std::move(e.names);
    d.expires_at = std::chrono::system_clock::time_point(std::chrono::seconds(e.expires_at));
    d.source = dns::to_string(e.source);
    out.push_back(std::move(d));
  }
  return out;
}

std::size_t Runtime::flush_dns_cache() {
  if (!names_) return 0;
  const std::size_t n = names_->size();
  names_->clear();
  if (forwarder_) forwarder_->clear_cache();
  log::info("api: ", n, " learned names flushed");
  return n;
}

// ---- the control executor's events ----------------------------------------------------

void Runtime::wait_signal() {
  signal_desc_->async_wait(asio::posix::stream_descriptor::wait_read, [this](boost::system::error_code ec) {
    if (ec) return;
    signalfd_siginfo info{};
    if (::read(signal_fd_.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
      on_signal(static_cast<int>(info.ssi_signo));
    }
    if (!ctx_.stopped()) wait_signal();
  });
}

void Runtime::wait_wake() {
  wake_desc_->async_wait(asio::posix::stream_descriptor::wait_read, [this](boost::system::error_code ec) {
    if (ec) return;
    std::uint64_t n = 0;
    [[maybe_unused]] const ssize_t r = ::read(wake_fd_.get(), &n, sizeof n);
    apply_vpn_servers();
    wait_wake();
  });
}

void Runtime::wait_footprint_events(asio::posix::stream_descriptor& desc) {
  desc.async_wait(asio::posix::stream_descriptor::wait_read, [this, &desc](boost::system::error_code ec) {
    if (ec) return;
    on_footprint_events();
    wait_footprint_events(desc);
  });
}

// Another program changed the kernel state splitd depends on: nftables events naming
// table inet splitd (a deletion, a flushed chain, a rule added), policy rules (wg-quick
// placing its rules before splitd's, `ip rule flush`) or routes of splitd's table. The
// repair is one atomic batch, started at once, not on the next periodic check.
void Runtime::on_footprint_events() {
  const firewall::FootprintEvents ev = firewall_->drain_events();
  if (!ev.any()) return;
  if (ev.nftables) counters_.firewall_changes_nftables++;
  if (ev.policy) counters_.firewall_changes_policy++;
  if (ev.route) counters_.firewall_changes_route++;
  if (ev.lost) counters_.firewall_events_lost++;
  // A change to splitd's table is repaired even if the read-back looks intact: not every
  // change shows in it (set elements, a rule replaced under its handle). It stays due
  // until a repair succeeds, also through a backoff.
  if (ev.nftables) foreign_table_change_ = true;
  if (!enabled_) return;
  // Rule and route events are anyone's, and lost events (ENOBUFS: the host's route churn
  // can overrun the socket) say only that something may have changed: checked first.
  if (!foreign_table_change_ && firewall_->intact(*fwcfg_)) return;
  std::string what = foreign_table_change_ ? "table inet splitd changed"
                     : ev.route            ? "splitd's route table changed"
                     : ev.policy           ? "policy routing changed"
                                           : "events lost, footprint differs";
  request_repair(what, ev.culprit);
}

void Runtime::request_repair(const std::string& why, const std::string& culprit) {
  if (repair_scheduled_) return;  // a delayed repair is already due
  const auto now = std::chrono::steady_clock::now();
  while (!recent_repairs_.empty() && now - recent_repairs_.front() > kFightWindow) recent_repairs_.pop_front();
  // A fight ends after a quiet window, not when the count of the window drops below the
  // threshold: a steady fighter stays at the longest delay.
  if (fight_level_ > 0 && now - last_repair_request_ > kFightWindow) fight_level_ = 0;
  last_repair_request_ = now;
  const std::string by = culprit.empty() ? std::string() : " by " + culprit;
  if (now < repair_not_before_) {  // the last attempt failed: retry when its pause ends
    schedule_repair(repair_not_before_ - now, why + by + ", retried");
    return;
  }
  if (fight_level_ == 0 && recent_repairs_.size() < kFightRepairs) {
    log::warn("firewall: ", why, by, ": restoring it");
    repair(why + by);
    return;
  }
  // A fight: repair later, each time twice as late.
  const auto delay = std::min<std::chrono::steady_clock::duration>(
      kFightFirstDelay * (1u << std::min<unsigned>(fight_level_, 16)), kFightMaxDelay);
  fight_level_++;
  counters_.firewall_repair_backoffs++;
  log::error("firewall: another program keeps undoing splitd's footprint (", why, by, "): ",
             recent_repairs_.size(), " repairs in ", kFightWindow.count(), " s; next repair in ",
             std::chrono::duration_cast<std::chrono::milliseconds>(delay).count(),
             " ms. Find that program (a VPN client's or firewall manager's reload) and exclude "
             "table inet splitd and its rules from it");
  schedule_repair(delay, why + by + ", after backing off");
}

void Runtime::schedule_repair(std::chrono::steady_clock::duration delay, std::string why) {
  repair_scheduled_ = true;
  backoff_timer_.expires_after(delay);
  backoff_timer_.async_wait([this, why = std::move(why)](boost::system::error_code ec) {
    repair_scheduled_ = false;
    if (ec) return;
    if (may_repair() && (foreign_table_change_ || !firewall_->intact(*fwcfg_))) repair(why);
  });
}

void Runtime::arm_repair_timer() {
  repair_timer_.expires_after(kRepairEvery);
  repair_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    // The events repair at once; this check is the net under them (a kernel without
    // nftables events, a change whose events were lost).
    if (may_repair() && (foreign_table_change_ || !firewall_->intact(*fwcfg_))) {
      request_repair("the footprint differs from what splitd installed (periodic check)", "");
    }
    apply_vpn_servers();  // one that failed earlier is retried here
    refresh_dns_upstreams();
    if (names_) names_->sweep();
    if (identifier_) identifier_->refresh();
    if (names_ && std::chrono::steady_clock::now() - names_saved_at_ >= kNamesSaveEvery) save_names();
    arm_repair_timer();
  });
}

void Runtime::arm_summary_timer() {
  summary_timer_.expires_after(kSummaryEvery);
  summary_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec) return;
    const auto t = sessions_->totals();
    log::info("summary: ", t.active, " active sessions, ", t.total, " total, sent ", t.bytes_sent, "B received ",
              t.bytes_received, "B");
    arm_summary_timer();
  });
}

void Runtime::on_signal(int sig) {
  switch (sig) {
    case SIGINT:
    case SIGTERM:
      log::info("received ", sig == SIGINT ? "SIGINT" : "SIGTERM", ": stopping");
      ctx_.stop();
      break;
    case SIGUSR1: log_sessions(); break;
    case SIGHUP: reload(); break;
    default: break;
  }
}

bool Runtime::may_repair() const {
  // Interception switched off over the API is not damage; failed repairs wait a second
  // (a failure must not spin on the events its own attempt caused).
  return enabled_ && std::chrono::steady_clock::now() >= repair_not_before_;
}

void Runtime::repair(const std::string& why) {
  const auto t0 = std::chrono::steady_clock::now();
  recent_repairs_.push_back(t0);
  if (auto r = firewall_->install(*fwcfg_); !r) {
    log::error("firewall: ", r.error().message, "; retrying in 1 s");
    counters_.firewall_repair_failures++;
    repair_not_before_ = std::chrono::steady_clock::now() + kRepairBackoff;
    schedule_repair(kRepairBackoff, why + ", retried");
    return;
  }
  foreign_table_change_ = false;
  // The repair's own events (splitd's rules and routes) are read and dropped as splitd's.
  counters_.firewall_repairs++;
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
  counters_.firewall_last_repair_us = static_cast<std::uint64_t>(us.count());
  log::info("firewall: restored (", why, ") in ", us.count(), " us");
}

void Runtime::apply_vpn_servers() {
  auto servers = vpn_servers_->cidrs();
  if (servers == fwcfg_->vpn_servers) return;
  if (!enabled_) {  // recorded now, installed with the rest at `enable`
    fwcfg_->vpn_servers = std::move(servers);
    return;
  }
  if (!may_repair()) return;  // the repair timer retries
  firewall::FirewallConfig next = *fwcfg_;
  next.vpn_servers = std::move(servers);
  if (auto r = firewall_->install(next); r) {
    *fwcfg_ = std::move(next);
    foreign_table_change_ = false;  // the table was replaced as a whole
  } else {
    log::error("firewall: adding VPN servers: ", r.error().message, "; retrying in 1 s");
    repair_not_before_ = std::chrono::steady_clock::now() + kRepairBackoff;
  }
}

void Runtime::reload() {
  notify_reloading();
  reload_config();
  notify_ready();
}

void Runtime::arm_watchdog(std::chrono::microseconds every) {
  notify_watchdog();
  watchdog_timer_.expires_after(every);
  watchdog_timer_.async_wait([this, every](boost::system::error_code ec) {
    if (!ec) arm_watchdog(every);
  });
}

void Runtime::reload_config() {
  // A file that is missing now (an editor replacing it) keeps the running config; the
  // built-in defaults apply only when splitd starts without a file.
  if (config_path_.empty() || ::access(config_path_.c_str(), F_OK) != 0) {
    log::error("reload: ", config_path_.empty() ? std::string("no config file") : config_path_ + " is missing",
               "; keeping the running config");
    counters_.reload_failures++;
    return;
  }
  auto loaded = config::load_file(config_path_);
  if (!loaded) {
    for (const auto& d : loaded.error()) log::error("reload: ", d.to_string());
    log::error("reload: ", config_path_, " has errors; keeping the running config");
    counters_.reload_failures++;
    return;
  }
  const config::Config& next = *loaded;
  const config::ConfigChanges changes = config::changes(cfg_, next);
  if (changes.rules) {
    cfg_.split = next.split;
    cfg_.firewall.on_tunnel_down = next.firewall.on_tunnel_down;
    store_.set_base(cfg_.split);
    apply_rules();
  }
  log::info("reload: rules applied to new flows: ", config::summary(next));
  // The table's persistence follows the kill switch (on_tunnel_down), a rules key.
  const bool persist_changed = fwcfg_ && firewall_of(next).persist_table != fwcfg_->persist_table;
  if (changes.footprint || persist_changed) {
    // The interception footprint (never_intercept, mark, route_table, ipv6) is replaced in
    // one transaction; the proxy's port and bypass mark stay, since live sockets carry
    // them. A failed install puts the old footprint back.
    firewall::FirewallConfig fw_next = firewall_of(next);
    fw_next.vpn_servers = fwcfg_->vpn_servers;
    fw_next.port = fwcfg_->port;
    fw_next.bypass_mark = fwcfg_->bypass_mark;
    // The capture follows the forwarder that runs (dns.enabled and its ports need a restart).
    fw_next.dns_port = fwcfg_->dns_port;
    fw_next.dns_intercept_port = fwcfg_->dns_intercept_port;
    auto r = enabled_ ? firewall_->install(fw_next) : Expected<void, firewall::FirewallError>{};
    if (r) {
      *fwcfg_ = fw_next;
      if (enabled_) foreign_table_change_ = false;
      cfg_.firewall.mark = next.firewall.mark;
      cfg_.firewall.route_table = next.firewall.route_table;
      cfg_.firewall.ipv6 = next.firewall.ipv6;
      cfg_.firewall.never_intercept = next.firewall.never_intercept;
      cfg_.firewall.table_owner = next.firewall.table_owner;
      cfg_.dns.block_dot = next.dns.block_dot;
      log::info("reload: firewall footprint replaced");
    } else {
      log::error("reload: firewall: ", r.error().message, "; restoring the previous footprint");
      if (auto back = firewall_->install(*fwcfg_); !back) log::error("firewall: ", back.error().message);
      counters_.reload_failures++;
      return;
    }
  }
  if (!changes.restart.empty()) {
    std::string keys;
    for (const auto& k : changes.restart) keys += " " + k;
    log::warn("reload: changes to", keys, " take effect at the next restart");
  }
  counters_.reloads++;
}

void Runtime::apply_rules() {
  decider_->set_rules(rules_of(store_.effective(), cfg_.firewall.on_tunnel_down));
}

void Runtime::log_sessions() const {
  const auto list = sessions_->list();
  const auto t = sessions_->totals();
  log::info("sessions: ", t.active, " active, ", t.total, " total, ", t.refused, " refused, ", t.blocked,
            " blocked, ", t.failed, " failed; sent ", t.bytes_sent, "B received ", t.bytes_received, "B");
  for (const auto& s : list) {
    log::info("  #", s.id, " ", decider::to_string(s.protocol), " ", s.client.to_string(), " -> ",
              s.destination.to_string(), " ", decider::to_string(s.route.kind),
              s.route.interface.empty() ? "" : " via " + s.route.interface, " rule '", s.route.rule, "' sent ",
              s.bytes_sent, "B/", s.packets_sent, "pkts received ", s.bytes_received, "B/", s.packets_received,
              "pkts idle ", s.idle.count(), "ms");
  }
}

// ---- api::Backend ---------------------------------------------------------------------

api::Status Runtime::status() const {
  api::Status s;
  s.ready = !stopped_;
  s.enabled = enabled_;
  s.mode = store_.effective().mode;
  const auto snap = cache_->snapshot();
  if (const auto* t = snap->tunnel()) s.tunnel_interface = t->name;
  s.tunnel_up = snap->tunnel_up();
  const auto* p4 = snap->physical(IpAddress::Family::kV4);
  const auto* p6 = snap->physical(IpAddress::Family::kV6);
  s.physical_interface = p4 ? p4->name : p6 ? p6->name : "";
  s.physical_interface6 = p6 ? p6->name : "";
  s.dns_enabled = cfg_.dns.enabled;
  s.dns_servers = cfg_.dns.servers;
  if (forwarder_) s.dns_direct_servers = forwarder_->upstreams().for_direct();
  const auto t = sessions_->totals();
  s.sessions_active = t.active;
  s.sessions_total = t.total;
  s.bytes_sent = t.bytes_sent;
  s.bytes_received = t.bytes_received;
  s.started_at = started_at_;
  s.version = kVersion;
  s.git_revision = kGitRevision;
  s.config_file = cfg_.source;
  s.state_file = store_.path();
  s.warnings = warnings_;
  return s;
}

api::Result<api::Ok> Runtime::set_enabled(bool enabled) {
  if (enabled == enabled_) return api::Ok{};
  if (enabled) {
    fwcfg_->vpn_servers = vpn_servers_->cidrs();
    if (auto r = firewall_->install(*fwcfg_); !r) {
      return unexpected(api::ApiError{500, "firewall", "interception could not be installed: " + r.error().message});
    }
    foreign_table_change_ = false;
  } else if (auto r = firewall_->remove(); !r) {
    return unexpected(api::ApiError{500, "firewall", "interception could not be removed: " + r.error().message});
  }
  enabled_ = enabled;
  if (auto r = store_.set_enabled(enabled); !r) {
    log::warn("api: ", r.error().detail, " (interception is ", enabled ? "on" : "off", " until splitd restarts)");
  }
  log::info("api: interception ", enabled ? "enabled" : "disabled: traffic follows the system's routing");
  return api::Ok{};
}

// The listing shows each flow's process too; flows that no rule needed it for get it here,
// one scan of each cgroup's processes for all its flows. Listing also makes new flows
// identified for a while (Identifier::kListingInterest).
std::vector<proxy::SessionView> Runtime::connections() const {
  auto list = sessions_->list();
  if (!identifier_) return list;
  identifier_->note_listing();
  std::map<std::string, std::unordered_map<std::uint64_t, std::int32_t>, std::less<>> owners;
  for (auto& s : list) {
    proxy::AppInfo& a = s.app;
    if (a.pid != 0 || a.cgroup.empty() || a.inode == 0) continue;
    auto it = owners.find(a.cgroup);
    if (it == owners.end()) it = owners.emplace(a.cgroup, identifier_->processes().socket_owners(a.cgroup)).first;
    // The scan of the cgroup saw every socket its processes hold: an inode it did not see
    // is gone, and asking owner() per flow would only scan the cgroup again.
    const auto o = it->second.find(a.inode);
    if (o == it->second.end()) continue;
    auto p = identifier_->processes().info(o->second);
    if (!p) continue;
    a.pid = p->pid;
    a.comm = p->comm;
    a.exe = p->exe;
    a.how += "+proc";
  }
  return list;
}

api::Result<std::string> Runtime::exec(const api::Caller& caller, std::int64_t pid, decider::RouteKind route) {
  cgroup::ExecCgroups* exec = identifier_ ? identifier_->exec() : nullptr;
  if (exec == nullptr) {
    return unexpected(api::ApiError{500, "unavailable", "splitd has no exec cgroups (no cgroup2 hierarchy, or it could not create them; see its log)"});
  }
  if (pid == 0) pid = caller.pid;
  if (pid <= 0) return unexpected(api::ApiError{400, "bad request", "the caller's process is not known (SO_PEERCRED)"});
  // Root moves any process; everybody else only their own (the real uid of the process).
  if (caller.uid != 0) {
    auto p = identifier_->processes().info(static_cast<std::int32_t>(pid));
    if (!p) return unexpected(api::ApiError{404, "not found", "no process " + std::to_string(pid)});
    if (static_cast<std::int64_t>(p->uid) != caller.uid) {
      return unexpected(api::ApiError{403, "forbidden", "process " + std::to_string(pid) + " belongs to uid " +
                                                            std::to_string(p->uid) + ": uid " + std::to_string(caller.uid) +
                                                            " may move only its own processes"});
    }
  }
  const cgroup::Route r = route == decider::RouteKind::kDirect ? cgroup::Route::kDirect : cgroup::Route::kTunnel;
  if (auto moved = exec->move(static_cast<pid_t>(pid), r); !moved) {
    const int status = moved.error().code == cgroup::Errc::kNoSuchProcess ? 404
                       : moved.error().code == cgroup::Errc::kPermission  ? 403
                                                                          : 500;
    const char* reason = status == 404 ? "not found" : status == 403 ? "forbidden" : "internal error";
    return unexpected(api::ApiError{status, reason, "moving process " + std::to_string(pid) + ": " + moved.error().message()});
  }
  identifier_->note_exec();
  ++execs_;
  log::info("api: process ", pid, " (uid ", caller.uid, ") runs ", decider::to_string(route), " from now on (",
            exec->path(r), ")");
  return exec->path(r);
}



bool Runtime::kill(std::uint64_t id) {
  const bool found = sessions_->kill(id);
  if (found) log::info("api: session #", id, " killed");
  return found;
}

api::Rules Runtime::rules() const { return store_.view(); }

api::Result<api::Ok> Runtime::edited(api::Result<api::Ok> r, const std::string& what) {
  if (!r) return r;
  apply_rules();
  counters_.rule_edits++;
  log::info("api: ", what, "; applies to new flows: ", config::summary([this] {
              config::Config c = cfg_;
              c.split = store_.effective();
              return c;
            }()));
  return r;
}

api::Result<api::Ok> Runtime::set_mode(decider::Mode mode) {
  return edited(store_.set_mode(mode), std::string("mode set to ") + decider::to_string(mode));
}
api::Result<api::Ok> Runtime::add_app(const config::AppRule& app) {
  return edited(store_.add_app(app), "app rule '" + app.name + "' added");
}
api::Result<api::Ok> Runtime::remove_app(const std::string& name) {
  return edited(store_.remove_app(name), "app rule '" + name + "' removed");
}
api::Result<api::Ok> Runtime::add_domain(const std::string& pattern) {
  return edited(store_.add_domain(pattern), "domain rule '" + pattern + "' added");
}
api::Result<api::Ok> Runtime::remove_domain(const std::string& pattern) {
  return edited(store_.remove_domain(pattern), "domain rule '" + pattern + "' removed");
}
api::Result<api::Ok> Runtime::add_ip(const Cidr& cidr) {
  return edited(store_.add_ip(cidr), "ip rule " + cidr.to_string() + " added");
}
api::Result<api::Ok> Runtime::remove_ip(const Cidr& cidr) {
  return edited(store_.remove_ip(cidr), "ip rule " + cidr.to_string() + " removed");
}

std::shared_ptr<const iface::InterfaceSnapshot> Runtime::interfaces() const { return cache_->snapshot(); }

api::MetricsSnapshot Runtime::metrics() const {
  api::MetricsSnapshot m;
  m.sessions = sessions_->counters();
  m.daemon = counters_;
  m.daemon.vpn_servers = fwcfg_ ? fwcfg_->vpn_servers.size() : 0;
  if (firewall_) {
    const auto own = firewall_->ownership();
    m.daemon.firewall_table_owned = enabled_ && own.owned;
    m.daemon.firewall_table_persistent = enabled_ && own.persistent;
  }
  m.enabled = enabled_;
  m.tunnel_up = cache_->snapshot()->tunnel_up();
  m.started_at = started_at_;
  const auto eff = store_.effective();
  m.rules_apps = eff.apps.size();
  m.rules_domains = eff.domains.size();
  m.rules_ips = eff.ips.size();
  m.version = kVersion;
  m.git_revision = kGitRevision;
  if (identifier_) {
    const auto st = identifier_->stats();
    m.apps.enabled = true;
    m.apps.identified = st.identified;
    m.apps.socket_gone = st.socket_gone;
    m.apps.failed = st.failed;
    m.apps.no_path = st.no_path;
    m.apps.processes = st.processes;
    m.apps.no_process = st.no_process;
    m.apps.cgroups = identifier_->map().size();
    m.apps.execs = execs_;
  }
  if (forwarder_) {
    m.dns.enabled = true;
    m.dns.forwarder = forwarder_->stats();
    m.dns.names = names_->size();
    m.dns.names_bytes = names_->memory_bytes();
  }
  return m;
}

}  // namespace splitd::daemon
