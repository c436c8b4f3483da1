// The systemd notification protocol as systemd would see it: the test plays systemd's
// side, a unix datagram socket in NOTIFY_SOCKET with WATCHDOG_USEC set, and reads what
// the real splitd sends while it starts, reloads and stops. There is no systemd as PID 1
// on these machines, so this is how Type=notify and the watchdog are tested.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <memory>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "tests/e2e/splitd_process.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Message {
  Clock::time_point at;
  std::string text;
};

// Every datagram that arrives within `for_how_long`.
std::vector<Message> collect(int fd, std::chrono::milliseconds for_how_long) {
  std::vector<Message> out;
  const auto end = Clock::now() + for_how_long;
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
    if (::poll(&p, 1, static_cast<int>(std::max<long long>(1, left.count()))) != 1) continue;
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) out.push_back({Clock::now(), std::string(buf, static_cast<std::size_t>(n))});
  }
  return out;
}

std::size_t count_with(const std::vector<Message>& ms, const std::string& what) {
  std::size_t n = 0;
  for (const auto& m : ms) n += m.text.find(what) != std::string::npos;
  return n;
}

std::string all(const std::vector<Message>& ms) {
  std::string out;
  for (const auto& m : ms) out += "[" + m.text + "] ";
  return out;
}

TEST(Notify, TellsSystemdReadyReloadingStoppingAndPingsTheWatchdog) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string path = lab->state_dir() + "/notify.sock";
  Fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.size(), sizeof addr.sun_path);
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  ASSERT_EQ(::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);

  // systemd's environment for a Type=notify unit with WatchdogSec=400ms.
  ::setenv("NOTIFY_SOCKET", path.c_str(), 1);
  ::setenv("WATCHDOG_USEC", "400000", 1);
  std::unique_ptr<SplitdProcess> splitd;
  try {
    splitd = SplitdProcess::start(*lab, lab_config("exclude", kExcludeWanServers));
  } catch (...) {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    throw;
  }
  ::unsetenv("NOTIFY_SOCKET");
  ::unsetenv("WATCHDOG_USEC");

  const auto started = collect(sock.get(), 1200ms);
  // READY=1 once, after the privileges were dropped (the log line comes before it).
  EXPECT_EQ(count_with(started, "READY=1"), 1u) << all(started);
  EXPECT_NE(splitd->log().find("privileges: running as"), std::string::npos) << splitd->log();
  // A watchdog ping every half interval (200 ms): about 6 in 1.2 s; at least 3.
  const std::size_t pings = count_with(started, "WATCHDOG=1");
  std::printf("  %zu watchdog pings in 1.2 s (WatchdogSec=400ms)\n", pings);
  EXPECT_GE(pings, 3u) << all(started);
  EXPECT_LE(pings, 12u) << all(started);

  splitd->signal(SIGHUP);
  ASSERT_TRUE(splitd->wait_for_log("reload:")) << splitd->log();
  const auto reloaded = collect(sock.get(), 500ms);
  EXPECT_EQ(count_with(reloaded, "RELOADING=1"), 1u) << all(reloaded);
  EXPECT_NE(all(reloaded).find("MONOTONIC_USEC="), std::string::npos) << all(reloaded);
  EXPECT_EQ(count_with(reloaded, "READY=1"), 1u) << all(reloaded);

  EXPECT_EQ(splitd->terminate(), 0);
  const auto stopped = collect(sock.get(), 200ms);
  EXPECT_EQ(count_with(stopped, "STOPPING=1"), 1u) << all(stopped);
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn "));  // footprint gone
}

}  // namespace
}  // namespace splitd::e2e
