#include "tests/e2e/splitd_process.hpp"

#include "cgroup/hierarchy.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <fcntl.h>

#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace splitd::e2e {

using namespace std::chrono_literals;

const char* splitd_path() { return SPLITD_BINARY; }

std::string lab_config(const std::string& mode, const std::vector<std::string>& ips,
                       const std::string& proxy, const std::string& firewall,
                       const std::string& log_level) {
  std::string list;
  for (const auto& i : ips) list += (list.empty() ? "\"" : ", \"") + i + "\"";
  return "[daemon]\nlog_level = \"" + log_level + "\"\n"
         "[proxy]\n" + proxy + "\n"
         "[firewall]\n" + firewall + "\n"
         "[split]\nmode = \"" + mode + "\"\nips = [" + list + "]\n"
         "[dns]\nenabled = false\n";
}

std::string api_socket_path(const lab::Lab& lab, const std::string& name) {
  return lab.state_dir() + "/" + name + ".sock";
}

std::string with_lab_paths(const lab::Lab& lab, const std::string& config, const std::string& name) {
  // Tests run in parallel: each splitd's API socket and rule state live in its lab.
  std::string paths;
  if (config.find("api_socket") == std::string::npos) {
    paths += "api_socket = \"" + api_socket_path(lab, name) + "\"\n";
  }
  if (config.find("state_dir") == std::string::npos) {
    paths += "state_dir = \"" + lab.state_dir() + "/" + name + "-state\"\n";
  }
  if (config.find("exec_cgroup") == std::string::npos) {
    // Every lab's splitd has its own exec cgroups (cgroups are not per network namespace);
    // splitd removes them when it stops.
    paths += "exec_cgroup = \"/splitd-lab-" + lab.id() + "-" + name + "\"\n";
  }
  if (config.find("api_token_file") == std::string::npos) {
    paths += "api_token_file = \"" + lab.state_dir() + "/" + name + ".token\"\n";
  }
  const std::size_t at = config.find("[daemon]\n");
  if (at == std::string::npos) return "[daemon]\n" + paths + config;
  std::string out = config;
  out.insert(at + 9, paths);
  return out;
}

std::string curl(const lab::Lab& lab, const std::string& args) {
  auto r = lab.exec(lab.host_ns(), "curl -s -g --max-time 5 " + args);
  return r.exit_code == 0 ? r.out : "curl exit " + std::to_string(r.exit_code) + ": " + r.err;
}

std::string metrics(const lab::Lab& lab, const std::string& name) {
  return lab.exec(lab.host_ns(), "curl -s --max-time 5 --unix-socket '" + api_socket_path(lab, name) +
                                     "' http://splitd/metrics").out;
}

double metric(const std::string& text, const std::string& series) {
  std::size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::stod(text.substr(at + series.size() + 1));
    at += series.size();
  }
  return 0;
}

std::unique_ptr<SplitdProcess> SplitdProcess::start(const lab::Lab& lab, const std::string& config,
                                                    const std::string& name) {
  const std::string conf_path = lab.state_dir() + "/" + name + ".toml";
  const std::string log_path = lab.state_dir() + "/" + name + ".log";
  {
    std::ofstream out(conf_path);
    out << with_lab_paths(lab, config, name);
  }
  // Truncate here, not in the child: a previous run's "ready:" must not be seen as ours.
  { std::ofstream truncate(log_path, std::ios::trunc); }
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0) ::dup2(null, STDIN_FILENO);
    // `ip netns exec` execs splitd itself, so this pid is splitd's.
    execlp("ip", "ip", "netns", "exec", lab.host_ns().c_str(), splitd_path(), "run", "--config",
           conf_path.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::unique_ptr<SplitdProcess> p(new SplitdProcess(pid, log_path));
  if (config.find("exec_cgroup") == std::string::npos) {
    if (auto mount = cgroup::cgroup2_mount()) p->exec_cgroup_ = *mount + "/splitd-lab-" + lab.id() + "-" + name;
  }
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (p->log().find(" ready: ") != std::string::npos) return p;
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) {
      p->reaped_ = true;
      throw std::runtime_error("splitd exited during start (status " + std::to_string(status) +
                               "):\n" + p->log());
    }
    std::this_thread::sleep_for(10ms);
  }
  throw std::runtime_error("splitd not ready after 5 s:\n" + p->log());
}

SplitdProcess::~SplitdProcess() { kill_hard(); }

void SplitdProcess::signal(int sig) const { ::kill(pid_, sig); }

int SplitdProcess::terminate(std::chrono::milliseconds timeout) {
  if (reaped_) return -1;
  ::kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      reaped_ = true;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(5ms);
  }
  kill_hard();
  return -1;
}

void SplitdProcess::kill_hard() {
  if (reaped_) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  ::waitpid(pid_, &status, 0);
  reaped_ = true;
  // A splitd killed cannot remove its exec cgroups: the test does (processes a test left
  // there are killed first). One that stopped by itself removed them already.
  if (!exec_cgroup_.empty()) {
    for (const char* leaf : {"/direct", "/tunnel", ""}) {
      const std::string dir = exec_cgroup_ + leaf;
      std::ifstream procs(dir + "/cgroup.procs");
      for (pid_t p; procs >> p;) ::kill(p, SIGKILL);
      for (int i = 0; i < 50 && ::rmdir(dir.c_str()) != 0 && errno == EBUSY; ++i) std::this_thread::sleep_for(20ms);
    }
  }
}

std::string SplitdProcess::log() const {
  std::ifstream in(log_path_);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool SplitdProcess::wait_for_log(const std::string& text, std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    if (log().find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(10ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

}  // namespace splitd::e2e
