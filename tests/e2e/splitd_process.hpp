#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tests/lab/lab.hpp"

namespace splitd::e2e {

// The real splitd binary running in a lab's host namespace with a config of the test's.
// The destructor kills it if it is still running.
class SplitdProcess {
 public:
  // Writes `config_toml` into the lab's state dir, starts `splitd run --config` there and
  // waits for its "ready:" log line. Throws with the log if it exits or is not ready in 5 s.
  static std::unique_ptr<SplitdProcess> start(const lab::Lab& lab, const std::string& config_toml,
                                              const std::string& name = "splitd");
  ~SplitdProcess();

  // SIGTERM, then waits up to `timeout`; returns the exit code, or -1 if it had to be killed.
  int terminate(std::chrono::milliseconds timeout = std::chrono::milliseconds(3000));
  // SIGKILL and reap (a crash).
  void kill_hard();
  // Sends SIGUSR1 (session list to the log) or another signal.
  void signal(int sig) const;

  pid_t pid() const { return pid_; }
  std::string log() const;
  // Waits until the log contains `text`; false after `timeout`.
  bool wait_for_log(const std::string& text,
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(3000)) const;

 private:
  SplitdProcess(pid_t pid, std::string log_path) : pid_(pid), log_path_(std::move(log_path)) {}
  pid_t pid_;
  std::string log_path_;
  std::string exec_cgroup_;  // the exec cgroups splitd made (absolute): removed if it could not
  bool reaped_ = false;
};

const char* splitd_path();

// A config for the lab: the mode and IP rules, extra [proxy] and [firewall] lines, the
// log level; DNS capture off (not built yet).
std::string lab_config(const std::string& mode, const std::vector<std::string>& ips,
                       const std::string& proxy = "", const std::string& firewall = "",
                       const std::string& log_level = "debug");

// The API socket of the splitd named `name` in this lab (SplitdProcess::start puts it there).
std::string api_socket_path(const lab::Lab& lab, const std::string& name = "splitd");
// `config` with the lab's paths for api_socket, state_dir and api_token_file where it
// gives none.
std::string with_lab_paths(const lab::Lab& lab, const std::string& config, const std::string& name);

// `curl -s -g --max-time 5 ARGS` in host: its output, or "curl exit N: stderr".
std::string curl(const lab::Lab& lab, const std::string& args);
inline bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

// GET /metrics from the API socket of the splitd named `name` in this lab ("" on failure).
std::string metrics(const lab::Lab& lab, const std::string& name = "splitd");
// The value of one series of a /metrics text, e.g. `splitd_sniff_total{protocol="tcp",...}`
// (0 when absent).
double metric(const std::string& text, const std::string& series);

// The wan servers' networks: excluded (direct) in most tests, the rest goes through the tunnel.
inline const std::vector<std::string> kExcludeWanServers = {"203.0.113.0/24", "2001:db8::/64"};

}  // namespace splitd::e2e
