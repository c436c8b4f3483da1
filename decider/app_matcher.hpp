#pragma once

#include <string>
#include <string_view>

namespace splitd::decider {

// One [[split.apps]] rule. A flow matches if any non-empty field matches the flow's app:
// cgroup by glob_match() on the cgroup v2 path, comm exactly (/proc/PID/comm), path
// exactly (/proc/PID/exe).
struct AppSpec {
  std::string name;
  std::string cgroup;
  std::string comm;
  std::string path;
};

// fnmatch-like glob for cgroup v2 paths: "*" is any run of characters within one path
// segment (it does not cross '/'), "**" any run including '/', "?" one character other
// than '/'; everything else matches itself. A leading '/' on either side is ignored, so
// "user.slice/*/app.slice/app-slack-*.scope" matches
// "/user.slice/user-1000.slice/app.slice/app-slack-1234.scope". Does not allocate.
bool glob_match(std::string_view pattern, std::string_view text);

// Whether a flow's app (fields empty when unknown) matches the rule.
bool app_matches(const AppSpec& rule, std::string_view cgroup_path, std::string_view comm,
                 std::string_view exe);

}  // namespace splitd::decider
