// identify_bench: what finding a flow's app costs splitd, on a host with many processes in
// many cgroups (default 5,000 sleeping processes in 1,000 cgroups made for the run, below
// the cgroup2 mount, and removed at the end). For each of N fresh loopback TCP connections
// of this process (itself in one of those cgroups, with siblings), it times
// cgroup::Identifier::identify() (one sock_diag request + the cgroup map + unit parsing)
// and find_process() (what comm/path rules add), and prints p50/p99/max in µs.
// Needs root (cgroups). Usage: identify_bench [processes] [cgroups] [connections]
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cgroup/hierarchy.hpp"
#include "cgroup/identifier.hpp"

using namespace splitd;
using Clock = std::chrono::steady_clock;

namespace {

struct Percentiles {
  double p50, p99, max;
};
Percentiles percentiles(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[v.size() * 99 / 100], v.back()};
}

void move_to(const std::string& dir, pid_t pid) {
  std::ofstream(dir + "/cgroup.procs") << pid << std::flush;
}

}  // namespace

int main(int argc, char** argv) {
  const int nproc = argc > 1 ? std::atoi(argv[1]) : 5000;
  const int ncg = argc > 2 ? std::atoi(argv[2]) : 1000;
  const int nconn = argc > 3 ? std::atoi(argv[3]) : 2000;
  if (::geteuid() != 0) {
    std::fprintf(stderr, "identify_bench: needs root (it makes cgroups)\n");
    return 2;
  }
  auto mount = cgroup::cgroup2_mount();
  if (!mount) {
    std::fprintf(stderr, "identify_bench: no cgroup2 mount\n");
    return 2;
  }
  const std::string base = *mount + "/splitd-identify-bench-" + std::to_string(::getpid());
  const std::string own = base + "/own.scope";
  std::filesystem::create_directories(own);
  std::vector<pid_t> children;
  const auto cleanup = [&] {
    for (pid_t p : children) ::kill(p, SIGKILL);
    for (pid_t p : children) ::waitpid(p, nullptr, 0);
    move_to(*mount, ::getpid());
    std::error_code ec;
    std::vector<std::filesystem::path> dirs;
    for (auto& e : std::filesystem::directory_iterator(base, ec)) {
      if (e.is_directory()) dirs.push_back(e.path());
    }
    for (auto& d : dirs) ::rmdir(d.c_str());
    ::rmdir(base.c_str());
  };
  // The host: ncg cgroups (user-style scopes), nproc sleeping processes spread over them.
  for (int i = 0; i < ncg; ++i) {
    std::filesystem::create_directories(base + "/app-gnome-app" + std::to_string(i) + "-" + std::to_string(1000 + i) + ".scope");
  }
  for (int i = 0; i < nproc; ++i) {
    const pid_t p = ::fork();
    if (p == 0) {
      ::pause();
      ::_exit(0);
    }
    if (p < 0) break;
    children.push_back(p);
    move_to(base + "/app-gnome-app" + std::to_string(i % ncg) + "-" + std::to_string(1000 + i % ncg) + ".scope", p);
  }
  // This process with 4 siblings in its own scope: find_process must pick by the inode.
  for (int i = 0; i < 4; ++i) {
    const pid_t p = ::fork();
    if (p == 0) {
      ::pause();
      ::_exit(0);
    }
    children.push_back(p);
    move_to(own, p);
  }
  move_to(own, ::getpid());

  auto map = cgroup::CgroupMap::open(*mount);
  if (!map) {
    std::fprintf(stderr, "identify_bench: %s\n", map.error().message().c_str());
    cleanup();
    return 1;
  }
  const std::size_t cgroups = (*map)->size();
  cgroup::Identifier id(std::move(*map), nullptr, *mount);

  const int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  ::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::listen(lfd, 4096);
  ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &alen);
  const IpAddress lo = *IpAddress::parse("127.0.0.1");

  std::vector<double> t_identify, t_process;
  int found = 0, with_process = 0;
  for (int i = 0; i < nconn; ++i) {
    const int c = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) break;
    const int s = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    sockaddr_in local{};
    socklen_t llen = sizeof local;
    ::getsockname(c, reinterpret_cast<sockaddr*>(&local), &llen);
    const auto t0 = Clock::now();
    decider::AppIdentity app = id.identify(decider::Protocol::kTcp, lo, ntohs(local.sin_port), lo, ntohs(a.sin_port));
    const auto t1 = Clock::now();
    id.find_process(app);
    const auto t2 = Clock::now();
    t_identify.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    t_process.push_back(std::chrono::duration<double, std::micro>(t2 - t1).count());
    found += app.found && !app.cgroup_path.empty();
    with_process += app.pid == ::getpid();
    ::close(s);
    ::close(c);
  }
  cleanup();
  if (t_identify.empty()) {
    std::fprintf(stderr, "identify_bench: no connection could be made\n");
    return 1;
  }
  const auto pi = percentiles(t_identify);
  const auto pp = percentiles(t_process);
  std::printf("identify_bench: %zu processes in %d cgroups (%zu in the map), %zu fresh TCP connections\n",
              children.size(), ncg, cgroups, t_identify.size());
  std::printf("  identify (sock_diag + cgroup path + units): p50 %.1f us  p99 %.1f us  max %.1f us  (found %d)\n",
              pi.p50, pi.p99, pi.max, found);
  std::printf("  find_process (comm/path rules, cached):     p50 %.1f us  p99 %.1f us  max %.1f us  (right pid %d)\n",
              pp.p50, pp.p99, pp.max, with_process);
  return found == static_cast<int>(t_identify.size()) && with_process == static_cast<int>(t_identify.size()) ? 0 : 1;
}
