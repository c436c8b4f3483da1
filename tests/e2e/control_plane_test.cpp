// The control plane end to end: the real splitd in the lab, driven with the real splitctl
// and curl over the API socket, and real flows whose answers say which way they went.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "tests/e2e/splitd_process.hpp"
#include "tests/e2e/tcp_client.hpp"
#include "tests/e2e/udp_client.hpp"
#include "tests/lab/lab.hpp"

namespace splitd::e2e {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

const char* splitctl_path() { return SPLITCTL_BINARY; }

// `splitctl --socket SOCK ARGS` in host (the API is a unix socket: the namespace does not
// matter for it, but the commands run where splitd does, as a user would).
lab::CmdResult splitctl(const lab::Lab& lab, const std::string& args) {
  return lab.exec(lab.host_ns(), std::string(splitctl_path()) + " --socket " + api_socket_path(lab) + " " + args);
}

json splitctl_json(const lab::Lab& lab, const std::string& args) {
  const auto r = splitctl(lab, "--json " + args);
  EXPECT_EQ(r.exit_code, 0) << args << ": " << r.out << r.err;
  return json::parse(r.out, nullptr, false);
}

// A connection of the listing by its remote address ("203.0.113.10:9000").
json find_connection(const json& list, const std::string& remote, const std::string& protocol = "tcp") {
  if (!list.is_array()) return nullptr;
  for (const auto& c : list) {
    if (c.value("remote_addr", "") == remote && c.value("protocol", "") == protocol) return c;
  }
  return nullptr;
}

std::string config(const std::vector<std::string>& ips, const std::string& daemon = "",
                   const std::string& log_level = "debug") {
  std::string list;
  for (const auto& i : ips) list += (list.empty() ? "\"" : ", \"") + i + "\"";
  return "[daemon]\nlog_level = \"" + log_level + "\"\n" + daemon + "[split]\nmode = \"exclude\"\nips = [" + list +
         "]\n[dns]\nenabled = false\n";
}

// A TCP flow to the lab's echo server in host, held open: greeting says which side.
struct HeldFlow {
  Fd fd;
  std::string greeting;
};
HeldFlow hold_tcp(const lab::Lab& lab, const std::string& ip) {
  HeldFlow f;
  lab.in_ns(lab.host_ns(), [&] {
    auto c = tcp_connect(ip, lab::kTcpPort);
    if (!c.fd) return;
    f.greeting = read_line(c.fd.get());
    f.fd = std::move(c.fd);
  });
  return f;
}

bool echoes(int fd) {
  if (!send_all(fd, "ping\n")) return false;
  return read_line(fd) == "ping\n";
}

TEST(ControlPlane, AnAddedIpRoutesNewFlowsAndRunningFlowsKeepTheirRoute) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, config({}));  // exclude mode, no rules: all through the tunnel
  HeldFlow before = hold_tcp(*lab, lab::kServerA4);
  ASSERT_TRUE(before.fd) << splitd->log();
  EXPECT_TRUE(starts_with(before.greeting, "vpn")) << before.greeting;

  const auto add = splitctl(*lab, "add ip 203.0.113.0/24");
  ASSERT_EQ(add.exit_code, 0) << add.out << add.err;
  EXPECT_NE(add.out.find("203.0.113.0/24"), std::string::npos) << add.out;
  // New flows take the other route at once ...
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan")) << splitd->log();
  // ... the running one keeps its route and keeps working.
  EXPECT_TRUE(echoes(before.fd.get()));
  const json list = splitctl_json(*lab, "connections");
  const json held = find_connection(list, std::string(lab::kServerA4) + ":9000");
  ASSERT_TRUE(held.is_object()) << list.dump();
  EXPECT_EQ(held["route"], "tunnel");
  EXPECT_EQ(held["interface"], "tun0");
  EXPECT_EQ(held["rule"], "default");
  EXPECT_GT(held["id"].get<std::uint64_t>(), 0u);

  // The human listing says where the flow went and why.
  const auto table = splitctl(*lab, "connections");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("203.0.113.10:9000"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("tunnel"), std::string::npos) << table.out;

  // A duplicate is a conflict with the API's message; a bad value the config's message.
  const auto dup = splitctl(*lab, "add ip 203.0.113.0/24");
  EXPECT_EQ(dup.exit_code, 1) << dup.out << dup.err;
  EXPECT_NE((dup.out + dup.err).find("already in force"), std::string::npos) << dup.out << dup.err;
  const auto bad = splitctl(*lab, "add ip 203.0.113.0/33");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE((bad.out + bad.err).find("prefix length 33 exceeds 32"), std::string::npos) << bad.out << bad.err;

  ASSERT_EQ(splitctl(*lab, "remove ip 203.0.113.0/24").exit_code, 0);
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "vpn"));
  // Mode switches over the API too: include mode, nothing matches: all direct.
  ASSERT_EQ(splitctl(*lab, "mode include").exit_code, 0);
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "wan"));
  EXPECT_EQ(splitd->terminate(), 0) << splitd->log();
}

TEST(ControlPlane, KillEndsALiveTcpAndALiveUdpSession) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, config(kExcludeWanServers));
  HeldFlow tcp = hold_tcp(*lab, lab::kServerB4);
  ASSERT_TRUE(tcp.fd);
  Fd udp;
  std::optional<Answer> first;
  lab->in_ns(lab->host_ns(), [&] {
    udp = udp_socket(AF_INET);
    first = exchange(udp.get(), lab::kServerB4, "one");
  });
  ASSERT_TRUE(first.has_value()) << splitd->log();

  const json list = splitctl_json(*lab, "connections");
  const json t = find_connection(list, std::string(lab::kServerB4) + ":9000", "tcp");
  const json u = find_connection(list, std::string(lab::kServerB4) + ":9000", "udp");
  ASSERT_TRUE(t.is_object() && u.is_object()) << list.dump();

  const auto kill_tcp = splitctl(*lab, "kill " + std::to_string(t["id"].get<std::uint64_t>()));
  ASSERT_EQ(kill_tcp.exit_code, 0) << kill_tcp.out << kill_tcp.err;
  // The app sees its connection fail (a reset), not hang.
  int error = 0;
  read_to_eof(tcp.fd.get(), &error, 3s);
  EXPECT_EQ(error, -ECONNRESET);
  const auto kill_udp = splitctl(*lab, "kill " + std::to_string(u["id"].get<std::uint64_t>()));
  ASSERT_EQ(kill_udp.exit_code, 0) << kill_udp.out << kill_udp.err;

  // Both are gone from the listing; killing again is "not found".
  bool gone = false;
  for (int i = 0; i < 50 && !gone; ++i) {
    const json now = splitctl_json(*lab, "connections");
    gone = find_connection(now, std::string(lab::kServerB4) + ":9000", "tcp").is_null() &&
           find_connection(now, std::string(lab::kServerB4) + ":9000", "udp").is_null();
    if (!gone) std::this_thread::sleep_for(20ms);
  }
  EXPECT_TRUE(gone);
  EXPECT_EQ(splitctl(*lab, "kill " + std::to_string(t["id"].get<std::uint64_t>())).exit_code, 1);
  // The UDP client's next datagram is a new session with a new id.
  std::optional<Answer> again;
  lab->in_ns(lab->host_ns(), [&] { again = exchange(udp.get(), lab::kServerB4, "two"); });
  ASSERT_TRUE(again.has_value());
  const json later = find_connection(splitctl_json(*lab, "connections"), std::string(lab::kServerB4) + ":9000", "udp");
  ASSERT_TRUE(later.is_object());
  EXPECT_NE(later["id"], u["id"]);

  // A filtered close ends what matches and nothing else.
  HeldFlow direct = hold_tcp(*lab, lab::kServerA4);
  HeldFlow tunnel = hold_tcp(*lab, lab::kServerB4);
  ASSERT_TRUE(direct.fd && tunnel.fd);
  const auto killed = splitctl(*lab, "kill --route direct --protocol tcp");
  ASSERT_EQ(killed.exit_code, 0) << killed.out << killed.err;
  read_to_eof(direct.fd.get(), &error, 3s);
  EXPECT_EQ(error, -ECONNRESET);
  EXPECT_TRUE(echoes(tunnel.fd.get()));
  EXPECT_EQ(splitd->terminate(), 0) << splitd->log();
}

TEST(ControlPlane, ApiRulesSurviveARestart) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, config({}));
  ASSERT_EQ(splitctl(*lab, "add ip 203.0.113.0/24").exit_code, 0);
  ASSERT_EQ(splitctl(*lab, "add domain '*.example.com'").exit_code, 0);
  ASSERT_EQ(splitd->terminate(), 0);
  splitd = SplitdProcess::start(*lab, config({}));
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan")) << splitd->log();
  const json rules = splitctl_json(*lab, "rules");
  EXPECT_EQ(rules["added"]["ips"], json::array({"203.0.113.0/24"})) << rules.dump();
  EXPECT_EQ(rules["added"]["domains"], json::array({"*.example.com"})) << rules.dump();
  // A SIGHUP'd config keeps the API's edits on top of the file's rules.
  splitd->signal(SIGHUP);
  ASSERT_TRUE(splitd->wait_for_log("reload: rules applied"));
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan"));
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(ControlPlane, ACorruptStateFileIsKeptAsideAndTheConfigRules) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string state = lab->state_dir() + "/splitd-state";
  std::filesystem::create_directories(state);
  std::ofstream(state + "/rules.json") << "{\"version\": 1, \"added\": [garbage";
  auto splitd = SplitdProcess::start(*lab, config(kExcludeWanServers));
  EXPECT_TRUE(splitd->wait_for_log("is corrupt")) << splitd->log();
  // The config's rules apply.
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan"));
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn"));
  // /status says so; the file was kept, not deleted.
  const json status = splitctl_json(*lab, "status");
  EXPECT_EQ(status["status"], "degraded") << status.dump();
  ASSERT_EQ(status["warnings"].size(), 1u) << status.dump();
  EXPECT_NE(status["warnings"][0].get<std::string>().find("rules.json.corrupt-"), std::string::npos);
  bool kept = false;
  for (const auto& e : std::filesystem::directory_iterator(state)) {
    kept = kept || e.path().filename().string().rfind("rules.json.corrupt-", 0) == 0;
  }
  EXPECT_TRUE(kept);
  const auto human = splitctl(*lab, "status");
  EXPECT_NE(human.out.find("corrupt"), std::string::npos) << human.out;
  // Edits work again and write a fresh state file.
  ASSERT_EQ(splitctl(*lab, "add ip 198.51.100.0/24").exit_code, 0);
  EXPECT_TRUE(std::filesystem::exists(state + "/rules.json"));
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(ControlPlane, TheTcpListenerWantsTheToken) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  const std::string token_file = lab->state_dir() + "/splitd.token";
  auto splitd = SplitdProcess::start(*lab, config({}, "api_listen = \"127.0.0.1:7070\"\n"));
  struct stat st {};
  ASSERT_EQ(::stat(token_file.c_str(), &st), 0) << splitd->log();
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string token;
  std::ifstream(token_file) >> token;
  ASSERT_GE(token.size(), 32u);
  const auto code = [&](const std::string& args) {
    return lab->exec(lab->host_ns(), "curl -s -o /dev/null -w %{http_code} --max-time 5 " + args).out;
  };
  EXPECT_EQ(code("http://127.0.0.1:7070/api/v1/status"), "401");
  EXPECT_EQ(code("-H 'Authorization: Bearer nope' http://127.0.0.1:7070/api/v1/status"), "401");
  EXPECT_EQ(code("'http://127.0.0.1:7070/api/v1/status?token=" + token + "'"), "401");
  EXPECT_EQ(code("-H 'Authorization: Bearer " + token + "' http://127.0.0.1:7070/api/v1/status"), "200");
  EXPECT_EQ(code("-X POST -H 'Authorization: Bearer " + token +
                 "' -H 'Content-Type: application/json' -d '{\"cidr\": \"198.51.100.0/24\"}' "
                 "http://127.0.0.1:7070/api/v1/split/ips"),
            "201");
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "wan"));
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(ControlPlane, MetricsPassPromtoolWithRealTraffic) {
  if (::access("/usr/bin/promtool", X_OK) != 0) GTEST_SKIP() << "promtool missing (Debian package prometheus)";
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, config(kExcludeWanServers));
  EXPECT_TRUE(starts_with(curl(*lab, "http://203.0.113.10/"), "wan"));
  EXPECT_TRUE(starts_with(curl(*lab, "http://198.51.100.10/"), "vpn"));
  const auto r = lab->exec(lab->host_ns(), "curl -s --max-time 5 --unix-socket " + api_socket_path(*lab) +
                                                 " http://splitd/metrics");
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("splitd_decisions_total{protocol=\"tcp\",route=\"direct\",match=\"ip\"} 1"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("splitd_decisions_total{protocol=\"tcp\",route=\"tunnel\",match=\"default\"} 1"),
            std::string::npos)
      << r.out;
  const std::string file = lab->state_dir() + "/metrics.txt";
  std::ofstream(file) << r.out;
  const auto promtool = lab->exec(lab->host_ns(), "/usr/bin/promtool check metrics < " + file);
  EXPECT_EQ(promtool.exit_code, 0) << promtool.out << promtool.err;
  EXPECT_EQ(splitd->terminate(), 0);
}

TEST(ControlPlane, AUserOutsideGroupSplitdIsToldWhatToDo) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, config({}));
  struct stat st {};
  ASSERT_EQ(::stat(api_socket_path(*lab).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // nobody cannot open a root:root (or root:splitd) 0660 socket.
  const auto r = lab->exec(lab->host_ns(), "runuser -u nobody -- " + std::string(splitctl_path()) + " --socket " +
                                               api_socket_path(*lab) + " status");
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("group splitd"), std::string::npos) << r.err;
  // splitd not running: said so, exit 2.
  ASSERT_EQ(splitd->terminate(), 0);
  const auto down = splitctl(*lab, "status");
  EXPECT_EQ(down.exit_code, 2);
  EXPECT_NE(down.err.find("not running"), std::string::npos) << down.err;
}

// 100 API clients at once while 1,000 flows run: every request answered, every flow
// still working afterwards.
TEST(ControlPlane, AHundredApiClientsWhileAThousandFlowsRun) {
  auto lab = SPLITD_LAB_OR_SKIP(lab::LabOptions{true});
  auto splitd = SplitdProcess::start(*lab, config(kExcludeWanServers, "", "info"));
  std::vector<Fd> flows;
  lab->in_ns(lab->host_ns(), [&] {
    for (int i = 0; i < 1000; ++i) {
      auto c = tcp_connect(i % 2 ? lab::kServerA4 : lab::kServerB4, lab::kTcpPort);
      if (!c.fd) break;
      if (read_line(c.fd.get()).empty()) break;
      flows.push_back(std::move(c.fd));
    }
  });
  ASSERT_EQ(flows.size(), 1000u) << splitd->log();
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < 100; ++i) {
    clients.emplace_back([&, i] {
      const std::string path = i % 2 ? "/api/v1/connections" : "/api/v1/status";
      const auto r = lab::run_command({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                                       "--unix-socket", api_socket_path(*lab), "http://splitd" + path},
                                      30s);
      (r.out == "200" ? ok : failed)++;
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok.load(), 100);
  EXPECT_EQ(failed.load(), 0);
  const json list = splitctl_json(*lab, "connections --protocol tcp");
  EXPECT_GE(list.size(), 1000u);
  int working = 0;
  for (std::size_t i = 0; i < flows.size(); i += 50) working += echoes(flows[i].get()) ? 1 : 0;
  EXPECT_EQ(working, 20);
  flows.clear();
  EXPECT_EQ(splitd->terminate(), 0);
}

}  // namespace
}  // namespace splitd::e2e
