#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "api/backend.hpp"
#include "common/asio.hpp"
#include "common/expected.hpp"

namespace splitd::api {

struct ServerOptions {
  std::string unix_path;   // required, e.g. /run/splitd/api.sock
  std::string tcp_listen;  // "" = no TCP listener; "127.0.0.1:7070", "[::1]:7070" (port 0: any)
  std::string token_file;  // the TCP listener's bearer token (created when missing)
  std::string group_name = "splitd";  // members may change things over the unix socket

  std::size_t header_limit = 8 * 1024;  // 431 beyond
  std::size_t body_limit = 64 * 1024;   // 413 beyond
  std::chrono::milliseconds request_deadline{10'000};  // a whole request, and each response write
  std::chrono::milliseconds keepalive_idle{30'000};    // between requests on one connection
  std::size_t max_connections = 256;                   // more are closed at once

  std::size_t watch_max_unsent = 1024 * 1024;        // a watcher further behind is dropped
  std::chrono::milliseconds watch_keepalive{15'000};  // ": keepalive" after this long without events
  std::chrono::milliseconds watch_write_stall{60'000};  // a write without progress this long: dropped
};

// The REST API server (docs/api.md): a listener on the unix socket, optionally one on TCP
// (every request with the bearer token), and the connections they accept, each served by
// one coroutine; watch streams are event-driven objects. Owned by the daemon. Not
// thread-safe: every member, and every Backend call it makes, runs on the one thread of
// `ctx` (the daemon's control executor). Until set_ready(true) every request gets 503.
class Server {
 public:
  Server(net::asio::io_context& ctx, Backend& backend, ServerOptions opts);
  ~Server();  // stop()
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens (the unix socket, then TCP), and starts accepting on ctx. A stale
  // socket file is replaced; a live one, or another kind of file, is an error. Call once.
  Expected<void, std::string> start();
  // Closes the listeners and every connection and watch stream, and removes the socket
  // file. When it returns nothing will call the Backend again. Idempotent.
  void stop();

  // The daemon calls set_ready(true) once the Backend can answer (503 "starting" before).
  void set_ready(bool ready);

  // The TCP listener's port (0 when none): for tests that listen on port 0.
  std::uint16_t tcp_port() const;
  std::size_t connections() const;  // open now, watch streams included

  struct Core;  // shared with the coroutines, which may outlive the Server object

 private:
  std::shared_ptr<Core> core_;
};

}  // namespace splitd::api
