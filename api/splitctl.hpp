#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "api/client.hpp"

namespace splitd::ctl {

// What splitctl talks to and writes on: the process's own in main(), fakes in tests.
// Owned by the caller; used by one thread.
struct Io {
  std::ostream& out;
  std::ostream& err;
  // The width of the terminal stdout is, or 0 when stdout is not a terminal (piped):
  // then nothing is truncated and `connections --watch` prints one line per change.
  // Asked again before each redraw, so a resized window is followed.
  std::function<std::size_t()> terminal_width = [] { return std::size_t{0}; };
  std::function<std::chrono::system_clock::time_point()> now = [] { return std::chrono::system_clock::now(); };
  std::function<std::optional<std::string>(const char* name)> getenv{};  // empty: std::getenv
  // Raised by SIGINT/SIGTERM in main(); ends a watch (exit 0) or a request (exit 130).
  const std::atomic<bool>* interrupted = nullptr;
  // Makes the API client; empty: an api::HttpClient.
  std::function<std::unique_ptr<api::ApiClient>(const api::ClientOptions&)> make_client{};
  // Replaces splitctl with CMD for `exec` (argv[0] = CMD, searched in PATH); returns only
  // on failure, with the exit code to give (127 not found, 126 not executable). Empty:
  // execvp(3).
  std::function<int(const std::vector<std::string>& argv)> exec{};
};

// The whole of splitctl: `args` without the program name. Returns the exit code (0 ok,
// 1 usage error or a request the daemon rejected, 2 runtime failure).
int run_splitctl(std::vector<std::string> args, Io& io);

// The pieces, for tests.

// 512B, 1.5KiB, 23.4MiB, 2.0GiB (binary units, one decimal above 1 KiB).
std::string format_bytes(std::uint64_t bytes);
// 4s, 3m12s, 2h05m, 1d03h: the two largest units; negative durations show as 0s.
std::string format_duration(std::chrono::seconds d);
// RFC 3339 as the API writes it ("2026-12-02T09:55:01.003Z", or with a +hh:mm offset).
std::optional<std::chrono::system_clock::time_point> parse_timestamp(std::string_view text);
// Columns on a terminal: UTF-8 code points (the API's strings are names and addresses).
std::size_t display_width(std::string_view utf8);

// A text table: columns padded to their widest cell, two spaces apart, no trailing
// blanks. With max_width > 0 the shrinkable columns give up width (the widest first,
// down to their title's width or 6) until a row fits, cut with "…" at the end or, for
// keep_tail columns (domains), at the start.
struct Column {
  std::string title;
  bool right = false;
  bool shrinkable = false;
  bool keep_tail = false;
};
std::string render_table(const std::vector<Column>& columns, const std::vector<std::vector<std::string>>& rows,
                         std::size_t max_width = 0);

// GET /api/v1/connections's array as splitctl prints it: the table and the footer line.
// nullopt when `json` is not an array.
std::optional<std::string> connections_text(std::string_view json, std::chrono::system_clock::time_point now,
                                            std::size_t max_width = 0);
std::optional<std::string> status_text(std::string_view json, std::chrono::system_clock::time_point now);
std::optional<std::string> rules_text(std::string_view json);
std::optional<std::string> interfaces_text(std::string_view json);

// The live table of `connections --watch`: a snapshot, then changes applied. Each
// apply returns the change lines for a pipe ("+ 17 tcp …", "- 12", "~ 17 sent … recv …").
// Not thread-safe.
class ConnectionsView {
 public:
  ConnectionsView();
  ~ConnectionsView();
  ConnectionsView(const ConnectionsView&) = delete;
  ConnectionsView& operator=(const ConnectionsView&) = delete;

  // false when `data` is not what the event should carry.
  bool apply(std::string_view event, std::string_view data, std::vector<std::string>& lines);
  std::string text(std::chrono::system_clock::time_point now, std::size_t max_width) const;
  std::size_t size() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace splitd::ctl
