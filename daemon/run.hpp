#pragma once

#include <string>

namespace splitd::daemon {

// `splitd run`: runs the daemon in the foreground until SIGTERM/SIGINT. Returns the
// process exit code (0 ok, 1 config error, 2 runtime failure).
int run(const std::string& config_path, bool path_given);

// `splitd cleanup`: removes every leftover of an earlier run: table inet splitd, splitd's
// policy rules and routes, and the rules it placed in VPN clients' tables. Returns 0 or 2.
int cleanup();

// `splitd check`: validates a config file; prints every problem. Returns 0 or 1.
int check(const std::string& config_path);

}  // namespace splitd::daemon
