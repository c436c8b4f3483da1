#pragma once

#include <sys/epoll.h>

#include <array>
#include <atomic>
#include <climits>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/expected.hpp"
#include "common/fd.hpp"

namespace splitd::proxy {

// One thread, one epoll set: the data path's event loop. Both proxies run on it (one
// reactor per core, see ReactorPool), each as a Client that owns some of the 8 tags.
//
// Dispatch is by tag: the low 3 bits of epoll_event.data say which client an event is for;
// the rest is the client's (an index, or a pointer to an 8-byte aligned object). Nothing is
// allocated per event. Once per turn, after the events, every client runs its deferred
// work (after_events: queued directions, deadlines, frees of objects that later events of
// the same batch could still name). Clients tell the reactor their next deadline and
// whether they have work ready, so the wait is as long as it can be and no longer.
//
// Other threads reach the loop only through post() (a task queue and an eventfd). A client
// is attached and detached on the loop thread, or before start() / after stop().
class Reactor {
 public:
  static constexpr std::uint64_t kTagBits = 3;
  static constexpr std::uint64_t kTagMask = (1u << kTagBits) - 1;
  static constexpr std::uint8_t kTags = 1u << kTagBits;
  static constexpr std::uint8_t kWakeTag = kTags - 1;  // the reactor's own eventfd

  class Client {
   public:
    virtual ~Client() = default;
    // `data` is the registered value, tag bits included.
    virtual void on_event(std::uint64_t data, std::uint32_t events) = 0;
    // Once per turn after the events (and on a timeout).
    virtual void after_events() = 0;
    // The earliest deadline of the client (steady ms), LLONG_MAX for none.
    virtual std::int64_t next_deadline_ms() const = 0;
    // Work that must not wait for an event (a direction with more to read).
    virtual bool has_ready_work() const { return false; }
  };

  explicit Reactor(unsigned index) : index_(index) {}
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  Expected<void, std::string> open();  // the epoll set and the wake eventfd
  void start();                        // the thread, pinned to the index-th allowed CPU
  // Runs the queued tasks, then ends the loop and joins the thread. Clients must have
  // detached before (their owners stop them first).
  void stop();

  // Runs `fn` on the loop thread and waits for it; inline when the loop is not running
  // (before start(), after stop()) or when called from the loop thread itself.
  void run_sync(const std::function<void()>& fn);
  // Queues `fn` for the loop thread and wakes it; never blocks on the loop. Thread-safe.
  // False (and `fn` dropped) when the loop is not running.
  bool post(std::function<void()> fn);

  // On the loop thread (or while it is not running).
  void attach(std::uint8_t tag, Client* client);
  void detach(Client* client);
  bool add(int fd, std::uint32_t events, std::uint64_t data) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = data;
    return ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) == 0;
  }
  bool modify(int fd, std::uint32_t events, std::uint64_t data) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = data;
    return ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) == 0;
  }
  void remove(int fd) { ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

  // The time of the current turn (steady ms), taken after every wait.
  std::int64_t now_ms() const { return now_; }
  unsigned index() const { return index_; }
  bool running() const { return running_.load(std::memory_order_acquire); }
  bool on_loop_thread() const {
    return std::this_thread::get_id() == loop_thread_.load(std::memory_order_acquire);
  }

 private:
  void loop();
  void run_tasks();
  void wake();
  void pin() const;
  int timeout() const;

  unsigned index_;
  Fd epoll_, wake_;
  std::array<Client*, kTags> by_tag_{};
  std::vector<Client*> clients_;  // each once, in attach order
  std::vector<Client*> turn_;     // the clients whose after_events this turn still runs
  std::int64_t now_ = 0;
  std::mutex mu_;  // tasks_ and stopping_
  std::vector<std::function<void()>> tasks_, running_tasks_;
  bool stopping_ = false;
  std::atomic<bool> running_{false};
  std::thread thread_;
  std::atomic<std::thread::id> loop_thread_{};
};

// The reactors of the data path: one per CPU splitd may run on (or a configured number),
// each pinned to its CPU. The proxies attach to every reactor; a flow lives on one.
// start() and stop() are called from one controlling thread.
class ReactorPool {
 public:
  explicit ReactorPool(unsigned threads = 0);  // 0: one per CPU in splitd's affinity mask
  ~ReactorPool();
  ReactorPool(const ReactorPool&) = delete;
  ReactorPool& operator=(const ReactorPool&) = delete;

  Expected<void, std::string> start();
  void stop();

  std::size_t size() const { return reactors_.size(); }
  Reactor& at(std::size_t i) { return *reactors_[i]; }

 private:
  std::vector<std::unique_ptr<Reactor>> reactors_;
  bool started_ = false;
};

}  // namespace splitd::proxy
