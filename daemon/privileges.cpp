#include "daemon/privileges.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/capability.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <type_traits>
#include <vector>

#include "cgroup/hierarchy.hpp"
#include "common/fd.hpp"
#include "common/log.hpp"
#include "common/sanitizers.hpp"
#include "config/config.hpp"

namespace splitd::daemon {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t bit(int cap) { return std::uint64_t{1} << cap; }

struct DirCloser {
  void operator()(DIR* d) const noexcept { ::closedir(d); }
};
struct CapFree {
  void operator()(void* caps) const noexcept { cap_free(caps); }
};

// The most threads one drop reaches (the proxies run two per core, DNS up to four more).
constexpr std::size_t kMaxThreads = 4096;
constexpr std::size_t kMaxGroups = 64;
constexpr int kMaxRounds = 64;
constexpr auto kThreadTimeout = 2s;
// How long a sanitizer build waits for a thread that blocks every signal before it takes it
// for the sanitizer runtime's own.
constexpr auto kSanitizerGrace = 100ms;
constexpr int kMaxChownDepth = 8;

// ---- the drop, as every thread performs it on itself ------------------------------------

// Everything a thread needs to change its own credentials; plain data, read by a signal
// handler.
struct Plan {
  std::uint64_t keep = 0;
  int last_cap = 0;
  bool drop_bounding = false;
  bool switch_user = false;
  uid_t uid = 0;
  gid_t gid = 0;
  std::size_t ngroups = 0;
  gid_t groups[kMaxGroups]{};
};

enum Step : int { kCapget = 1, kBounding, kKeepCaps, kGroups, kGid, kUid, kCapset, kAmbient, kNoNewPrivs };

const char* step_name(int step) {
  switch (step) {
    case kCapget: return "capget";
    case kBounding: return "PR_CAPBSET_DROP";
    case kKeepCaps: return "PR_SET_KEEPCAPS";
    case kGroups: return "setgroups";
    case kGid: return "setresgid";
    case kUid: return "setresuid";
    case kCapset: return "capset";
    case kAmbient: return "PR_CAP_AMBIENT_CLEAR_ALL";
    case kNoNewPrivs: return "PR_SET_NO_NEW_PRIVS";
    default: return "?";
  }
}

// Applies `p` to the calling thread: raw system calls only (async-signal-safe), because
// set*id through glibc would broadcast to the other threads in the middle of their own
// change. A thread that already holds the plan's credentials (a thread started by a thread
// that had changed) skips the changes it no longer has the rights for. Returns 0 or errno.
int apply_plan(const Plan& p, int* step) noexcept {
  const auto fail = [step](int at) {
    *step = at;
    return errno;
  };
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct now[2]{};
  if (::syscall(SYS_capget, &hdr, now) != 0) return fail(kCapget);
  const auto both = [](std::uint32_t low, std::uint32_t high) { return low | (std::uint64_t{high} << 32); };
  const bool caps_done = both(now[0].permitted, now[1].permitted) == p.keep &&
                         both(now[0].effective, now[1].effective) == p.keep &&
                         both(now[0].inheritable, now[1].inheritable) == 0;
  const bool user_done = !p.switch_user || static_cast<uid_t>(::syscall(SYS_getuid)) == p.uid;
  if (!caps_done || !user_done) {
    if (p.drop_bounding) {
      for (int c = 0; c <= p.last_cap; ++c) {
        if ((p.keep & bit(c)) == 0 && ::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL) {
          return fail(kBounding);
        }
      }
    }
    if (p.switch_user) {
      // Keep the permitted set across the change of uid (it clears the effective set).
      if (::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return fail(kKeepCaps);
      if (::syscall(SYS_setgroups, p.ngroups, p.groups) != 0) return fail(kGroups);
      if (::syscall(SYS_setresgid, p.gid, p.gid, p.gid) != 0) return fail(kGid);
      if (::syscall(SYS_setresuid, p.uid, p.uid, p.uid) != 0) return fail(kUid);
      if (::prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0) return fail(kKeepCaps);
    }
    __user_cap_data_struct want[2]{};
    want[0].effective = want[0].permitted = static_cast<std::uint32_t>(p.keep);
    want[1].effective = want[1].permitted = static_cast<std::uint32_t>(p.keep >> 32);
    if (::syscall(SYS_capset, &hdr, want) != 0) return fail(kCapset);
  }
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
    return fail(kAmbient);
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return fail(kNoNewPrivs);
  return 0;
}

// ---- the broadcast -------------------------------------------------------------------
//
// Capabilities, the bounding set, keepcaps and no_new_privs are per thread, and when the
// drop runs the workers already exist. libcap 2.66 (Debian 12) makes its calls process-wide
// only through libpsx, whose registry sees threads made by a pthread_create wrapped at link
// time (-Wl,-wrap,pthread_create); every thread here is a std::thread, created inside
// libstdc++, which that wrap does not reach (measured: a std::thread kept CapEff
// 000001ffffffffff after cap_set_proc with libpsx linked). So, as glibc does for set*id and
// newer libpsx does, each thread listed in /proc/self/task gets a real-time signal whose
// handler applies the plan to itself and reports; listing again until no thread is new
// catches threads started meanwhile (a thread started by one that had changed inherits the
// change). The handler stays installed: a signal still pending after a timeout must not kill
// the process.

struct Slot {
  std::atomic<pid_t> tid{0};
  std::atomic<int> done{0};
  std::atomic<int> err{0};
  std::atomic<int> step{0};
};

Plan g_plan;  // written before any signal is sent
std::array<Slot, kMaxThreads> g_slots;
std::atomic<std::size_t> g_used{0};

void on_drop_signal(int) {
  const int saved = errno;
  const std::size_t used = g_used.load(std::memory_order_acquire);
  const auto me = static_cast<pid_t>(::syscall(SYS_gettid));
  int step = 0;
  const int err = apply_plan(g_plan, &step);
  for (std::size_t i = 0; i < used; ++i) {
    Slot& s = g_slots[i];
    if (s.tid.load(std::memory_order_relaxed) != me || s.done.load(std::memory_order_relaxed) != 0) continue;
    s.err.store(err, std::memory_order_relaxed);
    s.step.store(step, std::memory_order_relaxed);
    s.done.store(1, std::memory_order_release);
    break;
  }
  errno = saved;
}

// A real-time signal nobody handles, with on_drop_signal installed; 0 when none is free.
int drop_signal() {
  static const int sig = [] {
    for (int s = SIGRTMAX; s > SIGRTMIN; --s) {
      struct sigaction old {};
      if (::sigaction(s, nullptr, &old) != 0 || old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO) != 0) continue;
      struct sigaction sa {};
      sa.sa_handler = on_drop_signal;
      sigfillset(&sa.sa_mask);
      sa.sa_flags = SA_RESTART;
      if (::sigaction(s, &sa, nullptr) == 0) return s;
    }
    return 0;
  }();
  return sig;
}

std::vector<pid_t> threads_now() {
  std::vector<pid_t> out;
  std::unique_ptr<DIR, DirCloser> dir(::opendir("/proc/self/task"));
  if (!dir) return out;
  while (const dirent* e = ::readdir(dir.get())) {
    char* end = nullptr;
    const long tid = std::strtol(e->d_name, &end, 10);
    if (tid > 0 && end != e->d_name && *end == '\0') out.push_back(static_cast<pid_t>(tid));
  }
  return out;
}

bool thread_exists(pid_t tid) { return ::access(("/proc/self/task/" + std::to_string(tid)).c_str(), F_OK) == 0; }

std::string task_file(pid_t tid, const char* leaf) {
  std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/" + leaf);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::optional<std::string> status_field(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::string v = line.substr(key.size() + 1);
    const std::size_t b = v.find_first_not_of(" \t");
    return b == std::string::npos ? std::string() : v.substr(b);
  }
  return std::nullopt;
}

// Whether thread `tid` blocks `sig` (SigBlk): such a thread never runs the handler.
bool blocks(pid_t tid, int sig) {
  const auto mask = status_field(task_file(tid, "status"), "SigBlk");
  return mask && ((std::strtoull(mask->c_str(), nullptr, 16) >> (sig - 1)) & 1) != 0;
}

// Their runtimes run threads that block every signal.
constexpr bool kSanitizerBuild = kAddressSanitizer || kThreadSanitizer;

std::string comm_of(pid_t tid) {
  std::string comm = task_file(tid, "comm");
  if (!comm.empty() && comm.back() == '\n') comm.pop_back();
  return comm;
}

std::string thread_failure(pid_t tid, int step, int err) {
  return std::string("thread ") + std::to_string(tid) + ": " + step_name(step) + ": " + std::strerror(err);
}

// Applies g_plan to every thread: the others first, the calling one last (its privileges
// stop the daemon cleanly if another thread fails). Returns how many threads changed. A
// thread that never takes the signal is an error, except a sanitizer runtime's (in `skipped`).
Expected<std::size_t, std::string> apply_everywhere(const Plan& plan, std::set<pid_t>& skipped) {
  g_plan = plan;
  const int sig = drop_signal();
  if (sig == 0) return unexpected(std::string("no free real-time signal to reach the other threads"));
  const auto self = static_cast<pid_t>(::syscall(SYS_gettid));
  std::set<pid_t> seen{self};
  std::size_t used = g_used.load(std::memory_order_relaxed);
  for (int round = 0;; ++round) {
    if (round == kMaxRounds) return unexpected(std::string("threads kept appearing while privileges were dropped"));
    std::vector<std::size_t> batch;
    for (pid_t tid : threads_now()) {
      if (!seen.insert(tid).second) continue;
      if (used == kMaxThreads) return unexpected("more than " + std::to_string(kMaxThreads) + " threads");
      Slot& s = g_slots[used];
      s.done.store(0, std::memory_order_relaxed);
      s.tid.store(tid, std::memory_order_relaxed);
      batch.push_back(used++);
    }
    if (batch.empty()) break;
    g_used.store(used, std::memory_order_release);
    for (std::size_t i : batch) {
      const pid_t tid = g_slots[i].tid.load(std::memory_order_relaxed);
      if (::syscall(SYS_tgkill, ::getpid(), tid, sig) != 0) {
        if (errno != ESRCH) return unexpected("tgkill of thread " + std::to_string(tid) + ": " + std::strerror(errno));
        g_slots[i].done.store(2, std::memory_order_relaxed);  // it ended meanwhile
      }
    }
    // A thread that is starting (glibc creates it with every signal blocked) or in a signal
    // handler blocks the signal for a moment; it is queued and runs when unblocked.
    const auto sent = std::chrono::steady_clock::now();
    for (std::size_t i : batch) {
      Slot& s = g_slots[i];
      const pid_t tid = s.tid.load(std::memory_order_relaxed);
      bool skip = false;
      while (s.done.load(std::memory_order_acquire) == 0 && std::chrono::steady_clock::now() < sent + kThreadTimeout) {
        if (kSanitizerBuild && std::chrono::steady_clock::now() > sent + kSanitizerGrace && blocks(tid, sig)) {
          skip = true;
          break;
        }
        std::this_thread::sleep_for(200us);
      }
      const int done = s.done.load(std::memory_order_acquire);
      if (done == 0 && skip) {
        log::warn("privileges: thread ", tid, " (", comm_of(tid), ") blocks every signal (a sanitizer runtime's) and keeps its credentials");
        skipped.insert(tid);
        continue;
      }
      if (done == 0 && thread_exists(tid)) {
        return unexpected("thread " + std::to_string(tid) + " (" + comm_of(tid) + ") did not take the new credentials within " +
                          std::to_string(kThreadTimeout.count()) + " s (SigBlk " +
                          status_field(task_file(tid, "status"), "SigBlk").value_or("?") + ", signal " + std::to_string(sig) + ")");
      }
      if (done == 1 && s.err.load(std::memory_order_relaxed) != 0) {
        return unexpected(thread_failure(tid, s.step.load(std::memory_order_relaxed), s.err.load(std::memory_order_relaxed)));
      }
    }
  }
  int step = 0;
  if (const int err = apply_plan(g_plan, &step); err != 0) return unexpected(thread_failure(self, step, err));
  return seen.size() - skipped.size();
}

// ---- what to keep --------------------------------------------------------------------

struct User {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;
};

std::optional<User> splitd_user(const std::string& name) {
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (name.empty() || ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) return std::nullopt;
  if (pw.pw_uid == 0) return std::nullopt;  // a "splitd" that is root changes nothing
  User u{name, pw.pw_uid, pw.pw_gid, {}};
  std::vector<gid_t> groups(kMaxGroups);
  int n = static_cast<int>(groups.size());
  if (::getgrouplist(name.c_str(), pw.pw_gid, groups.data(), &n) < 0) {
    log::warn("privileges: user ", name, " is in more than ", kMaxGroups, " groups; keeping only its own");
    groups.assign(1, pw.pw_gid);
    n = 1;
  }
  groups.resize(static_cast<std::size_t>(n));
  u.groups = std::move(groups);
  return u;
}

bool kernel_before_5_7() {
  utsname u{};
  if (::uname(&u) != 0) return false;
  int major = 0, minor = 0;
  if (std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major < 5 || (major == 5 && minor < 7);
}

// Whether Runtime::start_identification made (or adopted) the exec cgroups: the same base.
bool exec_cgroups_present(const config::Config& cfg, const std::string& mount) {
  std::string base = cfg.daemon.exec_cgroup;
  if (base.empty()) {
    auto own = cgroup::own_cgroup();
    base = (own && *own != "/" ? *own : std::string()) + "/splitd-exec";
  }
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  return ::access(cgroup::join_mount(mount, base + "/direct/cgroup.procs").c_str(), F_OK) == 0;
}

std::string cap_names(std::uint64_t caps) {
  std::string out;
  for (int c = 0; c < 64; ++c) {
    if ((caps & bit(c)) == 0) continue;
    char* name = cap_to_name(c);
    out += (out.empty() ? "" : ",") + std::string(name ? name : std::to_string(c));
    cap_free(name);
  }
  return out.empty() ? std::string("none") : out;
}

// The calling thread's permitted set and whether CAP_SETPCAP, CAP_SETUID and CAP_SETGID
// are effective, read with libcap.
struct Held {
  std::uint64_t permitted = 0;
  bool setpcap = false;
  bool setid = false;
};
std::optional<Held> held_now(int last_cap) {
  std::unique_ptr<std::remove_pointer_t<cap_t>, CapFree> caps(cap_get_proc());
  if (!caps) return std::nullopt;
  Held h;
  const auto has = [&](cap_value_t c, cap_flag_t flag) {
    cap_flag_value_t v = CAP_CLEAR;
    return cap_get_flag(caps.get(), c, flag, &v) == 0 && v == CAP_SET;
  };
  for (int c = 0; c <= last_cap && c < 64; ++c) {
    if (has(c, CAP_PERMITTED)) h.permitted |= bit(c);
  }
  h.setpcap = has(CAP_SETPCAP, CAP_EFFECTIVE);
  h.setid = has(CAP_SETUID, CAP_EFFECTIVE) && has(CAP_SETGID, CAP_EFFECTIVE);
  return h;
}

std::uint64_t bounding_now(int last_cap) {
  std::uint64_t b = 0;
  for (int c = 0; c <= last_cap && c < 64; ++c) {
    if (cap_get_bound(c) == 1) b |= bit(c);
  }
  return b;
}

// ---- giving splitd's directories to its user -------------------------------------------

// Directories other programs share: never chowned, whatever the config says.
bool shared_directory(const std::string& dir) {
  static const std::set<std::string> kShared = {"/",     "/etc",     "/run",     "/tmp", "/var",     "/var/lib",
                                                "/var/run", "/var/tmp", "/usr",  "/home", "/root", "/srv", "/opt"};
  std::string d = dir;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  return kShared.count(d) > 0;
}

// chown of everything below the open directory `fd`, on its file system only (a cgroup2
// hierarchy splitd mounted in its state dir is left alone), never following a symlink.
void chown_below(int fd, dev_t dev, uid_t uid, gid_t gid, int depth, int& failures) {
  const int copy = ::dup(fd);
  if (copy < 0) return;
  std::unique_ptr<DIR, DirCloser> dir(::fdopendir(copy));
  if (!dir) {
    ::close(copy);
    return;
  }
  while (const dirent* e = ::readdir(dir.get())) {
    if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
    struct stat st {};
    if (::fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || st.st_dev != dev) continue;
    if (::fchownat(fd, e->d_name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0) ++failures;
    if (S_ISDIR(st.st_mode) && depth < kMaxChownDepth) {
      Fd sub(::openat(fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (sub) chown_below(sub.get(), dev, uid, gid, depth + 1, failures);
    }
  }
}

void give_directory(const std::string& path, const User& u, bool recursive) {
  if (shared_directory(path)) {
    log::warn("privileges: not giving ", path, " to user ", u.name, ": other programs share it");
    return;
  }
  Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0) {
    if (errno != ENOENT) log::warn("privileges: ", path, ": ", std::strerror(errno));
    return;
  }
  int failures = ::fchown(fd.get(), u.uid, u.gid) != 0 ? 1 : 0;
  if (recursive) chown_below(fd.get(), st.st_dev, u.uid, u.gid, 1, failures);
  if (failures > 0) {
    log::warn("privileges: ", failures, " entries of ", path, " could not be given to user ", u.name,
              "; writing them may fail");
  }
}

std::string parent_of(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return "/";
  return path.substr(0, slash);
}

// ---- checking the result -------------------------------------------------------------

// Every thread in /proc/self/task as the plan says: read back from the kernel, not assumed.
Expected<void, std::string> verify(const Plan& p, std::uint64_t bounding_before, const std::set<pid_t>& skipped) {
  const std::uint64_t bounding = p.drop_bounding ? (p.keep & bounding_before) : bounding_before;
  for (pid_t tid : threads_now()) {
    if (skipped.count(tid)) continue;
    std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/status");
    if (!in.is_open()) continue;  // ended meanwhile
    std::stringstream text;
    text << in.rdbuf();
    const auto hex = [&](const char* key) -> std::optional<std::uint64_t> {
      auto v = status_field(text.str(), key);
      if (!v) return std::nullopt;
      return std::strtoull(v->c_str(), nullptr, 16);
    };
    const std::string who = "thread " + std::to_string(tid) + ": ";
    if (hex("CapEff") != p.keep || hex("CapPrm") != p.keep) return unexpected(who + "capabilities not as dropped");
    if (hex("CapBnd") != bounding) return unexpected(who + "bounding set not as dropped");
    if (hex("CapAmb").value_or(0) != 0 || hex("CapInh").value_or(0) != 0) return unexpected(who + "inheritable or ambient set left");
    if (status_field(text.str(), "NoNewPrivs") != "1") return unexpected(who + "no_new_privs not set");
    if (p.switch_user) {
      const std::string id = std::to_string(p.uid);
      std::istringstream uids(status_field(text.str(), "Uid").value_or(""));
      for (std::string u; uids >> u;) {
        if (u != id) return unexpected(who + "uid " + u + ", not " + id);
      }
    }
  }
  return {};
}

}  // namespace

std::uint64_t kept_capabilities(const PrivilegeNeeds& needs) {
  std::uint64_t keep = bit(CAP_NET_ADMIN) | bit(CAP_NET_BIND_SERVICE);
  if (needs.old_kernel) keep |= bit(CAP_NET_RAW);
  if (needs.identification) keep |= bit(CAP_SYS_PTRACE);
  // CAP_DAC_READ_SEARCH also with CAP_DAC_OVERRIDE: open_by_handle_at (the cgroup
  // map's fallback) checks for it by name.
  if (needs.identification) keep |= bit(CAP_DAC_READ_SEARCH);
  if (needs.exec_cgroups) keep |= bit(CAP_DAC_OVERRIDE);
  return keep;
}

Expected<void, std::string> drop_privileges(const config::Config& cfg) {
  const cap_value_t max_bits = cap_max_bits();
  const int last_cap = std::min<int>(max_bits > 0 ? max_bits - 1 : CAP_LAST_CAP, 63);
  const auto held = held_now(last_cap);
  if (!held) return unexpected(std::string("cap_get_proc: ") + std::strerror(errno));

  PrivilegeNeeds needs;
  const auto mount = cgroup::cgroup2_mount();
  needs.identification = mount.has_value();
  needs.exec_cgroups = mount && exec_cgroups_present(cfg, *mount);
  needs.old_kernel = kernel_before_5_7();
  std::optional<User> user;
  if (::geteuid() == 0) {
    user = splitd_user(cfg.daemon.user);
    if (user && !held->setid) {
      log::warn("privileges: user ", user->name, " exists but CAP_SETUID/CAP_SETGID are missing; staying uid 0");
      user.reset();
    }
  }
  needs.switch_user = user.has_value();

  Plan plan;
  plan.keep = kept_capabilities(needs) & held->permitted;
  plan.last_cap = last_cap;
  const std::uint64_t bounding_before = bounding_now(last_cap);
  plan.drop_bounding = held->setpcap && (bounding_before & ~plan.keep) != 0;
  if (!held->setpcap && (bounding_before & ~plan.keep) != 0) {
    log::warn("privileges: no CAP_SETPCAP, so the bounding set keeps ", cap_names(bounding_before & ~plan.keep),
              "; no_new_privs still keeps an exec from gaining them");
  }
  if (user) {
    plan.switch_user = true;
    plan.uid = user->uid;
    plan.gid = user->gid;
    plan.ngroups = user->groups.size();
    std::copy(user->groups.begin(), user->groups.end(), plan.groups);
    // What it writes from now on: rule edits and learned names in state_dir, the socket's
    // removal at stop in its directory (only when that is splitd's own, like /run/splitd).
    give_directory(cfg.daemon.state_dir, *user, true);
    const std::string socket_dir = parent_of(cfg.daemon.api_socket);
    const std::string leaf = socket_dir.substr(socket_dir.rfind('/') + 1);
    if (leaf == "splitd" || leaf == user->name) give_directory(socket_dir, *user, false);
  }

  std::set<pid_t> skipped;
  auto threads = apply_everywhere(plan, skipped);
  if (!threads) return unexpected(threads.error());
  if (auto ok = verify(plan, bounding_before, skipped); !ok) return ok;

  const std::string who = user ? "user " + user->name + " (uid " + std::to_string(user->uid) + ")"
                               : ::geteuid() == 0 ? (cfg.daemon.user.empty() ? std::string("root (daemon.user = \"\")")
                                                                             : "root (no user " + cfg.daemon.user + ")")
                                                  : "uid " + std::to_string(::geteuid());
  log::info("privileges: running as ", who, " with ", cap_names(plan.keep), " in ", *threads, " threads; ",
            plan.drop_bounding ? "every other capability dropped, bounding set too" : "every other capability dropped",
            ", no_new_privs");
  return {};
}

}  // namespace splitd::daemon
