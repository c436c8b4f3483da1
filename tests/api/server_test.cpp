// The Server over real sockets: access, limits, deadlines, watch streams, socket files.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "api/auth.hpp"
#include "tests/api/test_client.hpp"

namespace splitd::api::testing {
namespace {

using nlohmann::json;

int status_of(const std::optional<http::response<http::string_body>>& r) {
  return r ? static_cast<int>(r->result_int()) : -1;
}

TEST(Server, AnswersOnUnixSocketWithKeepAlive) {
  ServerHarness h;
  ASSERT_TRUE(h.start());
  auto c = h.client();
  ASSERT_TRUE(c.connected());
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(c.send(get("/api/v1/status")));
    auto r = c.read_response();
    ASSERT_EQ(status_of(r), 200) << i;
    EXPECT_EQ(json::parse(r->body())["version"], "0.1.0");
    EXPECT_TRUE(r->keep_alive());
  }
  // Two pipelined requests, two answers in order.
  ASSERT_TRUE(c.send(get("/api/v1/status") + get("/nope")));
  EXPECT_EQ(status_of(c.read_response()), 200);
  EXPECT_EQ(status_of(c.read_response()), 404);
  // Connection: close is honoured.
  ASSERT_TRUE(c.send(get("/api/v1/status", "Connection: close\r\n")));
  auto r = c.read_response();
  EXPECT_EQ(status_of(r), 200);
  EXPECT_FALSE(r->keep_alive());
  EXPECT_TRUE(c.closed_within(1000ms));
}

TEST(Server, SocketFileModeAndDirectory) {
  ServerHarness h;
  ASSERT_TRUE(h.start());
  struct stat st {};
  ASSERT_EQ(::stat(h.options.unix_path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_EQ(::stat((h.dir + "/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  h.stop();
  EXPECT_NE(::stat(h.options.unix_path.c_str(), &st), 0) << "stop() removes the socket file";
}

TEST(Server, PeerCredentialsDecideChanges) {
  ServerHarness h;
  ASSERT_TRUE(h.start());
  auto c = h.client();
  ASSERT_TRUE(c.send("POST /api/v1/disable HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
  auto r = c.read_response();
  if (::geteuid() == 0) {
    EXPECT_EQ(status_of(r), 200) << "root may change";
  } else {
    // Not root: allowed only as a member of group splitd (MayChange.* test the rule itself).
    const auto group = find_group("splitd");
    std::printf("not root (uid %d); group splitd %s\n", ::geteuid(), group ? "exists" : "does not exist");
    if (!group) {
      EXPECT_EQ(status_of(r), 403);
    }
  }
}

TEST(Server, NotReadyAnswers503) {
  ServerHarness h({}, false);
  ASSERT_TRUE(h.start());
  auto c = h.client();
  ASSERT_TRUE(c.send(get("/api/v1/status")));
  auto r = c.read_response();
  EXPECT_EQ(status_of(r), 503);
  EXPECT_EQ(json::parse(r->body())["error"], "starting");
  h.on_server([&] { h.server->set_ready(true); return 0; });
  ASSERT_TRUE(c.send(get("/api/v1/status")));
  EXPECT_EQ(status_of(c.read_response()), 200);
}

TEST(Server, StaleSocketReplacedLiveOneRefusedFileRefused) {
  ServerHarness first;
  const std::string path = first.options.unix_path;
  // A stale socket: bound, never listening, its process gone.
  std::filesystem::create_directories(first.dir + "/run");
  {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    ASSERT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  }
  auto r = first.start();
  ASSERT_TRUE(r) << r.error();
  auto c = first.client();
  ASSERT_TRUE(c.send(get("/api/v1/status")));
  EXPECT_EQ(status_of(c.read_response()), 200);

  ServerOptions o;
  o.unix_path = path;
  ServerHarness second(o);
  auto r2 = second.start();
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().find("another process answers on " + path), std::string::npos) << r2.error();
  // The live server is untouched.
  auto c2 = first.client();
  ASSERT_TRUE(c2.send(get("/api/v1/status")));
  EXPECT_EQ(status_of(c2.read_response()), 200);

  ServerHarness third;
  const std::string file = third.dir + "/plain";
  std::ofstream(file) << "not a socket";
  ServerOptions o3;
  o3.unix_path = file;
  ServerHarness fourth(o3);
  auto r3 = fourth.start();
  ASSERT_FALSE(r3);
  EXPECT_NE(r3.error().find("is not a socket"), std::string::npos) << r3.error();
  EXPECT_TRUE(std::filesystem::is_regular_file(file));
}

TEST(Server, TcpNeedsBearerToken) {
  ServerOptions o;
  o.tcp_listen = "127.0.0.1:0";
  ServerHarness h(o);
  auto started = h.start();
  ASSERT_TRUE(started) << started.error();
  const std::uint16_t port = h.on_server([&] { return h.server->tcp_port(); });
  ASSERT_NE(port, 0);
  struct stat st {};
  ASSERT_EQ(::stat(h.options.token_file.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string token;
  std::ifstream(h.options.token_file) >> token;
  ASSERT_EQ(token.size(), 64u);

  auto c = RawClient::tcp(port);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.send(get("/api/v1/status")));
  EXPECT_EQ(status_of(c.read_response()), 401);
  ASSERT_TRUE(c.send(get("/api/v1/status", "Authorization: Bearer " + std::string(64, 'a') + "\r\n")));
  EXPECT_EQ(status_of(c.read_response()), 401);
  ASSERT_TRUE(c.send(get("/api/v1/status?token=" + token)));
  EXPECT_EQ(status_of(c.read_response()), 401);
  ASSERT_TRUE(c.send(get("/api/v1/status?access_token=" + token)));
  EXPECT_EQ(status_of(c.read_response()), 401);
  ASSERT_TRUE(c.send(get("/api/v1/status", "Authorization: Bearer " + token + "\r\n")));
  EXPECT_EQ(status_of(c.read_response()), 200);
  // A change needs nothing but the token.
  ASSERT_TRUE(c.send("POST /api/v1/disable HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nAuthorization: Bearer " +
                     token + "\r\n\r\n"));
  EXPECT_EQ(status_of(c.read_response()), 200);
  ASSERT_TRUE(c.send("POST /api/v1/enable HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
  EXPECT_EQ(status_of(c.read_response()), 401);
}

TEST(Server, TokenFileReadableByOthersFailsStart) {
  ServerOptions o;
  o.tcp_listen = "127.0.0.1:0";
  ServerHarness h(o);
  std::filesystem::create_directories(h.dir + "/etc");
  std::ofstream(h.options.token_file) << std::string(64, 'b') << "\n";
  ::chmod(h.options.token_file.c_str(), 0644);
  auto r = h.start();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("group or others"), std::string::npos) << r.error();
  EXPECT_FALSE(std::filesystem::exists(h.options.unix_path)) << "no socket left behind";
}

TEST(Server, BadListenAddress) {
  ServerOptions o;
  o.tcp_listen = "localhost:7070";
  ServerHarness h(o);
  auto r = h.start();
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("ADDRESS:PORT"), std::string::npos) << r.error();
}

TEST(Server, TricklingClientIsCutOff) {
  ServerOptions o;
  o.request_deadline = 500ms;
  ServerHarness h(o);
  ASSERT_TRUE(h.start());
  auto c = h.client();
  const std::string req = get("/api/v1/status", "X-Padding: " + std::string(100, 'p') + "\r\n");
  const auto start = std::chrono::steady_clock::now();
  std::size_t sent = 0;
  bool closed = false;
  for (; sent < req.size(); ++sent) {
    if (!c.send(req.substr(sent, 1))) break;
    std::string got;
    bool eof = false;
    got = c.read_some(200ms, &eof);
    if (eof) {
      closed = true;
      break;
    }
  }
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(closed || c.closed_within(1000ms));
  EXPECT_LT(sent, req.size()) << "the whole request went through";
  EXPECT_LT(took, 2000ms);
  EXPECT_GE(took, 400ms);
}

TEST(Server, IdleKeepAliveConnectionIsClosed) {
  ServerOptions o;
  o.keepalive_idle = 300ms;
  ServerHarness h(o);
  ASSERT_TRUE(h.start());
  auto c = h.client();
  ASSERT_TRUE(c.send(get("/api/v1/status")));
  EXPECT_EQ(status_of(c.read_response()), 200);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.closed_within(2000ms));
  EXPECT_GE(std::chrono::steady_clock::now() - start, 250ms);
}

TEST(Server, ConnectionCap) {
  ServerOptions o;
  o.max_connections = 3;
  ServerHarness h(o);
  ASSERT_TRUE(h.start());
  std::vector<RawClient> open;
  for (int i = 0; i < 3; ++i) {
    open.push_back(h.client());
    ASSERT_TRUE(open.back().send(get("/api/v1/status")));
    ASSERT_EQ(status_of(open.back().read_response()), 200);
  }
  auto extra = h.client();
  ASSERT_TRUE(extra.connected());  // the kernel accepts; the server closes it at once
  EXPECT_TRUE(extra.closed_within(1000ms));
  open.pop_back();  // closes one
  for (int i = 0; i < 50 && h.connections() > 2; ++i) std::this_thread::sleep_for(10ms);
  auto again = h.client();
  ASSERT_TRUE(again.send(get("/api/v1/status")));
  EXPECT_EQ(status_of(again.read_response()), 200);
  ASSERT_TRUE(again.send(get("/metrics")));
  auto m = again.read_response();
  EXPECT_NE(m->body().find("splitd_api_connections_refused_total 1\n"), std::string::npos);
}

TEST(Server, HeaderAndBodyLimits) {
  ServerHarness h;
  ASSERT_TRUE(h.start());
  {
    auto c = h.client();
    ASSERT_TRUE(c.send(get("/api/v1/status", "X-Big: " + std::string(9000, 'x') + "\r\n")));
    auto r = c.read_response();
    EXPECT_EQ(status_of(r), 431);
    EXPECT_FALSE(r->keep_alive());
    EXPECT_TRUE(c.closed_within(2000ms));
  }
  {
    auto c = h.client();
    ASSERT_TRUE(c.send("POST /api/v1/split/ips HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       "Content-Length: 70000\r\n\r\n"));
    auto r = c.read_response();
    EXPECT_EQ(status_of(r), 413);
    EXPECT_EQ(json::parse(r->body())["error"], "payload too large");
  }
  {
    // Without Content-Length: a chunked body over the limit.
    auto c = h.client();
    std::string req = "POST /api/v1/split/ips HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 20; ++i) req += "1000\r\n" + std::string(0x1000, ' ') + "\r\n";
    c.send(req);
    EXPECT_EQ(status_of(c.read_response()), 413);
  }
  {
    auto c = h.client();
    ASSERT_TRUE(c.send("GARBAGE\r\n\r\n"));
    auto r = c.read_response();
    EXPECT_EQ(status_of(r), 400);
  }
  {
    auto c = h.client();
    const std::string body = R"({"cidr":"198.51.100.0/24"})";
    ASSERT_TRUE(c.send("POST /api/v1/split/ips HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: " +
                       std::to_string(body.size()) + "\r\n\r\n" + body));
    auto r = c.read_response();
    EXPECT_EQ(status_of(r), ::geteuid() == 0 ? 415 : 403);
  }
}

TEST(Server, ExpectContinue) {
  // Over TCP, where the token alone allows changes, so the test needs no root.
  ServerOptions o;
  o.tcp_listen = "127.0.0.1:0";
  ServerHarness h(o);
  ASSERT_TRUE(h.start());
  std::string token;
  std::ifstream(h.options.token_file) >> token;
  auto c = RawClient::tcp(h.on_server([&] { return h.server->tcp_port(); }));
  const std::string body = R"({"cidr":"198.51.100.0/24"})";
  ASSERT_TRUE(c.send("POST /api/v1/split/ips HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Authorization: Bearer " + token + "\r\nExpect: 100-continue\r\nContent-Length: " +
                     std::to_string(body.size()) + "\r\n\r\n"));
  std::string got;
  ASSERT_TRUE(c.read_until("100 Continue\r\n\r\n", got, 2000ms)) << got;
  ASSERT_TRUE(c.send(body));
  auto r = c.read_response();
  EXPECT_EQ(status_of(r), 201);
}

// Reads SSE events "event: NAME\ndata: JSON\n\n" (and comments) from a stream.
struct EventReader {
  RawClient& c;
  std::string buf;
  std::optional<std::pair<std::string, json>> next(Ms timeout = 3000ms) {
    for (;;) {
      const auto end = buf.find("\n\n");
      if (end != std::string::npos) {
        std::string ev = buf.substr(0, end);
        buf.erase(0, end + 2);
        if (ev.rfind(":", 0) == 0) return std::make_pair(std::string(ev), json());
        const auto nl = ev.find('\n');
        return std::make_pair(ev.substr(7, nl - 7), json::parse(ev.substr(nl + 7)));
      }
      bool eof = false;
      std::string more = c.read_some(timeout, &eof);
      if (more.empty()) return std::nullopt;
      buf += more;
    }
  }
};

TEST(Server, WatchStreamSnapshotThenChanges) {
  ServerOptions o;
  o.watch_keepalive = 400ms;
  ServerHarness h(o);
  h.backend.set_sessions({session(1), session(2), session(3, decider::Protocol::kUdp)});
  ASSERT_TRUE(h.start());
  auto c = h.client();
  ASSERT_TRUE(c.send(get("/api/v1/connections?watch=100&protocol=tcp")));
  std::string head;
  ASSERT_TRUE(c.read_until("\r\n\r\n", head, 2000ms));
  EXPECT_EQ(head.rfind("HTTP/1.1 200 OK\r\n", 0), 0u) << head;
  EXPECT_NE(head.find("Content-Type: text/event-stream\r\n"), std::string::npos) << head;
  EventReader events{c, head.substr(head.find("\r\n\r\n") + 4)};

  auto ev = events.next();
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->first, "snapshot");
  ASSERT_EQ(ev->second.size(), 2u) << "the udp session is filtered out";
  EXPECT_EQ(ev->second[0]["id"], 1);

  auto s2 = session(2);
  s2.bytes_received = 900;
  h.backend.set_sessions({s2, session(3, decider::Protocol::kUdp), session(4)});
  ev = events.next();
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->first, "changes");
  EXPECT_EQ(ev->second["closed"], json::array({1}));
  ASSERT_EQ(ev->second["new"].size(), 1u);
  EXPECT_EQ(ev->second["new"][0]["id"], 4);
  ASSERT_EQ(ev->second["updated"].size(), 1u);
  EXPECT_EQ(ev->second["updated"][0]["bytes_received"], 900);

  ev = events.next(2000ms);  // nothing changes: a keepalive comment
  ASSERT_TRUE(ev);
  EXPECT_EQ(ev->first, ": keepalive");

  // The client leaving ends the stream on the server.
  EXPECT_EQ(h.connections(), 1u);
  c.close();
  for (int i = 0; i < 100 && h.connections() > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.connections(), 0u);
}

TEST(Server, WatchClientThatNeverReadsIsDropped) {
  ServerOptions o;
  o.watch_max_unsent = 64 * 1024;
  ServerHarness h(o);
  std::vector<proxy::SessionView> many;
  for (std::uint64_t i = 1; i <= 3000; ++i) many.push_back(session(i));
  h.backend.set_sessions(many);
  h.backend.bump_on_read(true);  // every interval, every session changed
  ASSERT_TRUE(h.start());
  auto slow = h.client();
  int small = 4096;
  ::setsockopt(slow.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  ASSERT_TRUE(slow.send(get("/api/v1/connections?watch=100")));
  // Meanwhile the server keeps answering others, and drops the slow one.
  bool dropped = false;
  for (int i = 0; i < 100 && !dropped; ++i) {
    auto c = h.client();
    ASSERT_TRUE(c.send(get("/metrics")));
    auto r = c.read_response();
    ASSERT_EQ(status_of(r), 200);
    dropped = r->body().find("splitd_api_watchers_dropped_total 1\n") != std::string::npos;
    if (!dropped) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(dropped);
  EXPECT_TRUE(slow.closed_within(5000ms));
}

TEST(Server, StopClosesEverythingAndLeavesTheBackendAlone) {
  auto h = std::make_unique<ServerHarness>();
  h->backend.set_sessions({session(1)});
  ASSERT_TRUE(h->start());
  auto watch = h->client();
  ASSERT_TRUE(watch.send(get("/api/v1/connections?watch=100")));
  std::string got;
  ASSERT_TRUE(watch.read_until("event: snapshot", got, 2000ms));
  auto idle = h->client();
  ASSERT_TRUE(idle.send(get("/api/v1/status")));
  ASSERT_EQ(status_of(idle.read_response()), 200);
  auto half = h->client();
  ASSERT_TRUE(half.send("GET /api/v1/sta"));

  h->on_server([&] { h->server->stop(); return 0; });
  const int calls = h->backend.connections_calls();
  EXPECT_TRUE(watch.closed_within(1000ms));
  EXPECT_TRUE(idle.closed_within(1000ms));
  EXPECT_TRUE(half.closed_within(1000ms));
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(h->backend.connections_calls(), calls) << "a watcher called the backend after stop()";
  EXPECT_FALSE(std::filesystem::exists(h->options.unix_path));
  EXPECT_FALSE(h->client().connected());
  h.reset();
}

}  // namespace
}  // namespace splitd::api::testing
