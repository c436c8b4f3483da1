#include "daemon/rule_store.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace splitd::daemon {
namespace {

namespace fs = std::filesystem;

config::SplitSection base() {
  config::SplitSection s;
  s.mode = decider::Mode::kExclude;
  s.domains = {"*.local"};
  s.ips = {*Cidr::parse("10.0.0.0/8"), *Cidr::parse("192.168.0.0/16")};
  s.apps = {{"Slack", "", "slack", "", "", "", ""}};
  return s;
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / ("splitd-rules-" + std::to_string(::getpid()) + "-" +
                                               std::to_string(reinterpret_cast<std::uintptr_t>(this)));
  ~TempDir() { fs::remove_all(path); }
};

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(RuleStore, EditsCombineWithTheConfigAndPersist) {
  TempDir dir;
  const std::string state = (dir.path / "state").string();  // created on the first save
  {
    RuleStore store(base(), state);
    EXPECT_FALSE(store.load().has_value());  // no file yet: no edits, no warning
    ASSERT_TRUE(store.add_ip(*Cidr::parse("198.51.100.0/24")));
    EXPECT_EQ(store.add_ip(*Cidr::parse("198.51.100.0/24")).error().status, 409);
    EXPECT_EQ(store.add_ip(*Cidr::parse("10.0.0.0/8")).error().status, 409);  // the config's
    ASSERT_TRUE(store.remove_ip(*Cidr::parse("10.0.0.0/8")));
    EXPECT_EQ(store.remove_ip(*Cidr::parse("10.0.0.0/8")).error().status, 404);
    ASSERT_TRUE(store.add_domain("*.example.com"));
    ASSERT_TRUE(store.remove_app("Slack"));
    ASSERT_TRUE(store.add_app({"Zoom", "", "zoom", "", "", "", ""}));
    ASSERT_TRUE(store.set_mode(decider::Mode::kInclude));
    const auto eff = store.effective();
    EXPECT_EQ(eff.mode, decider::Mode::kInclude);
    EXPECT_EQ(eff.ips, (std::vector<Cidr>{*Cidr::parse("192.168.0.0/16"), *Cidr::parse("198.51.100.0/24")}));
    EXPECT_EQ(eff.domains, (std::vector<std::string>{"*.local", "*.example.com"}));
    ASSERT_EQ(eff.apps.size(), 1u);
    EXPECT_EQ(eff.apps[0].name, "Zoom");
    EXPECT_TRUE(store.view().mode_from_api);
  }
  struct stat st {};
  ASSERT_EQ(::stat((state + "/rules.json").c_str(), &st), 0);
  EXPECT_FALSE(fs::exists(state + "/rules.json.tmp"));
  // A restart: the same edits on the same config.
  RuleStore again(base(), state);
  EXPECT_FALSE(again.load().has_value());
  EXPECT_EQ(again.effective().ips.size(), 2u);
  EXPECT_EQ(again.effective().mode, decider::Mode::kInclude);
  // Putting back what the API removed restores the config's entry, not an addition.
  ASSERT_TRUE(again.add_ip(*Cidr::parse("10.0.0.0/8")));
  const api::Rules view = again.view();
  EXPECT_TRUE(view.removed.ips.empty());
  EXPECT_EQ(view.added.ips, std::vector<Cidr>{*Cidr::parse("198.51.100.0/24")});
  // The config's own mode clears the override.
  ASSERT_TRUE(again.set_mode(decider::Mode::kExclude));
  EXPECT_FALSE(again.view().mode_from_api);
}

TEST(RuleStore, ASighupKeepsTheEdits) {
  TempDir dir;
  RuleStore store(base(), dir.path.string());
  ASSERT_TRUE(store.add_ip(*Cidr::parse("198.51.100.0/24")));
  ASSERT_TRUE(store.remove_ip(*Cidr::parse("192.168.0.0/16")));
  auto next = base();
  next.ips = {*Cidr::parse("172.16.0.0/12"), *Cidr::parse("192.168.0.0/16"), *Cidr::parse("198.51.100.0/24")};
  store.set_base(next);
  // The new config's entries, minus the API's removal, plus the addition (no duplicate).
  EXPECT_EQ(store.effective().ips,
            (std::vector<Cidr>{*Cidr::parse("172.16.0.0/12"), *Cidr::parse("198.51.100.0/24")}));
}

TEST(RuleStore, ACorruptStateIsSetAsideAndTheConfigRules) {
  TempDir dir;
  fs::create_directories(dir.path);
  std::ofstream(dir.path / "rules.json") << "{\"version\": 1, \"enabled\": tru";
  RuleStore store(base(), dir.path.string());
  const auto warning = store.load();
  ASSERT_TRUE(warning.has_value());
  EXPECT_NE(warning->find("is corrupt (not valid JSON)"), std::string::npos) << *warning;
  EXPECT_NE(warning->find("running on the config's rules only"), std::string::npos) << *warning;
  EXPECT_EQ(store.effective(), [] {
    auto b = base();
    return b;
  }());
  bool kept = false;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    if (e.path().filename().string().rfind("rules.json.corrupt-", 0) == 0) {
      kept = true;
      EXPECT_EQ(read(e.path()), "{\"version\": 1, \"enabled\": tru");  // never deleted
    }
  }
  EXPECT_TRUE(kept);
  EXPECT_FALSE(fs::exists(dir.path / "rules.json"));
}

TEST(RuleStore, AStateWithABadValueNamesTheField) {
  TempDir dir;
  fs::create_directories(dir.path);
  std::ofstream(dir.path / "rules.json")
      << R"({"version": 1, "enabled": true, "mode": null,
            "added": {"apps": [], "domains": [], "ips": ["10.0.0.0/33"]},
            "removed": {"apps": [], "domains": [], "ips": []}})";
  RuleStore store(base(), dir.path.string());
  const auto warning = store.load();
  ASSERT_TRUE(warning.has_value());
  EXPECT_NE(warning->find("state.added.ips[0]: prefix length 33 exceeds 32"), std::string::npos) << *warning;
}

TEST(RuleStore, AFailedSaveUndoesTheEdit) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes into read-only directories; this case needs a normal user";
  TempDir dir;
  fs::create_directories(dir.path);
  ::chmod(dir.path.c_str(), 0500);
  RuleStore store(base(), dir.path.string());
  auto r = store.add_ip(*Cidr::parse("198.51.100.0/24"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().status, 500);
  EXPECT_EQ(store.effective().ips.size(), 2u);
  ::chmod(dir.path.c_str(), 0700);
}

TEST(RuleStore, AFailedSaveUndoesTheEditAsRoot) {
  // A state_dir whose parent is a regular file cannot be created, even by root.
  TempDir dir;
  fs::create_directories(dir.path);
  std::ofstream(dir.path / "file") << "x";
  RuleStore store(base(), (dir.path / "file" / "state").string());
  auto r = store.add_ip(*Cidr::parse("198.51.100.0/24"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().status, 500);
  EXPECT_NE(r.error().detail.find("the edit was not applied"), std::string::npos);
  EXPECT_EQ(store.effective().ips.size(), 2u);
}

}  // namespace
}  // namespace splitd::daemon
