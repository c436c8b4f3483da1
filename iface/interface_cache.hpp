#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/atomic_shared_ptr.hpp"
#include "common/expected.hpp"
#include "common/fd.hpp"
#include "iface/interface_snapshot.hpp"
#include "netlink/socket.hpp"

namespace splitd::iface {

// What the rest of splitd reads interfaces from; tests substitute a fake.
class InterfaceSource {
 public:
  using Callback = std::function<void(const std::shared_ptr<const InterfaceSnapshot>&)>;
  virtual ~InterfaceSource() = default;
  virtual std::shared_ptr<const InterfaceSnapshot> snapshot() const = 0;
  // Callback runs on the source's own thread after each change. Returns an id for
  // unsubscribe().
  virtual std::uint64_t subscribe(Callback cb) = 0;
  virtual void unsubscribe(std::uint64_t id) = 0;
};

// Keeps an InterfaceSnapshot of the network namespace it was opened in, current through
// rtnetlink: an initial dump of links, addresses and routes (IPv4 and IPv6), then the
// link/address/route multicast groups. Every change publishes a new immutable snapshot.
// On ENOBUFS (lost events) or when a link goes up or down (IPv4 routes are flushed
// silently) it re-dumps. snapshot() is lock-free for readers and callable from any
// thread; subscribers are called on the cache's own thread.
class InterfaceCache final : public InterfaceSource {
 public:
  // Opens the netlink sockets in the calling thread's network namespace and takes the
  // initial dump. Does not start watching; call start().
  static Expected<std::unique_ptr<InterfaceCache>, NetlinkFailure> open(SelectionConfig config);
  ~InterfaceCache() override;
  InterfaceCache(const InterfaceCache&) = delete;
  InterfaceCache& operator=(const InterfaceCache&) = delete;

  // Starts the watcher thread (idempotent).
  void start();
  // Stops it (idempotent; also done by the destructor).
  void stop();

  std::shared_ptr<const InterfaceSnapshot> snapshot() const override;
  std::uint64_t subscribe(Callback cb) override;
  void unsubscribe(std::uint64_t id) override;

  // Counters for logs and tests.
  std::uint64_t resync_count() const { return resyncs_.load(); }
  std::uint64_t generation() const { return generation_.load(); }

 private:
  explicit InterfaceCache(SelectionConfig config);
  Expected<bool, NetlinkFailure> open_sockets();
  // Replaces state_ with a fresh dump of links, addresses and routes.
  Expected<bool, NetlinkFailure> full_dump();
  Expected<bool, NetlinkFailure> dump(int family, std::uint16_t type, NetlinkState& into);
  // Reads every queued event; returns whether a re-dump is needed.
  Expected<bool, NetlinkFailure> drain_events(bool& changed);
  void publish();
  void run();

  SelectionConfig config_;
  std::optional<netlink::Socket> requests_;  // dump requests and their replies
  std::optional<netlink::Socket> events_;    // the link/address/route groups
  Fd wake_fd_;  // eventfd to stop the thread
  NetlinkState state_;  // touched only by open() and then the watcher thread
  AtomicSharedPtr<const InterfaceSnapshot> snapshot_;
  std::atomic<std::uint64_t> resyncs_{0};
  std::atomic<std::uint64_t> generation_{0};

  std::recursive_mutex subscribers_mu_;  // held while callbacks run: unsubscribe() waits
  std::vector<std::pair<std::uint64_t, Callback>> subscribers_;
  std::uint64_t next_subscriber_ = 1;

  std::thread thread_;
};

}  // namespace splitd::iface
