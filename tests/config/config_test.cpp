#include "config/config.hpp"

#include <gtest/gtest.h>

#include <fstream>

namespace splitd::config {
namespace {

using namespace std::chrono_literals;

TEST(Config, DefaultsMatchSpec) {
  const Config c;
  EXPECT_EQ(c.daemon.api_socket, "/run/splitd/api.sock");
  EXPECT_EQ(c.daemon.log_level, log::Level::kInfo);
  EXPECT_EQ(c.interfaces.physical, "auto");
  EXPECT_EQ(c.proxy.port, 15001);
  EXPECT_EQ(c.proxy.max_sessions, 100000u);
  EXPECT_EQ(c.proxy.connect_timeout, 10s);
  EXPECT_EQ(c.proxy.idle_timeout, 5min);
  EXPECT_EQ(c.proxy.udp_idle_timeout, 60s);
  EXPECT_EQ(c.firewall.mark, 0x5d1u);
  EXPECT_EQ(c.firewall.bypass_mark, 0x5d2u);
  EXPECT_EQ(c.firewall.route_table, 1501u);
  EXPECT_TRUE(c.firewall.ipv6);
  EXPECT_EQ(c.firewall.never_intercept.size(), 6u);
  EXPECT_EQ(c.firewall.on_tunnel_down, decider::OnTunnelDown::kBlock);
  EXPECT_EQ(c.split.mode, decider::Mode::kExclude);
  EXPECT_EQ(c.split.ips.size(), 2u);
  EXPECT_EQ(c.split.domains, (std::vector<std::string>{"*.local", "localhost"}));
  EXPECT_EQ(c.dns.servers.size(), 2u);
  EXPECT_EQ(c.dns.intercept_port, 53);
  EXPECT_EQ(c.dns.sniff, decider::SniffMode::kUnknown);
  EXPECT_EQ(c.dns.sniff_ports, (std::vector<std::uint16_t>{80, 443}));
  EXPECT_EQ(c.dns.sniff_timeout, 300ms);
  EXPECT_EQ(c.dns.ech_public_names, (std::vector<std::string>{"cloudflare-ech.com"}));
  auto empty = parse("", "empty.toml");
  ASSERT_TRUE(empty.has_value());
  EXPECT_EQ(empty->proxy.port, 15001);
}

TEST(Config, FullExample) {
  auto c = parse(R"(
[daemon]
api_socket = "/tmp/s.sock"
api_listen = "127.0.0.1:7070"
log_level = "debug"
[interfaces]
physical = "phys0"
tunnel = "tun0"
[proxy]
port = 15555
max_sessions = 5000
connect_timeout = "2s"
idle_timeout = "30s"
udp_idle_timeout = "500ms"
[firewall]
mark = 0x100
bypass_mark = 0x200
route_table = 300
ipv6 = false
never_intercept = ["10.9.0.0/16"]
on_tunnel_down = "direct"
[split]
mode = "include"
domains = ["*.Example.COM.", "a.*.cdn.net"]
ips = ["203.0.113.0/24", "2001:db8::10"]
[[split.apps]]
name = "Slack"
comm = "slack"
[dns]
enabled = false
servers = ["2001:db8::53"]
cache_ttl = "1h"
forwarder_port = 15553
timeout = "300ms"
grace = "1m"
ttl_floor = "0s"
max_names = 1000
doh_canary = false
block_dot = true
threads = 2
sniff = "always"
sniff_ports = [443, 8443]
sniff_timeout = "1s"
ech_public_names = ["cloudflare-ech.com", "*.Ech.Example."]
)", "full.toml");
  ASSERT_TRUE(c.has_value()) << c.error().front().to_string();
  EXPECT_EQ(c->daemon.log_level, log::Level::kDebug);
  EXPECT_EQ(c->interfaces.tunnel, "tun0");
  EXPECT_EQ(c->proxy.port, 15555);
  EXPECT_EQ(c->proxy.udp_idle_timeout, 500ms);
  EXPECT_EQ(c->firewall.mark, 0x100u);
  EXPECT_FALSE(c->firewall.ipv6);
  EXPECT_EQ(c->firewall.never_intercept.front().to_string(), "10.9.0.0/16");
  EXPECT_EQ(c->firewall.on_tunnel_down, decider::OnTunnelDown::kDirect);
  EXPECT_EQ(c->split.mode, decider::Mode::kInclude);
  EXPECT_EQ(c->split.domains, (std::vector<std::string>{"*.example.com", "a.*.cdn.net"}));
  EXPECT_EQ(c->split.ips.at(1).to_string(), "2001:db8::10/128");
  ASSERT_EQ(c->split.apps.size(), 1u);
  EXPECT_EQ(c->split.apps[0].comm, "slack");
  EXPECT_FALSE(c->dns.enabled);
  EXPECT_EQ(c->dns.cache_ttl, 1h);
  EXPECT_EQ(c->dns.forwarder_port, 15553);
  EXPECT_EQ(c->dns.timeout, 300ms);
  EXPECT_EQ(c->dns.grace, 1min);
  EXPECT_EQ(c->dns.ttl_floor, 0s);
  EXPECT_EQ(c->dns.max_names, 1000u);
  EXPECT_FALSE(c->dns.doh_canary);
  EXPECT_TRUE(c->dns.block_dot);
  EXPECT_EQ(c->dns.threads, 2u);
  EXPECT_EQ(c->dns.sniff, decider::SniffMode::kAlways);
  EXPECT_EQ(c->dns.sniff_ports, (std::vector<std::uint16_t>{443, 8443}));
  EXPECT_EQ(c->dns.sniff_timeout, 1s);
  EXPECT_EQ(c->dns.ech_public_names, (std::vector<std::string>{"cloudflare-ech.com", "*.ech.example"}));
  auto off = parse("[dns]\nsniff = \"off\"\nsniff_ports = []\n", "off.toml");
  ASSERT_TRUE(off.has_value());
  EXPECT_EQ(off->dns.sniff, decider::SniffMode::kOff);
  EXPECT_TRUE(off->dns.sniff_ports.empty());
}

struct Bad {
  const char* toml;
  std::uint32_t line, column;
  const char* message;
};

class BadConfig : public ::testing::TestWithParam<Bad> {};

TEST_P(BadConfig, ReportsPositionAndMessage) {
  const Bad& b = GetParam();
  auto c = parse(b.toml, "bad.toml");
  ASSERT_FALSE(c.has_value()) << b.toml;
  const Diagnostic& d = c.error().front();
  EXPECT_EQ(d.file, "bad.toml");
  EXPECT_EQ(d.line, b.line) << d.to_string();
  EXPECT_EQ(d.column, b.column) << d.to_string();
  EXPECT_EQ(d.message, b.message) << d.to_string();
  EXPECT_EQ(d.to_string().rfind("bad.toml:" + std::to_string(b.line) + ":" + std::to_string(b.column) + ": error: ", 0), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BadConfig,
    ::testing::Values(
        Bad{"[proxy]\nport = 70000\n", 2, 8, "proxy.port: 70000 is out of range (1 to 65535)"},
        Bad{"[proxy]\nport = \"15001\"\n", 2, 8, "proxy.port: expected an integer from 1 to 65535, got a string"},
        Bad{"[proxy]\nprot = 1\n", 2, 1, "unknown key 'proxy.prot'; allowed here: connect_timeout, idle_timeout, max_sessions, port, udp_idle_timeout"},
        Bad{"[proxies]\n", 1, 2, "unknown key 'proxies'; sections are: daemon, dns, firewall, interfaces, proxy, split"},
        Bad{"[proxy]\nconnect_timeout = 10\n", 2, 19, "proxy.connect_timeout: expected a duration like \"500ms\", \"10s\", \"5m\", \"1h\" from 100ms to 5m, got an integer"},
        Bad{"[proxy]\nconnect_timeout = \"10 s\"\n", 2, 19, "proxy.connect_timeout: '10 s' is not a duration like \"500ms\", \"10s\", \"5m\", \"1h\" from 100ms to 5m"},
        Bad{"[proxy]\nidle_timeout = \"0s\"\n", 2, 16, "proxy.idle_timeout: 0s is out of range (100ms to 7d)"},
        Bad{"[split]\nmode = \"inclusive\"\n", 2, 8, "split.mode: 'inclusive' is not one of \"exclude\", \"include\""},
        Bad{"[split]\nips = [\"10.0.0.0/33\"]\n", 2, 8, "split.ips[0]: prefix length 33 exceeds 32"},
        Bad{"[split]\nips = [\"10.0.0.0/8\", \"nope\"]\n", 2, 22, "split.ips[1]: 'nope' is not an IPv4 or IPv6 address"},
        Bad{"[split]\nips = \"10.0.0.0/8\"\n", 2, 7, "split.ips: expected an array of strings, got a string"},
        Bad{"[split]\nips = [42]\n", 2, 8, "split.ips[0]: expected a string, got an integer"},
        Bad{"[split]\ndomains = [\"ex*ample.com\"]\n", 2, 12, "split.domains[0]: 'ex*ample.com': '*' must be a whole label, as in \"*.example.com\""},
        Bad{"[split]\ndomains = [\"a..b\"]\n", 2, 12, "split.domains[0]: 'a..b' has an empty or overlong label"},
        Bad{"[split]\ndomains = [\"bücher.de\"]\n", 2, 12, "split.domains[0]: 'bücher.de' has a character that is not allowed in a domain ('\xc3'); write IDNs in punycode (xn--…)"},
        Bad{"[firewall]\nmark = 0\n", 2, 8, "firewall.mark: 0 is out of range (0x1 to 0xffffffff)"},
        Bad{"[firewall]\nmark = 5\nbypass_mark = 5\n", 3, 15, "firewall.bypass_mark: must differ from firewall.mark (5)"},
        Bad{"[firewall]\nroute_table = 254\n", 2, 15, "firewall.route_table: 254 is a system table (compat, default, main, local); pick another, e.g. 1501"},
        Bad{"[firewall]\nroute_table = 252\n", 2, 15, "firewall.route_table: 252 is a system table (compat, default, main, local); pick another, e.g. 1501"},
        Bad{"[[split.apps]]\nname = \"a/b\"\ncomm = \"x\"\n", 2, 8, "split.apps[0].name: 'a/b': an app rule name has no '/' or control characters"},
        Bad{"[firewall]\non_tunnel_down = \"allow\"\n", 2, 18, "firewall.on_tunnel_down: 'allow' is not one of \"block\", \"direct\""},
        Bad{"[firewall]\nipv6 = \"yes\"\n", 2, 8, "firewall.ipv6: expected true or false, got a string"},
        Bad{"[interfaces]\nphysical = \"eth0/1\"\n", 2, 12, "interfaces.physical: 'eth0/1' is not an interface name (no '/', ':' or spaces)"},
        Bad{"[interfaces]\ntunnel = \"averyveryverylongname\"\n", 2, 10, "interfaces.tunnel: 'averyveryverylongname' is not an interface name (1 to 15 characters, or \"auto\")"},
        Bad{"[daemon]\nlog_level = \"verbose\"\n", 2, 13, "daemon.log_level: 'verbose' is not one of \"trace\", \"debug\", \"info\", \"warn\", \"error\""},
        Bad{"[daemon]\nstate_dir = \"var/lib\"\n", 2, 13, "daemon.state_dir: 'var/lib' must be an absolute path"},
        Bad{"[daemon]\napi_listen = \"localhost\"\n", 2, 14, "daemon.api_listen: 'localhost' must be ADDRESS:PORT, e.g. \"127.0.0.1:7070\""},
        Bad{"[dns]\nservers = [\"1.1.1\"]\n", 2, 12, "dns.servers[0]: '1.1.1' is not an IPv4 or IPv6 address"},
        Bad{"[dns]\nservers = [\"1.1.1.1\", \"127.0.0.53\"]\n", 2, 23, "dns.servers[1]: '127.0.0.53' is this host: a local stub or splitd itself would receive its own captured queries again (a loop); give the servers the stub forwards to"},
        Bad{"[dns]\ndirect_servers = [\"::1\"]\n", 2, 19, "dns.direct_servers[0]: '::1' is this host: a local stub or splitd itself would receive its own captured queries again (a loop); give the servers the stub forwards to"},
        Bad{"[dns]\nservers = [\"0.0.0.0\"]\n", 2, 12, "dns.servers[0]: '0.0.0.0' is not a unicast server address"},
        Bad{"[dns]\nforwarder_port = 15001\n", 2, 18, "dns.forwarder_port: must differ from proxy.port (15001)"},
        Bad{"[dns]\ntimeout = \"10ms\"\n", 2, 11, "dns.timeout: 10ms is out of range (50ms to 30s)"},
        Bad{"[dns]\nmax_names = 0\n", 2, 13, "dns.max_names: 0 is out of range (1 to 10000000)"},
        Bad{"[dns]\nsniff = \"sometimes\"\n", 2, 9, "dns.sniff: 'sometimes' is not one of \"unknown\", \"always\", \"off\""},
        Bad{"[dns]\nsniff_ports = [443, 0]\n", 2, 21, "dns.sniff_ports[1]: 0 is out of range (1 to 65535)"},
        Bad{"[dns]\nsniff_ports = [443, 443]\n", 2, 21, "dns.sniff_ports[1]: port 443 is listed twice"},
        Bad{"[dns]\nsniff_ports = [\"443\"]\n", 2, 16, "dns.sniff_ports[0]: expected a port (an integer from 1 to 65535), got a string"},
        Bad{"[dns]\nsniff_ports = 443\n", 2, 15, "dns.sniff_ports: expected an array of ports (1 to 65535), got an integer"},
        Bad{"[dns]\nsniff_timeout = \"5ms\"\n", 2, 17, "dns.sniff_timeout: 5ms is out of range (10ms to 10s)"},
        Bad{"[dns]\nech_public_names = [\"a..b\"]\n", 2, 21, "dns.ech_public_names[0]: 'a..b' has an empty or overlong label"},
        Bad{"proxy = 5\n", 1, 9, "'proxy' must be a table ([proxy]), got an integer"},
        Bad{"[[split.apps]]\ncomm = \"slack\"\n", 1, 1, "split.apps[0]: 'name' is required"},
        Bad{"[[split.apps]]\nname = \"x\"\n", 1, 1, "split.apps[0]: give at least one of 'cgroup', 'comm', 'path', 'unit', 'app_id', 'user'"},
        Bad{"[proxy\nport = 1\n", 1, 7, "TOML syntax: Error while parsing table header: expected ']', saw '\\n'"}));

TEST(Config, AllProblemsReportedAtOnce) {
  auto c = parse("[proxy]\nport = 0\nmax_sessions = -1\n[split]\nmode = 1\nips = [\"x\", \"10.0.0.0/99\"]\n[bogus]\n",
                 "many.toml");
  ASSERT_FALSE(c.has_value());
  ASSERT_EQ(c.error().size(), 6u);
  std::vector<std::uint32_t> lines;
  for (const auto& d : c.error()) lines.push_back(d.line);
  EXPECT_EQ(lines, (std::vector<std::uint32_t>{7, 3, 2, 6, 6, 5}));
}

TEST(Config, Durations) {
  EXPECT_EQ(parse_duration("250ms"), 250ms);
  EXPECT_EQ(parse_duration("10s"), 10s);
  EXPECT_EQ(parse_duration("5m"), 5min);
  EXPECT_EQ(parse_duration("1h"), 1h);
  EXPECT_EQ(parse_duration("2d"), 48h);
  for (const char* bad : {"", "s", "10", "10 s", "-1s", "1.5s", "10sec", "99999999999s"}) {
    EXPECT_FALSE(parse_duration(bad).has_value()) << bad;
  }
  EXPECT_EQ(format_duration(90s), "90s");
  EXPECT_EQ(format_duration(1500ms), "1500ms");
  EXPECT_EQ(format_duration(120min), "2h");
}

TEST(Config, LoadFileErrors) {
  auto missing = load_file("/nonexistent/splitd.toml");
  ASSERT_FALSE(missing.has_value());
  EXPECT_EQ(missing.error().front().to_string(),
            "/nonexistent/splitd.toml:0:0: error: cannot read: No such file or directory");
  const std::string path = ::testing::TempDir() + "/splitd-config-test.toml";
  std::ofstream(path) << "[split]\nmode = \"include\"\n";
  auto ok = load_file(path);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->split.mode, decider::Mode::kInclude);
  EXPECT_EQ(ok->source, path);
  std::remove(path.c_str());
  // A directory opens as an empty stream: it must not pass as an empty, valid config.
  auto dir = load_file("/etc");
  ASSERT_FALSE(dir.has_value());
  EXPECT_EQ(dir.error().front().to_string(), "/etc:0:0: error: cannot read: is a directory, not a config file");
}

// The API checks rule values with the same functions, so the messages match the file's.
TEST(Config, SharedChecksGiveTheFilesMessages) {
  EXPECT_EQ(check_cidr("10.0.0.0/33").error(), "prefix length 33 exceeds 32");
  EXPECT_EQ(check_cidr("10.1.2.3/8")->to_string(), Cidr::parse("10.1.2.3/8")->to_string());
  EXPECT_EQ(check_domain_pattern("ex*ample.com").error(), "'ex*ample.com': '*' must be a whole label, as in \"*.example.com\"");
  EXPECT_EQ(*check_domain_pattern("*.Example.COM."), "*.example.com");
  EXPECT_EQ(parse_mode("inclusive").error(), "'inclusive' is not one of \"exclude\", \"include\"");
  EXPECT_EQ(*parse_mode("include"), decider::Mode::kInclude);
  EXPECT_EQ(check_app({"x", "", "", "", "", "", ""}).error(), "give at least one of 'cgroup', 'comm', 'path', 'unit', 'app_id', 'user'");
  EXPECT_EQ(check_app({"s", "", "", "", "a/b.service", "", ""}).error().substr(0, 6), "unit: ");
  EXPECT_EQ(check_app({"s", "", "", "", "", "", "no-such-user-splitd"}).error(),
            "user: no user 'no-such-user-splitd' on this system (give a user name or a uid)");
  EXPECT_TRUE(check_app({"s", "", "", "", "transmission-daemon.service", "", ""}).has_value());
  EXPECT_TRUE(check_app({"s", "", "", "", "", "firefox", ""}).has_value());
  EXPECT_TRUE(check_app({"s", "", "", "", "", "", "root"}).has_value());
  EXPECT_TRUE(check_app({"s", "", "", "", "", "", "1000"}).has_value());
  EXPECT_EQ(*resolve_user("root"), 0u);
  EXPECT_EQ(*resolve_user("4294967294"), 4294967294u);
  EXPECT_FALSE(resolve_user("4294967295").has_value());
  EXPECT_FALSE(resolve_user("").has_value());
  EXPECT_EQ(check_app({"", "", "slack", "", "", "", ""}).error(), "name: '' is not an app rule name (1 to 64 characters)");
  EXPECT_EQ(check_app({"s", "", "averyveryverylongname", "", "", "", ""}).error(),
            "comm: 'averyveryverylongname' is not a process name (1 to 15 characters, as in /proc/PID/comm)");
  EXPECT_EQ(check_app({"s", "", "", "usr/bin/x", "", "", ""}).error(), "path: 'usr/bin/x' must be an absolute path");
  EXPECT_TRUE(check_app({"Slack", "", "slack", "/usr/bin/slack", "", "", ""}).has_value());
}

}  // namespace
}  // namespace splitd::config

namespace splitd::config {
namespace {

// The shipped example must stay valid and keep the defaults it documents.
TEST(Config, ShippedExampleIsValidAndDefault) {
  auto c = load_file(SPLITD_SOURCE_DIR "/deploy/splitd.toml");
  ASSERT_TRUE(c.has_value()) << c.error().front().to_string();
  const Config defaults;
  EXPECT_EQ(c->proxy.port, defaults.proxy.port);
  EXPECT_EQ(c->proxy.idle_timeout, defaults.proxy.idle_timeout);
  EXPECT_EQ(c->firewall.never_intercept, defaults.firewall.never_intercept);
  EXPECT_EQ(c->split.ips, defaults.split.ips);
  EXPECT_EQ(c->split.domains, defaults.split.domains);
  EXPECT_EQ(c->dns.servers, defaults.dns.servers);
  EXPECT_EQ(c->dns, defaults.dns);
}

}  // namespace
}  // namespace splitd::config

namespace splitd::config {
namespace {

// The reload table must name every key the parser accepts: a key added to the parser
// but not to the table would silently never apply. The parser lists its keys in the
// message for an unknown key.
TEST(Config, ReloadTableNamesEveryKey) {
  std::vector<std::string> parser_keys;
  for (const std::string section : {"daemon", "interfaces", "proxy", "firewall", "split", "dns"}) {
    auto c = parse("[" + section + "]\nzzz_unknown = 1\n", "k.toml");
    ASSERT_FALSE(c.has_value());
    const std::string msg = c.error().front().message;
    const auto at = msg.find("allowed here: ");
    ASSERT_NE(at, std::string::npos) << msg;
    std::string list = msg.substr(at + 14);
    std::size_t start = 0;
    while (start < list.size()) {
      const std::size_t comma = std::min(list.find(", ", start), list.size());
      parser_keys.push_back(section + "." + list.substr(start, comma - start));
      start = comma + 2;
    }
  }
  auto table = known_keys();
  std::sort(parser_keys.begin(), parser_keys.end());
  std::sort(table.begin(), table.end());
  EXPECT_EQ(parser_keys, table);
}

TEST(Config, ChangesSayHowEachKeyApplies) {
  Config a;
  Config b = a;
  EXPECT_FALSE(changes(a, b).rules);
  b.split.mode = decider::Mode::kInclude;
  b.firewall.never_intercept.push_back(*Cidr::parse("198.51.100.0/24"));
  b.proxy.port = 15002;
  b.daemon.api_socket = "/run/x.sock";
  const ConfigChanges c = changes(a, b);
  EXPECT_TRUE(c.rules);
  EXPECT_TRUE(c.footprint);
  EXPECT_EQ(c.restart, (std::vector<std::string>{"daemon.api_socket", "proxy.port"}));
}

}  // namespace
}  // namespace splitd::config
