#include "api/rule_edits_json.hpp"

#include <nlohmann/json.hpp>

namespace splitd::api {
namespace {

using nlohmann::json;

json section_json(const config::SplitSection& s, bool app_names_only) {
  json apps = json::array();
  for (const auto& a : s.apps) {
    if (app_names_only) apps.push_back(a.name);
    else apps.push_back(app_rule_json(a));
  }
  json ips = json::array();
  for (const auto& c : s.ips) ips.push_back(c.to_string());
  return {{"apps", apps}, {"domains", s.domains}, {"ips", ips}};
}

// Throws std::string with the field's path: caught below, never escapes.
const json& member(const json& obj, const std::string& key, const std::string& where) {
  if (!obj.is_object()) throw where + ": expected an object";
  auto it = obj.find(key);
  if (it == obj.end()) throw where + "." + key + ": missing";
  return *it;
}

std::string text(const json& v, const std::string& where) {
  if (!v.is_string()) throw where + ": expected a string";
  return v.get<std::string>();
}

config::SplitSection section_from(const json& obj, const std::string& where, bool app_names_only) {
  config::SplitSection s;
  s.domains.clear();
  s.ips.clear();
  const json& apps = member(obj, "apps", where);
  const json& domains = member(obj, "domains", where);
  const json& ips = member(obj, "ips", where);
  if (!apps.is_array()) throw where + ".apps: expected an array";
  if (!domains.is_array()) throw where + ".domains: expected an array";
  if (!ips.is_array()) throw where + ".ips: expected an array";
  for (std::size_t i = 0; i < apps.size(); ++i) {
    const std::string at = where + ".apps[" + std::to_string(i) + "]";
    config::AppRule a;
    if (app_names_only) {
      a.name = text(apps[i], at);
    } else {
      a.name = text(member(apps[i], "name", at), at + ".name");
      a.cgroup = text(member(apps[i], "cgroup", at), at + ".cgroup");
      a.comm = text(member(apps[i], "comm", at), at + ".comm");
      a.path = text(member(apps[i], "path", at), at + ".path");
      // Fields added later: a file written before them has none.
      for (auto [key, out] : {std::pair{"unit", &a.unit}, {"app_id", &a.app_id}, {"user", &a.user}}) {
        if (apps[i].is_object() && apps[i].contains(key)) *out = text(apps[i][key], at + "." + key);
      }
      if (auto ok = config::check_app(a); !ok) throw at + ": " + ok.error();
    }
    s.apps.push_back(std::move(a));
  }
  for (std::size_t i = 0; i < domains.size(); ++i) {
    const std::string at = where + ".domains[" + std::to_string(i) + "]";
    auto d = config::check_domain_pattern(text(domains[i], at));
    if (!d) throw at + ": " + d.error();
    s.domains.push_back(*d);
  }
  for (std::size_t i = 0; i < ips.size(); ++i) {
    const std::string at = where + ".ips[" + std::to_string(i) + "]";
    auto c = config::check_cidr(text(ips[i], at));
    if (!c) throw at + ": " + c.error();
    s.ips.push_back(*c);
  }
  return s;
}

}  // namespace

nlohmann::json app_rule_json(const config::AppRule& a) {
  return {{"name", a.name}, {"cgroup", a.cgroup}, {"comm", a.comm}, {"path", a.path},
          {"unit", a.unit}, {"app_id", a.app_id}, {"user", a.user}};
}

std::string rule_edits_to_json(const RuleEdits& e) {
  json doc = {{"version", 1},
              {"enabled", e.enabled},
              {"mode", e.mode ? json(decider::to_string(*e.mode)) : json(nullptr)},
              {"added", section_json(e.added, false)},
              {"removed", section_json(e.removed, true)}};
  return doc.dump(2) + "\n";
}

Expected<RuleEdits, std::string> rule_edits_from_json(std::string_view input) {
  const json doc = json::parse(input.begin(), input.end(), nullptr, false);
  if (doc.is_discarded()) return unexpected(std::string("not valid JSON"));
  try {
    const json& version = member(doc, "version", "state");
    if (!version.is_number_integer() || version.get<int>() != 1) {
      return unexpected(std::string("state.version: expected 1 (a newer splitd wrote this file?)"));
    }
    RuleEdits e;
    const json& enabled = member(doc, "enabled", "state");
    if (!enabled.is_boolean()) throw std::string("state.enabled: expected true or false");
    e.enabled = enabled.get<bool>();
    const json& mode = member(doc, "mode", "state");
    if (!mode.is_null()) {
      auto m = config::parse_mode(text(mode, "state.mode"));
      if (!m) throw "state.mode: " + m.error();
      e.mode = *m;
    }
    e.added = section_from(member(doc, "added", "state"), "state.added", false);
    e.removed = section_from(member(doc, "removed", "state"), "state.removed", true);
    return e;
  } catch (const std::string& why) {
    return unexpected(why);
  } catch (const json::exception& ex) {
    return unexpected(std::string(ex.what()));
  }
}

}  // namespace splitd::api
