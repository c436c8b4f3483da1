// splitctl end to end against the fake API (requests sent, output, exit codes), and its
// formatting pieces on their own.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/version.hpp"
#include "api/splitctl.hpp"
#include "tests/api/fake_api.hpp"

namespace splitd::ctl {
namespace {

using splitd::testing::FakeApi;
using splitd::testing::TempDir;
using namespace std::chrono_literals;
using std::chrono::system_clock;

// The documents of docs/api.md, with a few more fields filled in.
constexpr const char* kStatus = R"({"status": "running", "enabled": true, "mode": "exclude",
 "tunnel_interface": "tun0", "tunnel_up": true,
 "physical_interface": "phys0", "physical_interface6": "phys0",
 "dns_enabled": true, "dns_servers": ["1.1.1.1"], "dns_direct_servers": ["192.168.1.1"],
 "sessions_active": 3, "sessions_total": 120,
 "bytes_sent": 10240, "bytes_received": 99999,
 "started_at": "2026-12-02T09:54:32.120Z", "uptime_seconds": 61,
 "version": "0.1.0", "git_revision": "d863c34",
 "config_file": "/etc/splitd/splitd.toml", "state_file": "/var/lib/splitd/rules.json",
 "warnings": []})";

constexpr const char* kConnections = R"([
 {"id": 17, "protocol": "tcp", "local_addr": "198.18.2.2:40312", "remote_addr": "203.0.113.10:80",
  "domain": null, "route": "tunnel", "interface": "tun0", "rule": "default", "match": "default",
  "app": null, "started_at": "2026-12-02T09:55:01.003Z", "idle_ms": 120,
  "bytes_sent": 77, "bytes_received": 512, "packets_sent": 4, "packets_received": 3},
 {"id": 18, "protocol": "tcp", "local_addr": "198.18.2.2:40400", "remote_addr": "198.51.100.7:443",
  "domain": "www.example.com", "domain_source": "sni", "route": "direct", "interface": "phys0", "rule": "domain *.example.com",
  "match": "domain", "app": {"pid": 4242, "comm": "firefox", "path": "/usr/lib/firefox/firefox",
  "cgroup": "user.slice/app.slice/firefox.scope"}, "started_at": "2026-12-02T07:50:00Z", "idle_ms": 5,
  "bytes_sent": 1536, "bytes_received": 24536678, "packets_sent": 40, "packets_received": 300},
 {"id": 21, "protocol": "udp", "local_addr": "[2001:db8::2]:5353", "remote_addr": "[2001:db8::53]:53",
  "domain": null, "route": "block", "interface": null, "rule": "ip 2001:db8::/64", "match": "ip",
  "app": {"pid": 99, "comm": "", "path": "/usr/bin/dig", "cgroup": ""}, "started_at": "2026-12-01T06:00:00Z",
  "idle_ms": 1000, "bytes_sent": 0, "bytes_received": 0, "packets_sent": 1, "packets_received": 0}])";

constexpr const char* kRules = R"({"mode": "exclude", "mode_source": "config",
 "apps": [{"name": "Slack", "cgroup": "", "comm": "slack", "path": ""},
          {"name": "Steam", "cgroup": "user.slice/*/app-steam-*.scope", "comm": "", "path": "/usr/bin/steam"}],
 "domains": ["*.local", "localhost"], "ips": ["10.0.0.0/8", "198.51.100.0/24"],
 "added": {"apps": [{"name": "Steam", "cgroup": "user.slice/*/app-steam-*.scope", "comm": "",
                     "path": "/usr/bin/steam"}],
           "domains": [], "ips": ["198.51.100.0/24"]},
 "removed": {"apps": [], "domains": [], "ips": ["192.168.0.0/16"]}})";

constexpr const char* kInterfaces = R"({"physical": {"ipv4": "phys0", "ipv6": null}, "tunnel": "tun0",
 "tunnel_up": true, "configured": {"physical": "auto", "tunnel": "auto"},
 "interfaces": [
  {"index": 1, "name": "lo", "kind": "loopback", "driver": "", "up": true, "running": true,
   "flags": ["up", "running", "loopback"], "mtu": 65536, "mac": null, "addresses": ["127.0.0.1/8", "::1/128"],
   "ipv4": "127.0.0.1", "ipv6": "::1"},
  {"index": 2, "name": "phys0", "kind": "ethernet", "driver": "veth", "up": true, "running": true,
   "flags": ["up", "running", "broadcast", "multicast", "lower_up"], "mtu": 1500, "mac": "02:00:00:00:00:01",
   "addresses": ["192.0.2.2/24"], "ipv4": "192.0.2.2", "ipv6": null},
  {"index": 7, "name": "tun0", "kind": "tun", "driver": "tun", "up": true, "running": false,
   "flags": ["up", "pointopoint", "noarp"], "mtu": 1420, "mac": null, "addresses": ["10.8.0.2/24"],
   "ipv4": "10.8.0.2", "ipv6": null}],
 "default_routes": [{"family": "ipv4", "interface": "phys0", "gateway": "192.0.2.1", "metric": 100}]})";

constexpr const char* kDnsCache = R"({"entries": [
 {"ip": "198.51.100.7", "names": ["www.example.com", "example.com"], "expires_at": "2026-12-02T10:00:14.300Z",
  "source": "dns"},
 {"ip": "203.0.113.10", "names": ["whoami.lab.test"], "expires_at": "2026-12-02T09:55:32Z", "source": "dns"},
 {"ip": "2001:db8::10", "names": ["v6.lab.test"], "expires_at": "2026-12-02T10:56:02Z", "source": "state"}],
 "count": 3})";

system_clock::time_point at(const char* ts) { return *parse_timestamp(ts); }
const system_clock::time_point kNow = at("2026-12-02T09:56:02Z");

struct Result {
  int code = -1;
  std::string out, err;
};

// splitctl against a fake API on a unix socket in a temporary directory.
class SplitctlTest : public ::testing::Test {
 protected:
  SplitctlTest() : api_(sock()) {}

  std::string sock() const { return dir_.path() + "/api.sock"; }

  Result run(std::vector<std::string> args, std::size_t width = 0, bool with_socket = true,
             const std::atomic<bool>* interrupted = nullptr) {
    return run_with(std::move(args), width, with_socket, interrupted, {});
  }
  Result run_with(std::vector<std::string> args, std::size_t width, bool with_socket,
                  const std::atomic<bool>* interrupted, std::function<int(const std::vector<std::string>&)> exec) {
    if (with_socket) {
      args.insert(args.begin(), sock());
      args.insert(args.begin(), "--socket");
    }
    std::ostringstream out, err;
    Io io{out, err};
    io.terminal_width = [width] { return width; };
    io.now = [] { return kNow; };
    io.getenv = [this](const char* name) -> std::optional<std::string> {
      const auto it = env_.find(name);
      return it == env_.end() ? std::nullopt : std::optional<std::string>(it->second);
    };
    io.interrupted = interrupted;
    io.exec = std::move(exec);
    Result r;
    r.code = run_splitctl(std::move(args), io);
    r.out = out.str();
    r.err = err.str();
    return r;
  }

  FakeApi::Request only_request() {
    const auto reqs = api_.requests();
    EXPECT_EQ(reqs.size(), 1u);
    return reqs.empty() ? FakeApi::Request{} : reqs.back();
  }

  TempDir dir_;
  FakeApi api_;
  std::map<std::string, std::string> env_;
};

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A table row's cells: the runs of text between two or more spaces.
std::vector<std::string> cells(const std::string& line) {
  std::vector<std::string> out;
  std::size_t pos = line.find_first_not_of(' ');
  while (pos != std::string::npos) {
    auto end = line.find("  ", pos);
    out.push_back(line.substr(pos, end == std::string::npos ? std::string::npos : end - pos));
    pos = end == std::string::npos ? end : line.find_first_not_of(' ', end);
  }
  return out;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// ------------------------------------------------------------------------------------
// Formatting.

TEST(Format, Bytes) {
  EXPECT_EQ(format_bytes(0), "0B");
  EXPECT_EQ(format_bytes(512), "512B");
  EXPECT_EQ(format_bytes(1023), "1023B");
  EXPECT_EQ(format_bytes(1024), "1.0KiB");
  EXPECT_EQ(format_bytes(1536), "1.5KiB");
  EXPECT_EQ(format_bytes(1048575), "1.0MiB");  // not "1024.0KiB"
  EXPECT_EQ(format_bytes(24536678), "23.4MiB");
  EXPECT_EQ(format_bytes(3ull << 30), "3.0GiB");
  EXPECT_EQ(format_bytes(5ull << 40), "5.0TiB");
  EXPECT_EQ(format_bytes(~0ull), "16.0EiB");
}

TEST(Format, Duration) {
  EXPECT_EQ(format_duration(0s), "0s");
  EXPECT_EQ(format_duration(4s), "4s");
  EXPECT_EQ(format_duration(59s), "59s");
  EXPECT_EQ(format_duration(60s), "1m00s");
  EXPECT_EQ(format_duration(192s), "3m12s");
  EXPECT_EQ(format_duration(2h + 5min + 59s), "2h05m");
  EXPECT_EQ(format_duration(24h + 3h + 10min), "1d03h");
  EXPECT_EQ(format_duration(400 * 24h), "400d00h");
  EXPECT_EQ(format_duration(-5s), "0s");  // clock skew between daemon and client
}

TEST(Format, Timestamps) {
  EXPECT_EQ(system_clock::to_time_t(at("1970-01-01T00:00:00Z")), 0);
  EXPECT_EQ(at("2026-12-02T09:55:01.003Z") - at("2026-12-02T09:55:01Z"), 3ms);
  EXPECT_EQ(at("2026-12-02T10:55:01+01:00"), at("2026-12-02T09:55:01Z"));
  EXPECT_EQ(at("2026-12-02T08:55:01-01:00"), at("2026-12-02T09:55:01Z"));
  EXPECT_FALSE(parse_timestamp(""));
  EXPECT_FALSE(parse_timestamp("2026-12-02T09:55:01"));  // no zone
  EXPECT_FALSE(parse_timestamp("2026-13-02T09:55:01Z"));
  EXPECT_FALSE(parse_timestamp("2026-12-02T09:55:01Zjunk"));
}

TEST(Format, TableAlignsAndTruncatesOnlyWhenAsked) {
  const std::vector<Column> cols = {{"ID", true}, {"NAME", false, true, false}, {"DOMAIN", false, true, true},
                                    {"N", true}};
  const std::vector<std::vector<std::string>> rows = {
      {"7", "short", "a.example.com", "1"}, {"1234", "a-rather-long-name", "very.long.cdn.example.com", "22"}};
  const auto full = lines_of(render_table(cols, rows));
  ASSERT_EQ(full.size(), 3u);
  EXPECT_EQ(full[0], "  ID  NAME                DOMAIN                      N");
  EXPECT_EQ(full[1], "   7  short               a.example.com               1");
  EXPECT_EQ(full[2], "1234  a-rather-long-name  very.long.cdn.example.com  22");

  const auto cut = lines_of(render_table(cols, rows, 40));
  for (const auto& l : cut) EXPECT_LE(display_width(l), 40u) << l;
  // Names are cut at the end, domains at the start (their tail says more).
  EXPECT_EQ(cut[2], "1234  a-rather-long\u2026  \u2026n.example.com  22");

  // Just fits with every shrinkable column at its floor (its title's width, at least 6).
  const auto tight = lines_of(render_table(cols, rows, 24));
  EXPECT_EQ(tight[2], "1234  a-rat\u2026  \u2026e.com  22");
  // Too narrow even so: nothing is cut, the rows wrap whole.
  EXPECT_EQ(render_table(cols, rows, 23), render_table(cols, rows));
}

TEST(Format, ConnectionsTable) {
  const auto text = connections_text(kConnections, kNow);
  ASSERT_TRUE(text);
  const auto lines = lines_of(*text);
  ASSERT_EQ(lines.size(), 5u) << *text;
  EXPECT_EQ(lines[0].substr(0, 6), "ID  PR");
  // Every column starts where its title does (left-aligned) or ends where it ends.
  const std::string& h = lines[0];
  for (const char* title : {"PROTO", "LOCAL", "REMOTE", "DOMAIN", "ROUTE", "IFACE", "APP", "RULE"}) {
    const auto col = h.find(title);
    ASSERT_NE(col, std::string::npos) << title;
    for (std::size_t i = 1; i <= 3; ++i) {
      EXPECT_NE(lines[i][col], ' ') << title << " in " << lines[i];
      EXPECT_EQ(lines[i][col - 1], ' ') << title << " in " << lines[i];
    }
  }
  for (const char* title : {"SENT", "RECV", "AGE"}) {
    const auto end = h.find(title) + std::strlen(title) - 1;
    for (std::size_t i = 1; i <= 3; ++i) {
      EXPECT_NE(lines[i][end], ' ') << title << " in " << lines[i];
      EXPECT_EQ(lines[i][end + 1], ' ') << title << " in " << lines[i];
    }
  }
  using Cells = std::vector<std::string>;
  EXPECT_EQ(cells(lines[0]), (Cells{"ID", "PROTO", "LOCAL", "REMOTE", "DOMAIN", "ROUTE", "IFACE", "APP", "SENT", "RECV",
                                    "AGE", "RULE"}));
  EXPECT_EQ(cells(lines[1]), (Cells{"17", "tcp", "198.18.2.2:40312", "203.0.113.10:80", "-", "tunnel", "tun0", "-",
                                    "77B", "512B", "1m00s", "default"}));
  EXPECT_EQ(cells(lines[2]), (Cells{"18", "tcp", "198.18.2.2:40400", "198.51.100.7:443", "www.example.com/sni", "direct",
                                    "phys0", "firefox", "1.5KiB", "23.4MiB", "2h06m", "domain *.example.com"}));
  EXPECT_EQ(cells(lines[3]), (Cells{"21", "udp", "[2001:db8::2]:5353", "[2001:db8::53]:53", "-", "block", "-", "dig",
                                    "0B", "0B", "1d03h", "ip 2001:db8::/64"}));
  EXPECT_EQ(lines[4], "3 connections (2 tcp, 1 udp)");
  for (const auto& l : lines) EXPECT_NE(l.back(), ' ') << "trailing blank: " << l;

  EXPECT_EQ(lines_of(*connections_text("[]", kNow)).back(), "0 connections (0 tcp, 0 udp)");
  EXPECT_FALSE(connections_text("{}", kNow));
}

// ------------------------------------------------------------------------------------
// Commands: the request each sends, and what it prints.

TEST_F(SplitctlTest, Status) {
  api_.on_json("GET /api/v1/status", 200, kStatus);
  const auto r = run({"status"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(only_request().method, "GET");
  EXPECT_EQ(r.out,
            "splitd is running (exclude mode: matches go direct, all else through the tunnel)\n"
            "  tunnel    tun0, up\n"
            "  physical  phys0 (IPv4 and IPv6)\n"
            "  sessions  3 active, 120 since start\n"
            "  traffic   10.0KiB sent, 97.7KiB received\n"
            "  uptime    1m01s\n"
            "  dns       tunnel 1.1.1.1; direct 192.168.1.1\n"
            "  version   0.1.0 (git d863c34)\n"
            "  config    /etc/splitd/splitd.toml\n"
            "  state     /var/lib/splitd/rules.json\n");
}

TEST_F(SplitctlTest, StatusDegradedDisabledAndTunnelDown) {
  auto doc = nlohmann::json::parse(kStatus);
  doc["status"] = "degraded";
  doc["warnings"] = {"the state file was unreadable; set aside as rules.json.bad", "no IPv6 default route"};
  doc["tunnel_up"] = false;
  doc["physical_interface6"] = nullptr;
  doc.erase("uptime_seconds");
  api_.on_json("GET /api/v1/status", 200, doc.dump());
  auto r = run({"status"});
  EXPECT_EQ(r.code, 0);
  const auto lines = lines_of(r.out);
  ASSERT_GE(lines.size(), 4u);
  EXPECT_EQ(lines[0], "splitd is DEGRADED (exclude mode): running, but see the warnings");
  EXPECT_EQ(lines[1], "WARNING: the state file was unreadable; set aside as rules.json.bad");
  EXPECT_EQ(lines[2], "WARNING: no IPv6 default route");
  EXPECT_TRUE(contains(r.out, "  tunnel    tun0, DOWN\n"));
  EXPECT_TRUE(contains(r.out, "  physical  phys0 (IPv4), none (IPv6)\n"));
  EXPECT_TRUE(contains(r.out, "  uptime    1m29s\n"));  // from started_at

  doc["status"] = "disabled";
  doc["enabled"] = false;
  doc["warnings"] = nlohmann::json::array();
  doc["tunnel_interface"] = nullptr;
  api_.on_json("GET /api/v1/status", 200, doc.dump());
  r = run({"status"});
  EXPECT_TRUE(contains(r.out, "interception DISABLED")) << r.out;
  EXPECT_TRUE(contains(r.out, "  tunnel    none (no up interface of a tunnel kind)\n")) << r.out;
}

TEST_F(SplitctlTest, StatusDnsServers) {
  auto doc = nlohmann::json::parse(kStatus);
  doc["dns_servers"] = {"1.1.1.1", "8.8.8.8"};
  doc["dns_direct_servers"] = nlohmann::json::array();
  api_.on_json("GET /api/v1/status", 200, doc.dump());
  EXPECT_TRUE(contains(run({"status"}).out, "  dns       tunnel 1.1.1.1, 8.8.8.8; direct none (no system resolver found)\n"));
  doc["dns_enabled"] = false;
  api_.on_json("GET /api/v1/status", 200, doc.dump());
  EXPECT_TRUE(contains(run({"status"}).out, "  dns       capture off (dns.enabled = false)\n"));
  // A daemon without DNS capture's fields: the servers as before.
  doc.erase("dns_enabled");
  doc.erase("dns_direct_servers");
  api_.on_json("GET /api/v1/status", 200, doc.dump());
  EXPECT_TRUE(contains(run({"status"}).out, "  dns       1.1.1.1, 8.8.8.8\n"));
}

TEST_F(SplitctlTest, JsonIsTheBodyUnchangedAndMayComeAnywhere) {
  api_.on_json("GET /api/v1/status", 200, kStatus);
  api_.on_json("GET /api/v1/connections", 200, kConnections);
  api_.on_json("GET /api/v1/split/rules", 200, kRules);
  api_.on_json("GET /api/v1/interfaces", 200, kInterfaces);
  EXPECT_EQ(run({"--json", "status"}).out, std::string(kStatus) + "\n");
  EXPECT_EQ(run({"connections", "--json"}).out, std::string(kConnections) + "\n");
  EXPECT_EQ(run({"rules", "--json"}).out, std::string(kRules) + "\n");
  EXPECT_EQ(run({"interfaces", "--json"}).out, std::string(kInterfaces) + "\n");
  // Global options after the command, too.
  const auto r = run({"status", "--json", "--socket", sock()}, 0, false);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, std::string(kStatus) + "\n");
}

TEST_F(SplitctlTest, ConnectionsWithFilters) {
  api_.on_json("GET /api/v1/connections", 200, kConnections);
  auto r = run({"connections"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, *connections_text(kConnections, kNow));

  api_.on_json("GET /api/v1/connections?route=direct&protocol=tcp&app=Web%20Content", 200, "[]");
  r = run({"connections", "--route", "direct", "--protocol=tcp", "--app", "Web Content"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(api_.requests().back().target, "/api/v1/connections?route=direct&protocol=tcp&app=Web%20Content");

  r = run({"connections", "--route", "vpn"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "--route is tunnel, direct or block")) << r.err;
  EXPECT_EQ(api_.requests().size(), 2u);  // nothing sent for a usage error

  r = run({"connections", "--ids"});
  EXPECT_EQ(r.out, "17\n18\n21\n");
}

TEST_F(SplitctlTest, ConnectionsFitTheTerminalButNeverWhenPiped) {
  api_.on_json("GET /api/v1/connections", 200, kConnections);
  const auto piped = run({"connections"}, 0);
  std::size_t widest = 0;
  for (const auto& l : lines_of(piped.out)) widest = std::max(widest, display_width(l));
  ASSERT_GT(widest, 100u);
  const auto tty = run({"connections"}, 112);
  for (const auto& l : lines_of(tty.out)) EXPECT_LE(display_width(l), 112u) << l;
  EXPECT_TRUE(contains(tty.out, "\u2026")) << tty.out;
  EXPECT_FALSE(contains(piped.out, "\u2026"));
}

TEST_F(SplitctlTest, Kill) {
  api_.on_json("DELETE /api/v1/connections/17", 200, R"({"killed": 1})");
  auto r = run({"kill", "17"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "killed 1 connection(s)\n");
  EXPECT_EQ(only_request().method, "DELETE");

  api_.on_json("DELETE /api/v1/connections?route=tunnel&app=firefox", 200, R"({"killed": 4})");
  r = run({"kill", "--app", "firefox", "--route", "tunnel"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "killed 4 connection(s)\n");

  api_.on_json("DELETE /api/v1/connections?all=true", 200, R"({"killed": 9})");
  r = run({"kill", "--all"});
  EXPECT_EQ(r.out, "killed 9 connection(s)\n");
  EXPECT_EQ(run({"--json", "kill", "--all"}).out, "{\"killed\": 9}\n");

  const std::size_t sent = api_.requests().size();
  EXPECT_EQ(run({"kill"}).code, 1);
  EXPECT_EQ(run({"kill", "abc"}).code, 1);
  EXPECT_EQ(run({"kill", "17", "--route", "direct"}).code, 1);
  EXPECT_EQ(run({"kill", "--all", "--app", "x"}).code, 1);
  EXPECT_EQ(run({"kill", "--bogus"}).code, 1);
  EXPECT_EQ(api_.requests().size(), sent);

  api_.on_json("DELETE /api/v1/connections/99", 404, R"({"error": "not found", "detail": "no connection 99"})");
  r = run({"kill", "99"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "splitctl: no connection 99\n");
}

TEST_F(SplitctlTest, Rules) {
  api_.on_json("GET /api/v1/split/rules", 200, kRules);
  const auto r = run({"rules"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "mode exclude (from the config): matches go direct, all else through the tunnel\n"
            "\n"
            "apps (2)\n"
            "  Slack  comm=slack\n"
            "  Steam  cgroup=user.slice/*/app-steam-*.scope  path=/usr/bin/steam  (added over the API)\n"
            "\n"
            "domains (2)\n"
            "  *.local\n"
            "  localhost\n"
            "\n"
            "ips (2)\n"
            "  10.0.0.0/8\n"
            "  198.51.100.0/24  (added over the API)\n"
            "\n"
            "removed over the API: config entries not in force (1)\n"
            "  ip 192.168.0.0/16\n");
}

TEST_F(SplitctlTest, AddAndRemove) {
  api_.on_json("POST /api/v1/split/ips", 201, kRules);
  auto r = run({"add", "ip", "198.51.100.0/24"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "added ip 198.51.100.0/24: new flows to it go direct (exclude mode)\n");
  auto req = api_.requests().back();
  EXPECT_EQ(req.method, "POST");
  EXPECT_EQ(nlohmann::json::parse(req.body), nlohmann::json::parse(R"({"cidr": "198.51.100.0/24"})"));
  EXPECT_EQ(req.content_type, "application/json");

  auto include = nlohmann::json::parse(kRules);
  include["mode"] = "include";
  api_.on_json("POST /api/v1/split/domains", 201, include.dump());
  r = run({"add", "domain", "*.example.com"});
  EXPECT_EQ(r.out, "added domain *.example.com: new flows to names it matches go through the tunnel (include mode)\n");
  EXPECT_EQ(nlohmann::json::parse(api_.requests().back().body)["pattern"], "*.example.com");

  api_.on_json("POST /api/v1/split/apps", 201, kRules);
  r = run({"add", "app", "Steam", "--cgroup", "user.slice/*/app-steam-*.scope", "--path=/usr/bin/steam"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "added app Steam: its new flows go direct (exclude mode)\n");
  EXPECT_EQ(nlohmann::json::parse(api_.requests().back().body),
            nlohmann::json::parse(R"({"name": "Steam", "cgroup": "user.slice/*/app-steam-*.scope",
                                       "path": "/usr/bin/steam"})"));
  r = run({"add", "app", "thunderbird-esr-long"});  // no field given: the process name
  EXPECT_EQ(nlohmann::json::parse(api_.requests().back().body),
            nlohmann::json::parse(R"({"name": "thunderbird-esr-long", "comm": "thunderbird-esr"})"));
  EXPECT_TRUE(contains(r.out, "added app thunderbird-esr-long (process name thunderbird-esr)")) << r.out;

  api_.on_json("DELETE /api/v1/split/ips/198.51.100.0%2F24", 200, kRules);
  r = run({"remove", "ip", "198.51.100.0/24"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "removed ip 198.51.100.0/24: new flows to it take the mode's default route again (the tunnel, "
                   "exclude mode)\n");
  EXPECT_EQ(api_.requests().back().method, "DELETE");
  EXPECT_EQ(api_.requests().back().target, "/api/v1/split/ips/198.51.100.0%2F24");

  api_.on_json("DELETE /api/v1/split/domains/%2A.example.com", 200, kRules);
  EXPECT_EQ(run({"remove", "domain", "*.example.com"}).code, 0);
  api_.on_json("DELETE /api/v1/split/apps/My%20App", 200, kRules);
  EXPECT_EQ(run({"remove", "app", "My App"}).code, 0);
  api_.on_json("DELETE /api/v1/split/ips/2001%3Adb8%3A%3A%2F32", 200, kRules);
  EXPECT_EQ(run({"remove", "ip", "2001:db8::/32"}).code, 0);

  const std::size_t sent = api_.requests().size();
  EXPECT_EQ(run({"add", "host", "x"}).code, 1);
  EXPECT_EQ(run({"add", "ip"}).code, 1);
  EXPECT_EQ(run({"add", "ip", "10.0.0.0/8", "--comm", "x"}).code, 1);
  EXPECT_EQ(run({"remove", "app", "x", "--path", "/x"}).code, 1);
  EXPECT_EQ(api_.requests().size(), sent);
}

TEST_F(SplitctlTest, ModeEnableDisable) {
  api_.on_json("PUT /api/v1/split/mode", 200, kRules);
  auto r = run({"mode", "include"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(only_request().body), nlohmann::json::parse(R"({"mode": "include"})"));
  EXPECT_TRUE(contains(r.out, "mode include: matches go through the tunnel")) << r.out;
  EXPECT_EQ(run({"mode", "sideways"}).code, 1);
  EXPECT_EQ(run({"mode"}).code, 1);

  api_.on_json("POST /api/v1/enable", 200, kStatus);
  api_.on_json("POST /api/v1/disable", 200, kStatus);
  r = run({"disable"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "interception disabled")) << r.out;
  r = run({"enable"});
  EXPECT_TRUE(contains(r.out, "interception enabled")) << r.out;
  EXPECT_EQ(api_.requests().back().method, "POST");
  EXPECT_EQ(api_.requests().back().target, "/api/v1/enable");
  EXPECT_EQ(run({"--json", "enable"}).out, std::string(kStatus) + "\n");
}

TEST_F(SplitctlTest, Interfaces) {
  api_.on_json("GET /api/v1/interfaces", 200, kInterfaces);
  const auto r = run({"interfaces"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out,
            "Selected\n"
            "  physical IPv4  phys0  192.0.2.2  (default via 192.0.2.1, metric 100)\n"
            "  physical IPv6  none (no default route on a non-tunnel interface)\n"
            "  tunnel         tun0  10.8.0.2, -  (up)\n"
            "\n"
            "INDEX  NAME   KIND            ROLE          STATE            MTU  MAC                FLAGS"
            "                                    ADDRESSES\n"
            "    1  lo     loopback        -             up             65536  -                  up,running,loopback"
            "                      127.0.0.1/8 ::1/128\n"
            "    2  phys0  ethernet(veth)  physical(v4)  up              1500  02:00:00:00:00:01  "
            "up,running,broadcast,multicast,lower_up  192.0.2.2/24\n"
            "    7  tun0   tun(tun)        tunnel        up,no-carrier   1420  -                  up,pointopoint,noarp"
            "                     10.8.0.2/24\n");
}

TEST_F(SplitctlTest, MetricsUnchanged) {
  FakeApi::Reply m;
  m.content_type = "text/plain; version=0.0.4";
  m.body = "# HELP splitd_sessions_active Live sessions.\n# TYPE splitd_sessions_active gauge\n"
           "splitd_sessions_active{protocol=\"tcp\"} 2\n";
  api_.on("GET /metrics", m);
  const auto r = run({"metrics"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, m.body);
}

TEST_F(SplitctlTest, Version) {
  api_.on_json("GET /api/v1/status", 200, kStatus);
  auto r = run({"version"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, std::string("splitctl ") + kVersion + " (git " + kGitRevision +
                       ")\nsplitd   0.1.0 (git d863c34) at " + sock() + "\n");
  r = run({"--json", "version"});
  const auto doc = nlohmann::json::parse(r.out);
  EXPECT_EQ(doc["splitctl"]["version"], kVersion);
  EXPECT_EQ(doc["splitd"]["git_revision"], "d863c34");

  r = run({"version", "--socket", dir_.path() + "/nothing.sock"}, 0, false);
  EXPECT_EQ(r.code, 0);  // splitctl's own version is always there
  EXPECT_TRUE(contains(r.out, "splitd   not reachable at ")) << r.out;
}

TEST_F(SplitctlTest, Dns) {
  api_.on_json("GET /api/v1/dns/cache", 200, kDnsCache);
  const auto r = run({"dns"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(only_request().method, "GET");
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 5u) << r.out;
  EXPECT_EQ(lines[0], "3 learned addresses");
  using Cells = std::vector<std::string>;
  EXPECT_EQ(cells(lines[1]), (Cells{"IP", "EXPIRES", "SOURCE", "NAMES"}));
  EXPECT_EQ(cells(lines[2]), (Cells{"198.51.100.7", "in 4m12s", "dns", "www.example.com, example.com"}));
  EXPECT_EQ(cells(lines[3]), (Cells{"203.0.113.10", "expired 30s ago (grace)", "dns", "whoami.lab.test"}));
  EXPECT_EQ(cells(lines[4]), (Cells{"2001:db8::10", "in 1h00m", "state", "v6.lab.test"}));
  EXPECT_EQ(lines[1].find("NAMES"), lines[2].find("www.example.com"));  // aligned
  for (const auto& l : lines) EXPECT_NE(l.back(), ' ') << "trailing blank: " << l;

  // On a narrow terminal the names give way first.
  const auto narrow = lines_of(run({"dns"}, 60).out);
  ASSERT_EQ(narrow.size(), 5u);
  for (const auto& l : narrow) EXPECT_LE(display_width(l), 60u) << l;
  EXPECT_TRUE(contains(narrow[3], "expired 30s ago (grace)")) << narrow[3];
}

TEST_F(SplitctlTest, DnsFiltersAndJson) {
  const std::string one = R"({"entries": [{"ip": "203.0.113.10", "names": ["whoami.lab.test"],
    "expires_at": "2026-12-02T09:57:02Z", "source": "dns"}], "count": 1})";
  api_.on_json("GET /api/v1/dns/cache?ip=203.0.113.10&name=lab", 200, one);
  auto r = run({"dns", "--name", "lab", "--ip=203.0.113.10"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(only_request().target, "/api/v1/dns/cache?ip=203.0.113.10&name=lab");
  EXPECT_EQ(lines_of(r.out)[0], "1 learned address");
  EXPECT_EQ(cells(lines_of(r.out)[2]), (std::vector<std::string>{"203.0.113.10", "in 1m00s", "dns", "whoami.lab.test"}));

  api_.on_json("GET /api/v1/dns/cache", 200, kDnsCache);
  r = run({"dns", "--json"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, std::string(kDnsCache) + "\n");

  api_.on_json("GET /api/v1/dns/cache?ip=nonsense", 400,
               R"({"error": "bad request", "detail": "ip: 'nonsense' is not an IPv4 or IPv6 address"})");
  r = run({"dns", "--ip", "nonsense"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "splitctl: ip: 'nonsense' is not an IPv4 or IPv6 address\n");

  const auto before = api_.requests().size();
  EXPECT_EQ(run({"dns", "--ip="}).code, 1);
  EXPECT_EQ(run({"dns", "--name"}).code, 1);
  EXPECT_EQ(run({"dns", "--route", "direct"}).code, 1);
  r = run({"dns", "list"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "'list' is not a dns subcommand")) << r.err;
  EXPECT_EQ(run({"dns", "flush", "now"}).code, 1);
  EXPECT_EQ(run({"dns", "flush", "--ip", "203.0.113.10"}).code, 1);
  EXPECT_EQ(api_.requests().size(), before);
}

TEST_F(SplitctlTest, DnsEmptySaysWhy) {
  api_.on_json("GET /api/v1/dns/cache", 200, R"({"entries": [], "count": 0})");
  auto doc = nlohmann::json::parse(kStatus);
  doc["dns_enabled"] = false;
  api_.on_json("GET /api/v1/status", 200, doc.dump());
  auto r = run({"dns"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "0 learned addresses\n"
                   "DNS capture is off (dns.enabled = false in splitd's config): no names are learned from DNS"
                   " answers\n");
  auto reqs = api_.requests();
  ASSERT_EQ(reqs.size(), 2u);  // the listing, then one status for the hint
  EXPECT_EQ(reqs[1].target, "/api/v1/status");

  api_.on_json("GET /api/v1/status", 200, kStatus);
  r = run({"dns"});
  EXPECT_EQ(lines_of(r.out).size(), 3u) << r.out;
  EXPECT_TRUE(contains(r.out, "none learned yet")) << r.out;

  // Without an answer to the status, only the hint is missing.
  api_.on_json("GET /api/v1/status", 500, R"({"error": "internal", "detail": "boom"})");
  r = run({"dns"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "0 learned addresses\n");
  EXPECT_EQ(r.err, "");

  // Filtered: the filters are the reason, no status asked.
  api_.on_json("GET /api/v1/dns/cache?name=nothing", 200, R"({"entries": [], "count": 0})");
  const auto before = api_.requests().size();
  r = run({"dns", "--name", "nothing"});
  EXPECT_EQ(r.out, "0 learned addresses\nnone matches --name nothing (`splitctl dns` lists them all)\n");
  EXPECT_EQ(api_.requests().size(), before + 1);

  api_.on_json("GET /api/v1/dns/cache", 200, R"({"count": 0})");
  r = run({"dns"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "bad answer")) << r.err;
}

TEST_F(SplitctlTest, DnsFlush) {
  api_.on_json("DELETE /api/v1/dns/cache", 200, R"({"flushed": 3})");
  auto r = run({"dns", "flush"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(only_request().method, "DELETE");
  EXPECT_EQ(r.out, "flushed 3 learned names\n");
  api_.on_json("DELETE /api/v1/dns/cache", 200, R"({"flushed": 1})");
  EXPECT_EQ(run({"dns", "flush"}).out, "flushed 1 learned name\n");
  EXPECT_EQ(run({"--json", "dns", "flush"}).out, "{\"flushed\": 1}\n");

  api_.on_json("DELETE /api/v1/dns/cache", 403, R"({"error": "forbidden", "detail": "uid 1000"})");
  r = run({"dns", "flush"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "this change needs root or membership of group splitd")) << r.err;
}

TEST_F(SplitctlTest, ExecAsksSplitdThenBecomesTheCommand) {
  std::vector<std::string> ran;
  const auto exec = [&ran](const std::vector<std::string>& argv) {
    ran = argv;
    return 42;  // what CMD "exits" with here
  };
  for (const auto& bad : std::vector<std::vector<std::string>>{
           {"exec"}, {"exec", "--", "curl"}, {"exec", "--route", "block", "--", "curl"}, {"exec", "--route", "direct"}}) {
    const auto r = run_with(bad, 0, true, nullptr, exec);
    EXPECT_EQ(r.code, 1) << bad.size();
  }
  EXPECT_TRUE(api_.requests().empty());
  EXPECT_TRUE(ran.empty());
  api_.on_json("POST /api/v1/exec", 200, R"({"pid": 7, "route": "direct", "cgroup": "/splitd-exec/direct"})");
  auto r = run_with({"exec", "--route", "direct", "--", "curl", "-s", "--route", "x"}, 0, true, nullptr, exec);
  EXPECT_EQ(r.code, 42);
  EXPECT_EQ(ran, (std::vector<std::string>{"curl", "-s", "--route", "x"}));
  EXPECT_EQ(nlohmann::json::parse(only_request().body), nlohmann::json({{"route", "direct"}}));
  // A refusal: the command never runs.
  ran.clear();
  api_.on_json("POST /api/v1/exec", 500, R"({"error": "unavailable", "detail": "splitd has no exec cgroups"})");
  r = run_with({"exec", "--route", "tunnel", "--", "curl"}, 0, true, nullptr, exec);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(ran.empty());
  EXPECT_TRUE(contains(r.err, "no exec cgroups")) << r.err;
}

TEST_F(SplitctlTest, NotYetAvailableAndHelp) {
  {
    const auto r = run({"dns", "--help"});
    EXPECT_EQ(r.code, 0);
    EXPECT_TRUE(contains(r.out, "Usage: splitctl dns [--ip ADDR] [--name TEXT] | dns flush")) << r.out;
    EXPECT_TRUE(contains(run({"help"}, 0, false).out, "the names learned from DNS answers"));
  }

  auto r = run({"help"}, 0, false);
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(contains(r.out, "Usage: splitctl")) << r.out;
  EXPECT_EQ(run({"--help"}, 0, false).out, r.out);
  r = run({"kill", "--help"});
  EXPECT_EQ(r.code, 0);
  EXPECT_TRUE(contains(r.out, "Usage: splitctl kill ID")) << r.out;
  EXPECT_EQ(run({"help", "kill"}).out, r.out);
  EXPECT_EQ(run({"frobnicate"}).code, 1);
  EXPECT_EQ(run({}, 0, false).code, 1);
  EXPECT_EQ(run({"--socket"}, 0, false).code, 1);
  EXPECT_EQ(run({"--timeout", "soon", "status"}).code, 1);
  EXPECT_TRUE(api_.requests().empty());
}

// ------------------------------------------------------------------------------------
// Exit codes and messages.

TEST_F(SplitctlTest, RejectedRequestsExitOneWithTheDetail) {
  const std::pair<unsigned, const char*> cases[] = {
      {400, R"({"error": "bad request", "detail": "cidr: prefix length 33 exceeds 32"})"},
      {404, R"({"error": "not found", "detail": "ip 10.9.0.0/16 is not in force"})"},
      {409, R"({"error": "conflict", "detail": "ip 10.0.0.0/8 is already in force"})"}};
  for (const auto& [status, body] : cases) {
    api_.on_json("POST /api/v1/split/ips", status, body);
    const auto r = run({"add", "ip", "10.0.0.0/33"});
    EXPECT_EQ(r.code, 1) << status;
    EXPECT_EQ(r.err, "splitctl: " + nlohmann::json::parse(body)["detail"].get<std::string>() + "\n");
    EXPECT_EQ(r.out, "");
  }
  api_.on_json("POST /api/v1/split/ips", 415, "not json at all");
  EXPECT_EQ(run({"add", "ip", "10.0.0.0/8"}).err, "splitctl: splitd rejected the request (HTTP 415)\n");
}

TEST_F(SplitctlTest, RuntimeFailuresExitTwo) {
  api_.on_json("POST /api/v1/disable", 403, R"({"error": "forbidden", "detail": "uid 1000 is not in group splitd"})");
  auto r = run({"disable"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "this change needs root or membership of group splitd")) << r.err;

  api_.on_json("GET /api/v1/status", 503, R"({"error": "starting", "detail": "not ready"})");
  r = run({"status"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "splitctl: splitd is starting; try again in a moment\n");

  api_.on_json("GET /api/v1/status", 401, R"({"error": "unauthorized", "detail": "bad token"})");
  EXPECT_EQ(run({"status"}).code, 2);

  api_.on_json("GET /api/v1/status", 500, R"({"error": "internal", "detail": "boom"})");
  r = run({"status"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "boom")) << r.err;

  api_.on_json("GET /api/v1/status", 200, "this is not json");
  r = run({"status"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "bad answer")) << r.err;

  FakeApi::Reply silent;
  silent.silent = true;
  api_.on("GET /api/v1/status", silent);
  r = run({"--timeout", "0.2", "status"});
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "splitd did not answer in time")) << r.err;
}

TEST_F(SplitctlTest, UnreachableDaemonSaysWhatToDo) {
  const std::string missing = dir_.path() + "/missing.sock";
  auto r = run({"status", "--socket", missing}, 0, false);
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "splitctl: splitd is not running (no API socket at " + missing +
                       "); start it: `sudo splitd run` (or `systemctl start splitd`)\n");

  const std::string stale = dir_.path() + "/stale.sock";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, stale.c_str(), sizeof sa.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ::close(fd);
  r = run({"status", "--socket", stale}, 0, false);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "nothing answers on " + stale + ": splitd is not running (a stale socket)")) << r.err;
}

TEST_F(SplitctlTest, SocketFromTheEnvironmentAndTheDefault) {
  api_.on_json("GET /api/v1/status", 200, kStatus);
  env_["SPLITD_SOCKET"] = sock();
  EXPECT_EQ(run({"status"}, 0, false).code, 0);
  env_.clear();
  const auto r = run({"status"}, 0, false);
  EXPECT_EQ(r.code, 2);
  EXPECT_TRUE(contains(r.err, "/run/splitd/api.sock")) << r.err;
}

TEST(SplitctlTcp, TokenFromTheFile) {
  FakeApi api(FakeApi::Tcp{});
  api.on_json("GET /api/v1/status", 200, kStatus);
  TempDir dir;
  const std::string token_file = dir.path() + "/api.token";
  std::ofstream(token_file) << "0123abcd\n";
  std::ostringstream out, err;
  Io io{out, err};
  io.now = [] { return kNow; };
  EXPECT_EQ(run_splitctl({"--tcp", api.address(), "--token-file", token_file, "status"}, io), 0) << err.str();
  ASSERT_EQ(api.requests().size(), 1u);
  EXPECT_EQ(api.requests()[0].authorization, "Bearer 0123abcd");

  EXPECT_EQ(run_splitctl({"--tcp", api.address(), "status"}, io), 1);  // no token file
  EXPECT_EQ(run_splitctl({"--tcp", api.address(), "--token-file", dir.path() + "/none", "status"}, io), 1);
  EXPECT_EQ(run_splitctl({"--tcp", api.address(), "--socket", "/x", "--token-file", token_file, "status"}, io), 1);
  EXPECT_EQ(api.requests().size(), 1u);
}

// ------------------------------------------------------------------------------------
// connections --watch.

std::string event(const char* name, const std::string& data) {
  return std::string("event: ") + name + "\ndata: " + data + "\n\n";
}

std::vector<std::string> watch_stream() {
  const auto all = nlohmann::json::parse(kConnections);
  const nlohmann::json snapshot = {all[0], all[1]};
  const nlohmann::json changes1 = {
      {"new", {all[2]}},
      {"updated", {{{"id", 17}, {"bytes_sent", 2048}, {"bytes_received", 3 << 20}, {"idle_ms", 10}}}},
      {"closed", nlohmann::json::array()}};
  const nlohmann::json changes2 = {{"new", nlohmann::json::array()}, {"updated", nlohmann::json::array()},
                                   {"closed", {18}}};
  return {event("snapshot", snapshot.dump()), ": keepalive\n\n", event("changes", changes1.dump()),
          event("changes", changes2.dump())};
}

TEST(ConnectionsView, SnapshotThenChanges) {
  ConnectionsView view;
  std::vector<std::string> lines;
  const auto stream = watch_stream();
  auto data = [&](std::size_t i) {
    const auto& e = stream[i];
    const auto start = e.find("data: ") + 6;
    return e.substr(start, e.size() - start - 2);
  };
  ASSERT_TRUE(view.apply("snapshot", data(0), lines));
  EXPECT_EQ(view.size(), 2u);
  ASSERT_TRUE(view.apply("changes", data(2), lines));
  EXPECT_EQ(view.size(), 3u);
  ASSERT_TRUE(view.apply("changes", data(3), lines));
  EXPECT_EQ(view.size(), 2u);
  const std::vector<std::string> want = {
      "+ 17 tcp 198.18.2.2:40312 -> 203.0.113.10:80 domain=- route=tunnel iface=tun0 app=- rule=default",
      "+ 18 tcp 198.18.2.2:40400 -> 198.51.100.7:443 domain=www.example.com/sni route=direct iface=phys0 app=firefox "
      "rule=domain *.example.com",
      "+ 21 udp [2001:db8::2]:5353 -> [2001:db8::53]:53 domain=- route=block iface=- app=dig rule=ip 2001:db8::/64",
      "~ 17 sent 2.0KiB recv 3.0MiB",
      "- 18"};
  EXPECT_EQ(lines, want);
  const auto text = view.text(kNow, 0);
  EXPECT_FALSE(contains(text, "www.example.com")) << text;  // 18 closed
  EXPECT_EQ(cells(lines_of(text)[1])[8], "2.0KiB") << text;  // 17 updated
  EXPECT_EQ(cells(lines_of(text)[1])[9], "3.0MiB") << text;
  EXPECT_TRUE(contains(text, "2 connections (1 tcp, 1 udp)")) << text;

  EXPECT_FALSE(view.apply("snapshot", "{}", lines));
  EXPECT_FALSE(view.apply("changes", "[]", lines));
  EXPECT_TRUE(view.apply("hello", "whatever", lines));  // unknown events are skipped
}

TEST_F(SplitctlTest, WatchPipedPrintsOneLinePerChange) {
  api_.on("GET /api/v1/connections?watch=250&route=tunnel", FakeApi::sse(watch_stream()));
  const auto r = run({"connections", "--route", "tunnel", "--watch", "250"});
  EXPECT_EQ(r.code, 2);  // the stream ended without a Ctrl-C: splitd went away
  EXPECT_TRUE(contains(r.err, "splitd ended the watch stream")) << r.err;
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 5u) << r.out;
  EXPECT_EQ(lines[0].substr(0, 5), "+ 17 ");
  EXPECT_EQ(lines[1].substr(0, 5), "+ 18 ");
  EXPECT_EQ(lines[2].substr(0, 5), "+ 21 ");
  EXPECT_EQ(lines[3], "~ 17 sent 2.0KiB recv 3.0MiB");
  EXPECT_EQ(lines[4], "- 18");
}

TEST_F(SplitctlTest, WatchOnATerminalRedrawsInPlace) {
  api_.on("GET /api/v1/connections?watch=1000", FakeApi::sse(watch_stream(), false, true));
  const auto r = run({"connections", "--watch"}, 200);
  EXPECT_EQ(r.code, 2) << r.err;
  const std::string clear = "\x1b[H\x1b[2J";
  std::size_t redraws = 0;
  for (std::size_t pos = r.out.find(clear); pos != std::string::npos; pos = r.out.find(clear, pos + 1)) ++redraws;
  EXPECT_EQ(redraws, 3u);
  const std::string last = r.out.substr(r.out.rfind(clear) + clear.size());
  const auto lines = lines_of(last);
  ASSERT_EQ(lines.size(), 6u) << last;
  EXPECT_EQ(lines[0], "splitctl connections: every 1000 ms, Ctrl-C ends");
  EXPECT_EQ(lines[3].substr(0, 4), "17  ");
  EXPECT_EQ(cells(lines[3])[8], "2.0KiB") << lines[3];
  EXPECT_EQ(lines[4].substr(0, 4), "21  ");
  EXPECT_EQ(lines[5], "2 connections (1 tcp, 1 udp)");
}

TEST_F(SplitctlTest, WatchJsonPrintsEachEventsDataAsOneLine) {
  api_.on("GET /api/v1/connections?watch=1000", FakeApi::sse(watch_stream()));
  const auto r = run({"connections", "--watch", "--json"});
  const auto lines = lines_of(r.out);
  ASSERT_EQ(lines.size(), 3u) << r.out;
  EXPECT_TRUE(nlohmann::json::parse(lines[0]).is_array());
  EXPECT_EQ(nlohmann::json::parse(lines[2])["closed"][0], 18);
}

TEST_F(SplitctlTest, WatchEndsWithCtrlCAndExitZero) {
  auto stream = watch_stream();
  stream.resize(1);
  api_.on("GET /api/v1/connections?watch=1000", FakeApi::sse(stream, true));
  std::atomic<bool> interrupted{false};
  std::thread ctrl_c([&] {
    std::this_thread::sleep_for(300ms);
    interrupted = true;
  });
  const auto r = run({"connections", "--watch"}, 0, true, &interrupted);
  ctrl_c.join();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 2u) << r.out;
}

TEST_F(SplitctlTest, WatchRejected) {
  api_.on_json("GET /api/v1/connections?watch=5", 400, R"({"error": "bad request", "detail": "watch: 100 to 60000"})");
  const auto r = run({"connections", "--watch", "5"});
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(r.err, "splitctl: watch: 100 to 60000\n");
}

}  // namespace
}  // namespace splitd::ctl
