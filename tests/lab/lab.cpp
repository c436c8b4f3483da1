#include "tests/lab/lab.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>

#include "common/fd.hpp"
#include "common/log.hpp"

extern char** environ;

namespace splitd::lab {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kUpTimeout = 60s;
constexpr auto kDownTimeout = 60s;
constexpr auto kKillGrace = 5s;

// PATH for commands we start: tools such as ip and dnsmasq live in sbin, which a
// non-login root environment does not always have.
std::string command_path() {
  const char* p = std::getenv("PATH");
  std::string path = p != nullptr && *p != '\0' ? p : "/usr/local/bin:/usr/bin:/bin";
  for (const char* dir : {"/usr/local/sbin", "/usr/sbin", "/sbin"}) {
    if (((":" + path + ":").find(std::string(":") + dir + ":")) == std::string::npos) {
      path += ':';
      path += dir;
    }
  }
  return path;
}

// Full path of an executable, searched in command_path(); empty if not found.
std::string find_executable(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
  const std::string search = command_path();
  std::string_view path = search;
  while (!path.empty()) {
    const size_t colon = path.find(':');
    const std::string dir(path.substr(0, colon));
    path = colon == std::string_view::npos ? std::string_view() : path.substr(colon + 1);
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return "";
}

void append_available(int fd, std::string& to, bool& open) {
  char buf[16 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      to.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) open = false;
    return;
  }
}

std::string trim_copy(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

// The state letter of /proc/PID/stat ('R', 'S', 'Z'...), or '\0' if the process is gone.
char process_state(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return '\0';
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat.size()) return '\0';
  return stat[paren + 2];
}

}  // namespace

CmdResult run_command(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  if (argv.empty()) throw std::invalid_argument("run_command: empty argv");
  // Everything the child needs is built before fork(): between fork and exec in a
  // multi-threaded process only async-signal-safe calls are allowed (no malloc).
  const std::string exe = find_executable(argv[0]);
  if (exe.empty()) throw std::runtime_error("run_command: '" + argv[0] + "' not found in PATH");
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (std::strncmp(*e, "PATH=", 5) != 0) env_strings.emplace_back(*e);
  }
  env_strings.push_back("PATH=" + command_path());
  std::vector<char*> cenv;
  for (std::string& e : env_strings) cenv.push_back(e.data());
  cenv.push_back(nullptr);

  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0)
    throw std::system_error(errno, std::generic_category(), "pipe2");
  Fd out_r(out_pipe[0]), out_w(out_pipe[1]);
  if (::pipe2(err_pipe, O_CLOEXEC) != 0)
    throw std::system_error(errno, std::generic_category(), "pipe2");
  Fd err_r(err_pipe[0]), err_w(err_pipe[1]);
  Fd devnull(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!devnull) throw std::system_error(errno, std::generic_category(), "open /dev/null");

  const pid_t pid = ::fork();
  if (pid < 0) throw std::system_error(errno, std::generic_category(), "fork");
  if (pid == 0) {
    // Own process group, so a timeout can stop the command and all its children.
    ::setpgid(0, 0);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::dup2(devnull.get(), STDIN_FILENO);
    ::dup2(out_w.get(), STDOUT_FILENO);
    ::dup2(err_w.get(), STDERR_FILENO);
    // No test socket or pipe may leak into lab.sh and from there into lab daemons.
    ::close_range(3, ~0U, 0);
    ::execve(exe.c_str(), cargv.data(), cenv.data());
    constexpr char kMsg[] = "run_command: execve failed\n";
    [[maybe_unused]] const ssize_t w = ::write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also here: whichever runs first wins the race
  out_w.reset();
  err_w.reset();
  ::fcntl(out_r.get(), F_SETFL, O_NONBLOCK);
  ::fcntl(err_r.get(), F_SETFL, O_NONBLOCK);

  CmdResult result{-1, {}, {}};
  bool out_open = true, err_open = true, exited = false, timed_out = false;
  int status = 0;
  auto deadline = Clock::now() + timeout;
  Clock::time_point exited_at{};
  int kill_stage = 0;  // 0: running, 1: TERM sent, 2: KILL sent
  for (;;) {
    if (!exited) {
      const pid_t w = ::waitpid(pid, &status, WNOHANG);
      if (w == pid) {
        exited = true;
        exited_at = Clock::now();
      }
    }
    // Done once the output is drained; a stray grandchild holding the pipes open
    // (which would be a bug) cannot stall us for more than a second.
    if (exited && ((!out_open && !err_open) || Clock::now() - exited_at > 1s)) break;
    const auto now = Clock::now();
    if (!exited && now >= deadline) {
      if (kill_stage == 0) {
        timed_out = true;
        ::kill(-pid, SIGTERM);  // lets lab.sh run its cleanup trap
        kill_stage = 1;
        deadline = now + kKillGrace;
      } else if (kill_stage == 1) {
        ::kill(-pid, SIGKILL);
        kill_stage = 2;
        deadline = now + kKillGrace;
      } else {
        ::waitpid(pid, &status, 0);  // SIGKILL cannot be ignored
        exited = true;
        break;
      }
    }
    pollfd fds[2] = {{out_open ? out_r.get() : -1, POLLIN, 0},
                     {err_open ? err_r.get() : -1, POLLIN, 0}};
    // Short poll: the child's exit is noticed through waitpid, not the pipes.
    const int n = ::poll(fds, 2, 20);
    if (n < 0 && errno != EINTR) {
      // Cannot happen with valid fds; still never leave the child unreaped.
      if (!exited) ::waitpid(pid, &status, 0);
      break;
    }
    if (out_open && fds[0].revents != 0) append_available(out_r.get(), result.out, out_open);
    if (err_open && fds[1].revents != 0) append_available(err_r.get(), result.err, err_open);
  }
  if (WIFEXITED(status))
    result.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status))
    result.exit_code = 128 + WTERMSIG(status);
  if (timed_out) {
    result.exit_code = 124;
    result.err += "\n[run_command: '" + argv[0] + "' timed out after " +
                  std::to_string(timeout.count()) + " ms]";
  }
  return result;
}

const char* lab_script() { return SPLITD_LAB_SCRIPT; }
const char* tun_relay_path() { return SPLITD_LAB_TUN_RELAY; }
const char* responder_path() { return SPLITD_LAB_RESPONDER; }

std::string unavailable_reason() {
  if (::geteuid() != 0) {
    return "lab tests need root (network namespaces, TUN devices); run them as root";
  }
  {
    Fd tun(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
    if (!tun) return std::string("cannot open /dev/net/tun: ") + std::strerror(errno);
  }
  for (const char* tool : {"ip", "dnsmasq", "curl", "dig", "bash", "flock", "setsid"}) {
    if (find_executable(tool).empty()) return std::string("'") + tool + "' is not installed";
  }
  for (const char* file : {lab_script(), tun_relay_path(), responder_path()}) {
    if (::access(file, R_OK) != 0) return std::string(file) + " is missing";
  }
  // Root in a container may still lack CAP_SYS_ADMIN: try a namespace in a child.
  const pid_t pid = ::fork();
  if (pid < 0) return std::string("fork: ") + std::strerror(errno);
  if (pid == 0) ::_exit(::unshare(CLONE_NEWNET) == 0 ? 0 : 1);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "cannot create network namespaces here (unshare(CLONE_NEWNET) failed)";
  }
  return "";
}

std::vector<pid_t> live_pids_mentioning(const std::string& text) {
  std::vector<pid_t> pids;
  std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  if (!proc) return pids;
  while (const dirent* e = ::readdir(proc.get())) {
    const std::string name = e->d_name;
    if (name.empty() || !std::all_of(name.begin(), name.end(),
                                     [](unsigned char c) { return std::isdigit(c) != 0; }))
      continue;
    std::ifstream in("/proc/" + name + "/cmdline", std::ios::binary);
    const std::string cmdline((std::istreambuf_iterator<char>(in)),
                              std::istreambuf_iterator<char>());
    if (cmdline.find(text) == std::string::npos) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid == ::getpid()) continue;
    const char state = process_state(pid);
    if (state != '\0' && state != 'Z' && state != 'X') pids.push_back(pid);
  }
  return pids;
}

const char* to_string(Vpn vpn) {
  switch (vpn) {
    case Vpn::kRelay:
      return "relay";
    case Vpn::kOpenVpn:
      return "openvpn";
    case Vpn::kWireGuard:
      return "wireguard";
  }
  return "?";
}

std::unique_ptr<Lab> Lab::start(const LabOptions& opts, std::string* skip_reason) {
  std::string reason = unavailable_reason();
  if (reason.empty()) {
    std::vector<const char*> tools;
    if (opts.vpn == Vpn::kOpenVpn) tools = {"openvpn"};
    if (opts.vpn == Vpn::kWireGuard) tools = {"wg", "wg-quick", "wireguard-go", "nft", "unshare"};
    for (const char* tool : tools) {
      if (find_executable(tool).empty()) {
        reason = std::string("'") + tool + "' is not installed (deploy/install-deps.sh installs it)";
        break;
      }
    }
  }
  if (!reason.empty()) {
    if (skip_reason != nullptr) *skip_reason = std::move(reason);
    return nullptr;
  }
  // Both helper programs are built into the same directory.
  std::string bin_dir = tun_relay_path();
  bin_dir.erase(bin_dir.rfind('/'));
  std::vector<std::string> argv = {
      "bash", lab_script(), "up", "--owner", std::to_string(::getpid()), "--bin-dir", bin_dir};
  if (opts.vpn_default_route) argv.emplace_back("--vpn-default-route");
  if (opts.vpn != Vpn::kRelay) {
    argv.emplace_back("--vpn");
    argv.emplace_back(to_string(opts.vpn));
  }
  const CmdResult r = run_command(argv, kUpTimeout);
  if (r.exit_code != 0) {
    throw std::runtime_error("lab.sh up failed (exit " + std::to_string(r.exit_code) +
                             "): " + r.err);
  }
  std::map<std::string, std::string> vars;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    const size_t eq = line.find('=');
    if (eq != std::string::npos) vars[line.substr(0, eq)] = line.substr(eq + 1);
  }
  for (const char* key : {"LAB_ID", "LAB_HOST", "LAB_WAN", "LAB_VPN", "LAB_DIR"}) {
    if (vars[key].empty()) {
      // Something came up but we cannot name it; remove it if we know its id.
      if (!vars["LAB_ID"].empty()) run_command({"bash", lab_script(), "down", vars["LAB_ID"]});
      throw std::runtime_error(std::string("lab.sh up did not print ") + key +
                               "; output: " + r.out);
    }
  }
  return std::unique_ptr<Lab>(
      new Lab(vars["LAB_ID"], vars["LAB_HOST"], vars["LAB_WAN"], vars["LAB_VPN"], vars["LAB_DIR"],
              opts.vpn));
}

Lab::Lab(std::string id, std::string host, std::string wan, std::string vpn, std::string dir,
         Vpn kind)
    : id_(std::move(id)),
      host_ns_(std::move(host)),
      wan_ns_(std::move(wan)),
      vpn_ns_(std::move(vpn)),
      dir_(std::move(dir)),
      vpn_(kind) {}

Lab::~Lab() {
  try {
    stop();
  } catch (const std::exception& e) {
    // A destructor must not throw; the next lab.sh up reaps what is left.
    log::error("lab ", id_, ": teardown failed: ", e.what());
  }
}

std::string Lab::resolve_ns(const std::string& ns) const {
  if (ns == "host") return host_ns_;
  if (ns == "wan") return wan_ns_;
  if (ns == "vpn") return vpn_ns_;
  if (ns == host_ns_ || ns == wan_ns_ || ns == vpn_ns_) return ns;
  throw std::invalid_argument("lab " + id_ + ": unknown namespace '" + ns + "'");
}

CmdResult Lab::exec(const std::string& ns, const std::string& shell_cmd,
                    std::chrono::milliseconds timeout) const {
  return run_command({"ip", "netns", "exec", resolve_ns(ns), "sh", "-c", shell_cmd}, timeout);
}

void Lab::set_vpn_default_route(bool on) const {
  const CmdResult r = run_command({"bash", lab_script(), "vpn-route", id_, on ? "on" : "off"});
  if (r.exit_code != 0) {
    throw std::runtime_error("lab.sh vpn-route " + id_ + (on ? " on" : " off") +
                             " failed: " + r.err);
  }
}

void Lab::set_vpn_up(bool up) const {
  const CmdResult r = run_command({"bash", lab_script(), "vpn", id_, up ? "up" : "down"});
  if (r.exit_code != 0) {
    throw std::runtime_error("lab.sh vpn " + id_ + (up ? " up" : " down") + " failed: " + r.err);
  }
}

void Lab::in_ns(const std::string& ns, const std::function<void()>& fn) const {
  const std::string path = "/run/netns/" + resolve_ns(ns);
  std::exception_ptr error;
  // A fresh thread, because setns() changes the calling thread only and this thread
  // must stay where it is. The namespace is joined before fn runs.
  std::thread worker([&] {
    try {
      Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) throw std::system_error(errno, std::generic_category(), "open " + path);
      if (::setns(fd.get(), CLONE_NEWNET) != 0) {
        throw std::system_error(errno, std::generic_category(), "setns " + path);
      }
      fn();
    } catch (...) {
      error = std::current_exception();
    }
  });
  worker.join();
  if (error) std::rethrow_exception(error);
}

std::vector<pid_t> Lab::processes() const {
  std::vector<pid_t> pids;
  for (const std::string* ns : {&host_ns_, &wan_ns_, &vpn_ns_}) {
    const CmdResult r = run_command({"ip", "netns", "pids", *ns}, 10s);
    std::istringstream in(r.out);
    for (long pid; in >> pid;) pids.push_back(static_cast<pid_t>(pid));
  }
  for (const char* name :
       {"relay", "responder-wan", "responder-vpn", "dnsmasq-wan", "dnsmasq-vpn", "openvpn-server",
        "openvpn-client"}) {
    std::ifstream in(dir_ + "/" + name + ".pid");
    long pid = 0;
    if (in >> pid && pid > 0) pids.push_back(static_cast<pid_t>(pid));
  }
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  return pids;
}

void Lab::stop() {
  if (stopped_) return;
  const CmdResult r = run_command({"bash", lab_script(), "down", id_}, kDownTimeout);
  stopped_ = true;  // a failed down is not retried by the destructor; reap catches it
  if (r.exit_code != 0) {
    throw std::runtime_error("lab.sh down " + id_ + " failed (exit " + std::to_string(r.exit_code) +
                             "): " + trim_copy(r.err));
  }
}

}  // namespace splitd::lab
