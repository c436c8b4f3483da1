// splitctl: the command-line client of splitd's REST API (daemon/splitctl.cpp does the
// work; this file wires it to the process: arguments, terminal, signals).
#include <sys/ioctl.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>

#include "api/splitctl.hpp"

namespace {

std::atomic<bool> g_interrupted{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

void on_signal(int) { g_interrupted.store(true, std::memory_order_relaxed); }

// The terminal's width when stdout is one (COLUMNS first, as a user may set it), else 0.
std::size_t terminal_width() {
  if (::isatty(STDOUT_FILENO) == 0) return 0;
  if (const char* c = std::getenv("COLUMNS")) {
    char* end = nullptr;
    const long v = std::strtol(c, &end, 10);
    if (end != c && *end == '\0' && v > 0) return static_cast<std::size_t>(v);
  }
  winsize ws{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

}  // namespace

int main(int argc, char** argv) {
  // No SA_RESTART: a Ctrl-C ends a watch (exit 0) or a pending request (exit 130) within
  // the client's 100 ms check of the flag.
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  splitd::ctl::Io io{std::cout, std::cerr};
  io.terminal_width = terminal_width;
  io.interrupted = &g_interrupted;
  const int code = splitd::ctl::run_splitctl(std::vector<std::string>(argv + 1, argv + argc), io);
  std::cout.flush();
  return code;
}
