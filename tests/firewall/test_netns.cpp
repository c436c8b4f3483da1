#include "test_netns.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <thread>

#include "common/fd.hpp"

namespace splitd::firewall::testing {

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1))
    ++n;
  return n;
}

sockaddr_storage make_addr(const std::string& ip, std::uint16_t port, socklen_t& len) {
  sockaddr_storage ss{};
  if (ip.find(':') == std::string::npos) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &sin->sin_addr);
    len = sizeof(sockaddr_in);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    inet_pton(AF_INET6, ip.c_str(), &sin6->sin6_addr);
    len = sizeof(sockaddr_in6);
  }
  return ss;
}

CommandResult run(const std::string& command) {
  CommandResult r;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string netns_unavailable_reason() {
  if (::geteuid() != 0) return "needs root (creates network namespaces, installs nftables)";
  if (run("ip -V").status != 0) return "needs iproute2 (`ip`)";
  if (run("nft --version").status != 0) return "needs nftables (`nft`)";
  return {};
}

std::unique_ptr<TestNetns> TestNetns::create(std::string* error) {
  std::random_device rd;
  const std::string name =
      "sdfw-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 100000);
  auto r = run("ip netns add " + name);
  if (r.status != 0) {
    if (error) *error = "ip netns add " + name + ": " + r.out;
    return nullptr;
  }
  std::unique_ptr<TestNetns> ns(new TestNetns(name));  // deletes it again from here on
  r = ns->exec("ip link set lo up");
  if (r.status != 0) {
    if (error) *error = "ip link set lo up: " + r.out;
    return nullptr;
  }
  return ns;
}

TestNetns::~TestNetns() { run("ip netns del " + name_); }

void TestNetns::run_inside(const std::function<void()>& fn) const {
  std::string failure;
  std::thread t([&] {
    Fd ns(::open(("/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns || ::setns(ns.get(), CLONE_NEWNET) != 0) {
      failure = "setns into " + name_ + ": " + std::strerror(errno);
      return;
    }
    fn();
  });
  t.join();
  if (!failure.empty()) throw std::runtime_error(failure);
}

CommandResult TestNetns::exec(const std::string& command) const {
  std::string quoted = "'";
  for (char c : command) {
    if (c == '\'')
      quoted += "'\\''";
    else
      quoted += c;
  }
  quoted += "'";
  return run("ip netns exec " + name_ + " sh -c " + quoted);
}

}  // namespace splitd::firewall::testing
