#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/expected.hpp"
#include "decider/decider.hpp"
#include "proxy/classifier.hpp"
#include "proxy/reactor.hpp"
#include "proxy/session_table.hpp"

namespace splitd::proxy {

struct UdpProxyOptions {
  std::uint16_t port = 15001;
  std::uint32_t bypass_mark = 0x5d2;
  // UDP flows (client endpoint, original destination) alive at once; a limit of its own,
  // separate from the TCP proxy's. Datagrams of new flows beyond it are dropped.
  std::size_t max_sessions = 100000;
  // A flow, an upstream mapping or a reply socket without traffic for this long is closed.
  std::chrono::milliseconds idle_timeout{60000};
  bool ipv6 = true;
  // Transparent reply sockets kept open (one per remote peer address), least recently
  // used evicted first.
  std::size_t reply_sockets = 4096;
};

// SipHash-2-4 (libsodium crypto_shorthash) under a per-process random key: maps keyed by
// addresses a remote peer chooses cannot be driven into collisions. Thread-safe.
class KeyedHash {
 public:
  KeyedHash();  // random key
  explicit KeyedHash(const std::array<std::uint8_t, 16>& key) : key_(key) {}
  std::size_t operator()(std::span<const std::uint8_t> bytes) const;

 private:
  std::array<std::uint8_t, 16> key_;
};

// The transparent UDP proxy, full cone. It runs a worker on every reactor of the pool,
// each with its own SO_REUSEPORT transparent listeners on 127.0.0.1:port and [::1]:port.
// TPROXY hands every datagram a client sends (the first of a flow and all later ones) to
// the listener group, and the kernel picks the worker by a hash of the client's address
// and port: a client endpoint, with all its flows and mappings, lives on one worker, which
// also sends its replies. No state is shared and nothing is locked on the data path.
//
// A flow (client endpoint, original destination) is classified once (Classifier). Flows of
// one client with the same route share an upstream mapping: one unconnected socket bound
// to the route's interface and address with the bypass mark, from which replies of any
// peer go back to the client (full cone). Replies reach the client from a transparent
// socket bound to the peer's address (one per peer and worker, send-only), so the client
// sees the right source. Datagrams are read with recvmmsg and written with sendmmsg, runs
// of them as one UDP GSO send, and arrive as UDP GRO super-datagrams where the kernel
// coalesces them (udp_batch.hpp). start() and stop() are called from one controlling
// thread while the pool runs; flows() and mappings() from any.
class UdpProxy {
 public:
  UdpProxy(UdpProxyOptions options, const Classifier& classifier, SessionTable& sessions,
           ReactorPool& reactors);
  ~UdpProxy();
  UdpProxy(const UdpProxy&) = delete;
  UdpProxy& operator=(const UdpProxy&) = delete;

  // Opens the listeners (a missing capability is a clear error) on every reactor.
  Expected<void, std::string> start();
  // Closes every socket and ends every flow.
  void stop();

  std::size_t flows() const { return flows_.load(std::memory_order_relaxed); }
  std::size_t mappings() const { return mappings_.load(std::memory_order_relaxed); }

  class Worker;

 private:
  friend class Worker;
  UdpProxyOptions options_;
  const Classifier& classifier_;
  SessionTable& sessions_;
  ReactorPool& reactors_;
  std::atomic<std::size_t> flows_{0};  // of all workers: max_sessions holds across them
  std::atomic<std::size_t> mappings_{0};
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace splitd::proxy
