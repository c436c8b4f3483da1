#include "tests/api/fake_api.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace splitd::testing {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

const char* reason(unsigned status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 409: return "Conflict";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Whatever";
  }
}

void write_all(int fd, const std::string& data) {
  std::size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return;
    off += static_cast<std::size_t>(n);
  }
}

// Waits for the client to close (or the stop flag): the fake never closes first then.
void wait_for_close(int fd, const std::atomic<bool>& stop) {
  char buf[256];
  while (!stop.load()) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20) > 0 && ::recv(fd, buf, sizeof buf, 0) <= 0) return;
  }
}

}  // namespace

FakeApi::FakeApi(std::string path) : address_(path), path_(std::move(path)) {
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path_.c_str(), sizeof sa.sun_path - 1);
  ::unlink(path_.c_str());
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(listen_fd_, 16) != 0) {
    throw std::runtime_error("fake api: cannot listen on " + path_ + ": " + std::strerror(errno));
  }
  thread_ = std::thread([this] { serve(); });
}

FakeApi::FakeApi(Tcp) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(listen_fd_, 16) != 0 ||
      ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    throw std::runtime_error(std::string("fake api: cannot listen on tcp: ") + std::strerror(errno));
  }
  address_ = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
  thread_ = std::thread([this] { serve(); });
}

FakeApi::~FakeApi() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  ::close(listen_fd_);
  if (!path_.empty()) ::unlink(path_.c_str());
}

void FakeApi::on(const std::string& method_target, Reply reply) {
  std::lock_guard lock(mu_);
  replies_[method_target] = std::move(reply);
}

void FakeApi::on_json(const std::string& method_target, unsigned status, std::string body) {
  Reply r;
  r.status = status;
  r.body = std::move(body);
  on(method_target, std::move(r));
}

std::vector<FakeApi::Request> FakeApi::requests() const {
  std::lock_guard lock(mu_);
  return requests_;
}

FakeApi::Reply FakeApi::sse(std::vector<std::string> events, bool hold_open, bool chunked) {
  Reply r;
  r.hold_open = hold_open;
  std::string head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
  head += chunked ? "Transfer-Encoding: chunked\r\n\r\n" : "Connection: close\r\n\r\n";
  r.raw.push_back(head);
  for (auto& e : events) {
    if (chunked) {
      char size[16];
      std::snprintf(size, sizeof size, "%zx\r\n", e.size());
      r.raw.push_back(size + e + "\r\n");
    } else {
      r.raw.push_back(std::move(e));
    }
  }
  if (chunked && !hold_open) r.raw.push_back("0\r\n\r\n");
  return r;
}

void FakeApi::serve() {
  while (!stop_.load()) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) continue;
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    handle(fd);
    ::close(fd);
  }
}

void FakeApi::handle(int fd) {
  // The request: the header block, then Content-Length bytes of body.
  std::string data;
  char buf[4096];
  std::size_t header_end = std::string::npos;
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  auto read_more = [&] {
    while (std::chrono::steady_clock::now() < give_up && !stop_.load()) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return false;
      data.append(buf, static_cast<std::size_t>(n));
      return true;
    }
    return false;
  };
  while ((header_end = data.find("\r\n\r\n")) == std::string::npos) {
    if (!read_more()) return;
  }
  Request req;
  std::size_t content_length = 0;
  std::size_t line_start = 0;
  bool first = true;
  while (line_start < header_end) {
    const std::size_t eol = data.find("\r\n", line_start);
    const std::string line = data.substr(line_start, eol - line_start);
    line_start = eol + 2;
    if (first) {
      first = false;
      const auto sp1 = line.find(' '), sp2 = line.rfind(' ');
      req.method = line.substr(0, sp1);
      req.target = line.substr(sp1 + 1, sp2 - sp1 - 1);
      continue;
    }
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string name = lower(line.substr(0, colon));
    std::string value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.erase(0, 1);
    if (name == "content-length") content_length = std::stoul(value);
    if (name == "content-type") req.content_type = value;
    if (name == "authorization") req.authorization = value;
    if (name == "accept") req.accept = value;
  }
  while (data.size() < header_end + 4 + content_length) {
    if (!read_more()) return;
  }
  req.body = data.substr(header_end + 4, content_length);

  Reply reply;
  {
    std::lock_guard lock(mu_);
    requests_.push_back(req);
    const auto it = replies_.find(req.method + " " + req.target);
    if (it != replies_.end()) {
      reply = it->second;
    } else {
      reply.status = 404;
      reply.body = R"({"error": "not found", "detail": "the fake has no answer for )" + req.method + " " +
                   req.target + "\"}";
    }
  }
  if (reply.silent) {
    wait_for_close(fd, stop_);
    return;
  }
  if (!reply.raw.empty()) {
    for (std::size_t i = 0; i < reply.raw.size(); ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      write_all(fd, reply.raw[i]);
    }
    if (reply.hold_open) wait_for_close(fd, stop_);
    return;
  }
  std::string out = "HTTP/1.1 " + std::to_string(reply.status) + " " + reason(reply.status) + "\r\n";
  out += "Content-Type: " + reply.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(reply.body.size()) + "\r\nConnection: close\r\n\r\n";
  out += reply.body;
  write_all(fd, out);
}

TempDir::TempDir() {
  std::string tmpl = "/tmp/splitctl-test-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ec);
  std::filesystem::remove_all(path_, ec);
}

}  // namespace splitd::testing
