#pragma once

#include <algorithm>
#include <mutex>

#include "api/backend.hpp"

namespace splitd::api::testing {

inline DnsEntry dns_entry(const char* ip, std::vector<std::string> names, std::int64_t expires_unix_ms,
                          std::string source = "dns") {
  return {*IpAddress::parse(ip), std::move(names),
          std::chrono::system_clock::time_point(std::chrono::milliseconds(expires_unix_ms)), std::move(source)};
}

inline proxy::SessionView session(std::uint64_t id, decider::Protocol p = decider::Protocol::kTcp,
                                  decider::RouteKind kind = decider::RouteKind::kTunnel) {
  proxy::SessionView s;
  s.id = id;
  s.protocol = p;
  s.client = {*IpAddress::parse("198.18.2.2"), static_cast<std::uint16_t>(40000 + id % 1000)};
  s.destination = {*IpAddress::parse("203.0.113.10"), 80};
  s.route.kind = kind;
  s.route.interface = kind == decider::RouteKind::kBlock ? "" : kind == decider::RouteKind::kTunnel ? "tun0" : "phys0";
  s.route.rule = "default";
  s.started_at = std::chrono::system_clock::time_point(std::chrono::milliseconds(1'796'205'301'003));
  s.idle = std::chrono::milliseconds(120);
  s.bytes_sent = 77;
  s.bytes_received = 512;
  return s;
}

// A Backend with rules and sessions in memory. The sessions and the call log take a lock
// because server tests change them from the test thread while the server reads them.
class FakeBackend : public Backend {
 public:
  FakeBackend() {
    st_.ready = true;
    st_.tunnel_interface = "tun0";
    st_.tunnel_up = true;
    st_.physical_interface = "phys0";
    st_.dns_enabled = true;
    st_.dns_servers = {*IpAddress::parse("1.1.1.1")};
    st_.dns_direct_servers = {*IpAddress::parse("192.0.2.53")};
    st_.started_at = std::chrono::system_clock::time_point(std::chrono::seconds(1'796'205'272));
    st_.version = "0.1.0";
    st_.git_revision = "d863c34";
    st_.config_file = "/etc/splitd/splitd.toml";
    st_.state_file = "/var/lib/splitd/rules.json";
    rules_.effective.domains = {"*.local"};
    rules_.effective.ips = {*Cidr::parse("10.0.0.0/8")};
  }

  void set_sessions(std::vector<proxy::SessionView> s) {
    std::lock_guard lock(mu_);
    sessions_ = std::move(s);
  }
  std::vector<std::uint64_t> killed() const {
    std::lock_guard lock(mu_);
    return killed_;
  }
  // Every connections() call changes every session's counters (a busy table).
  void bump_on_read(bool on) {
    std::lock_guard lock(mu_);
    bump_on_read_ = on;
  }
  int connections_calls() const {
    std::lock_guard lock(mu_);
    return connections_calls_;
  }

  Status status() const override { return st_; }
  Result<Ok> set_enabled(bool on) override {
    st_.enabled = on;
    return Ok{};
  }
  std::vector<proxy::SessionView> connections() const override {
    std::lock_guard lock(mu_);
    ++connections_calls_;
    if (bump_on_read_) {
      for (auto& s : sessions_) ++s.bytes_sent;
    }
    return sessions_;
  }
  bool kill(std::uint64_t id) override {
    std::lock_guard lock(mu_);
    auto it = std::find_if(sessions_.begin(), sessions_.end(), [id](const auto& s) { return s.id == id; });
    if (it == sessions_.end()) return false;
    killed_.push_back(id);
    sessions_.erase(it);
    return true;
  }
  Rules rules() const override { return rules_; }
  Result<Ok> set_mode(decider::Mode m) override {
    rules_.effective.mode = m;
    rules_.mode_from_api = true;
    return Ok{};
  }
  Result<Ok> add_app(const config::AppRule& app) override {
    auto& v = rules_.effective.apps;
    if (std::any_of(v.begin(), v.end(), [&](const auto& a) { return a.name == app.name; })) {
      return unexpected(ApiError{409, "conflict", "an app rule named '" + app.name + "' is in force"});
    }
    v.push_back(app);
    rules_.added.apps.push_back(app);
    return Ok{};
  }
  Result<Ok> remove_app(const std::string& name) override {
    auto& v = rules_.effective.apps;
    auto it = std::find_if(v.begin(), v.end(), [&](const auto& a) { return a.name == name; });
    if (it == v.end()) return unexpected(ApiError{404, "not found", "no app rule named '" + name + "'"});
    v.erase(it);
    return Ok{};
  }
  Result<Ok> add_domain(const std::string& p) override { return add(rules_.effective.domains, rules_.added.domains, p); }
  Result<Ok> remove_domain(const std::string& p) override { return remove(rules_.effective.domains, p); }
  Result<Ok> add_ip(const Cidr& c) override { return add(rules_.effective.ips, rules_.added.ips, c); }
  Result<Ok> remove_ip(const Cidr& c) override { return remove(rules_.effective.ips, c); }
  std::shared_ptr<const iface::InterfaceSnapshot> interfaces() const override {
    return iface::InterfaceSnapshot::build(iface::NetlinkState{}, iface::SelectionConfig{});
  }
  MetricsSnapshot metrics() const override {
    MetricsSnapshot m;
    m.sessions.tcp.started = 5;
    m.sessions.tcp.decisions[0][2] = 3;
    m.sessions.active_tcp = 2;
    m.version = "0.1.0";
    m.git_revision = "d863c34\"x";
    m.started_at = st_.started_at;
    m.rules_ips = rules_.effective.ips.size();
    m.dns = dns_metrics_;
    m.dns.enabled = st_.dns_enabled;
    return m;
  }
  Result<std::string> exec(const Caller& caller, std::int64_t pid, decider::RouteKind route) override {
    std::lock_guard lock(mu_);
    last_exec_ = {caller.uid, pid != 0 ? pid : caller.pid, route};
    if (caller.uid != 0 && pid != 0 && pid != caller.pid) {
      return unexpected(ApiError{403, "forbidden", "uid " + std::to_string(caller.uid) + " may move only its own processes"});
    }
    return std::string(route == decider::RouteKind::kDirect ? "/splitd-exec/direct" : "/splitd-exec/tunnel");
  }
  struct ExecCall {
    std::int64_t uid = -1, pid = 0;
    decider::RouteKind route = decider::RouteKind::kBlock;
  };
  ExecCall last_exec() const {
    std::lock_guard lock(mu_);
    return last_exec_;
  }
  std::vector<DnsEntry> dns_cache() const override {
    std::lock_guard lock(mu_);
    ++dns_cache_calls_;
    return dns_entries_;
  }
  std::size_t flush_dns_cache() override {
    std::lock_guard lock(mu_);
    ++dns_flushes_;
    const std::size_t n = dns_entries_.size();
    dns_entries_.clear();
    return n;
  }

  // The learned names dns_cache() answers with, in this order (unsorted on purpose).
  void set_dns_entries(std::vector<DnsEntry> e) {
    std::lock_guard lock(mu_);
    dns_entries_ = std::move(e);
  }
  int dns_cache_calls() const {
    std::lock_guard lock(mu_);
    return dns_cache_calls_;
  }
  int dns_flushes() const {
    std::lock_guard lock(mu_);
    return dns_flushes_;
  }

  Status st_;
  Rules rules_;
  DnsMetrics dns_metrics_;  // metrics().dns, with enabled from st_.dns_enabled

 private:
  template <typename T>
  static Result<Ok> add(std::vector<T>& in_force, std::vector<T>& added, const T& v) {
    if (std::find(in_force.begin(), in_force.end(), v) != in_force.end()) {
      return unexpected(ApiError{409, "conflict", "already in force"});
    }
    in_force.push_back(v);
    added.push_back(v);
    return Ok{};
  }
  template <typename T>
  static Result<Ok> remove(std::vector<T>& in_force, const T& v) {
    auto it = std::find(in_force.begin(), in_force.end(), v);
    if (it == in_force.end()) return unexpected(ApiError{404, "not found", "not in force"});
    in_force.erase(it);
    return Ok{};
  }

  mutable std::mutex mu_;
  mutable std::vector<proxy::SessionView> sessions_;
  std::vector<std::uint64_t> killed_;
  mutable int connections_calls_ = 0;
  std::vector<DnsEntry> dns_entries_;
  mutable int dns_cache_calls_ = 0;
  ExecCall last_exec_;
  int dns_flushes_ = 0;
  bool bump_on_read_ = false;
};

}  // namespace splitd::api::testing
