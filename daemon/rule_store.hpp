#pragma once

#include <optional>
#include <string>
#include <vector>

#include "api/backend.hpp"
#include "api/rule_edits_json.hpp"
#include "config/config.hpp"

namespace splitd::daemon {

// mkdir -p, mode 0755 for each directory it creates; false (errno set) on failure.
bool make_dirs(const std::string& dir);

// The rules in force: the config's [split] plus the edits made over the API, kept in
// `state_dir`/rules.json (written to a temporary file, fsynced, renamed). The model:
//   in force = (config's entries − removed) + added;  mode = the API's mode, else the config's.
// A SIGHUP replaces the config's part and keeps the edits: an API removal of an entry the
// new config no longer has, or an addition the config now has too, changes nothing. Edits
// are refused (409/404) rather than stored when they would change nothing.
// Owned by the Runtime; used from the control executor only (not thread-safe).
class RuleStore {
 public:
  RuleStore(config::SplitSection base, std::string state_dir);

  // Reads the state file. A missing file is no edits. A corrupt or unreadable one is set
  // aside as rules.json.corrupt-UNIXTIME (never deleted) and splitd runs on the config's
  // rules: the returned warning says so, for the log and /status.
  std::optional<std::string> load();

  void set_base(config::SplitSection base) { base_ = std::move(base); }
  config::SplitSection effective() const;
  api::Rules view() const;
  bool enabled() const { return edits_.enabled; }
  const std::string& path() const { return path_; }

  // Each edit is saved before it returns; a save that fails undoes the edit (500).
  api::Result<api::Ok> set_mode(decider::Mode mode);
  api::Result<api::Ok> set_enabled(bool enabled);
  api::Result<api::Ok> add_app(const config::AppRule& app);
  api::Result<api::Ok> remove_app(const std::string& name);
  api::Result<api::Ok> add_domain(const std::string& pattern);
  api::Result<api::Ok> remove_domain(const std::string& pattern);
  api::Result<api::Ok> add_ip(const Cidr& cidr);
  api::Result<api::Ok> remove_ip(const Cidr& cidr);

 private:
  api::Result<api::Ok> commit(api::RuleEdits next);
  Expected<void, std::string> save(const api::RuleEdits& edits) const;

  config::SplitSection base_;
  std::string dir_;
  std::string path_;
  api::RuleEdits edits_;
};

}  // namespace splitd::daemon
