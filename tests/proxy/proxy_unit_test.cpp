#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "proxy/session_table.hpp"
#include "proxy/tcp_proxy.hpp"
#include "proxy/udp_proxy.hpp"

namespace splitd::proxy {
namespace {

TEST(UpstreamPortRange, OutsideTheEphemeralRange) {
  using R = std::pair<std::uint16_t, std::uint16_t>;
  EXPECT_EQ(upstream_port_range(32768, 60999), (R{61000, 65535}));  // Linux default
  EXPECT_EQ(upstream_port_range(32768, 65000), (R{1024, 32767}));   // no room above
  EXPECT_EQ(upstream_port_range(1024, 65535), (R{0, 0}));           // no room at all
  EXPECT_EQ(upstream_port_range(49152, 65535), (R{1024, 49151}));   // IANA-style range
}

SessionSpec spec(decider::Protocol p, const char* client, std::uint16_t cport, const char* dst,
                 decider::RouteKind kind = decider::RouteKind::kTunnel,
                 decider::MatchKind match = decider::MatchKind::kNone) {
  SessionSpec s;
  s.protocol = p;
  s.client = {*IpAddress::parse(client), cport};
  s.destination = {*IpAddress::parse(dst), 443};
  s.route.kind = kind;
  s.route.interface = kind == decider::RouteKind::kBlock ? "" : "tun0";
  s.route.rule = "default";
  s.route.matched = match;
  return s;
}

TEST(SessionTable, CountsListsAndKills) {
  SessionTable t;
  WorkerCounters& w = t.register_worker();
  std::vector<std::uint64_t> killed;
  auto owner = std::make_shared<SessionOwner>([&](std::uint64_t id) { killed.push_back(id); });
  auto a = t.add(spec(decider::Protocol::kTcp, "198.18.2.2", 40000, "198.51.100.10"), w, nullptr);
  auto b = t.add(spec(decider::Protocol::kTcp, "2001:db8:ff:2::2", 40001, "2001:db8:1::10",
                      decider::RouteKind::kDirect, decider::MatchKind::kIp),
                 w, owner);
  a->app = {};
  a->add_sent(100);
  b->add_received(50, 2);
  auto list = t.list();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].id, a->id);
  EXPECT_EQ(list[0].destination.to_string(), "198.51.100.10:443");
  EXPECT_EQ(list[1].client.to_string(), "[2001:db8:ff:2::2]:40001");
  EXPECT_EQ(list[1].route.matched, decider::MatchKind::kIp);
  EXPECT_EQ(list[0].bytes_sent, 100u);
  EXPECT_EQ(list[1].packets_received, 2u);
  EXPECT_TRUE(t.kill(b->id));
  EXPECT_EQ(killed, std::vector<std::uint64_t>{b->id});
  EXPECT_FALSE(t.kill(a->id));  // no owner
  EXPECT_FALSE(t.kill(12345));  // unknown id
  t.remove(*a);
  const auto totals = t.totals();
  EXPECT_EQ(totals.active, 1u);
  EXPECT_EQ(totals.total, 2u);
  EXPECT_EQ(totals.bytes_sent, 100u);     // ended sessions count
  EXPECT_EQ(totals.bytes_received, 50u);  // live ones too
  owner->detach();
  EXPECT_FALSE(t.kill(b->id));  // the worker is gone: nothing to call
}

TEST(SessionTable, CountersPerWorkerSummed) {
  SessionTable t;
  WorkerCounters& w1 = t.register_worker();
  WorkerCounters& w2 = t.register_worker();
  auto a = t.add(spec(decider::Protocol::kTcp, "198.18.2.2", 1, "203.0.113.10"), w1, nullptr);
  auto b = t.add(spec(decider::Protocol::kTcp, "198.18.2.2", 2, "203.0.113.10", decider::RouteKind::kDirect,
                      decider::MatchKind::kIp),
                 w2, nullptr);
  auto c = t.add(spec(decider::Protocol::kUdp, "198.18.2.2", 3, "203.0.113.10", decider::RouteKind::kBlock), w2,
                 nullptr);
  w1.add(decider::Protocol::kTcp, WorkerCounters::kRefused);
  w2.failure(decider::Protocol::kTcp, FailReason::kConnectRefused);
  a->set_packets(10, 4);
  a->set_packets(12, 5);  // running totals from TCP_INFO: only the difference counts
  b->add_sent(1000);
  t.remove(*b);
  const CounterTotals k = t.counters();
  EXPECT_EQ(k.tcp.started, 2u);
  EXPECT_EQ(k.tcp.ended, 1u);
  EXPECT_EQ(k.active_tcp, 1u);
  EXPECT_EQ(k.active_udp, 1u);
  EXPECT_EQ(k.udp.blocked, 1u);
  EXPECT_EQ(k.tcp.refused, 1u);
  EXPECT_EQ(k.tcp.decisions[0][0], 1u);  // tunnel, default
  EXPECT_EQ(k.tcp.decisions[1][3], 1u);  // direct, ip
  EXPECT_EQ(k.udp.decisions[2][0], 1u);  // block, default
  EXPECT_EQ(k.tcp.failures[static_cast<std::size_t>(FailReason::kConnectRefused)], 1u);
  EXPECT_EQ(k.tcp.failed(), 1u);
  EXPECT_EQ(k.tcp.packets_sent, 12u);
  EXPECT_EQ(k.tcp.packets_received, 5u);
  EXPECT_EQ(k.tcp.bytes_sent, 1000u);
  EXPECT_EQ(to_string(FailReason::kUnreachable), std::string("unreachable"));
  (void)c;
}

// The race of issue "kill through an owner handle": kills from other threads (the API)
// while the worker detaches and goes away. Before the owner handle, UDP's kill hook held
// a raw `this`, called after the table dropped its lock: a use-after-free once the
// worker was destroyed. Meaningful under TSan and ASan (the suite runs under both).
TEST(SessionTable, KillsRacingAWorkerThatGoesAway) {
  SessionTable t;
  WorkerCounters& w = t.register_worker();
  for (int round = 0; round < 20; ++round) {
    struct FakeWorker {
      std::mutex mu;
      std::vector<std::uint64_t> queue;
    };
    auto worker = std::make_unique<FakeWorker>();
    FakeWorker* raw = worker.get();
    std::atomic<int> posted{0};
    // A post that takes a while (a worker's wake-up): a kill in flight while the worker
    // detaches and is freed is what the owner handle must make safe.
    auto owner = std::make_shared<SessionOwner>([raw, &posted](std::uint64_t id) {
      posted++;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      std::lock_guard lock(raw->mu);
      raw->queue.push_back(id);
    });
    std::vector<std::shared_ptr<Session>> sessions;
    for (int i = 0; i < 20; ++i) {
      sessions.push_back(t.add(spec(decider::Protocol::kUdp, "198.18.2.2", static_cast<std::uint16_t>(i + 1),
                                    "203.0.113.10"),
                               w, owner));
    }
    std::atomic<bool> stop{false};
    std::vector<std::thread> killers;
    for (int k = 0; k < 3; ++k) {
      killers.emplace_back([&] {
        while (!stop.load()) {
          for (const auto& s : sessions) t.kill(s->id);
        }
      });
    }
    while (posted.load() < 3) std::this_thread::yield();
    owner->detach();  // the worker stops ...
    worker.reset();   // ... and is gone while kills keep arriving
    const int after_detach = posted.load();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    stop = true;
    for (auto& k : killers) k.join();
    EXPECT_EQ(posted.load(), after_detach);  // nothing reached the worker after detach()
    for (const auto& s : sessions) EXPECT_FALSE(t.kill(s->id));
    for (const auto& s : sessions) t.remove(*s);
  }
  EXPECT_EQ(t.totals().active, 0u);
}

// Shards by worker: two workers start (and end some of) their flows at once from their
// own threads while a third lists and counts. Meaningful under TSan: the workers share
// no lock and no per-flow atomic, and the readers take each shard's lock in turn.
TEST(SessionTable, WorkersAddConcurrentlyWithUniqueIds) {
  SessionTable t;
  WorkerCounters& w1 = t.register_worker();
  WorkerCounters& w2 = t.register_worker();
  std::vector<std::uint64_t> killed1, killed2;  // written by the test thread only (kill posts)
  auto owner1 = std::make_shared<SessionOwner>([&](std::uint64_t id) { killed1.push_back(id); });
  auto owner2 = std::make_shared<SessionOwner>([&](std::uint64_t id) { killed2.push_back(id); });
  constexpr int kPerWorker = 20000;
  // Every third flow ends at once; the others are kept. The ids of all, in order of start.
  std::vector<std::shared_ptr<Session>> kept1, kept2;
  std::vector<std::uint64_t> ids1, ids2;
  std::atomic<bool> done{false};
  std::atomic<int> reads{0};
  std::atomic<bool> bad_listing{false};
  std::thread reader([&] {
    while (!done.load()) {
      const auto list = t.list();
      for (std::size_t i = 1; i < list.size(); ++i) {
        if (list[i - 1].id >= list[i].id) bad_listing = true;  // sorted, no duplicate
      }
      // Each shard's live counts are read under its lock: consistent, never wrapped below 0.
      const CounterTotals c = t.counters();
      if (c.active_tcp > 2u * kPerWorker || c.active_udp > 2u * kPerWorker) bad_listing = true;
      reads++;
    }
  });
  const auto work = [&t](WorkerCounters& w, const std::shared_ptr<SessionOwner>& owner, const char* client,
                         std::vector<std::shared_ptr<Session>>& kept, std::vector<std::uint64_t>& ids) {
    for (int i = 0; i < kPerWorker; ++i) {
      const auto p = i % 2 == 0 ? decider::Protocol::kTcp : decider::Protocol::kUdp;
      auto s = t.add(spec(p, client, static_cast<std::uint16_t>(i % 60000 + 1), "203.0.113.10"), w, owner);
      ids.push_back(s->id);
      if (i % 3 == 0) {
        t.remove(*s);
      } else {
        kept.push_back(std::move(s));
      }
    }
  };
  std::thread t1(work, std::ref(w1), std::cref(owner1), "198.18.2.1", std::ref(kept1), std::ref(ids1));
  std::thread t2(work, std::ref(w2), std::cref(owner2), "198.18.2.2", std::ref(kept2), std::ref(ids2));
  t1.join();
  t2.join();
  while (reads.load() < 3) std::this_thread::yield();  // some reads overlap the end at least
  done = true;
  reader.join();
  EXPECT_FALSE(bad_listing.load());

  std::set<std::uint64_t> ids;
  for (const auto* worker_ids : {&ids1, &ids2}) {
    std::uint64_t last = 0;
    for (const std::uint64_t id : *worker_ids) {
      EXPECT_GE(id, 1u);
      EXPECT_GT(id, last);  // increasing per worker
      last = id;
      EXPECT_TRUE(ids.insert(id).second) << "id " << id << " given twice";
    }
  }
  EXPECT_EQ(ids.size(), 2u * kPerWorker);

  // Live: i % 3 != 0 of each worker; half of them TCP (even i).
  std::uint64_t live_tcp = 0, live_udp = 0;
  for (int i = 0; i < kPerWorker; ++i) {
    if (i % 3 != 0) ++(i % 2 == 0 ? live_tcp : live_udp);
  }
  const CounterTotals c = t.counters();
  EXPECT_EQ(c.active_tcp, 2 * live_tcp);
  EXPECT_EQ(c.active_udp, 2 * live_udp);
  EXPECT_EQ(c.tcp.started + c.udp.started, 2u * kPerWorker);
  EXPECT_EQ(c.tcp.ended + c.udp.ended, 2u * (kPerWorker - live_tcp - live_udp));
  const auto list = t.list();
  ASSERT_EQ(list.size(), 2 * (live_tcp + live_udp));
  EXPECT_TRUE(std::is_sorted(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.id < b.id; }));

  // kill() finds a session of either worker and asks that worker.
  const auto a = kept1.front();
  const auto b = kept2.back();
  EXPECT_TRUE(t.kill(a->id));
  EXPECT_TRUE(t.kill(b->id));
  EXPECT_EQ(killed1, std::vector<std::uint64_t>{a->id});
  EXPECT_EQ(killed2, std::vector<std::uint64_t>{b->id});
  EXPECT_FALSE(t.kill(ids2[0]));  // ended

  // remove() takes the session out of its worker's shard, and only that one.
  t.remove(*b);
  EXPECT_FALSE(t.kill(b->id));
  EXPECT_TRUE(t.kill(a->id));
  const CounterTotals after = t.counters();
  EXPECT_EQ(after.active_tcp + after.active_udp, c.active_tcp + c.active_udp - 1);
  const auto b_udp = b->protocol == decider::Protocol::kUdp ? 1u : 0u;
  EXPECT_EQ(after.active_udp, c.active_udp - b_udp);
  EXPECT_EQ(after.active_tcp, c.active_tcp - (1 - b_udp));
  for (const auto* kept : {&kept1, &kept2}) {
    for (const auto& s : *kept) {
      if (s != b) t.remove(*s);
    }
  }
  EXPECT_EQ(t.totals().active, 0u);
  EXPECT_EQ(t.totals().total, 2u * kPerWorker);
  EXPECT_TRUE(t.list().empty());
}

TEST(SessionTable, IdsStartAtOneAndIncreasePerWorker) {
  SessionTable t;
  WorkerCounters& w1 = t.register_worker();
  WorkerCounters& w2 = t.register_worker();
  auto first = t.add(spec(decider::Protocol::kTcp, "198.18.2.2", 1, "203.0.113.10"), w1, nullptr);
  EXPECT_EQ(first->id, 1u);
  auto other = t.add(spec(decider::Protocol::kUdp, "198.18.2.2", 2, "203.0.113.10"), w2, nullptr);
  EXPECT_GT(other->id, first->id);
  // Past a block of ids (whatever its size below 5000): still unique, still increasing.
  std::vector<std::shared_ptr<Session>> sessions{first, other};
  std::uint64_t last1 = first->id, last2 = other->id;
  for (int i = 0; i < 5000; ++i) {
    WorkerCounters& w = i % 3 == 0 ? w2 : w1;
    auto s = t.add(spec(decider::Protocol::kTcp, "198.18.2.2", 3, "203.0.113.10"), w, nullptr);
    std::uint64_t& last = &w == &w1 ? last1 : last2;
    EXPECT_GT(s->id, last);
    last = s->id;
    sessions.push_back(std::move(s));
  }
  std::set<std::uint64_t> ids;
  for (const auto& s : sessions) ids.insert(s->id);
  EXPECT_EQ(ids.size(), sessions.size());
  EXPECT_EQ(t.list().size(), sessions.size());
  for (const auto& s : sessions) t.remove(*s);
  EXPECT_EQ(t.totals().active, 0u);
}

// Counters this table did not register (made elsewhere, or another table's) still work:
// their sessions are listed, killed, counted as active and removed like the others.
TEST(SessionTable, CountersNotRegisteredHereStillWork) {
  SessionTable t, other_table;
  WorkerCounters& mine = t.register_worker();
  WorkerCounters& theirs = other_table.register_worker();
  WorkerCounters loose;
  std::vector<std::uint64_t> killed;
  auto owner = std::make_shared<SessionOwner>([&](std::uint64_t id) { killed.push_back(id); });
  auto a = t.add(spec(decider::Protocol::kTcp, "198.18.2.2", 1, "203.0.113.10"), mine, owner);
  auto b = t.add(spec(decider::Protocol::kUdp, "198.18.2.2", 2, "203.0.113.10"), loose, owner);
  auto c = t.add(spec(decider::Protocol::kTcp, "198.18.2.2", 3, "203.0.113.10"), theirs, owner);
  EXPECT_NE(a->id, b->id);
  EXPECT_NE(b->id, c->id);
  EXPECT_NE(a->id, c->id);
  EXPECT_EQ(t.list().size(), 3u);
  EXPECT_TRUE(other_table.list().empty());  // added to t, whoever's counters
  EXPECT_TRUE(t.kill(b->id));
  EXPECT_TRUE(t.kill(c->id));
  EXPECT_EQ(killed, (std::vector<std::uint64_t>{b->id, c->id}));
  CounterTotals k = t.counters();
  EXPECT_EQ(k.active_tcp, 2u);
  EXPECT_EQ(k.active_udp, 1u);
  EXPECT_EQ(k.tcp.started, 1u);  // only the counters t registered are summed
  t.remove(*b);
  t.remove(*c);
  k = t.counters();
  EXPECT_EQ(k.active_tcp, 1u);
  EXPECT_EQ(k.active_udp, 0u);
  EXPECT_FALSE(t.kill(b->id));
  EXPECT_TRUE(t.kill(a->id));
  ProtocolCounters loose_udp;
  loose.sum_into(decider::Protocol::kUdp, loose_udp);
  EXPECT_EQ(loose_udp.started, 1u);
  EXPECT_EQ(loose_udp.ended, 1u);
  t.remove(*a);
  EXPECT_EQ(t.totals().active, 0u);
}

TEST(KeyedHash, IsSipHash24UnderItsKey) {
  std::array<std::uint8_t, 16> key;
  for (std::size_t i = 0; i < key.size(); ++i) key[i] = static_cast<std::uint8_t>(i);
  const KeyedHash h(key);
  // The SipHash-2-4 paper's test vector for key 00..0f and the empty message.
  EXPECT_EQ(h({}), std::size_t{0x726fdb47dd0e0e31ull});
  const std::array<std::uint8_t, 3> msg{1, 2, 3};
  EXPECT_EQ(h(msg), KeyedHash(key)(msg));
}

TEST(KeyedHash, RandomKeysDiffer) {
  const std::array<std::uint8_t, 19> endpoint{4, 203, 0, 113, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23, 0x28};
  const KeyedHash a, b;
  EXPECT_EQ(a(endpoint), a(endpoint));
  EXPECT_NE(a(endpoint), b(endpoint));  // 2^-64 chance of a false failure
}

}  // namespace
}  // namespace splitd::proxy
