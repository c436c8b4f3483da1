// splitd: the split-tunnel daemon's command line. Thin: it parses arguments and wires
// the libraries together.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "api/interfaces_json.hpp"
#include "common/log.hpp"
#include "common/version.hpp"
#include "daemon/interfaces_text.hpp"
#include "daemon/run.hpp"
#include "iface/interface_cache.hpp"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitUsage = 1;
constexpr int kExitRuntime = 2;

void usage(std::FILE* to) {
  std::fputs(
      "Usage: splitd <command> [options]\n"
      "\n"
      "Commands:\n"
      "  run [--config FILE]\n"
      "                 run the daemon in the foreground (default config\n"
      "                 /etc/splitd/splitd.toml; built-in defaults if it does not exist)\n"
      "  check --config FILE\n"
      "                 validate a config file: every problem as FILE:LINE:COL: error: ...\n"
      "  interfaces [--json] [--physical NAME] [--tunnel NAME] [--watch]\n"
      "                 show the interface cache: which interface is physical (per family)\n"
      "                 and which is the tunnel; --watch prints it again on every change\n"
      "  cleanup        remove every leftover of an earlier run: table inet splitd, its\n"
      "                 policy rules and routes, its rules in VPN clients' tables\n"
      "  version        version and build information\n"
      "  help           this text\n",
      to);
}

int cmd_version() {
  std::printf("splitd %s (git %s, %s build, %s)\n", splitd::kVersion, splitd::kGitRevision,
              splitd::kBuildType, splitd::kCompiler);
  return kExitOk;
}

int cmd_interfaces(const std::vector<std::string_view>& args) {
  bool json = false;
  bool watch = false;
  splitd::iface::SelectionConfig selection;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const auto arg = args[i];
    const auto value = [&](const char* flag) -> std::string {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "splitd interfaces: %s needs an interface name\n", flag);
        std::exit(kExitUsage);
      }
      return std::string(args[++i]);
    };
    if (arg == "--json") json = true;
    else if (arg == "--watch") watch = true;
    else if (arg == "--physical") selection.physical = value("--physical");
    else if (arg == "--tunnel") selection.tunnel = value("--tunnel");
    else {
      std::fprintf(stderr, "splitd interfaces: unknown option '%.*s'\n",
                   static_cast<int>(arg.size()), arg.data());
      usage(stderr);
      return kExitUsage;
    }
  }
  if (selection.physical == "auto") selection.physical.clear();
  if (selection.tunnel == "auto") selection.tunnel.clear();

  auto cache = splitd::iface::InterfaceCache::open(selection);
  if (!cache) {
    std::fprintf(stderr, "splitd: cannot read interfaces over rtnetlink: %s\n",
                 cache.error().message().c_str());
    return kExitRuntime;
  }
  const auto print = [json](const splitd::iface::InterfaceSnapshot& snap) {
    const std::string text =
        json ? splitd::api::interfaces_json(snap, 2) + "\n"
             : splitd::daemon::interfaces_text(snap);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
  };
  print(*(*cache)->snapshot());
  if (!watch) return kExitOk;

  // Block the stop signals before the watcher thread starts so only sigwait sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  (*cache)->subscribe([&print, json](const auto& snap) {
    if (!json) std::fputs("\n--- changed ---\n", stdout);
    print(*snap);
  });
  (*cache)->start();
  int sig = 0;
  sigwait(&stop, &sig);
  (*cache)->stop();
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string_view> args(argv + 1, argv + argc);
  if (args.empty()) {
    usage(stderr);
    return kExitUsage;
  }
  const auto cmd = args.front();
  args.erase(args.begin());
  if (cmd == "interfaces") return cmd_interfaces(args);
  if (cmd == "run" || cmd == "check") {
    std::string path = "/etc/splitd/splitd.toml";
    bool given = false;
    for (std::size_t i = 0; i < args.size(); ++i) {
      if (args[i] == "--config" && i + 1 < args.size()) {
        path = std::string(args[++i]);
        given = true;
      } else {
        std::fprintf(stderr, "splitd %.*s: unknown option '%.*s'\n", static_cast<int>(cmd.size()),
                     cmd.data(), static_cast<int>(args[i].size()), args[i].data());
        return kExitUsage;
      }
    }
    if (cmd == "check") {
      if (!given) {
        std::fputs("splitd check: --config FILE is required\n", stderr);
        return kExitUsage;
      }
      return splitd::daemon::check(path);
    }
    // An exception must unwind run(): its guards remove the rules and restore rp_filter.
    try {
      return splitd::daemon::run(path, given);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "splitd: fatal: %s\n", e.what());
      return kExitRuntime;
    }
  }
  if (cmd == "cleanup") {
    if (!args.empty()) {
      std::fputs("splitd cleanup: takes no options\n", stderr);
      return kExitUsage;
    }
    return splitd::daemon::cleanup();
  }
  if (cmd == "version" || cmd == "--version") return cmd_version();
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    usage(stdout);
    return kExitOk;
  }
  std::fprintf(stderr, "splitd: unknown command '%.*s'\n", static_cast<int>(cmd.size()),
               cmd.data());
  usage(stderr);
  return kExitUsage;
}
