#pragma once

#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace splitd::firewall::testing {

struct CommandResult {
  int status = -1;  // exit status, -1 if it could not run or was killed
  std::string out;  // stdout and stderr together
};

// Runs `command` with /bin/sh and returns its exit status and output.
CommandResult run(const std::string& command);

// How often `needle` occurs in `haystack` (overlapping occurrences count).
std::size_t count(const std::string& haystack, const std::string& needle);

// The socket address of an IPv4 or IPv6 literal; *len is set to its size.
sockaddr_storage make_addr(const std::string& ip, std::uint16_t port, socklen_t& len);

// Empty when netns tests can run here, else why not (not root, no `ip`, no `nft`).
std::string netns_unavailable_reason();

// A private network namespace (`ip netns add sdfw-<pid>-<random>`) with lo up, deleted
// again (`ip netns del`) on destruction. Nothing here touches the caller's namespace.
class TestNetns {
 public:
  // nullptr with *error set when the namespace cannot be created.
  static std::unique_ptr<TestNetns> create(std::string* error);
  ~TestNetns();
  TestNetns(const TestNetns&) = delete;
  TestNetns& operator=(const TestNetns&) = delete;

  const std::string& name() const { return name_; }

  // Runs `fn` on a new thread that has joined the namespace (setns) and waits for it.
  // Sockets created there stay in the namespace when used from other threads.
  void run_inside(const std::function<void()>& fn) const;

  // `ip netns exec NAME sh -c COMMAND`.
  CommandResult exec(const std::string& command) const;

 private:
  explicit TestNetns(std::string name) : name_(std::move(name)) {}
  std::string name_;
};

}  // namespace splitd::firewall::testing
