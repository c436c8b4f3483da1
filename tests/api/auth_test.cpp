// Who may change things, and the token file.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "api/auth.hpp"

namespace splitd::api {
namespace {

TEST(MayChange, RootAlways) {
  EXPECT_TRUE(may_change(0, 0, {}, std::nullopt));
  EXPECT_TRUE(may_change(0, 5, {}, 999));
}

TEST(MayChange, GroupMembersOnly) {
  const std::vector<gid_t> groups = {100, 27, 999};
  EXPECT_TRUE(may_change(1000, 1000, groups, 999));        // supplementary
  EXPECT_TRUE(may_change(1000, 999, {}, 999));             // primary (the peer's gid)
  EXPECT_FALSE(may_change(1000, 1000, groups, 998));
  EXPECT_FALSE(may_change(1000, 1000, {}, 999));
  EXPECT_FALSE(may_change(1000, 999, groups, std::nullopt));  // no group splitd: root only
}

TEST(MayChange, GroupsOfUid) {
  const auto groups = groups_of_uid(::getuid());
  if (groups.empty()) GTEST_SKIP() << "uid " << ::getuid() << " has no passwd entry";
  EXPECT_NE(std::find(groups.begin(), groups.end(), ::getgid()), groups.end());
  EXPECT_FALSE(find_group("splitd-no-such-group-x").has_value());
  EXPECT_TRUE(find_group("root").has_value());
}

TEST(Bearer, Parse) {
  EXPECT_EQ(bearer_token("Bearer abc"), "abc");
  EXPECT_EQ(bearer_token("  bEaReR \tabc  "), "abc");
  EXPECT_FALSE(bearer_token("Bearer").has_value());
  EXPECT_FALSE(bearer_token("Bearer ").has_value());
  EXPECT_FALSE(bearer_token("Bearerabc").has_value());
  EXPECT_FALSE(bearer_token("Basic abc").has_value());
  EXPECT_FALSE(bearer_token("").has_value());
  EXPECT_TRUE(token_matches("abcd", "abcd"));
  EXPECT_FALSE(token_matches("abce", "abcd"));
  EXPECT_FALSE(token_matches("abc", "abcd"));
  EXPECT_FALSE(token_matches("", ""));
}

class TokenFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/splitd-token-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(TokenFileTest, CreatedWhenMissing) {
  const std::string path = dir_ + "/sub/dir/api.token";
  auto t = load_or_create_token(path);
  ASSERT_TRUE(t) << t.error();
  EXPECT_EQ(t->size(), 64u);
  EXPECT_EQ(t->find_first_not_of("0123456789abcdef"), std::string::npos);
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((dir_ + "/sub").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  // Read back the same, and a second file differs.
  auto again = load_or_create_token(path);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, *t);
  auto other = load_or_create_token(dir_ + "/other.token");
  ASSERT_TRUE(other);
  EXPECT_NE(*other, *t);
}

TEST_F(TokenFileTest, GroupReadableRefused) {
  const std::string path = dir_ + "/api.token";
  std::ofstream(path) << "0123456789abcdef0123456789abcdef\n";
  ::chmod(path.c_str(), 0640);
  auto t = load_or_create_token(path);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().find("mode 0640"), std::string::npos) << t.error();
  EXPECT_NE(t.error().find("chmod 600"), std::string::npos) << t.error();
  ::chmod(path.c_str(), 0600);
  auto ok = load_or_create_token(path);
  ASSERT_TRUE(ok) << ok.error();
  EXPECT_EQ(*ok, "0123456789abcdef0123456789abcdef");
}

TEST_F(TokenFileTest, GarbageRefused) {
  const std::string path = dir_ + "/api.token";
  std::ofstream(path) << "short\n";
  ::chmod(path.c_str(), 0600);
  EXPECT_FALSE(load_or_create_token(path));
  EXPECT_FALSE(load_or_create_token(dir_));  // a directory
}

}  // namespace
}  // namespace splitd::api
