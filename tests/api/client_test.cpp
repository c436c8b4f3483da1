// api::HttpClient and its SSE parser against the fake API: answers, every kind of
// failure splitctl gives advice for, and the event stream.
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include <gtest/gtest.h>

#include "api/client.hpp"
#include "tests/api/fake_api.hpp"

namespace splitd::api {
namespace {

using splitd::testing::FakeApi;
using splitd::testing::TempDir;
using namespace std::chrono_literals;

struct Event {
  std::string name, data;
  bool operator==(const Event&) const = default;
};

std::vector<Event> parse_all(const std::vector<std::string>& pieces) {
  SseParser p;
  std::vector<Event> out;
  for (const auto& piece : pieces) {
    EXPECT_EQ(p.feed(piece, [&](std::string_view e, std::string_view d) {
      out.push_back({std::string(e), std::string(d)});
      return true;
    }), SseParser::Result::kContinue);
  }
  return out;
}

TEST(PercentEncode, KeepsUnreservedOnly) {
  EXPECT_EQ(percent_encode("198.51.100.0/24"), "198.51.100.0%2F24");
  EXPECT_EQ(percent_encode("2001:db8::/32"), "2001%3Adb8%3A%3A%2F32");
  EXPECT_EQ(percent_encode("*.example.com"), "%2A.example.com");
  EXPECT_EQ(percent_encode("My App?#&=+ %"), "My%20App%3F%23%26%3D%2B%20%25");
  EXPECT_EQ(percent_encode("a-b_c.d~e09AZ"), "a-b_c.d~e09AZ");
  EXPECT_EQ(percent_encode("\xc3\xa9"), "%C3%A9");  // é, byte by byte
}

TEST(SseParser, EventsCommentsAndMultiLineData) {
  const auto events = parse_all({"event: snapshot\ndata: [1,\ndata: 2]\n\n", ": keepalive\n\n",
                                 "data: plain\n\n", "event: changes\r\ndata:{}\r\nid: 4\r\n\r\n"});
  const std::vector<Event> want = {{"snapshot", "[1,\n2]"}, {"message", "plain"}, {"changes", "{}"}};
  EXPECT_EQ(events, want);
}

TEST(SseParser, AnySplitGivesTheSameEvents) {
  const std::string stream = "event: snapshot\r\ndata: [{\"id\": 1}]\r\n\r\n: keepalive\r\n\r\nevent: changes\rdata: "
                             "{\"closed\": [1]}\r\r";
  const std::vector<Event> want = {{"snapshot", "[{\"id\": 1}]"}, {"changes", "{\"closed\": [1]}"}};
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    EXPECT_EQ(parse_all({stream.substr(0, cut), stream.substr(cut)}), want) << "cut at " << cut;
  }
  std::vector<std::string> bytes;  // one byte at a time, with empty reads between
  for (char c : stream) {
    bytes.emplace_back(1, c);
    bytes.emplace_back();
  }
  EXPECT_EQ(parse_all(bytes), want);
}

TEST(SseParser, StopsWhenTheHandlerSaysSoAndBoundsAnEvent) {
  SseParser p;
  int calls = 0;
  EXPECT_EQ(p.feed("data: 1\n\ndata: 2\n\n", [&](auto, auto) { return ++calls < 1; }), SseParser::Result::kStopped);
  EXPECT_EQ(calls, 1);

  SseParser small(16);
  EXPECT_EQ(small.feed("data: 0123456789\ndata: 0123456789\n", [](auto, auto) { return true; }),
            SseParser::Result::kTooLarge);
}

class ClientTest : public ::testing::Test {
 protected:
  std::string sock() const { return dir_.path() + "/api.sock"; }
  HttpClient client(std::chrono::milliseconds timeout = 2s) const {
    ClientOptions o;
    o.socket_path = sock();
    o.timeout = timeout;
    return HttpClient(o);
  }
  TempDir dir_;
};

TEST_F(ClientTest, RequestAndAnswerOverTheUnixSocket) {
  FakeApi api(sock());
  api.on_json("POST /api/v1/split/ips", 201, R"({"mode": "exclude"})");
  auto r = client().request("POST", "/api/v1/split/ips", std::string(R"({"cidr": "198.51.100.0/24"})"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 201u);
  EXPECT_EQ(r->body, R"({"mode": "exclude"})");
  EXPECT_EQ(r->content_type, "application/json");
  const auto reqs = api.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].method, "POST");
  EXPECT_EQ(reqs[0].target, "/api/v1/split/ips");
  EXPECT_EQ(reqs[0].body, R"({"cidr": "198.51.100.0/24"})");
  EXPECT_EQ(reqs[0].content_type, "application/json");
  EXPECT_EQ(reqs[0].authorization, "");  // never a token on the unix socket
}

TEST_F(ClientTest, ErrorStatusIsAnAnswerNotAClientError) {
  FakeApi api(sock());
  api.on_json("GET /api/v1/status", 503, R"({"error": "starting", "detail": "not ready"})");
  auto r = client().request("GET", "/api/v1/status");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 503u);
}

TEST_F(ClientTest, MissingSocket) {
  auto r = client().request("GET", "/api/v1/status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kNoSocket);
  EXPECT_EQ(r.error().endpoint, sock());
}

TEST_F(ClientTest, StaleSocketNobodyListensOn) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, sock().c_str(), sizeof sa.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ::close(fd);  // the file stays, nobody listens: what a crashed daemon leaves
  auto r = client().request("GET", "/api/v1/status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kNotListening);
}

// The socket's directory closed to the caller (the kernel checks search permission on
// the path). As root that never fails, so the client runs in a child that drops to
// nobody; where even that is impossible the test says so and skips.
TEST_F(ClientTest, PermissionDenied) {
  const std::string closed = dir_.path() + "/closed";
  ASSERT_EQ(::mkdir(closed.c_str(), 0755), 0);
  FakeApi api(closed + "/api.sock");
  ASSERT_EQ(::chmod(closed.c_str(), 0), 0);
  ASSERT_EQ(::chmod(dir_.path().c_str(), 0755), 0);
  ClientOptions o;
  o.socket_path = closed + "/api.sock";
  o.timeout = 2s;
  if (::geteuid() != 0) {
    auto r = HttpClient(o).request("GET", "/api/v1/status");
    ::chmod(closed.c_str(), 0755);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ClientErrorKind::kPermissionDenied);
    return;
  }
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(100);
    auto r = HttpClient(o).request("GET", "/api/v1/status");
    ::_exit(r ? 101 : static_cast<int>(r.error().kind));
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ::chmod(closed.c_str(), 0755);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 100) GTEST_SKIP() << "running as root and cannot drop to uid 65534 to see EACCES";
  EXPECT_EQ(WEXITSTATUS(status), static_cast<int>(ClientErrorKind::kPermissionDenied));
}

TEST_F(ClientTest, TimeoutWhenTheDaemonNeverAnswers) {
  FakeApi api(sock());
  FakeApi::Reply silent;
  silent.silent = true;
  api.on("GET /api/v1/status", silent);
  const auto start = std::chrono::steady_clock::now();
  auto r = client(200ms).request("GET", "/api/v1/status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kTimeout);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

TEST_F(ClientTest, CancelFlagEndsAWait) {
  FakeApi api(sock());
  FakeApi::Reply silent;
  silent.silent = true;
  api.on("GET /api/v1/status", silent);
  std::atomic<bool> cancel{false};
  ClientOptions o;
  o.socket_path = sock();
  o.cancel = &cancel;
  std::thread raiser([&] {
    std::this_thread::sleep_for(150ms);
    cancel = true;
  });
  const auto start = std::chrono::steady_clock::now();
  auto r = HttpClient(o).request("GET", "/api/v1/status");
  raiser.join();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kInterrupted);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

TEST_F(ClientTest, GarbageIsAProtocolError) {
  FakeApi api(sock());
  FakeApi::Reply junk;
  junk.raw = {"SSH-2.0-OpenSSH_9.2\r\n"};
  api.on("GET /api/v1/status", junk);
  auto r = client().request("GET", "/api/v1/status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kProtocol);

  FakeApi::Reply cut;  // the header promises more than comes
  cut.raw = {"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"status\""};
  api.on("GET /api/v1/status", cut);
  r = client().request("GET", "/api/v1/status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kProtocol);
}

TEST(Client, TcpSendsTheBearerToken) {
  FakeApi api(FakeApi::Tcp{});
  api.on_json("GET /api/v1/status", 200, "{}");
  ClientOptions o;
  o.tcp = api.address();
  o.token = "c0ffee";
  o.timeout = 2s;
  auto r = HttpClient(o).request("GET", "/api/v1/status");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->status, 200u);
  ASSERT_EQ(api.requests().size(), 1u);
  EXPECT_EQ(api.requests()[0].authorization, "Bearer c0ffee");
}

TEST(Client, TcpRefusedAndBadAddress) {
  int port = 0;
  {
    FakeApi api(FakeApi::Tcp{});
    port = std::stoi(api.address().substr(api.address().rfind(':') + 1));
  }
  ClientOptions o;
  o.tcp = "127.0.0.1:" + std::to_string(port);
  o.timeout = 2s;
  auto r = HttpClient(o).request("GET", "/api/v1/status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kNotListening);

  o.tcp = "::1:7070";  // IPv6 without brackets is ambiguous
  r = HttpClient(o).request("GET", "/api/v1/status");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kOther);
}

std::vector<Event> watch_all(HttpClient& c, Expected<WatchResult, ClientError>& result,
                             std::size_t stop_after = 1000) {
  std::vector<Event> events;
  result = c.watch("/api/v1/connections?watch=100", [&](std::string_view e, std::string_view d) {
    events.push_back({std::string(e), std::string(d)});
    return events.size() < stop_after;
  });
  return events;
}

TEST_F(ClientTest, WatchReadsEventsUntilTheStreamEnds) {
  for (const bool chunked : {false, true}) {
    FakeApi api(sock());
    api.on("GET /api/v1/connections?watch=100",
           FakeApi::sse({"event: snapshot\ndata: []\n\n", ": keepalive\n\n", "event: changes\ndata: {\"closed\"",
                         ": [3]}\n\n"},
                        false, chunked));
    auto c = client();
    Expected<WatchResult, ClientError> r = unexpected(ClientError{});
    const auto events = watch_all(c, r);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_FALSE(r->stopped);  // the server ended it
    EXPECT_EQ(r->response.status, 200u);
    const std::vector<Event> want = {{"snapshot", "[]"}, {"changes", "{\"closed\": [3]}"}};
    EXPECT_EQ(events, want) << (chunked ? "chunked" : "close-delimited");
    ASSERT_EQ(api.requests().size(), 1u);
    EXPECT_EQ(api.requests()[0].accept, "text/event-stream");
  }
}

TEST_F(ClientTest, WatchStopsWhenTheHandlerSaysSo) {
  FakeApi api(sock());
  api.on("GET /api/v1/connections?watch=100",
         FakeApi::sse({"event: snapshot\ndata: []\n\n", "event: changes\ndata: {}\n\n"}, true));
  auto c = client();
  Expected<WatchResult, ClientError> r = unexpected(ClientError{});
  const auto events = watch_all(c, r, 1);
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->stopped);
  EXPECT_EQ(events.size(), 1u);
}

TEST_F(ClientTest, WatchErrorAnswerAndSilentStream) {
  FakeApi api(sock());
  api.on_json("GET /api/v1/connections?watch=100", 400,
              R"({"error": "bad request", "detail": "watch: 100 to 60000 ms"})");
  auto c = client();
  Expected<WatchResult, ClientError> r = unexpected(ClientError{});
  EXPECT_TRUE(watch_all(c, r).empty());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->response.status, 400u);
  EXPECT_NE(r->response.body.find("60000"), std::string::npos);

  api.on("GET /api/v1/connections?watch=100", FakeApi::sse({"event: snapshot\ndata: []\n\n"}, true));
  ClientOptions o;
  o.socket_path = sock();
  o.watch_idle = 200ms;
  HttpClient idle(o);
  EXPECT_EQ(watch_all(idle, r).size(), 1u);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kTimeout);

  api.on_json("GET /api/v1/connections?watch=100", 200, "[]");  // not a stream
  EXPECT_TRUE(watch_all(c, r).empty());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ClientErrorKind::kProtocol);
}

}  // namespace
}  // namespace splitd::api
