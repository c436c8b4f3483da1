// splitctl: the command-line client of splitd's REST API. The API arrives with its own
// issue; until then splitctl knows only `version`.
#include <cstdio>
#include <string_view>

#include "common/version.hpp"

int main(int argc, char** argv) {
  const std::string_view cmd = argc > 1 ? argv[1] : "";
  if (cmd == "version" || cmd == "--version") {
    std::printf("splitctl %s (git %s)\n", splitd::kVersion, splitd::kGitRevision);
    return 0;
  }
  std::fputs(
      "Usage: splitctl version\n"
      "splitctl talks to splitd's REST API, which this build does not have yet.\n",
      cmd == "help" || cmd == "--help" ? stdout : stderr);
  return cmd == "help" || cmd == "--help" ? 0 : 1;
}
