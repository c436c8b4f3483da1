#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/expected.hpp"
#include "decider/decider.hpp"
#include "proxy/classifier.hpp"
#include "proxy/reactor.hpp"
#include "proxy/session_table.hpp"

namespace splitd::proxy {

struct TcpProxyOptions {
  std::uint16_t port = 15001;
  std::uint32_t bypass_mark = 0x5d2;
  std::size_t max_sessions = 100000;
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds idle_timeout{300000};
  bool ipv6 = true;
  // Source ports of upstream sockets; 0/0 = the ports above the system's ephemeral range
  // (see open_upstream for why they must not overlap it).
  std::uint16_t source_port_min = 0;
  std::uint16_t source_port_max = 0;
};

// The source-port range for upstream sockets given the system's ephemeral range
// [ephemeral_low, ephemeral_high]: above it if there is room for 1024 ports, else below
// (from 1024); {0, 0} if neither has 1024 ports.
std::pair<std::uint16_t, std::uint16_t> upstream_port_range(unsigned ephemeral_low,
                                                            unsigned ephemeral_high);

// The transparent TCP proxy. It runs a worker on every reactor of the pool, each with its
// own SO_REUSEPORT transparent listeners on 127.0.0.1:port and [::1]:port (where TPROXY
// delivers intercepted flows); a flow lives entirely on the worker that accepted it. Per
// flow: classify it once (Classifier), dial the upstream bound to the route's interface and address
// with the bypass mark, then splice both ways until both sides are done. An idle flow
// costs one small struct and its Session (no buffer, no pipe, no timer).
// start() and stop() are called from one controlling thread, while the pool runs.
class TcpProxy {
 public:
  TcpProxy(TcpProxyOptions options, const Classifier& classifier, SessionTable& sessions,
           ReactorPool& reactors);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  // Opens the listeners (a missing capability is a clear error) on every reactor.
  Expected<void, std::string> start();
  // Stops accepting and ends every session with a reset.
  void stop();

  std::size_t active() const { return active_.load(std::memory_order_relaxed); }

  class Worker;

 private:
  TcpProxyOptions options_;
  const Classifier& classifier_;
  SessionTable& sessions_;
  ReactorPool& reactors_;
  std::atomic<std::size_t> active_{0};
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace splitd::proxy
