#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/expected.hpp"
#include "config/config.hpp"

namespace splitd::api {

// The rule edits made over the API, as the state file keeps them. The rules in force
// are the config's [split] minus `removed` plus `added`; `mode`, when set, replaces the
// config's mode; `enabled` false keeps interception off across restarts.
struct RuleEdits {
  std::optional<decider::Mode> mode;
  bool enabled = true;
  config::SplitSection added;    // mode unused
  config::SplitSection removed;  // mode unused; apps by name
  friend bool operator==(const RuleEdits&, const RuleEdits&) = default;
};

// {"version": 1, "enabled": true, "mode": "include" | null,
//  "added": {"apps": [{name, cgroup, comm, path}], "domains": [...], "ips": [...]},
//  "removed": {"apps": ["name"], "domains": [...], "ips": [...]}}
std::string rule_edits_to_json(const RuleEdits& edits);
// One app rule as the state file and the API write it: {name, cgroup, comm, path, unit,
// app_id, user} (the last three absent from files written before them).
nlohmann::json app_rule_json(const config::AppRule& a);
// Every value is checked as the config file checks it; the message names the field.
Expected<RuleEdits, std::string> rule_edits_from_json(std::string_view text);

}  // namespace splitd::api
