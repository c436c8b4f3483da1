// One decision against 100,000 CIDR rules and 100,000 domain rules, and the cost of
// building and swapping such a rule set; and one decision against 100,000 domain rules
// with the real dns::NameStore holding 100,000 learned IPs. See bench/README.md.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "decider/decider.hpp"
#include "dns/name_store.hpp"
#include "fakes/interface_fixtures.hpp"

namespace splitd::decider {
namespace {

constexpr int kIpRules = 100'000;
constexpr int kDomainRules = 100'000;
constexpr int kFlows = 4096;

std::string label(std::mt19937_64& rng) {
  static constexpr char kChars[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string s(4 + rng() % 8, 'a');
  for (char& c : s) c = kChars[rng() % (sizeof kChars - 1)];
  return s;
}

IpAddress random_v4(std::mt19937_64& rng) { return IpAddress::v4(static_cast<std::uint32_t>(rng())); }

IpAddress random_v6(std::mt19937_64& rng) {
  std::array<std::uint8_t, 16> b{};
  for (auto& x : b) x = static_cast<std::uint8_t>(rng());
  b[0] = static_cast<std::uint8_t>(0x20 | (b[0] & 0x1f));  // 2000::/3, global unicast
  return *IpAddress::from_bytes(b);
}

// Half IPv4 (/8–/32), half IPv6 (/16–/128, mostly /32–/64), and the domains the flows'
// names are drawn from: half exact names, half "*." suffixes.
struct World {
  RuleSpec spec;
  std::vector<std::string> exact_names;   // names of exact rules
  std::vector<std::string> wild_suffixes; // suffixes of "*." rules
  World() {
    std::mt19937_64 rng(1);
    spec.mode = Mode::kExclude;
    spec.ips.reserve(kIpRules);
    for (int i = 0; i < kIpRules; ++i) {
      if (i % 2 == 0) {
        spec.ips.emplace_back(random_v4(rng), static_cast<std::uint8_t>(8 + rng() % 25));
      } else {
        const unsigned len = rng() % 8 == 0 ? 16 + rng() % 113 : 32 + rng() % 33;
        spec.ips.emplace_back(random_v6(rng), static_cast<std::uint8_t>(len));
      }
    }
    spec.domains.reserve(kDomainRules);
    for (int i = 0; i < kDomainRules; ++i) {
      std::string d = label(rng) + "." + label(rng) + (i % 3 == 0 ? ".net" : ".com");
      if (i % 2 == 0) {
        exact_names.push_back(d);
        spec.domains.push_back(std::move(d));
      } else {
        wild_suffixes.push_back(d);
        spec.domains.push_back("*." + d);
      }
    }
    spec.apps = {{"Slack", "user.slice/*/app.slice/app-slack-*.scope", "slack", "/usr/lib/slack/slack", "", "", "", {}}};
  }
};

const World& world() {
  static const World w;
  return w;
}

// 1–2 names per destination, drawn from the address: a third match an exact rule, a
// third a "*." rule (one or two labels below it), a third nothing. The names are made once
// into 4096 buckets (by address hash), so that the fake costs what a store's lookup costs
// and not what making strings costs.
class FakeNames final : public IpNames {
 public:
  FakeNames() {
    const World& w = world();
    buckets_.resize(kBuckets);
    for (std::uint64_t b = 0; b < kBuckets; ++b) {
      const std::uint64_t h = (b * 0x9e3779b97f4a7c15ull) ^ (b << 7);
      auto& out = buckets_[b];
      const auto one = [&](std::uint64_t k) {
        switch (k % 3) {
          case 0: out.push_back(w.exact_names[(k / 3) % w.exact_names.size()]); break;
          case 1: out.push_back((k & 8 ? "cdn.www." : "www.") + w.wild_suffixes[(k / 3) % w.wild_suffixes.size()]); break;
          default: out.push_back("unmatched" + std::to_string(k % 1000) + ".example.org");
        }
      };
      one(h);
      if (h & 16) one(h >> 20);
    }
  }
  void visit_names(const IpAddress& a, NameVisitor& visitor) const override {
    std::uint64_t h = 1469598103934665603ull;
    for (auto x : a.bytes()) h = (h ^ x) * 1099511628211ull;
    for (const std::string& n : buckets_[h % kBuckets]) {
      if (visitor(n)) return;
    }
  }

 private:
  static constexpr std::uint64_t kBuckets = 4096;
  std::vector<std::vector<std::string>> buckets_;
};

struct Fixture {
  fakes::FakeInterfaceSource source{fakes::lab_host_state(true)};
  FakeNames names;
  RuleDecider decider{source, build_rules(world().spec), &names};
  std::vector<SessionInfo> flows;
  Fixture() {
    std::mt19937_64 rng(2);
    const World& w = world();
    for (int i = 0; i < kFlows; ++i) {
      SessionInfo s;
      s.dst_port = 443;
      switch (i % 4) {
        case 0: s.dst = random_v4(rng); break;
        case 1: s.dst = random_v6(rng); break;
        // Inside a rule block (often of several nested ones).
        default: s.dst = w.spec.ips[rng() % w.spec.ips.size()].network(); break;
      }
      flows.push_back(s);
    }
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

// Mean time per decision (benchmark's own figure).
void BM_Decide(benchmark::State& state) {
  Fixture& f = fixture();
  std::size_t i = 0;
  for (auto _ : state) {
    Route r = f.decider.decide(f.flows[i++ % f.flows.size()]);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_Decide);

// The rule lookup alone, without IpNames (IP trie only).
void BM_MatchIpOnly(benchmark::State& state) {
  Fixture& f = fixture();
  const auto rules = f.decider.rules();
  std::size_t i = 0;
  for (auto _ : state) {
    RuleMatch m = rules->match(f.flows[i++ % f.flows.size()], nullptr);
    benchmark::DoNotOptimize(m);
  }
}
BENCHMARK(BM_MatchIpOnly);

// Each decision timed on its own: p50, p90, p99 in ns as counters.
void BM_DecideLatency(benchmark::State& state) {
  Fixture& f = fixture();
  constexpr std::size_t kSamples = 200'000;
  std::vector<std::int64_t> ns(kSamples);
  for (auto _ : state) {
    for (std::size_t i = 0; i < kSamples; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      Route r = f.decider.decide(f.flows[i % f.flows.size()]);
      benchmark::DoNotOptimize(r);
      ns[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = static_cast<double>(ns[kSamples / 2]);
  state.counters["p90_ns"] = static_cast<double>(ns[kSamples * 9 / 10]);
  state.counters["p99_ns"] = static_cast<double>(ns[kSamples * 99 / 100]);
}
BENCHMARK(BM_DecideLatency)->Iterations(1)->Unit(benchmark::kMillisecond);

// A reload: index 100,000 CIDRs and 100,000 domains, then swap the snapshot.
void BM_BuildAndSwap(benchmark::State& state) {
  Fixture& f = fixture();
  for (auto _ : state) {
    auto rules = build_rules(world().spec);
    f.decider.set_rules(std::move(rules));
  }
}
BENCHMARK(BM_BuildAndSwap)->Unit(benchmark::kMillisecond);

// The swap alone, between two prebuilt snapshots.
void BM_SetRules(benchmark::State& state) {
  Fixture& f = fixture();
  const auto a = build_rules(world().spec);
  const auto b = f.decider.rules();
  bool flip = false;
  for (auto _ : state) {
    f.decider.set_rules((flip = !flip) ? a : b);
  }
}
BENCHMARK(BM_SetRules);

// ---- Domain rules against the real learned-names store ----
//
// 100,000 domain rules, "*.dN.example" (even N) and "www.dN.example" (odd N), and a
// dns::NameStore holding 100,000 learned IPs (half IPv4, half IPv6) with 1-3 names each:
// "api.dK.example" (a "*." rule when K is even), "www.dK.example" (an exact rule when K is
// odd, none when even) and "hJ.unmatched.test" (no rule). Flows go to learned IPs.
constexpr int kLearnedIps = 100'000;
constexpr int kStoreDomainRules = 100'000;

struct StoreFixture {
  fakes::FakeInterfaceSource source{fakes::lab_host_state(true)};
  dns::NameStore store;
  std::unique_ptr<RuleDecider> decider;
  std::vector<SessionInfo> flows;
  StoreFixture() {
    RuleSpec spec;
    spec.mode = Mode::kExclude;
    spec.domains.reserve(kStoreDomainRules);
    for (int i = 0; i < kStoreDomainRules; ++i) {
      spec.domains.push_back((i % 2 == 0 ? "*.d" : "www.d") + std::to_string(i) + ".example");
    }
    decider = std::make_unique<RuleDecider>(source, build_rules(spec), &store);
    std::mt19937_64 rng(3);
    std::vector<IpAddress> ips;
    ips.reserve(kLearnedIps);
    for (int i = 0; i < kLearnedIps; ++i) {
      const IpAddress a = i % 2 == 0 ? random_v4(rng) : random_v6(rng);
      std::vector<std::string> names;
      const int count = 1 + static_cast<int>(rng() % 3);
      for (int n = 0; n < count; ++n) {
        const std::uint64_t k = rng() % (2 * kStoreDomainRules);  // half of them match no rule
        switch (rng() % 3) {
          case 0: names.push_back("api.d" + std::to_string(k) + ".example"); break;
          case 1: names.push_back("www.d" + std::to_string(k) + ".example"); break;
          default: names.push_back("h" + std::to_string(k) + ".unmatched.test");
        }
      }
      store.learn(a, names, 3600);
      ips.push_back(a);
    }
    for (int i = 0; i < kFlows; ++i) {
      SessionInfo s;
      s.dst = ips[rng() % ips.size()];
      s.dst_port = 443;
      flows.push_back(s);
    }
  }
};

StoreFixture& store_fixture() {
  static StoreFixture f;
  return f;
}

// Mean time per decision; with 2 threads, both proxy threads read the store at once.
void BM_DecideLearned(benchmark::State& state) {
  StoreFixture& f = store_fixture();
  std::size_t i = static_cast<std::size_t>(state.thread_index()) * 977;
  std::int64_t domain = 0;
  for (auto _ : state) {
    Route r = f.decider->decide(f.flows[i++ % f.flows.size()]);
    domain += r.matched == MatchKind::kDomain;
    benchmark::DoNotOptimize(r);
  }
  state.counters["domain_share"] =
      benchmark::Counter(static_cast<double>(domain), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_DecideLearned)->Threads(1)->Threads(2)->UseRealTime();

// Each decision timed on its own: p50, p90, p99 in ns; and the store's size.
void BM_DecideLearnedLatency(benchmark::State& state) {
  StoreFixture& f = store_fixture();
  constexpr std::size_t kSamples = 200'000;
  std::vector<std::int64_t> ns(kSamples);
  for (auto _ : state) {
    for (std::size_t i = 0; i < kSamples; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      Route r = f.decider->decide(f.flows[i % f.flows.size()]);
      benchmark::DoNotOptimize(r);
      ns[i] = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    }
  }
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = static_cast<double>(ns[kSamples / 2]);
  state.counters["p90_ns"] = static_cast<double>(ns[kSamples * 9 / 10]);
  state.counters["p99_ns"] = static_cast<double>(ns[kSamples * 99 / 100]);
  state.counters["ips"] = static_cast<double>(f.store.size());
  state.counters["names"] = static_cast<double>(f.store.names());
  state.counters["store_MiB"] = static_cast<double>(f.store.memory_bytes()) / (1 << 20);
  state.counters["bytes_per_name"] =
      static_cast<double>(f.store.memory_bytes()) / static_cast<double>(f.store.names());
}
BENCHMARK(BM_DecideLearnedLatency)->Iterations(1)->Unit(benchmark::kMillisecond);

// The store's lookup alone (the names visited, no rule matched).
void BM_StoreVisit(benchmark::State& state) {
  StoreFixture& f = store_fixture();
  struct Count final : NameVisitor {
    std::size_t n = 0;
    bool operator()(std::string_view name) override {
      n += name.size();
      return false;
    }
  } count;
  std::size_t i = 0;
  for (auto _ : state) {
    f.store.visit_names(f.flows[i++ % f.flows.size()].dst, count);
  }
  benchmark::DoNotOptimize(count.n);
}
BENCHMARK(BM_StoreVisit);

}  // namespace
}  // namespace splitd::decider
