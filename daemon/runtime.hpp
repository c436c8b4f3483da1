#pragma once

#include <chrono>
#include <functional>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/backend.hpp"
#include "common/asio.hpp"
#include "common/fd.hpp"
#include "config/config.hpp"
#include "daemon/rule_store.hpp"

namespace splitd::iface {
class InterfaceCache;
}
namespace splitd::decider {
class RuleDecider;
}
namespace splitd::firewall {
class Firewall;
class VpnCoexistence;
struct FirewallConfig;
}  // namespace splitd::firewall
namespace splitd::proxy {
class Classifier;
class SessionTable;
class ReactorPool;
class TcpProxy;
class UdpProxy;
}  // namespace splitd::proxy
namespace splitd::cgroup {
class Identifier;
}  // namespace splitd::cgroup
namespace splitd::api {
class Server;
}
namespace splitd::dns {
class NameStore;
class Forwarder;
}  // namespace splitd::dns

namespace splitd::daemon {

// The running daemon: the config, the rule store, and the components in their start
// order (interface cache, REST API, firewall handle, proxies, interception, VPN
// coexistence), kept as one stack that stops them in reverse, whether start() failed
// half-way or the daemon is shutting down.
//
// One control executor (an io_context run by run() on the calling thread) handles
// signals (SIGHUP reload, SIGUSR1 listing, SIGINT/SIGTERM stop), API requests, the
// interface cache's wake-ups, policy-rule events and the repair timer, so firewall and
// rule changes never race each other. The proxies' workers only read the decider's
// atomically swapped rules. Not thread-safe: construct, start and run on one thread.
class Runtime final : public api::Backend {
 public:
  Runtime(config::Config config, std::string config_path);
  ~Runtime() override;
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  // Starts every component; on failure stops what started and returns the exit code (2).
  // Expects SIGINT, SIGTERM, SIGHUP and SIGUSR1 blocked in every thread (read here from
  // a signalfd). Returns 0 when running.
  int start();
  // Runs the control executor until SIGINT/SIGTERM, then stops everything. Exit code.
  int run();

  // api::Backend (called on the control executor).
  api::Status status() const override;
  api::Result<api::Ok> set_enabled(bool enabled) override;
  std::vector<proxy::SessionView> connections() const override;
  bool kill(std::uint64_t id) override;
  api::Rules rules() const override;
  api::Result<api::Ok> set_mode(decider::Mode mode) override;
  api::Result<api::Ok> add_app(const config::AppRule& app) override;
  api::Result<api::Ok> remove_app(const std::string& name) override;
  api::Result<api::Ok> add_domain(const std::string& pattern) override;
  api::Result<api::Ok> remove_domain(const std::string& pattern) override;
  api::Result<api::Ok> add_ip(const Cidr& cidr) override;
  api::Result<api::Ok> remove_ip(const Cidr& cidr) override;
  std::shared_ptr<const iface::InterfaceSnapshot> interfaces() const override;
  api::MetricsSnapshot metrics() const override;
  api::Result<std::string> exec(const api::Caller& caller, std::int64_t pid, decider::RouteKind route) override;
  std::vector<api::DnsEntry> dns_cache() const override;
  std::size_t flush_dns_cache() override;

  class VpnServers;
  class RpFilterGuard;

 private:
  // What was started, with how to stop it; popped in reverse.
  class StopStack {
   public:
    void push(std::string name, std::function<void()> stop);
    void unwind();
    ~StopStack() { unwind(); }

   private:
    std::vector<std::pair<std::string, std::function<void()>>> stops_;
  };

  int fail(const std::string& what);
  void wait_signal();
  void wait_wake();
  void wait_footprint_events(net::asio::posix::stream_descriptor& desc);
  void on_footprint_events();
  void request_repair(const std::string& why, const std::string& culprit);
  void arm_repair_timer();
  void schedule_repair(std::chrono::steady_clock::duration delay, std::string why);
  // systemd's watchdog (WatchdogSec=): a ping every half interval from the control loop,
  // so a wedged loop gets splitd restarted.
  void arm_watchdog(std::chrono::microseconds every);
  void arm_summary_timer();
  void on_signal(int sig);
  void reload();  // SIGHUP: tells systemd RELOADING=1, then READY=1
  void reload_config();
  void apply_rules();
  api::Result<api::Ok> edited(api::Result<api::Ok> r, const std::string& what);
  void apply_vpn_servers();
  bool may_repair() const;
  void repair(const std::string& why);
  void log_sessions() const;
  int start_dns();
  void start_identification();
  void refresh_dns_upstreams();
  void save_names() const;
  std::string names_path() const;
  void stop();

  config::Config cfg_;
  std::string config_path_;
  RuleStore store_;
  std::vector<std::string> warnings_;
  std::chrono::system_clock::time_point started_at_ = std::chrono::system_clock::now();
  std::chrono::steady_clock::time_point repair_not_before_{};
  api::DaemonCounters counters_;
  std::uint64_t execs_ = 0;
  bool enabled_ = true;
  bool stopped_ = false;
  int exit_code_ = 0;  // 2 when the footprint could not be removed on the way down

  net::asio::io_context ctx_{1};
  Fd signal_fd_, wake_fd_;
  std::unique_ptr<net::asio::posix::stream_descriptor> signal_desc_, wake_desc_, rule_events_desc_,
      nft_events_desc_;
  net::asio::steady_timer repair_timer_{ctx_}, summary_timer_{ctx_}, backoff_timer_{ctx_}, watchdog_timer_{ctx_};
  // Repairs of the last kFightWindow: another program undoing splitd's footprint again and
  // again gets repairs further and further apart, never a busy loop.
  std::deque<std::chrono::steady_clock::time_point> recent_repairs_;
  bool repair_scheduled_ = false;
  // Another program changed table inet splitd and no repair has succeeded since.
  bool foreign_table_change_ = false;
  // How many delayed repairs in a row (0: not fighting); reset after a quiet kFightWindow.
  unsigned fight_level_ = 0;
  std::chrono::steady_clock::time_point last_repair_request_{};

  // Declared before the cache: its thread calls into them until the cache stops.
  std::unique_ptr<RpFilterGuard> rp_filter_;
  std::unique_ptr<VpnServers> vpn_servers_;
  std::unique_ptr<iface::InterfaceCache> cache_;
  std::unique_ptr<dns::NameStore> names_;  // before the decider, which reads it
  std::unique_ptr<decider::RuleDecider> decider_;
  std::unique_ptr<proxy::SessionTable> sessions_;
  std::unique_ptr<cgroup::Identifier> identifier_;  // nullptr: no cgroup2 (apps unknown)
  std::unique_ptr<proxy::Classifier> classifier_;
  std::unique_ptr<firewall::Firewall> firewall_;
  std::unique_ptr<firewall::FirewallConfig> fwcfg_;
  std::unique_ptr<proxy::ReactorPool> reactors_;
  std::unique_ptr<proxy::TcpProxy> tcp_;
  std::unique_ptr<proxy::UdpProxy> udp_;
  std::unique_ptr<dns::Forwarder> forwarder_;
  mutable std::chrono::steady_clock::time_point names_saved_at_ = std::chrono::steady_clock::now();
  std::unique_ptr<firewall::VpnCoexistence> coexistence_;
  std::unique_ptr<api::Server> api_;
  StopStack stack_;  // last: unwinds first, while the components above still exist
};

}  // namespace splitd::daemon
