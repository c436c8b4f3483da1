// DNS capture and domain routing end to end: real splitd in the lab's host namespace, real
// dig and curl, and a dnsmasq on each side that answers with its own side, so every test
// sees which side answered a query and which side a connection reached.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "tests/e2e/splitd_process.hpp"
#include "tests/e2e/tcp_client.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Both servers lists name the lab's resolver: through tun0 it is vpn's dnsmasq, through
// phys0 wan's. A query's answer says which route it took.
std::string dns_config(const std::string& mode, const std::vector<std::string>& domains,
                       const std::vector<std::string>& ips = {}, const std::string& dns_extra = "",
                       const std::string& firewall = "") {
  const auto list = [](const std::vector<std::string>& v) {
    std::string out;
    for (const auto& i : v) out += (out.empty() ? "\"" : ", \"") + i + "\"";
    return "[" + out + "]";
  };
  return "[daemon]\nlog_level = \"debug\"\n"
         "[firewall]\n" + firewall + "\n"
         "[split]\nmode = \"" + mode + "\"\ndomains = " + list(domains) + "\nips = " + list(ips) + "\n"
         "[dns]\nenabled = true\nservers = [\"203.0.113.53\", \"2001:db8::53\"]\n"
         "direct_servers = [\"203.0.113.53\", \"2001:db8::53\"]\ntimeout = \"500ms\"\n" + dns_extra + "\n";
}

// `dig +short` from host: the answer lines joined by spaces, or "ERR: ..." with dig's output.
std::string dig(const lab::Lab& lab, const std::string& args) {
  const auto r = lab.exec(lab.host_ns(), "dig +time=2 +tries=1 +short " + args, 10s);
  std::string out = r.out;
  for (char& c : out) {
    if (c == '\n') c = ' ';
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  if (r.exit_code != 0) return "ERR: exit " + std::to_string(r.exit_code) + " " + out + r.err;
  return out;
}

// dig's full output (header flags, status), for rcodes and TC.
std::string dig_full(const lab::Lab& lab, const std::string& args) {
  return lab.exec(lab.host_ns(), "dig +time=2 +tries=1 " + args, 10s).out;
}

// curl by name, resolved through the host's normal path (getaddrinfo, /etc/resolv.conf)
// in a private mount namespace whose resolv.conf names a server that exists nowhere:
// only splitd's capture can answer it.
std::string curl_name(const lab::Lab& lab, const std::string& url, const std::string& server = "192.0.2.53") {
  const std::string conf = lab.state_dir() + "/resolv-" + server + ".conf";
  lab.exec(lab.host_ns(), "echo 'nameserver " + server + "\noptions timeout:2 attempts:1' > '" + conf + "'");
  const auto r = lab.exec(lab.host_ns(),
                          "unshare -m sh -c \"mount --bind '" + conf + "' /etc/resolv.conf && "
                          "curl -s -g --max-time 5 " + url + "\"",
                          15s);
  if (r.exit_code != 0) return "curl exit " + std::to_string(r.exit_code) + ": " + r.err;
  return r.out;
}

// A packet counter for DNS (UDP and TCP port 53) arriving in a side's namespace from host.
void add_dns_counter(const lab::Lab& lab, const std::string& side) {
  const auto r = lab.exec(side, "nft add table inet dnscount && "
                                "nft add chain inet dnscount c '{ type filter hook prerouting priority -300; }' && "
                                "nft add rule inet dnscount c meta l4proto '{ tcp, udp }' th dport 53 counter");
  ASSERT_EQ(r.exit_code, 0) << r.err;
}
long dns_packets(const lab::Lab& lab, const std::string& side) {
  const auto r = lab.exec(side, "nft list chain inet dnscount c");
  std::smatch m;
  if (!std::regex_search(r.out, m, std::regex("counter packets ([0-9]+)"))) return -1;
  return std::stol(m[1]);
}
void reset_dns_counter(const lab::Lab& lab, const std::string& side) {
  lab.exec(side, "nft delete table inet dnscount");
  add_dns_counter(lab, side);
}


// Waits (5 s at most) until splitd's /metrics says the tunnel is down.
bool wait_tunnel_down(const lab::Lab& lab) {
  const auto by = Clock::now() + 5s;
  while (metric(metrics(lab), "splitd_tunnel_up") != 0) {
    if (Clock::now() >= by) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

TEST(DnsCapture, EachQueryIsAnsweredByTheSideItsNameRoutesTo) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, dns_config("exclude", {"*.direct.lab.test"}));
  for (const std::string server : {"203.0.113.53", "2001:db8::53", "192.0.2.1", "127.0.0.53", "::1"}) {
    for (const std::string transport : {"+notcp", "+tcp"}) {
      const std::string at = "@" + server + " " + transport + " ";
      EXPECT_EQ(dig(*lab, at + "side.lab.test TXT"), "\"vpn\"") << server << transport << "\n" << splitd->log();
      EXPECT_EQ(dig(*lab, at + "side.direct.lab.test TXT"), "\"wan\"") << server << transport;
    }
  }
  // 0x20 mixed case: routed by the name, the question echoed as asked.
  const std::string mixed = dig_full(*lab, "@192.0.2.1 SiDe.DiReCt.LaB.TeSt TXT");
  EXPECT_NE(mixed.find(";SiDe.DiReCt.LaB.TeSt."), std::string::npos) << mixed;
  EXPECT_NE(mixed.find("\"wan\""), std::string::npos) << mixed;
  // Several queries on one TCP connection (dig keeps it open with +keepopen).
  const std::string pipelined = dig(*lab, "@192.0.2.1 +tcp +keepopen side.lab.test TXT side.direct.lab.test TXT");
  EXPECT_EQ(pipelined, "\"vpn\" \"wan\"");
  // Firefox's canary: NXDOMAIN, no upstream asked.
  EXPECT_NE(dig_full(*lab, "@192.0.2.1 use-application-dns.net A").find("status: NXDOMAIN"), std::string::npos);
  const std::string m = metrics(*lab);
  EXPECT_GE(metric(m, "splitd_dns_queries_total{route=\"tunnel\",result=\"answered\"}"), 10) << m;
  EXPECT_GE(metric(m, "splitd_dns_queries_total{route=\"direct\",result=\"answered\"}"), 10) << m;
  EXPECT_EQ(metric(m, "splitd_dns_queries_total{route=\"local\",result=\"canary\"}"), 1) << m;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(DnsCapture, ConnectionsFollowTheRuleOfTheNameTheyResolved) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, dns_config("exclude", {"*.direct.lab.test"}));
  // Before any answer, 203.0.113.10 follows the default (the tunnel).
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn ")) << splitd->log();
  // A CNAME to whoami.lab.test: learned under both names, the rule matches the first.
  EXPECT_EQ(curl_name(*lab, "http://www.direct.lab.test/").substr(0, 4), "wan ") << splitd->log();
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan "));
  EXPECT_EQ(dig(*lab, "@192.0.2.1 www.direct.lab.test AAAA"), "whoami.lab.test. 2001:db8::10");
  EXPECT_TRUE(starts_with(curl(*lab, "http://[2001:db8::10]/"), "wan "));
  // A tunnel name resolves on the vpn side and connects through the tunnel.
  EXPECT_TRUE(starts_with(curl_name(*lab, "http://whoami.lab.test/"), "vpn ")) << splitd->log();
  // Over a stub on 127.0.0.53 (resolv.conf naming it, as systemd-resolved sets up).
  EXPECT_TRUE(starts_with(curl_name(*lab, "http://www.direct.lab.test/", "127.0.0.53"), "wan "));
  // A live connection lists the name it was routed by; the learned names are listed.
  std::string listing;
  lab->in_ns(lab->host_ns(), [&] {
    auto c = tcp_connect("203.0.113.10", lab::kTcpPort);
    ASSERT_TRUE(c.fd);
    EXPECT_TRUE(starts_with(read_line(c.fd.get()), "wan "));
    listing = lab->exec("host", "curl -s --unix-socket '" + api_socket_path(*lab) +
                                    "' http://splitd/api/v1/connections").out;
  });
  EXPECT_NE(listing.find("\"domain\":\"www.direct.lab.test\""), std::string::npos) << listing;
  const std::string cache = lab->exec("host", "curl -s --unix-socket '" + api_socket_path(*lab) +
                                                  "' http://splitd/api/v1/dns/cache").out;
  EXPECT_TRUE(std::regex_search(cache, std::regex("\"ip\":\"203.0.113.10\",\"names\":\\[\"www.direct.lab.test\",\"whoami.lab.test\"\\]")))
      << cache;
  const std::string log = splitd->log();
  EXPECT_NE(log.find("rule 'domain *.direct.lab.test (www.direct.lab.test"), std::string::npos) << log;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(DnsCapture, IncludeModeSendsOnlyTheNamedThroughTheTunnel) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, dns_config("include", {"alias.lab.test"}));
  EXPECT_TRUE(starts_with(curl_name(*lab, "http://alias.lab.test/"), "vpn ")) << splitd->log();
  EXPECT_TRUE(starts_with(curl_name(*lab, "http://whoami.lab.test/"), "wan ")) << splitd->log();
  EXPECT_EQ(dig(*lab, "@2001:db8::53 +tcp alias.lab.test AAAA"), "whoami.lab.test. 2001:db8:1::10");
  EXPECT_TRUE(starts_with(curl(*lab, "http://[2001:db8:1::10]/"), "vpn "));
  EXPECT_EQ(splitd->terminate(), 0);
}

// The leak test: the DNS server's address is excluded by an IP rule (so without capture
// its queries leave by phys0), and the names asked are tunnel names.
TEST(DnsCapture, NoQueryForATunnelNameReachesTheWanSide) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  add_dns_counter(*lab, "wan");
  add_dns_counter(*lab, "vpn");
  const std::vector<std::string> ips = {"203.0.113.0/24", "2001:db8::/64"};
  const auto ask_all = [&] {
    std::vector<std::string> answers;
    for (const std::string server : {"203.0.113.53", "2001:db8::53"}) {
      for (const std::string transport : {"+notcp", "+tcp"}) {
        answers.push_back(dig(*lab, "@" + server + " " + transport + " side.lab.test TXT"));
      }
    }
    return answers;
  };
  {
    // The control: without capture the same queries do leak, and the counter sees them.
    const std::string no_capture =
        std::regex_replace(dns_config("exclude", {}, ips), std::regex("enabled = true"), "enabled = false");
    auto off = SplitdProcess::start(*lab, no_capture, "control");
    for (const auto& a : ask_all()) EXPECT_EQ(a, "\"wan\"");
    EXPECT_GE(dns_packets(*lab, "wan"), 4);
    EXPECT_EQ(off->terminate(), 0);
  }
  reset_dns_counter(*lab, "wan");
  reset_dns_counter(*lab, "vpn");
  auto splitd = SplitdProcess::start(*lab, dns_config("exclude", {}, ips));
  for (const auto& a : ask_all()) EXPECT_EQ(a, "\"vpn\"") << splitd->log();
  EXPECT_EQ(dns_packets(*lab, "wan"), 0);
  EXPECT_GE(dns_packets(*lab, "vpn"), 4);
  // The tunnel goes down: the kill switch answers SERVFAIL at once, nothing tries phys0.
  ASSERT_EQ(lab->exec("host", "ip link set tun0 down").exit_code, 0);
  ASSERT_TRUE(wait_tunnel_down(*lab)) << splitd->log();
  for (const std::string server : {"203.0.113.53", "2001:db8::53"}) {
    for (const std::string transport : {"+notcp", "+tcp"}) {
      const auto t0 = Clock::now();
      const std::string out = dig_full(*lab, "@" + server + " " + transport + " side.lab.test TXT");
      EXPECT_NE(out.find("status: SERVFAIL"), std::string::npos) << out;
      EXPECT_LT(Clock::now() - t0, 1s);
    }
  }
  EXPECT_EQ(dns_packets(*lab, "wan"), 0);
  ASSERT_EQ(lab->exec("host", "ip link set tun0 up").exit_code, 0);
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(DnsCapture, TruncatedAnswersComeOverTcp) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, dns_config("exclude", {}));
  // The upstream's UDP answer is truncated; splitd asks again over TCP, then cuts the
  // answer to what the client takes (TC): dig then asks splitd over TCP and gets it all.
  const std::string full = dig(*lab, "@192.0.2.1 +bufsize=1232 big.lab.test TXT");
  EXPECT_NE(full.find("vpn-"), std::string::npos) << full << splitd->log();
  EXPECT_EQ(std::count(full.begin(), full.end(), '"'), 24) << full;
  // Without EDNS at most 512 bytes, with TC.
  const std::string small = dig_full(*lab, "@192.0.2.1 +noedns +ignore big.lab.test TXT");
  EXPECT_TRUE(std::regex_search(small, std::regex("flags:[a-z ]* tc[a-z ]*;"))) << small;
  EXPECT_NE(small.find("ANSWER: 0"), std::string::npos) << small;
  const std::string m = metrics(*lab);
  EXPECT_GE(metric(m, "splitd_dns_tcp_retries_total"), 1) << m;
  EXPECT_EQ(splitd->terminate(), 0);
}

// The first server answers nothing: after its timeout the next one is asked; with no
// server left, SERVFAIL.
TEST(DnsCapture, ADeadServerIsSkippedAfterItsTimeout) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  std::string config = dns_config("exclude", {});
  config = std::regex_replace(config, std::regex("servers = \\[\"203"), "servers = [\"192.0.2.99\", \"203");
  auto splitd = SplitdProcess::start(*lab, config);
  const auto t0 = Clock::now();
  EXPECT_EQ(dig(*lab, "@192.0.2.1 side.lab.test TXT"), "\"vpn\"") << splitd->log();
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 450ms);
  EXPECT_LT(took, 1500ms);
  const std::string m = metrics(*lab);
  EXPECT_GE(metric(m, "splitd_dns_upstream_timeouts_total"), 1) << m;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(DnsCapture, GarbageIsAnsweredOrDroppedAndCounted) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, dns_config("exclude", {}));
  // A header with QR clear and a bogus question count: FORMERR. Shorter than a header:
  // dropped. A compression loop as the qname: FORMERR.
  // Each UDP packet waits for an answer (FORMERR) or 300 ms (dropped); over TCP a frame
  // of garbage.
  const std::string script =
      "import socket\n"
      "got = []\n"
      "for p in [b'garbage', bytes.fromhex('123401000005000000000000'),\n"
      "          bytes.fromhex('12350100000100000000000000c00c00010001')]:\n"
      "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)\n"
      "    s.sendto(p, ('192.0.2.1', 53))\n"
      "    try: got.append(s.recv(512).hex())\n"
      "    except socket.timeout: got.append('none')\n"
      "t = socket.create_connection(('192.0.2.1', 53), timeout=1); t.sendall(b'\\x00\\x05hello')\n"
      "try: got.append(t.recv(512).hex() or 'closed')\n"
      "except socket.timeout: got.append('none')\n"
      "except ConnectionResetError: got.append('closed')\n"
      "print(' '.join(got))\n";
  const std::string path = lab->state_dir() + "/garbage.py";
  lab->exec("host", "cat > '" + path + "' <<'EOF'\n" + script + "EOF");
  const auto r = lab->exec("host", "python3 '" + path + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // garbage: dropped; bogus count: FORMERR (QR, rcode 1); a loop: FORMERR; a TCP frame
  // shorter than a header: the connection is closed.
  EXPECT_TRUE(std::regex_search(r.out, std::regex("^none 12348001[0-9a-f]{16} 12358001[0-9a-f]{16} closed"))) << r.out;
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(dig(*lab, "@192.0.2.1 side.lab.test TXT"), "\"vpn\"") << splitd->log();
  const std::string m = metrics(*lab);
  EXPECT_GE(metric(m, "splitd_dns_malformed_total{what=\"query\"}"), 4) << m;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(DnsCapture, LearnedNamesOutliveSighupAndRestart) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string config = dns_config("exclude", {"*.direct.lab.test"});
  {
    auto splitd = SplitdProcess::start(*lab, config);
    EXPECT_EQ(dig(*lab, "@192.0.2.1 www.direct.lab.test A"), "whoami.lab.test. 203.0.113.10");
    splitd->signal(SIGHUP);
    ASSERT_TRUE(splitd->wait_for_log("reload: rules applied"));
    EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan ")) << splitd->log();
    EXPECT_EQ(splitd->terminate(), 0);
    const auto saved = lab->exec("host", "cat '" + lab->state_dir() + "/splitd-state/dns-names'");
    EXPECT_NE(saved.out.find("203.0.113.10 "), std::string::npos) << saved.out << saved.err << splitd->log();
  }
  auto again = SplitdProcess::start(*lab, config);
  EXPECT_TRUE(again->wait_for_log("learned names kept")) << again->log();
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan ")) << again->log();
  EXPECT_EQ(again->terminate(), 0);
}

// systemd-resolved with libnss-resolve: apps ask resolved over its own socket, never on
// port 53, and only resolved's upstream queries reach the network. Imitated with a
// dnsmasq stub on 127.0.0.53 port 5300 (not captured) forwarding to the lab resolver:
// its upstream queries are captured, routed by name, and teach splitd the names.
TEST(DnsCapture, AStubsOwnUpstreamQueriesAreRoutedAndLearned) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string pid = lab->state_dir() + "/stub.pid";
  const auto up = lab->exec("host", "ip addr add 127.0.0.53/8 dev lo 2>/dev/null; "
                                    "dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces "
                                    "--listen-address=127.0.0.53 --port=5300 --server=203.0.113.53 "
                                    "--user=root --group=root --cache-size=0 --pid-file='" + pid + "'");
  ASSERT_EQ(up.exit_code, 0) << up.err;
  // And a stub on 127.0.0.53 port 53 itself, as resolved's: queries to it are captured,
  // and splitd's answer must come from 127.0.0.53:53 while the stub holds that port.
  const std::string pid53 = lab->state_dir() + "/stub53.pid";
  const auto up53 = lab->exec("host", "dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces "
                                      "--listen-address=127.0.0.53 --port=53 --address=/lab.test/192.0.2.66 "
                                      "--user=root --group=root --pid-file='" + pid53 + "'");
  ASSERT_EQ(up53.exit_code, 0) << up53.err;
  auto splitd = SplitdProcess::start(*lab, dns_config("exclude", {"*.direct.lab.test"}));
  EXPECT_EQ(dig(*lab, "@127.0.0.53 side.direct.lab.test TXT"), "\"wan\"") << splitd->log();
  EXPECT_EQ(dig(*lab, "@127.0.0.53 +tcp side.lab.test TXT"), "\"vpn\"") << splitd->log();
  EXPECT_EQ(dig(*lab, "@127.0.0.53 -p 5300 www.direct.lab.test A"), "whoami.lab.test. 203.0.113.10")
      << splitd->log();
  EXPECT_EQ(dig(*lab, "@127.0.0.53 -p 5300 side.lab.test TXT"), "\"vpn\"");
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan ")) << splitd->log();
  EXPECT_EQ(splitd->terminate(), 0);
  lab->exec("host", "kill $(cat '" + pid + "') $(cat '" + pid53 + "')");
}

// The core cases over a real VPN client (wg-quick with wireguard-go).
TEST(DnsCapture, OverWgQuickNamesRouteAndNothingLeaks) {
  lab::LabOptions opts;
  opts.vpn = lab::Vpn::kWireGuard;
  auto lab = SPLITD_LAB_OR_SKIP(opts);
  add_dns_counter(*lab, "wan");
  auto splitd = SplitdProcess::start(*lab, dns_config("exclude", {"*.direct.lab.test"}, {"203.0.113.0/24"}));
  for (const std::string transport : {"+notcp", "+tcp"}) {
    EXPECT_EQ(dig(*lab, "@203.0.113.53 " + transport + " side.lab.test TXT"), "\"vpn\"") << splitd->log();
  }
  const long before = dns_packets(*lab, "wan");
  EXPECT_EQ(before, 0);
  EXPECT_EQ(dig(*lab, "@203.0.113.53 side.direct.lab.test TXT"), "\"wan\"");
  EXPECT_TRUE(starts_with(curl_name(*lab, "http://whoami.lab.test/"), "vpn ")) << splitd->log();
  // wg-quick down: tunnel names get SERVFAIL at once, and still nothing reaches wan.
  reset_dns_counter(*lab, "wan");
  lab->set_vpn_up(false);
  EXPECT_TRUE(wait_tunnel_down(*lab));
  for (const std::string transport : {"+notcp", "+tcp"}) {
    const std::string out = dig_full(*lab, "@203.0.113.53 " + transport + " side.lab.test TXT");
    EXPECT_NE(out.find("status: SERVFAIL"), std::string::npos) << out;
  }
  EXPECT_EQ(dns_packets(*lab, "wan"), 0);
  EXPECT_EQ(dig(*lab, "@203.0.113.53 side.direct.lab.test TXT"), "\"wan\"") << "direct names keep working";
  EXPECT_EQ(splitd->terminate(), 0);
}

}  // namespace
}  // namespace splitd::e2e
