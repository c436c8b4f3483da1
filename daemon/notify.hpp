#pragma once

#include <chrono>
#include <string_view>

namespace splitd::daemon {

// The systemd notification protocol (sd_notify from libsystemd), for Type=notify with a
// watchdog. Every function is a no-op when NOTIFY_SOCKET is unset (splitd not started by
// systemd, or a unit without Type=notify); failures to send are ignored (systemd then acts
// on its own timeouts). Thread-safe: each call is one datagram.

// READY=1: setup is done (also after a reload).
void notify_ready();
// RELOADING=1 with MONOTONIC_USEC: a reload starts; notify_ready() when it is over.
void notify_reloading();
// STOPPING=1: the shutdown has begun.
void notify_stopping();
// WATCHDOG=1: the main loop is alive.
void notify_watchdog();
// STATUS=text: one line systemctl status shows.
void notify_status(std::string_view text);
// The watchdog's timeout (WatchdogSec=) for this process; zero when there is none. Ping
// every half of it.
std::chrono::microseconds watchdog_interval();

}  // namespace splitd::daemon
