#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace splitd::testing {

// A stand-in for splitd's REST API: plain sockets and a hand-written HTTP/1.1 reader (on
// purpose not Beast, so the client is tested against another implementation). Canned
// answers per "METHOD TARGET"; every request is recorded. One thread serves one
// connection at a time; the destructor stops it. Thread-safe.
class FakeApi {
 public:
  struct Request {
    std::string method, target, body, content_type, authorization, accept;
  };
  struct Reply {
    unsigned status = 200;
    std::string body;
    std::string content_type = "application/json";
    // When not empty: written as they are (the status line and headers included), 20 ms
    // apart, then the connection is closed (unless hold_open).
    std::vector<std::string> raw;
    bool hold_open = false;  // after `raw`, wait until the client closes
    bool silent = false;     // read the request, never answer
  };

  // Listens on a unix socket at `path`, or with Tcp{} on 127.0.0.1:0.
  struct Tcp {};
  explicit FakeApi(std::string path);
  explicit FakeApi(Tcp);
  ~FakeApi();
  FakeApi(const FakeApi&) = delete;
  FakeApi& operator=(const FakeApi&) = delete;

  void on(const std::string& method_target, Reply reply);
  void on_json(const std::string& method_target, unsigned status, std::string body);
  std::vector<Request> requests() const;
  std::string address() const { return address_; }  // the path, or "127.0.0.1:PORT"

  // An SSE answer: the header block and then each piece as written.
  static Reply sse(std::vector<std::string> events, bool hold_open = false, bool chunked = false);

 private:
  void serve();
  void handle(int fd);

  int listen_fd_ = -1;
  std::string address_;
  std::string path_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::map<std::string, Reply> replies_;
  std::vector<Request> requests_;
  std::thread thread_;
};

// A temporary directory, removed (with what is in it) at the end.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace splitd::testing
