#include "api/auth.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sodium.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "common/fd.hpp"

namespace splitd::api {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

std::string octal_mode(mode_t m) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(m & 07777));
  return buf;
}

bool valid_token_text(std::string_view t) {
  if (t.size() < 16 || t.size() > 1024) return false;
  return std::all_of(t.begin(), t.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

}  // namespace

Expected<void, std::string> make_parent_dirs(const std::string& path) {
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return {};
  const std::string dir = path.substr(0, slash);
  for (std::size_t pos = 1; pos <= dir.size(); ++pos) {
    if (pos != dir.size() && dir[pos] != '/') continue;
    const std::string part = dir.substr(0, pos);
    if (::mkdir(part.c_str(), 0755) == 0) {
      ::chmod(part.c_str(), 0755);
    } else if (errno != EEXIST) {
      return unexpected("cannot create directory " + part + ": " + errno_text(errno));
    }
  }
  return {};
}

std::optional<gid_t> find_group(const std::string& name) {
  std::vector<char> buf(16 * 1024);
  for (int attempt = 0; attempt < 6; ++attempt) {
    group gr{};
    group* out = nullptr;
    const int rc = ::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &out);
    if (rc == ERANGE) {
      buf.resize(buf.size() * 4);
      continue;
    }
    if (rc != 0 || out == nullptr) return std::nullopt;
    return out->gr_gid;
  }
  return std::nullopt;
}

bool may_change(uid_t uid, gid_t gid, std::span<const gid_t> user_groups, std::optional<gid_t> group) {
  if (uid == 0) return true;
  if (!group) return false;
  if (gid == *group) return true;
  return std::find(user_groups.begin(), user_groups.end(), *group) != user_groups.end();
}

std::vector<gid_t> groups_of_uid(uid_t uid) {
  std::vector<char> buf(16 * 1024);
  passwd pw{};
  passwd* out = nullptr;
  for (int attempt = 0; attempt < 6; ++attempt) {
    const int rc = ::getpwuid_r(uid, &pw, buf.data(), buf.size(), &out);
    if (rc == ERANGE) {
      buf.resize(buf.size() * 4);
      continue;
    }
    break;
  }
  if (out == nullptr) return {};
  std::vector<gid_t> groups(64);
  for (int attempt = 0; attempt < 6; ++attempt) {
    int n = static_cast<int>(groups.size());
    if (::getgrouplist(out->pw_name, out->pw_gid, groups.data(), &n) >= 0) {
      groups.resize(static_cast<std::size_t>(n));
      return groups;
    }
    // -1: too small; n now holds the number needed.
    groups.resize(std::max<std::size_t>(static_cast<std::size_t>(n), groups.size() * 2));
  }
  return {out->pw_gid};
}

Caller unix_caller(int fd, std::optional<gid_t> group) {
  Caller c;
  c.transport = Caller::Transport::kUnix;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof cred) return c;
  c.uid = cred.uid;
  c.gid = cred.gid;
  c.pid = cred.pid;
  if (cred.uid == 0) {
    c.may_change = true;
  } else if (group) {
    const std::vector<gid_t> groups = groups_of_uid(cred.uid);
    c.may_change = may_change(cred.uid, cred.gid, groups, group);
  }
  return c;
}

Expected<std::string, std::string> load_or_create_token(const std::string& path) {
  if (path.empty()) return unexpected(std::string("no token file configured (daemon.api_token_file)"));
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd && errno == ENOENT) {
    if (auto made = make_parent_dirs(path); !made) return unexpected(made.error());
    if (sodium_init() < 0) return unexpected(std::string("libsodium failed to initialise"));
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    char hex[sizeof raw * 2 + 1];
    sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
    sodium_memzero(raw, sizeof raw);
    Fd out(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
    if (!out) return unexpected("cannot create token file " + path + ": " + errno_text(errno));
    const std::string text = std::string(hex) + "\n";
    if (::write(out.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
        ::fsync(out.get()) != 0) {
      const int err = errno;
      ::unlink(path.c_str());
      return unexpected("cannot write token file " + path + ": " + errno_text(err));
    }
    return std::string(hex);
  }
  if (!fd) return unexpected("cannot read token file " + path + ": " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return unexpected("cannot stat token file " + path + ": " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) return unexpected("token file " + path + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    return unexpected("token file " + path + " has mode " + octal_mode(st.st_mode) +
                      ": group or others may read it; run chmod 600 " + path);
  }
  std::string text;
  char buf[2048];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return unexpected("cannot read token file " + path + ": " + errno_text(errno));
    if (n == 0) break;
    text.append(buf, static_cast<std::size_t>(n));
    if (text.size() > 4096) return unexpected("token file " + path + " is too long for a token");
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ' || text.back() == '\t')) {
    text.pop_back();
  }
  if (!valid_token_text(text)) {
    return unexpected("token file " + path +
                      " does not hold a token (16 to 1024 printable characters without spaces); "
                      "remove it and splitd writes a new one");
  }
  return text;
}

std::optional<std::string_view> bearer_token(std::string_view h) {
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  constexpr std::string_view kScheme = "bearer";
  if (h.size() <= kScheme.size()) return std::nullopt;
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    const char c = h[i];
    if ((c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c) != kScheme[i]) return std::nullopt;
  }
  h.remove_prefix(kScheme.size());
  if (h.front() != ' ' && h.front() != '\t') return std::nullopt;
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  while (!h.empty() && (h.back() == ' ' || h.back() == '\t')) h.remove_suffix(1);
  if (h.empty()) return std::nullopt;
  return h;
}

bool token_matches(std::string_view given, std::string_view expected) {
  if (expected.empty() || given.size() != expected.size()) return false;
  return sodium_memcmp(given.data(), expected.data(), given.size()) == 0;
}

}  // namespace splitd::api
