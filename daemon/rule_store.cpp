#include "daemon/rule_store.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

namespace splitd::daemon {
namespace {

template <typename T>
bool contains(const std::vector<T>& v, const T& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}
template <typename T>
bool erase(std::vector<T>& v, const T& x) {
  auto it = std::find(v.begin(), v.end(), x);
  if (it == v.end()) return false;
  v.erase(it);
  return true;
}
const config::AppRule* find_app(const std::vector<config::AppRule>& apps, const std::string& name) {
  for (const auto& a : apps) {
    if (a.name == name) return &a;
  }
  return nullptr;
}
bool erase_app(std::vector<config::AppRule>& apps, const std::string& name) {
  return std::erase_if(apps, [&](const config::AppRule& a) { return a.name == name; }) > 0;
}

api::ApiError conflict(const std::string& what) { return {409, "conflict", what + " is already in force"}; }
api::ApiError missing(const std::string& what) { return {404, "not found", what + " is not in force"}; }

}  // namespace

bool make_dirs(const std::string& dir) {
  std::string path;
  std::stringstream parts(dir);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part.empty()) continue;
    path += "/" + part;
    if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return false;
  }
  return true;
}

RuleStore::RuleStore(config::SplitSection base, std::string state_dir)
    : base_(std::move(base)), dir_(std::move(state_dir)), path_(dir_ + "/rules.json") {}

std::optional<std::string> RuleStore::load() {
  std::ifstream in(path_, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return std::nullopt;  // no edits yet
    return "cannot read the rule state " + path_ + ": " + std::strerror(errno) +
           "; running on the config's rules only, and API edits will replace the file";
  }
  std::ostringstream text;
  text << in.rdbuf();
  auto edits = api::rule_edits_from_json(text.str());
  if (edits) {
    edits_ = std::move(*edits);
    return std::nullopt;
  }
  const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  const std::string aside = path_ + ".corrupt-" + std::to_string(now);
  const bool moved = ::rename(path_.c_str(), aside.c_str()) == 0;
  return "the rule state " + path_ + " is corrupt (" + edits.error() + "); " +
         (moved ? "kept as " + aside : "could not move it aside (" + std::string(std::strerror(errno)) + ")") +
         "; running on the config's rules only (API edits since it was written are not applied)";
}

config::SplitSection RuleStore::effective() const {
  config::SplitSection s;
  s.mode = edits_.mode.value_or(base_.mode);
  s.domains.clear();
  s.ips.clear();
  for (const auto& a : base_.apps) {
    // An API app of the same name replaces the config's.
    if (!find_app(edits_.removed.apps, a.name) && !find_app(edits_.added.apps, a.name)) s.apps.push_back(a);
  }
  for (const auto& a : edits_.added.apps) s.apps.push_back(a);
  for (const auto& d : base_.domains) {
    if (!contains(edits_.removed.domains, d)) s.domains.push_back(d);
  }
  for (const auto& d : edits_.added.domains) {
    if (!contains(s.domains, d)) s.domains.push_back(d);
  }
  for (const auto& c : base_.ips) {
    if (!contains(edits_.removed.ips, c)) s.ips.push_back(c);
  }
  for (const auto& c : edits_.added.ips) {
    if (!contains(s.ips, c)) s.ips.push_back(c);
  }
  return s;
}

api::Rules RuleStore::view() const {
  api::Rules r;
  r.effective = effective();
  r.mode_from_api = edits_.mode.has_value();
  r.added = edits_.added;
  r.removed = edits_.removed;
  return r;
}

api::Result<api::Ok> RuleStore::set_mode(decider::Mode mode) {
  api::RuleEdits next = edits_;
  // The config's own mode clears the override, so a later edit of the file applies.
  if (mode == base_.mode) next.mode.reset();
  else next.mode = mode;
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::set_enabled(bool enabled) {
  api::RuleEdits next = edits_;
  next.enabled = enabled;
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::add_app(const config::AppRule& app) {
  if (find_app(effective().apps, app.name)) return unexpected(conflict("app rule '" + app.name + "'"));
  api::RuleEdits next = edits_;
  const config::AppRule* in_base = find_app(base_.apps, app.name);
  erase_app(next.removed.apps, app.name);
  if (!(in_base && *in_base == app)) next.added.apps.push_back(app);
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::remove_app(const std::string& name) {
  if (!find_app(effective().apps, name)) return unexpected(missing("app rule '" + name + "'"));
  api::RuleEdits next = edits_;
  erase_app(next.added.apps, name);
  if (find_app(base_.apps, name) && !find_app(next.removed.apps, name)) {
    config::AppRule gone;
    gone.name = name;
    next.removed.apps.push_back(gone);
  }
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::add_domain(const std::string& pattern) {
  if (contains(effective().domains, pattern)) return unexpected(conflict("domain rule '" + pattern + "'"));
  api::RuleEdits next = edits_;
  erase(next.removed.domains, pattern);
  if (!contains(base_.domains, pattern)) next.added.domains.push_back(pattern);
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::remove_domain(const std::string& pattern) {
  if (!contains(effective().domains, pattern)) return unexpected(missing("domain rule '" + pattern + "'"));
  api::RuleEdits next = edits_;
  erase(next.added.domains, pattern);
  if (contains(base_.domains, pattern)) next.removed.domains.push_back(pattern);
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::add_ip(const Cidr& cidr) {
  if (contains(effective().ips, cidr)) return unexpected(conflict("ip rule " + cidr.to_string()));
  api::RuleEdits next = edits_;
  erase(next.removed.ips, cidr);
  if (!contains(base_.ips, cidr)) next.added.ips.push_back(cidr);
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::remove_ip(const Cidr& cidr) {
  if (!contains(effective().ips, cidr)) return unexpected(missing("ip rule " + cidr.to_string()));
  api::RuleEdits next = edits_;
  erase(next.added.ips, cidr);
  if (contains(base_.ips, cidr)) next.removed.ips.push_back(cidr);
  return commit(std::move(next));
}

api::Result<api::Ok> RuleStore::commit(api::RuleEdits next) {
  if (auto r = save(next); !r) {
    return unexpected(api::ApiError{500, "cannot save", "the edit was not applied: " + r.error()});
  }
  edits_ = std::move(next);
  return api::Ok{};
}

Expected<void, std::string> RuleStore::save(const api::RuleEdits& edits) const {
  if (!make_dirs(dir_)) return unexpected("cannot create " + dir_ + ": " + std::strerror(errno));
  const std::string tmp = path_ + ".tmp";
  const std::string text = api::rule_edits_to_json(edits);
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return unexpected("cannot write " + tmp + ": " + std::strerror(errno));
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return unexpected("cannot write " + tmp + ": " + std::strerror(err));
    }
    done += static_cast<std::size_t>(n);
  }
  // The data reaches the disk before the rename makes it the state: a crash leaves the
  // old file or the new one, never a truncated one.
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return unexpected("fsync " + tmp + ": " + std::strerror(err));
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return unexpected("rename to " + path_ + ": " + std::strerror(err));
  }
  const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);  // the rename itself
    ::close(dfd);
  }
  return {};
}

}  // namespace splitd::daemon
