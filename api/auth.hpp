#pragma once

#include <sys/types.h>

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "api/backend.hpp"
#include "common/expected.hpp"

namespace splitd::api {

// Who may change things, and the bearer token of the TCP listener. Free functions, no
// state; the lookups (getgrnam_r, getpwuid_r, getgrouplist) may block on NSS, so the
// server calls them once per connection, not per request. Thread-safe.

// The gid of a group, nullopt when no such group exists.
std::optional<gid_t> find_group(const std::string& name);

// The decision itself, pure: uid 0, or `group` among the caller's primary or
// supplementary groups. No group (nullopt): only root may change.
bool may_change(uid_t uid, gid_t gid, std::span<const gid_t> user_groups, std::optional<gid_t> group);

// The primary and supplementary groups of a user (getpwuid_r + getgrouplist); empty when the
// uid has no passwd entry.
std::vector<gid_t> groups_of_uid(uid_t uid);

// The caller on a connected unix socket (SO_PEERCRED). A failed lookup gives uid -1, which
// may read but not change.
Caller unix_caller(int fd, std::optional<gid_t> group);

// Reads the token file, or creates it (0600, 32 random bytes hex-encoded, parent directory
// 0755) when it is missing. A file that group or others may read is refused.
Expected<std::string, std::string> load_or_create_token(const std::string& path);

// mkdir -p for the parent directory of `path`; each directory it creates gets mode 0755
// (chmod after mkdir, so a strict umask does not lock group members out of the socket).
Expected<void, std::string> make_parent_dirs(const std::string& path);

// The token of an `Authorization: Bearer TOKEN` header value; nullopt for another scheme.
std::optional<std::string_view> bearer_token(std::string_view authorization);

// Constant-time comparison (sodium_memcmp); the lengths are not secret.
bool token_matches(std::string_view given, std::string_view expected);

}  // namespace splitd::api
