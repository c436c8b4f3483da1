#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/expected.hpp"
#include "common/ip_address.hpp"
#include "decider/decider.hpp"

namespace splitd::dns {

// Where a store entry was learned from.
enum class Source : std::uint8_t { kDns, kLoaded };
const char* to_string(Source s);  // "dns", "state"

struct NameStoreOptions {
  std::size_t max_entries = 200000;      // IPs; the least recently learned is evicted
  std::chrono::seconds ttl_floor{30};    // a shorter DNS TTL counts as this
  std::chrono::seconds grace{600};       // visible this long after the expiry
  std::function<std::int64_t()> clock;   // unix seconds; empty = system_clock
};

// The learned ip -> names map: which names each destination IP was returned for in a
// captured DNS answer, read by the decider on every new flow (decider::IpNames).
// Owned by the daemon; the DNS forwarder learns into it, the control thread clears, lists,
// saves and loads it.
//
// Threads: visit_names() from any number of threads at once takes no lock and allocates
// nothing; it is wait-free (a fixed number of steps: two atomic increments, one lookup).
// It uses Left-Right (Ramalhete and Correia): each of 16 shards, chosen by IP hash, keeps
// two copies of its table; a reader announces itself on the read indicator of the current
// version and reads the copy `left_right` names. The writer changes the idle copy, flips
// `left_right`, waits until the readers of the old copy have left, and applies the change
// again, so readers never see a table being changed and never wait. Entries themselves
// are immutable records shared by both copies (a change publishes a new record and frees
// the old one once no reader can reach it), so names are stored once, not twice. A
// writer waits only for readers of its own shard, for the length of one lookup. All other
// members serialise on one mutex (writes come from the DNS thread and the control thread).
//
// A name stays visible until its expiry (now + max(ttl, ttl_floor)) plus grace: an app
// that cached the answer and connects after the TTL still matches its domain rule. An IP
// keeps at most 8 names, the most recently learned; re-learning a name refreshes it.
class NameStore final : public decider::IpNames {
 public:
  using Options = NameStoreOptions;
  static constexpr std::size_t kMaxNames = 8;
  static constexpr std::size_t kMaxNameLength = 253;

  struct Entry {
    IpAddress ip;
    std::vector<std::string> names;  // most recently learned first
    std::int64_t expires_at = 0;     // unix s, latest name's expiry (without grace)
    Source source = Source::kDns;    // of the latest learn
  };

  NameStore();
  explicit NameStore(Options options);
  ~NameStore() override;
  NameStore(const NameStore&) = delete;
  NameStore& operator=(const NameStore&) = delete;

  // A DNS answer (or a saved line) said `names` resolve to `ip`. IPv4-mapped IPv6 is kept
  // as IPv4; names are lowercased without their trailing dot, and a name that is not
  // valid (is_valid_name) is ignored. The names of one call count as learned in the given
  // order; beyond 8 per IP the oldest are dropped. The IP becomes the most recently used.
  void learn(const IpAddress& ip, std::span<const std::string> names, std::uint32_t ttl,
             Source source = Source::kDns);

  // decider::IpNames: the visible names of ip, most recently learned first.
  void visit_names(const IpAddress& ip, decider::NameVisitor& visitor) const override;

  // Drops what is past expiry + grace (whole entries, and single names of an entry).
  // Called every few seconds by the owner; learn() also drops expired entries it meets.
  void sweep();
  void clear();

  // For the API: visible entries, most recently learned first (list), or one (find).
  std::vector<Entry> list() const;
  std::optional<Entry> find(const IpAddress& ip) const;
  // IPs held (including ones past their grace that no sweep has dropped yet).
  std::size_t size() const { return size_.load(std::memory_order_relaxed); }
  std::size_t names() const;  // names held, for "bytes per learned name"
  // The heap the store holds: records (as malloc rounds them) and both copies of every
  // shard's table.
  std::size_t memory_bytes() const;

  // The state file: a header line "splitd-names <version>", then one line per run of
  // names with the same expiry, "ip expires_at name [name...]", least recently learned
  // first, so that load() rebuilds the same order. Written to path.tmp, fsynced, renamed.
  Expected<void, std::string> save(const std::string& path) const;
  // Learns the file's entries that are still within expiry + grace (as Source::kLoaded),
  // returns how many lines it took. A missing file is 0 entries; a malformed line is
  // skipped and counted (skipped_lines()); a file of another format is an error.
  Expected<std::size_t, std::string> load(const std::string& path);
  std::size_t skipped_lines() const;

  // 1-253 characters of [a-z0-9-_.] or "\" escapes (\DDD, or "\" and a printable
  // non-space character), as the DNS library renders a name.
  static bool is_valid_name(std::string_view name);

 private:
  struct Record;
  // One copy of a shard's table: open addressing with linear probing, slots pointing to
  // records. Only the writer changes it, and only while no reader reads it.
  class Table {
   public:
    const Record* find(const IpAddress& ip, std::uint64_t hash) const;
    void upsert(Record* record, std::uint64_t hash);
    void erase(const IpAddress& ip, std::uint64_t hash);
    void clear();
    std::size_t bytes() const { return slots_.capacity() * sizeof(Slot); }

   private:
    struct Slot {
      std::uint64_t hash = 0;
      Record* record = nullptr;
    };
    void grow();
    std::vector<Slot> slots_;  // a power of two, at most 3/4 full
    std::size_t used_ = 0;
  };
  struct alignas(64) Shard {
    std::atomic<std::uint32_t> left_right{0};  // the copy readers read
    std::atomic<std::uint32_t> version{0};     // the read indicator new readers join
    alignas(64) std::array<std::atomic<std::uint64_t>, 2> readers{};
    std::array<Table, 2> tables;
  };
  static constexpr std::size_t kShards = 16;
  // A change to a shard: applied to both of its copies, in turn.
  struct Op {
    IpAddress ip;
    std::uint64_t hash = 0;
    Record* record = nullptr;  // nullptr: erase
  };

  static std::uint64_t hash(const IpAddress& ip);
  Shard& shard_of(std::uint64_t hash) const { return shards_[hash >> 60]; }
  // Applies ops (all of one shard) to the idle copy, flips, waits for the readers of the
  // other copy to leave, and applies them to it too.
  void publish(Shard& shard, std::span<const Op> ops);
  void publish_clear(Shard& shard);
  template <typename Change>
  void flip(Shard& shard, const Change& change);
  // Writer side (mu_ held).
  const Record* writer_find(const IpAddress& ip, std::uint64_t hash) const;
  void learn_locked(const IpAddress& ip, std::span<const std::string> names,
                    std::int64_t expires_at, Source source, std::int64_t now);
  Record* make_record(const IpAddress& ip, Source source,
                      std::span<const std::pair<std::string_view, std::int64_t>> names);
  void free_record(Record* r);
  void lru_unlink(Record* r);
  void lru_push_front(Record* r);
  void remove_locked(Record* r);
  bool expired(const Record& r, std::int64_t now) const;
  Entry entry_of(const Record& r, std::int64_t now) const;

  const Options options_;
  mutable std::array<Shard, kShards> shards_;
  mutable std::mutex mu_;
  Record* lru_head_ = nullptr;  // most recently learned
  Record* lru_tail_ = nullptr;
  std::atomic<std::size_t> size_{0};
  std::size_t names_ = 0;
  std::size_t record_bytes_ = 0;
  std::size_t skipped_lines_ = 0;
};

}  // namespace splitd::dns
