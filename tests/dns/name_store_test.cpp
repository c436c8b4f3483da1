// dns::NameStore: learning, expiry with grace, the 8-name and max_entries bounds, LRU
// order, sweep, the state file, and lock-free reads beside a writer (run it under TSan).
#include <gtest/gtest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "decider/decider.hpp"
#include "dns/name_store.hpp"
#include "fakes/interface_fixtures.hpp"

namespace splitd::dns {
namespace {

// Heap allocations made on this thread (the replaced operator new at the end of the file).
thread_local std::size_t allocations = 0;

constexpr std::int64_t kStart = 1'700'000'000;

IpAddress ip(const char* text) { return *IpAddress::parse(text); }

struct Clock {
  std::atomic<std::int64_t> now{kStart};
  std::function<std::int64_t()> fn() {
    return [this] { return now.load(); };
  }
};

NameStore::Options options(Clock& clock, std::size_t max_entries = 1000) {
  NameStore::Options o;
  o.max_entries = max_entries;
  o.clock = clock.fn();
  return o;
}

// The names visit_names() reports, in its order.
std::vector<std::string> visible(const NameStore& store, const IpAddress& a) {
  struct Collect final : decider::NameVisitor {
    std::vector<std::string> out;
    bool operator()(std::string_view n) override {
      out.emplace_back(n);
      return false;
    }
  } c;
  store.visit_names(a, c);
  return c.out;
}

using Names = std::vector<std::string>;

std::string temp_path(const char* name) {
  return ::testing::TempDir() + "/" + name + "-" + std::to_string(::getpid());
}

TEST(NameStore, LearnsAndNormalisesNames) {
  Clock clock;
  NameStore store(options(clock));
  store.learn(ip("192.0.2.1"), Names{"WWW.Example.COM.", "cdn.example.net", "bad name", "", "x..y"}, 60);
  // The most recently learned first; "x..y" has only valid characters and is kept as is.
  EXPECT_EQ(visible(store, ip("192.0.2.1")), (Names{"www.example.com", "cdn.example.net", "x..y"}));
  // An IPv4-mapped IPv6 address is the IPv4 one, for learning and for reading.
  EXPECT_EQ(visible(store, ip("::ffff:192.0.2.1")).size(), 3u);
  store.learn(ip("::ffff:192.0.2.2"), Names{"b.example"}, 60);
  EXPECT_EQ(visible(store, ip("192.0.2.2")), (Names{"b.example"}));
  EXPECT_TRUE(visible(store, ip("192.0.2.3")).empty());
  EXPECT_EQ(store.size(), 2u);
  EXPECT_EQ(store.names(), 4u);
  // Nothing valid: nothing learned.
  store.learn(ip("192.0.2.9"), Names{"sp ace", std::string(254, 'a')}, 60);
  EXPECT_EQ(store.size(), 2u);
}

TEST(NameStore, VisitorCanStop) {
  Clock clock;
  NameStore store(options(clock));
  store.learn(ip("2001:db8::1"), Names{"a.example", "b.example", "c.example"}, 60);
  struct First final : decider::NameVisitor {
    int calls = 0;
    bool operator()(std::string_view) override { return ++calls == 2; }
  } first;
  store.visit_names(ip("2001:db8::1"), first);
  EXPECT_EQ(first.calls, 2);
}

TEST(NameStore, KeepsTheEightMostRecentNames) {
  Clock clock;
  NameStore store(options(clock));
  for (int i = 0; i < 6; ++i) store.learn(ip("192.0.2.1"), Names{"n" + std::to_string(i) + ".example"}, 60);
  store.learn(ip("192.0.2.1"), Names{"a.example", "b.example", "n0.example"}, 60);
  // n0 learned again moves to the front with this answer; eight names fit.
  EXPECT_EQ(visible(store, ip("192.0.2.1")),
            (Names{"a.example", "b.example", "n0.example", "n5.example", "n4.example", "n3.example",
                   "n2.example", "n1.example"}));
  store.learn(ip("192.0.2.1"), Names{"c.example"}, 60);
  const auto names = visible(store, ip("192.0.2.1"));
  ASSERT_EQ(names.size(), 8u);
  EXPECT_EQ(names.front(), "c.example");
  EXPECT_EQ(names.back(), "n2.example");
  // Ten names in one answer: the first eight.
  Names ten;
  for (int i = 0; i < 10; ++i) ten.push_back("t" + std::to_string(i) + ".example");
  store.learn(ip("192.0.2.2"), ten, 60);
  EXPECT_EQ(visible(store, ip("192.0.2.2")), Names(ten.begin(), ten.begin() + 8));
}

TEST(NameStore, NamesExpireAfterTtlFloorAndGrace) {
  Clock clock;
  NameStore store(options(clock));  // ttl_floor 30 s, grace 600 s
  store.learn(ip("192.0.2.1"), Names{"short.example"}, 5);      // counts as 30
  store.learn(ip("192.0.2.1"), Names{"long.example"}, 3600);
  auto e = store.find(ip("192.0.2.1"));
  ASSERT_TRUE(e);
  EXPECT_EQ(e->expires_at, kStart + 3600);
  EXPECT_EQ(e->source, Source::kDns);
  clock.now = kStart + 30 + 600;  // the last second of short's grace
  EXPECT_EQ(visible(store, ip("192.0.2.1")), (Names{"long.example", "short.example"}));
  clock.now = kStart + 30 + 601;
  EXPECT_EQ(visible(store, ip("192.0.2.1")), (Names{"long.example"}));
  EXPECT_EQ(store.find(ip("192.0.2.1"))->names, (Names{"long.example"}));
  // Learned again: refreshed from now.
  store.learn(ip("192.0.2.1"), Names{"short.example"}, 5000);
  clock.now = kStart + 3600 + 600 + 1;
  EXPECT_EQ(visible(store, ip("192.0.2.1")), (Names{"short.example"}));
  clock.now = kStart + 631 + 5000 + 601;
  EXPECT_TRUE(visible(store, ip("192.0.2.1")).empty());
  EXPECT_FALSE(store.find(ip("192.0.2.1")));
  EXPECT_TRUE(store.list().empty());
  EXPECT_EQ(store.size(), 1u);  // held until a sweep or a learn drops it
  store.sweep();
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(store.names(), 0u);
}

TEST(NameStore, ALongerEarlierTtlIsKept) {
  Clock clock;
  NameStore store(options(clock));
  store.learn(ip("192.0.2.1"), Names{"a.example"}, 3600);
  store.learn(ip("192.0.2.1"), Names{"a.example"}, 60);
  EXPECT_EQ(store.find(ip("192.0.2.1"))->expires_at, kStart + 3600);
}

TEST(NameStore, SweepDropsExpiredNamesAndEntries) {
  Clock clock;
  NameStore store(options(clock));
  store.learn(ip("192.0.2.1"), Names{"old.example"}, 60);
  store.learn(ip("192.0.2.2"), Names{"old2.example"}, 60);
  clock.now = kStart + 100;
  store.learn(ip("192.0.2.1"), Names{"new.example"}, 3600);
  store.learn(ip("192.0.2.3"), Names{"c.example"}, 3600);
  clock.now = kStart + 60 + 601;
  const std::size_t before = store.memory_bytes();
  store.sweep();
  EXPECT_EQ(store.size(), 2u);
  EXPECT_EQ(store.names(), 2u);
  EXPECT_LT(store.memory_bytes(), before);
  EXPECT_EQ(visible(store, ip("192.0.2.1")), (Names{"new.example"}));
  // The sweep kept the LRU order: 192.0.2.3 was learned last.
  const auto all = store.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].ip, ip("192.0.2.3"));
  EXPECT_EQ(all[1].ip, ip("192.0.2.1"));
}

TEST(NameStore, LearnDropsExpiredEntriesLazily) {
  Clock clock;
  NameStore store(options(clock));
  store.learn(ip("192.0.2.1"), Names{"a.example"}, 60);
  store.learn(ip("192.0.2.2"), Names{"b.example"}, 60);
  clock.now = kStart + 60 + 601;
  store.learn(ip("192.0.2.3"), Names{"c.example"}, 60);
  EXPECT_EQ(store.size(), 1u);
}

TEST(NameStore, EvictsTheLeastRecentlyLearned) {
  Clock clock;
  NameStore store(options(clock, 3));
  store.learn(ip("192.0.2.1"), Names{"a.example"}, 60);
  store.learn(ip("192.0.2.2"), Names{"b.example"}, 60);
  store.learn(ip("192.0.2.3"), Names{"c.example"}, 60);
  store.learn(ip("192.0.2.1"), Names{"a2.example"}, 60);  // to the front
  store.learn(ip("2001:db8::4"), Names{"d.example"}, 60);
  EXPECT_EQ(store.size(), 3u);
  EXPECT_FALSE(store.find(ip("192.0.2.2")));
  EXPECT_TRUE(visible(store, ip("192.0.2.2")).empty());
  const auto all = store.list();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].ip, ip("2001:db8::4"));
  EXPECT_EQ(all[1].ip, ip("192.0.2.1"));
  EXPECT_EQ(all[1].names, (Names{"a2.example", "a.example"}));
  EXPECT_EQ(all[2].ip, ip("192.0.2.3"));
}

TEST(NameStore, ManyEntriesAndClear) {
  Clock clock;
  NameStore store(options(clock, 5000));
  const std::size_t empty = store.memory_bytes();
  for (std::uint32_t i = 0; i < 10000; ++i) {
    store.learn(IpAddress::v4(0x0a000000 + i), Names{"h" + std::to_string(i) + ".example"}, 60);
  }
  EXPECT_EQ(store.size(), 5000u);
  for (std::uint32_t i = 0; i < 10000; i += 97) {
    const auto names = visible(store, IpAddress::v4(0x0a000000 + i));
    if (i < 5000) {
      EXPECT_TRUE(names.empty()) << i;
    } else {
      EXPECT_EQ(names, (Names{"h" + std::to_string(i) + ".example"})) << i;
    }
  }
  const std::size_t full = store.memory_bytes();
  EXPECT_GT(full, empty + 5000 * 40);
  EXPECT_LT(full, empty + 5000 * 200);  // a one-name entry costs well under 200 bytes
  store.clear();
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(store.memory_bytes(), empty);
  EXPECT_TRUE(visible(store, IpAddress::v4(0x0a000000 + 9999)).empty());
  store.learn(ip("192.0.2.1"), Names{"a.example"}, 60);
  EXPECT_EQ(visible(store, ip("192.0.2.1")), (Names{"a.example"}));
}

TEST(NameStore, SaveAndLoadKeepNamesExpiriesAndOrder) {
  Clock clock;
  const std::string path = temp_path("names-roundtrip");
  {
    NameStore store(options(clock));
    store.learn(ip("192.0.2.1"), Names{"a.example", "b.example"}, 100);
    store.learn(ip("2001:db8::1"), Names{"v6.example"}, 200);
    clock.now = kStart + 10;
    store.learn(ip("192.0.2.1"), Names{"c.example"}, 3000);
    store.learn(ip("192.0.2.2"), Names{"gone.example"}, 30);
    clock.now = kStart + 30 + 600 + 1 + 10;  // gone.example is past its grace
    const auto saved = store.save(path);
    ASSERT_TRUE(saved) << saved.error();
    EXPECT_NE(::access((path + ".tmp").c_str(), F_OK), 0);
  }
  NameStore loaded(options(clock));
  const auto n = loaded.load(path);
  ASSERT_TRUE(n) << n.error();
  EXPECT_EQ(*n, 3u);  // lines: 2001:db8::1, 192.0.2.1's two expiries
  EXPECT_EQ(loaded.skipped_lines(), 0u);
  const auto all = loaded.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].ip, ip("192.0.2.1"));
  EXPECT_EQ(all[0].names, (Names{"c.example", "a.example", "b.example"}));
  EXPECT_EQ(all[0].expires_at, kStart + 10 + 3000);
  EXPECT_EQ(all[0].source, Source::kLoaded);
  EXPECT_EQ(all[1].ip, ip("2001:db8::1"));
  EXPECT_EQ(all[1].expires_at, kStart + 200);
  EXPECT_STREQ(to_string(all[1].source), "state");
  EXPECT_STREQ(to_string(Source::kDns), "dns");
  // Each name kept its own expiry: a and b go before c.
  clock.now = kStart + 100 + 601;
  EXPECT_EQ(visible(loaded, ip("192.0.2.1")), (Names{"c.example"}));
  ::unlink(path.c_str());
}

TEST(NameStore, LoadSkipsMalformedLines) {
  Clock clock;
  const std::string path = temp_path("names-malformed");
  {
    std::ofstream out(path);
    out << "splitd-names 1\n"
        << "192.0.2.1 " << kStart + 60 << " ok.example also.example\n"
        << "192.0.2.2 " << kStart + 60 << "\n"                       // no name
        << "not-an-ip " << kStart + 60 << " x.example\n"
        << "192.0.2.3 soon x.example\n"                              // no number
        << "192.0.2.4 " << kStart + 60 << " bad/name.example\n"
        << "192.0.2.5 " << kStart + 60 << "  double.space\n"
        << "192.0.2.6 " << kStart + 60 << " " << std::string(300, 'a') << "\n"
        << "\n"
        << "192.0.2.7 " << kStart - 1000 << " stale.example\n"     // past its grace: dropped
        << "::ffff:192.0.2.8 " << kStart + 60 << " Mapped.Example. esc\\032ape.example\n"
        << "192.0.2.9 " << kStart + 60 << " trailing-garbage\\";
  }
  NameStore store(options(clock));
  const auto n = store.load(path);
  ASSERT_TRUE(n) << n.error();
  EXPECT_EQ(*n, 2u);
  EXPECT_EQ(store.skipped_lines(), 7u);
  EXPECT_EQ(visible(store, ip("192.0.2.1")), (Names{"ok.example", "also.example"}));
  EXPECT_EQ(visible(store, ip("192.0.2.8")), (Names{"mapped.example", "esc\\032ape.example"}));
  ::unlink(path.c_str());
}

TEST(NameStore, LoadOfAMissingOrForeignFile) {
  Clock clock;
  NameStore store(options(clock));
  const auto missing = store.load(temp_path("names-missing"));
  ASSERT_TRUE(missing);
  EXPECT_EQ(*missing, 0u);
  const std::string path = temp_path("names-foreign");
  {
    std::ofstream out(path);
    out << "{\"json\": true}\n192.0.2.1 " << kStart + 60 << " a.example\n";
  }
  const auto foreign = store.load(path);
  ASSERT_FALSE(foreign);
  EXPECT_NE(foreign.error().find(":1:"), std::string::npos) << foreign.error();
  EXPECT_EQ(store.size(), 0u);
  ::unlink(path.c_str());
  EXPECT_FALSE(store.save("/nonexistent-dir/names"));
}

TEST(NameStore, ValidNames) {
  EXPECT_TRUE(NameStore::is_valid_name("a"));
  EXPECT_TRUE(NameStore::is_valid_name("xn--bcher-kva.example"));
  EXPECT_TRUE(NameStore::is_valid_name("_sip._tcp.example"));
  EXPECT_TRUE(NameStore::is_valid_name("a\\.b.example"));
  EXPECT_TRUE(NameStore::is_valid_name("\\255x"));
  EXPECT_TRUE(NameStore::is_valid_name(std::string(253, 'a')));
  EXPECT_FALSE(NameStore::is_valid_name(std::string(254, 'a')));
  EXPECT_FALSE(NameStore::is_valid_name(""));
  EXPECT_FALSE(NameStore::is_valid_name("Upper.example"));
  EXPECT_FALSE(NameStore::is_valid_name("a b"));
  EXPECT_FALSE(NameStore::is_valid_name("a\\"));
  EXPECT_FALSE(NameStore::is_valid_name("a\\ b"));
  EXPECT_FALSE(NameStore::is_valid_name("a\\12"));
  EXPECT_FALSE(NameStore::is_valid_name("caf\xc3\xa9.example"));
}

// The decider's read path: visiting names allocates nothing.
TEST(NameStore, VisitDoesNotAllocate) {
  Clock clock;
  NameStore store(options(clock));
  store.learn(ip("192.0.2.1"), Names{"a-name-longer-than-any-small-string.example", "b.example"}, 60);
  struct Count final : decider::NameVisitor {
    std::size_t chars = 0;
    bool operator()(std::string_view n) override {
      chars += n.size();
      return false;
    }
  } count;
  const std::size_t before = allocations;
  store.visit_names(ip("192.0.2.1"), count);
  store.visit_names(ip("192.0.2.99"), count);
  EXPECT_EQ(allocations - before, 0u);
  EXPECT_EQ(count.chars, 52u);
}

// Two threads decide flows through the decider while a writer learns, evicts, sweeps and
// clears. Every decision must name the flow's own IP's name (a torn or recycled read would
// show another), and TSan must stay quiet.
TEST(NameStore, DecideWhileLearningEvictingAndClearing) {
  Clock clock;
  NameStore store(options(clock, 300));
  fakes::FakeInterfaceSource source(fakes::lab_host_state(true));
  decider::RuleSpec spec;
  spec.domains = {"*.x.example"};
  decider::RuleDecider d(source, decider::build_rules(spec), &store);
  constexpr std::uint32_t kIps = 512;
  const auto addr = [](std::uint32_t i) { return IpAddress::v4(0xc6336400 + i); };  // 198.51.100.0/23
  const auto name = [](std::uint32_t i) { return "h" + std::to_string(i) + ".x.example"; };
  std::atomic<bool> stop{false};
  std::atomic<int> wrong{0};
  std::atomic<long> matched{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, t] {
      std::uint32_t i = static_cast<std::uint32_t>(t) * 7;
      while (!stop.load(std::memory_order_relaxed)) {
        i = (i + 13) % kIps;
        decider::SessionInfo s;
        s.dst = addr(i);
        const decider::Route r = d.decide(s);
        if (r.matched == decider::MatchKind::kNone) {
          if (r.rule != "default") ++wrong;
          continue;
        }
        ++matched;
        const std::string want = "domain *.x.example (" + name(i);
        if (r.rule.rfind(want, 0) != 0 || (r.rule[want.size()] != ')' && r.rule[want.size()] != ';')) {
          ++wrong;
        }
      }
    });
  }
  // At least 40 rounds, and on until the readers have decided a good number of flows that
  // matched (on a loaded machine they may not get a core at all during 40 rounds).
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (int round = 0; round < 40 || (matched.load() < 2000 && std::chrono::steady_clock::now() < give_up);
       ++round) {
    for (std::uint32_t i = 0; i < kIps; ++i) {
      // "a..." sorts before "h...": the alias must never win, it matches no rule.
      store.learn(addr(i), Names{name(i), "alias" + std::to_string(i) + ".other"}, 1);
    }
    clock.now += 700;  // everything past its grace
    if (round % 4 == 1) store.sweep();
    if (round % 4 == 3) store.clear();
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(matched.load(), 0);
}

}  // namespace
}  // namespace splitd::dns

// Counting replacements of the global allocation functions (see `allocations`).
void* operator new(std::size_t size) {
  ++splitd::dns::allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
// Out of line: inlined into a delete-expression, free() would make GCC report a
// mismatched new/delete pair it cannot see is a matching replacement.
[[gnu::noinline]] void release(void* p) noexcept { std::free(p); }
void operator delete(void* p) noexcept { release(p); }
void operator delete(void* p, std::size_t) noexcept { release(p); }
