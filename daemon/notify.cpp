#include "daemon/notify.hpp"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdint>
#include <cstdlib>
#include <string>

namespace splitd::daemon {
namespace {

bool under_systemd() { return std::getenv("NOTIFY_SOCKET") != nullptr; }

void send(const std::string& state) {
  if (!under_systemd()) return;
  // unset_environment = 0: the watchdog and later notifications still need the variables.
  (void)sd_notify(0, state.c_str());
}

}  // namespace

void notify_ready() { send("READY=1"); }

void notify_reloading() {
  // systemd (253+) orders the reload by the timestamp; CLOCK_MONOTONIC as it asks.
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  const std::uint64_t usec = static_cast<std::uint64_t>(ts.tv_sec) * 1000000u + static_cast<std::uint64_t>(ts.tv_nsec) / 1000u;
  send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void notify_stopping() { send("STOPPING=1"); }

void notify_watchdog() { send("WATCHDOG=1"); }

void notify_status(std::string_view text) {
  // One line: a newline would start another assignment.
  std::string line(text.substr(0, text.find('\n')));
  send("STATUS=" + line);
}

std::chrono::microseconds watchdog_interval() {
  if (!under_systemd()) return std::chrono::microseconds(0);
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0) return std::chrono::microseconds(0);
  return std::chrono::microseconds(static_cast<std::int64_t>(usec));
}

}  // namespace splitd::daemon
