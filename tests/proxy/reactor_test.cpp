// The reactor on its own: Reactor (the loop, tasks, dispatch by tag, deadlines, ready
// work) and ReactorPool, driven with eventfds. No root, no sockets. The loop's side of each
// test is observed through atomics or a mutex, and every wait is bounded.

#include <gtest/gtest.h>

#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdint>
#include <functional>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/fd.hpp"
#include "proxy/reactor.hpp"
#include "proxy/session_table.hpp"  // steady_ms()

namespace splitd::proxy {
namespace {

using namespace std::chrono_literals;

// Waits (bounded) for `pred`; true when it held.
bool wait_for(const std::function<bool()>& pred, std::chrono::milliseconds limit = 2000ms) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

Fd make_eventfd() {
  Fd fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  EXPECT_TRUE(fd.valid());
  return fd;
}

void signal_eventfd(int fd) {
  const std::uint64_t one = 1;
  ASSERT_EQ(::write(fd, &one, sizeof one), static_cast<ssize_t>(sizeof one));
}

// Makes sure the loop finished the turn it was in when this was called (and the events of
// that turn): a task runs in a turn, the second one in a later turn than the first ran in.
void barrier(Reactor& r) {
  r.run_sync([] {});
  r.run_sync([] {});
}

// A client that records what the loop calls. A shared log (when given) shows the order
// across clients: "E<name>" for an event, "A<name>" for after_events.
class Recorder : public Reactor::Client {
 public:
  explicit Recorder(char name = '?', std::vector<std::string>* log = nullptr, std::mutex* log_mu = nullptr)
      : name_(name), log_(log), log_mu_(log_mu) {}

  void on_event(std::uint64_t data, std::uint32_t events) override {
    {
      std::lock_guard lock(mu_);
      events_.push_back({data, events});
    }
    note('E');
    if (drain_fd >= 0) {
      std::uint64_t v;
      [[maybe_unused]] const ssize_t n = ::read(drain_fd, &v, sizeof v);  // level-triggered: clear it
    }
    event_count.fetch_add(1);
  }
  void after_events() override {
    note('A');
    after_count.fetch_add(1);
    if (ready.load() > 0) ready.fetch_sub(1);
    if (on_after) on_after();
  }
  std::int64_t next_deadline_ms() const override { return deadline.load(); }
  bool has_ready_work() const override { return ready.load() > 0; }

  struct Event {
    std::uint64_t data;
    std::uint32_t events;
  };
  std::vector<Event> events() {
    std::lock_guard lock(mu_);
    return events_;
  }

  int drain_fd = -1;               // an eventfd to read in on_event
  std::function<void()> on_after;  // more for after_events (set before start)
  std::atomic<int> event_count{0}, after_count{0};
  std::atomic<int> ready{0};  // turns of ready work left
  std::atomic<std::int64_t> deadline{LLONG_MAX};

 private:
  void note(char what) {
    if (!log_) return;
    std::lock_guard lock(*log_mu_);
    log_->push_back(std::string{what, name_});
  }

  char name_;
  std::vector<std::string>* log_;
  std::mutex* log_mu_;
  std::mutex mu_;
  std::vector<Event> events_;
};

// ---- lifecycle, post, run_sync -----------------------------------------------------------

// open() + start() runs the loop, stop() ends it (twice is harmless), and the index is kept.
TEST(Reactor, OpenStartStop) {
  Reactor r(3);
  EXPECT_EQ(r.index(), 3u);
  ASSERT_TRUE(r.open());
  EXPECT_FALSE(r.running());
  r.start();
  EXPECT_TRUE(r.running());
  EXPECT_FALSE(r.on_loop_thread());
  std::promise<bool> ran;
  ASSERT_TRUE(r.post([&] { ran.set_value(r.on_loop_thread()); }));
  auto f = ran.get_future();
  ASSERT_EQ(f.wait_for(2s), std::future_status::ready);
  EXPECT_TRUE(f.get());
  r.stop();
  EXPECT_FALSE(r.running());
  r.stop();
  EXPECT_FALSE(r.running());
}

// post() runs its task on the loop thread, in order for one poster, from any thread; it
// says false (and drops the task) when the loop is not running: before start, after stop.
TEST(Reactor, PostRunsOnTheLoopThreadOnlyWhileRunning) {
  Reactor r(0);
  ASSERT_TRUE(r.open());
  std::atomic<int> early{0};
  EXPECT_FALSE(r.post([&] { early++; }));
  r.start();

  constexpr int kThreads = 4, kPosts = 500;
  std::mutex mu;
  std::vector<std::vector<int>> seen(kThreads);
  std::set<std::thread::id> ran_on;
  std::atomic<int> done{0}, off_loop{0};
  std::vector<std::thread> posters;
  for (int t = 0; t < kThreads; ++t) {
    posters.emplace_back([&, t] {
      for (int i = 0; i < kPosts; ++i) {
        EXPECT_TRUE(r.post([&, t, i] {
          if (!r.on_loop_thread()) off_loop++;
          std::lock_guard lock(mu);
          seen[t].push_back(i);
          ran_on.insert(std::this_thread::get_id());
          done++;
        }));
      }
    });
  }
  for (auto& p : posters) p.join();
  ASSERT_TRUE(wait_for([&] { return done.load() == kThreads * kPosts; }));
  EXPECT_EQ(off_loop.load(), 0);
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(ran_on.size(), 1u);
    EXPECT_EQ(ran_on.count(std::this_thread::get_id()), 0u);
    for (int t = 0; t < kThreads; ++t) {
      ASSERT_EQ(seen[t].size(), static_cast<std::size_t>(kPosts));
      for (int i = 0; i < kPosts; ++i) EXPECT_EQ(seen[t][i], i);
    }
  }
  r.stop();
  EXPECT_FALSE(r.post([&] { early++; }));
  std::this_thread::sleep_for(5ms);
  EXPECT_EQ(early.load(), 0);
}

// run_sync: inline on the caller's thread while the loop is not running (before start,
// after stop) and when called on the loop thread (no self-deadlock); otherwise on the loop
// thread, returning only once the function has run.
TEST(Reactor, RunSyncInlineOrWaits) {
  Reactor r(0);
  ASSERT_TRUE(r.open());
  const auto me = std::this_thread::get_id();
  std::thread::id where;
  r.run_sync([&] { where = std::this_thread::get_id(); });
  EXPECT_EQ(where, me);

  r.start();
  bool finished = false, on_loop = false;
  r.run_sync([&] {
    std::this_thread::sleep_for(20ms);  // run_sync must wait for this
    where = std::this_thread::get_id();
    on_loop = r.on_loop_thread();
    finished = true;
  });
  EXPECT_TRUE(finished);
  EXPECT_TRUE(on_loop);
  EXPECT_NE(where, me);
  const auto loop_thread = where;

  // From the loop thread itself: inline, before run_sync returns.
  std::promise<std::string> order;
  ASSERT_TRUE(r.post([&] {
    std::string s;
    r.run_sync([&] {
      s += std::this_thread::get_id() == loop_thread ? "inner-on-loop;" : "inner-elsewhere;";
    });
    s += "after";
    order.set_value(s);
  }));
  auto f = order.get_future();
  ASSERT_EQ(f.wait_for(2s), std::future_status::ready);
  EXPECT_EQ(f.get(), "inner-on-loop;after");

  r.stop();
  where = {};
  r.run_sync([&] { where = std::this_thread::get_id(); });
  EXPECT_EQ(where, me);
}

// stop() runs what was queued before it ends the loop: tasks posted while the loop is busy
// and tasks those tasks post while it stops. A run_sync waiting on the loop never hangs.
TEST(Reactor, StopRunsQueuedTasks) {
  Reactor r(0);
  ASSERT_TRUE(r.open());
  r.start();
  std::atomic<bool> busy{false};
  std::atomic<int> ran{0}, follow_ups{0};
  ASSERT_TRUE(r.post([&] {
    busy = true;
    std::this_thread::sleep_for(50ms);  // the loop is busy while the rest is queued
  }));
  ASSERT_TRUE(wait_for([&] { return busy.load(); }));
  constexpr int kTasks = 100;
  for (int i = 0; i < kTasks; ++i) {
    ASSERT_TRUE(r.post([&, i] {
      ran++;
      if (i % 10 == 0) {
        // Posted from the loop while it is stopping: still accepted and run.
        if (r.post([&] { follow_ups++; })) follow_ups += 100;
      }
    }));
  }
  std::thread waiter([&] {
    bool done = false;
    r.run_sync([&] { done = true; });
    EXPECT_TRUE(done);
  });
  r.stop();
  waiter.join();
  EXPECT_FALSE(r.running());
  EXPECT_EQ(ran.load(), kTasks);
  EXPECT_EQ(follow_ups.load(), 10 * 101);  // each accepted (100) and run (1)
}

// ---- clients -------------------------------------------------------------------------------

// Dispatch by tag: a client gets the events of its tag's fds with the registered data
// unchanged (tag bits included, the rest an index or an aligned pointer), an event of a
// tag nobody holds goes nowhere, and after_events runs once per turn for every client,
// after all the events of the turn.
TEST(Reactor, ClientsGetTheirEventsThenAfterEvents) {
  std::mutex log_mu;
  std::vector<std::string> log;
  Recorder a('a', &log, &log_mu), b('b', &log, &log_mu);
  Fd ea = make_eventfd(), eb = make_eventfd(), nobody = make_eventfd();
  alignas(8) static std::uint64_t object = 0;
  const std::uint64_t data_a = (std::uint64_t{12345} << Reactor::kTagBits) | 3;
  const std::uint64_t data_b = reinterpret_cast<std::uint64_t>(&object) | 5;
  a.drain_fd = ea.get();
  b.drain_fd = eb.get();

  Reactor r(0);
  ASSERT_TRUE(r.open());
  r.attach(3, &a);
  r.attach(5, &b);
  ASSERT_TRUE(r.add(ea.get(), EPOLLIN, data_a));
  ASSERT_TRUE(r.add(eb.get(), EPOLLIN, data_b));
  ASSERT_TRUE(r.add(nobody.get(), EPOLLIN | EPOLLET, (std::uint64_t{7} << Reactor::kTagBits) | 4));
  // Ready before the loop starts: all three are in its first turn.
  signal_eventfd(ea.get());
  signal_eventfd(eb.get());
  signal_eventfd(nobody.get());
  r.start();
  ASSERT_TRUE(wait_for([&] { return a.after_count.load() >= 1 && b.after_count.load() >= 1; }));
  {
    std::lock_guard lock(log_mu);
    ASSERT_GE(log.size(), 4u);
    const std::set<std::string> first_two{log[0], log[1]};
    EXPECT_EQ(first_two, (std::set<std::string>{"Ea", "Eb"}));
    EXPECT_EQ(log[2], "Aa");  // attach order
    EXPECT_EQ(log[3], "Ab");
    EXPECT_EQ(log.size(), 4u);  // one turn, nothing more
  }
  ASSERT_EQ(a.events().size(), 1u);
  EXPECT_EQ(a.events()[0].data, data_a);
  EXPECT_EQ(a.events()[0].events & EPOLLIN, static_cast<std::uint32_t>(EPOLLIN));
  ASSERT_EQ(b.events().size(), 1u);
  EXPECT_EQ(b.events()[0].data, data_b);
  EXPECT_EQ(reinterpret_cast<std::uint64_t*>(b.events()[0].data & ~Reactor::kTagMask), &object);

  // A later event: one more turn, both clients' after_events after it.
  signal_eventfd(ea.get());
  ASSERT_TRUE(wait_for([&] { return b.after_count.load() >= 2; }));
  {
    std::lock_guard lock(log_mu);
    ASSERT_EQ(log.size(), 7u);
    EXPECT_EQ(log[4], "Ea");
    EXPECT_EQ(log[5], "Aa");
    EXPECT_EQ(log[6], "Ab");
  }
  EXPECT_EQ(a.event_count.load(), 2);
  EXPECT_EQ(b.event_count.load(), 1);
  ASSERT_EQ(a.events().size(), 2u);
  EXPECT_EQ(a.events()[1].data, data_a);

  // A task's turn (the wake eventfd) is a turn too, but no client sees the wake event.
  barrier(r);
  EXPECT_EQ(a.event_count.load(), 2);
  EXPECT_EQ(b.event_count.load(), 1);
  EXPECT_GE(a.after_count.load(), 3);
  r.run_sync([&] {
    r.detach(&a);
    r.detach(&b);
  });
  r.stop();
}

// Once a client detaches, its fds' events and after_events reach it no more; another
// client attached to the same reactor goes on.
TEST(Reactor, DetachStopsDelivery) {
  Recorder a, b;
  Fd ea = make_eventfd(), eb = make_eventfd();
  a.drain_fd = ea.get();
  b.drain_fd = eb.get();
  Reactor r(0);
  ASSERT_TRUE(r.open());
  r.attach(1, &a);
  r.attach(2, &b);
  ASSERT_TRUE(r.add(ea.get(), EPOLLIN | EPOLLET, 1));
  ASSERT_TRUE(r.add(eb.get(), EPOLLIN | EPOLLET, 2));
  r.start();
  signal_eventfd(ea.get());
  ASSERT_TRUE(wait_for([&] { return a.event_count.load() == 1; }));

  r.run_sync([&] { r.detach(&a); });
  const int after_before = a.after_count.load();
  signal_eventfd(ea.get());
  signal_eventfd(eb.get());
  ASSERT_TRUE(wait_for([&] { return b.event_count.load() == 1; }));
  barrier(r);
  EXPECT_EQ(a.event_count.load(), 1);
  EXPECT_EQ(a.after_count.load(), after_before);
  EXPECT_GE(b.after_count.load(), 3);

  // Attached again (on the loop thread), it hears its tag again.
  r.run_sync([&] { r.attach(1, &a); });
  signal_eventfd(ea.get());
  EXPECT_TRUE(wait_for([&] { return a.event_count.load() == 2; }));
  r.run_sync([&] {
    r.detach(&a);
    r.detach(&b);
  });
  r.stop();
}

// A client's deadline wakes the loop without any event: after_events runs around then
// (bounds generous, this is no timing test), and with no deadline left the loop sleeps.
TEST(Reactor, DeadlineWakesTheLoop) {
  Recorder c;
  Reactor r(0);
  std::atomic<std::int64_t> fired_at{0};
  c.on_after = [&] {
    if (r.now_ms() >= c.deadline.load()) {
      fired_at = steady_ms();
      c.deadline = LLONG_MAX;
    }
  };
  ASSERT_TRUE(r.open());
  r.attach(0, &c);
  const std::int64_t t0 = steady_ms();
  c.deadline = t0 + 30;
  r.start();
  ASSERT_TRUE(wait_for([&] { return fired_at.load() != 0; }));
  const std::int64_t waited = fired_at.load() - t0;
  EXPECT_GE(waited, 20);
  EXPECT_LE(waited, 1000);
  EXPECT_LE(c.after_count.load(), 5);  // it waited: no busy loop up to the deadline
  EXPECT_EQ(c.event_count.load(), 0);
  const int turns = c.after_count.load();
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(c.after_count.load(), turns);  // no deadline, no event: no turn

  // A deadline set later (from the loop, as a client does) is honoured as well.
  const std::int64_t t1 = steady_ms();
  fired_at = 0;
  r.run_sync([&] { c.deadline = steady_ms() + 30; });
  ASSERT_TRUE(wait_for([&] { return fired_at.load() != 0; }));
  EXPECT_GE(fired_at.load() - t1, 20);
  EXPECT_LE(fired_at.load() - t1, 1000);
  r.run_sync([&] { r.detach(&c); });
  r.stop();
}

// has_ready_work keeps the loop turning without an event (a direction with more to read
// must not wait): exactly as many turns as the client asked for, then the loop sleeps.
TEST(Reactor, ReadyWorkKeepsTheLoopTurning) {
  Recorder c;
  Reactor r(0);
  ASSERT_TRUE(r.open());
  r.attach(0, &c);
  constexpr int kTurns = 100;
  c.ready = kTurns;
  r.start();
  ASSERT_TRUE(wait_for([&] { return c.ready.load() == 0; }));
  std::this_thread::sleep_for(30ms);
  EXPECT_EQ(c.after_count.load(), kTurns);
  EXPECT_EQ(c.event_count.load(), 0);
  r.run_sync([&] { r.detach(&c); });
  r.stop();
}

// A client that detaches itself in after_events: the next client still gets its turn (the
// loop used to walk clients_ by index, so the next client moved into the slot and missed
// after_events for that turn: its deferred frees and queued work waited for an event).
TEST(Reactor, SelfDetachInAfterEventsSkipsNoOtherClient) {
  Recorder a('a'), b('b');
  Reactor r(0);
  a.on_after = [&] { r.detach(&a); };
  ASSERT_TRUE(r.open());
  r.attach(1, &a);
  r.attach(2, &b);
  r.start();
  r.run_sync([] {});  // one turn: a detaches itself in it
  r.run_sync([] {});  // and one more
  // run_sync returns once its task ran, before that turn's after_events: wait for them.
  // The old loop gave b one turn for these two (the first turn skipped it), then waited.
  EXPECT_TRUE(wait_for([&] { return b.after_count.load() >= 2; }));
  EXPECT_EQ(a.after_count.load(), 1);
  EXPECT_EQ(b.after_count.load(), 2);
  r.run_sync([&] { r.detach(&b); });
  r.stop();
}

// ---- ReactorPool ---------------------------------------------------------------------------

// The i-th CPU of the calling thread's affinity mask, -1 if there is none.
int nth_allowed_cpu(const cpu_set_t& allowed, int n) {
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &allowed) && n-- == 0) return cpu;
  }
  return -1;
}

// What a reactor's thread sees of itself: its thread id and its affinity mask.
struct Seen {
  std::thread::id id;
  cpu_set_t cpus;
};

Seen seen_from(Reactor& r) {
  Seen s{};
  r.run_sync([&] {
    s.id = std::this_thread::get_id();
    CPU_ZERO(&s.cpus);
    EXPECT_EQ(::sched_getaffinity(0, sizeof s.cpus, &s.cpus), 0);
  });
  return s;
}

// ReactorPool(2): two reactors, indices 0 and 1, each on its own thread, all running after
// start() and none after stop(). With two CPUs or more each is pinned to one CPU, the
// i-th allowed one.
TEST(ReactorPool, TwoReactors) {
  cpu_set_t allowed;
  ASSERT_EQ(::sched_getaffinity(0, sizeof allowed, &allowed), 0);
  ReactorPool pool(2);
  ASSERT_EQ(pool.size(), 2u);
  for (std::size_t i = 0; i < pool.size(); ++i) {
    EXPECT_EQ(pool.at(i).index(), i);
    EXPECT_FALSE(pool.at(i).running());
  }
  auto ok = pool.start();
  ASSERT_TRUE(ok) << ok.error();
  EXPECT_TRUE(pool.start());  // twice is harmless
  const Seen s0 = seen_from(pool.at(0)), s1 = seen_from(pool.at(1));
  EXPECT_TRUE(pool.at(0).running());
  EXPECT_TRUE(pool.at(1).running());
  EXPECT_NE(s0.id, s1.id);
  EXPECT_NE(s0.id, std::this_thread::get_id());
  if (CPU_COUNT(&allowed) >= 2) {
    EXPECT_EQ(CPU_COUNT(&s0.cpus), 1);
    EXPECT_EQ(CPU_COUNT(&s1.cpus), 1);
    EXPECT_TRUE(CPU_ISSET(nth_allowed_cpu(allowed, 0), &s0.cpus));
    EXPECT_TRUE(CPU_ISSET(nth_allowed_cpu(allowed, 1), &s1.cpus));
  }
  pool.stop();
  EXPECT_FALSE(pool.at(0).running());
  EXPECT_FALSE(pool.at(1).running());
  EXPECT_FALSE(pool.at(0).post([] {}));
}

// ReactorPool(0): one reactor per CPU of the affinity mask, all of which run tasks.
TEST(ReactorPool, OnePerAllowedCpu) {
  cpu_set_t allowed;
  ASSERT_EQ(::sched_getaffinity(0, sizeof allowed, &allowed), 0);
  ReactorPool pool(0);
  ASSERT_GE(pool.size(), 1u);
  EXPECT_EQ(pool.size(), static_cast<std::size_t>(CPU_COUNT(&allowed)));
  ASSERT_TRUE(pool.start());
  std::set<std::thread::id> ids;
  for (std::size_t i = 0; i < pool.size(); ++i) ids.insert(seen_from(pool.at(i)).id);
  EXPECT_EQ(ids.size(), pool.size());
  pool.stop();
}

// With a single allowed CPU (taskset -c N), pinning is skipped rather than failing: one
// reactor for ReactorPool(0), and more than one CPU's worth (ReactorPool(3)) still start,
// run tasks and keep to that CPU. Done on a thread of its own, whose mask the reactors'
// threads inherit, so the rest of the binary keeps its CPUs.
TEST(ReactorPool, OneAllowedCpu) {
  std::thread t([] {
    cpu_set_t allowed;
    ASSERT_EQ(::sched_getaffinity(0, sizeof allowed, &allowed), 0);
    const int cpu = nth_allowed_cpu(allowed, CPU_COUNT(&allowed) - 1);
    ASSERT_GE(cpu, 0);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    ASSERT_EQ(::sched_setaffinity(0, sizeof one, &one), 0);

    ReactorPool single(0);
    ASSERT_EQ(single.size(), 1u);
    ASSERT_TRUE(single.start());
    const Seen s = seen_from(single.at(0));
    EXPECT_EQ(CPU_COUNT(&s.cpus), 1);
    EXPECT_TRUE(CPU_ISSET(cpu, &s.cpus));
    single.stop();

    ReactorPool three(3);
    ASSERT_EQ(three.size(), 3u);
    ASSERT_TRUE(three.start());
    for (std::size_t i = 0; i < three.size(); ++i) {
      const Seen si = seen_from(three.at(i));
      EXPECT_NE(si.id, std::this_thread::get_id());
      EXPECT_EQ(CPU_COUNT(&si.cpus), 1);
      EXPECT_TRUE(CPU_ISSET(cpu, &si.cpus));
    }
    three.stop();
  });
  t.join();
}

}  // namespace
}  // namespace splitd::proxy
