#include "dns/name_store.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>

#include "common/fd.hpp"

namespace splitd::dns {

const char* to_string(Source s) { return s == Source::kDns ? "dns" : "state"; }

// One IP's names, in one allocation: this header, then `count` expiries (int64, unix s),
// then the names' characters back to back (lengths in `lens`). Immutable once published;
// only the LRU links change, and only the writer reads or writes them.
struct NameStore::Record {
  IpAddress ip;
  Source source = Source::kDns;
  std::uint8_t count = 0;
  std::array<std::uint8_t, kMaxNames> lens{};
  Record* prev = nullptr;  // LRU, towards the most recently learned
  Record* next = nullptr;

  const char* tail() const { return reinterpret_cast<const char*>(this + 1); }
  std::int64_t expiry(std::size_t i) const {
    std::int64_t e;
    std::memcpy(&e, tail() + i * sizeof e, sizeof e);
    return e;
  }
  std::int64_t latest_expiry() const {
    std::int64_t e = 0;
    for (std::size_t i = 0; i < count; ++i) e = std::max(e, expiry(i));
    return e;
  }
  // Calls f(name, expiry) for each name, most recently learned first, until f returns true.
  template <typename F>
  void each(F&& f) const {
    const char* text = tail() + count * sizeof(std::int64_t);
    for (std::size_t i = 0; i < count; ++i) {
      if (f(std::string_view(text, lens[i]), expiry(i))) return;
      text += lens[i];
    }
  }
  static std::size_t bytes_for(std::span<const std::pair<std::string_view, std::int64_t>> names) {
    std::size_t n = sizeof(Record) + names.size() * sizeof(std::int64_t);
    for (const auto& [name, e] : names) n += name.size();
    return n;
  }
};

namespace {

// What malloc really holds for a request of n bytes (glibc: 8 bytes of header, 16-byte
// granules, 32 at least), so that memory_bytes() does not flatter small records.
std::size_t malloc_size(std::size_t n) { return std::max<std::size_t>(32, (n + 8 + 15) & ~std::size_t{15}); }

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Lowercased, one trailing dot removed; nullopt if not a valid name.
std::optional<std::string> normalize(std::string_view name) {
  if (name.size() > 1 && name.back() == '.' && name[name.size() - 2] != '\\') name.remove_suffix(1);
  std::string s(name);
  for (char& c : s) c = lower(c);
  if (!NameStore::is_valid_name(s)) return std::nullopt;
  return s;
}

constexpr std::string_view kHeader = "splitd-names 1";

}  // namespace

bool NameStore::is_valid_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.') continue;
    if (c != '\\' || i + 1 == name.size()) return false;
    const char e = name[i + 1];
    if (e >= '0' && e <= '9') {  // \DDD, a byte in decimal
      if (i + 3 >= name.size()) return false;
      for (std::size_t k = 1; k <= 3; ++k) {
        if (name[i + k] < '0' || name[i + k] > '9') return false;
      }
      i += 3;
    } else if (e > ' ' && e < 0x7f) {  // \X, a printable character taken literally
      i += 1;
    } else {
      return false;
    }
  }
  return true;
}

// ---- Table ----

const NameStore::Record* NameStore::Table::find(const IpAddress& ip, std::uint64_t hash) const {
  if (slots_.empty()) return nullptr;
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (s.record == nullptr) return nullptr;
    if (s.hash == hash && s.record->ip == ip) return s.record;
  }
}

void NameStore::Table::upsert(Record* record, std::uint64_t hash) {
  if ((used_ + 1) * 4 > slots_.size() * 3) grow();
  const std::size_t mask = slots_.size() - 1;
  for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (s.record == nullptr) {
      s = Slot{hash, record};
      ++used_;
      return;
    }
    if (s.hash == hash && s.record->ip == record->ip) {
      s.record = record;
      return;
    }
  }
}

void NameStore::Table::erase(const IpAddress& ip, std::uint64_t hash) {
  if (slots_.empty()) return;
  const std::size_t mask = slots_.size() - 1;
  std::size_t i = hash & mask;
  for (;; i = (i + 1) & mask) {
    if (slots_[i].record == nullptr) return;
    if (slots_[i].hash == hash && slots_[i].record->ip == ip) break;
  }
  // Backward-shift deletion: no tombstones, so lookups stay short after many evictions.
  for (std::size_t j = i;;) {
    j = (j + 1) & mask;
    if (slots_[j].record == nullptr) break;
    const std::size_t home = slots_[j].hash & mask;
    const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (!stays) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i] = Slot{};
  --used_;
}

void NameStore::Table::clear() {
  std::vector<Slot>().swap(slots_);
  used_ = 0;
}

void NameStore::Table::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.empty() ? 16 : old.size() * 2, Slot{});
  const std::size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.record == nullptr) continue;
    std::size_t i = s.hash & mask;
    while (slots_[i].record != nullptr) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

// ---- NameStore ----

NameStore::NameStore() : NameStore(Options{}) {}

NameStore::NameStore(Options options) : options_([&] {
  if (!options.clock) {
    options.clock = [] {
      return std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
  options.max_entries = std::max<std::size_t>(options.max_entries, 1);
  return std::move(options);
}()) {}

NameStore::~NameStore() {
  for (Record* r = lru_head_; r != nullptr;) {
    Record* next = r->next;
    ::operator delete(r);
    r = next;
  }
}

std::uint64_t NameStore::hash(const IpAddress& ip) {
  std::array<std::uint8_t, 16> b{};
  const auto bytes = ip.bytes();
  std::copy(bytes.begin(), bytes.end(), b.begin());
  std::uint64_t lo;
  std::uint64_t hi;
  std::memcpy(&lo, b.data(), 8);
  std::memcpy(&hi, b.data() + 8, 8);
  // splitmix64's finaliser over both halves: the top bits pick the shard, the low ones
  // the slot, so both must be well mixed.
  std::uint64_t h = lo ^ (hi * 0x9e3779b97f4a7c15ull) ^ static_cast<std::uint64_t>(ip.family());
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  h ^= h >> 31;
  return h;
}

void NameStore::visit_names(const IpAddress& ip, decider::NameVisitor& visitor) const {
  const IpAddress key = ip.unmapped();
  const std::uint64_t h = hash(key);
  Shard& s = shard_of(h);
  // Left-Right's reader: join the current version's indicator, then read the copy that
  // left_right names. The writer does not touch that copy until this indicator drains.
  // seq_cst on both: the arrival must be ordered before the left_right load (store-load).
  const std::uint32_t vi = s.version.load(std::memory_order_seq_cst);
  std::atomic<std::uint64_t>& indicator = s.readers[vi];
  indicator.fetch_add(1, std::memory_order_seq_cst);
  struct Leave {
    std::atomic<std::uint64_t>& indicator;
    ~Leave() { indicator.fetch_sub(1, std::memory_order_release); }
  } leave{indicator};
  const Record* r = s.tables[s.left_right.load(std::memory_order_seq_cst)].find(key, h);
  if (r == nullptr) return;
  const std::int64_t now = options_.clock();
  const std::int64_t grace = options_.grace.count();
  r->each([&](std::string_view name, std::int64_t expiry) {
    return expiry + grace >= now && visitor(name);
  });
}

template <typename Change>
void NameStore::flip(Shard& shard, const Change& change) {
  const std::uint32_t lr = shard.left_right.load(std::memory_order_relaxed);
  change(shard.tables[1 - lr]);
  shard.left_right.store(1 - lr, std::memory_order_seq_cst);
  // New readers now read the changed copy. Move new arrivals to the other indicator and
  // wait for both to drain: afterwards no reader can still be in the old copy.
  const std::uint32_t prev = shard.version.load(std::memory_order_relaxed);
  const std::uint32_t next = 1 - prev;
  while (shard.readers[next].load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  shard.version.store(next, std::memory_order_seq_cst);
  while (shard.readers[prev].load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  change(shard.tables[lr]);
}

void NameStore::publish(Shard& shard, std::span<const Op> ops) {
  if (ops.empty()) return;
  flip(shard, [ops](Table& t) {
    for (const Op& op : ops) {
      if (op.record != nullptr) {
        t.upsert(op.record, op.hash);
      } else {
        t.erase(op.ip, op.hash);
      }
    }
  });
}

void NameStore::publish_clear(Shard& shard) {
  flip(shard, [](Table& t) { t.clear(); });
}

const NameStore::Record* NameStore::writer_find(const IpAddress& ip, std::uint64_t hash) const {
  // Outside flip() both copies are equal, and reading beside readers is safe.
  return shard_of(hash).tables[0].find(ip, hash);
}

NameStore::Record* NameStore::make_record(
    const IpAddress& ip, Source source,
    std::span<const std::pair<std::string_view, std::int64_t>> names) {
  static_assert(std::is_trivially_destructible_v<Record>);  // freed, never destroyed
  names = names.first(std::min(names.size(), kMaxNames));
  const std::size_t bytes = Record::bytes_for(names);
  void* mem = ::operator new(bytes);
  auto* r = new (mem) Record;
  r->ip = ip;
  r->source = source;
  r->count = static_cast<std::uint8_t>(names.size());
  char* expiries = reinterpret_cast<char*>(r + 1);
  char* text = expiries + names.size() * sizeof(std::int64_t);
  for (std::size_t i = 0; i < names.size(); ++i) {
    std::memcpy(expiries + i * sizeof(std::int64_t), &names[i].second, sizeof(std::int64_t));
    r->lens[i] = static_cast<std::uint8_t>(names[i].first.size());
    std::memcpy(text, names[i].first.data(), names[i].first.size());
    text += names[i].first.size();
  }
  record_bytes_ += malloc_size(bytes);
  names_ += names.size();
  return r;
}

void NameStore::free_record(Record* r) {
  std::size_t bytes = sizeof(Record) + r->count * sizeof(std::int64_t);
  for (std::size_t i = 0; i < r->count; ++i) bytes += r->lens[i];
  record_bytes_ -= malloc_size(bytes);
  names_ -= r->count;
  ::operator delete(r);
}

void NameStore::lru_unlink(Record* r) {
  (r->prev != nullptr ? r->prev->next : lru_head_) = r->next;
  (r->next != nullptr ? r->next->prev : lru_tail_) = r->prev;
  r->prev = r->next = nullptr;
}

void NameStore::lru_push_front(Record* r) {
  r->prev = nullptr;
  r->next = lru_head_;
  (lru_head_ != nullptr ? lru_head_->prev : lru_tail_) = r;
  lru_head_ = r;
}

bool NameStore::expired(const Record& r, std::int64_t now) const {
  return r.latest_expiry() + options_.grace.count() < now;
}

void NameStore::remove_locked(Record* r) {
  const std::uint64_t h = hash(r->ip);
  const Op op{r->ip, h, nullptr};
  publish(shard_of(h), {&op, 1});
  lru_unlink(r);
  free_record(r);
  size_.fetch_sub(1, std::memory_order_relaxed);
}

void NameStore::learn(const IpAddress& ip, std::span<const std::string> names, std::uint32_t ttl,
                      Source source) {
  std::vector<std::string> valid;
  valid.reserve(std::min(names.size(), kMaxNames));
  for (const std::string& n : names) {
    if (valid.size() == kMaxNames) break;
    if (auto v = normalize(n)) valid.push_back(std::move(*v));
  }
  if (valid.empty()) return;
  const std::int64_t now = options_.clock();
  const std::int64_t expires_at = now + std::max<std::int64_t>(ttl, options_.ttl_floor.count());
  std::lock_guard lock(mu_);
  learn_locked(ip.unmapped(), valid, expires_at, source, now);
}

void NameStore::learn_locked(const IpAddress& ip, std::span<const std::string> names,
                             std::int64_t expires_at, Source source, std::int64_t now) {
  const std::uint64_t h = hash(ip);
  Record* old = const_cast<Record*>(writer_find(ip, h));
  // This answer's names first (most recent), then the IP's other names still within
  // their grace. A name learned again keeps the later of its expiries: an app may still
  // hold the answer with the longer TTL.
  std::vector<std::pair<std::string_view, std::int64_t>> merged;
  merged.reserve(kMaxNames * 2);
  const auto index_of = [&](std::string_view n) {
    return std::find_if(merged.begin(), merged.end(), [&](const auto& m) { return m.first == n; });
  };
  for (const std::string& n : names) {
    if (index_of(n) == merged.end()) merged.emplace_back(n, expires_at);
  }
  if (old != nullptr) {
    old->each([&](std::string_view n, std::int64_t e) {
      if (const auto it = index_of(n); it != merged.end()) {
        it->second = std::max(it->second, e);
      } else if (e + options_.grace.count() >= now) {
        merged.emplace_back(n, e);
      }
      return false;
    });
  }
  Record* r = make_record(ip, source, merged);  // views into `old`: still alive
  const Op op{ip, h, r};
  publish(shard_of(h), {&op, 1});
  if (old != nullptr) {
    lru_unlink(old);
    free_record(old);
  } else {
    size_.fetch_add(1, std::memory_order_relaxed);
  }
  lru_push_front(r);
  // Lazy expiry: the least recently learned entries are the likeliest to be stale.
  for (int i = 0; i < 2 && lru_tail_ != r && expired(*lru_tail_, now); ++i) remove_locked(lru_tail_);
  while (size() > options_.max_entries && lru_tail_ != r) remove_locked(lru_tail_);
}

void NameStore::sweep() {
  std::lock_guard lock(mu_);
  const std::int64_t now = options_.clock();
  const std::int64_t grace = options_.grace.count();
  std::array<std::vector<Op>, kShards> ops;
  std::vector<Record*> dead;  // freed once no reader can reach them
  std::vector<std::pair<std::string_view, std::int64_t>> visible;
  for (Record* r = lru_head_; r != nullptr;) {
    Record* next = r->next;
    visible.clear();
    r->each([&](std::string_view n, std::int64_t e) {
      if (e + grace >= now) visible.emplace_back(n, e);
      return false;
    });
    if (visible.size() < r->count) {
      const std::uint64_t h = hash(r->ip);
      Record* fresh = visible.empty() ? nullptr : make_record(r->ip, r->source, visible);
      ops[h >> 60].push_back(Op{r->ip, h, fresh});
      if (fresh != nullptr) {  // same place in the LRU order
        fresh->prev = r->prev;
        fresh->next = r->next;
        (r->prev != nullptr ? r->prev->next : lru_head_) = fresh;
        (r->next != nullptr ? r->next->prev : lru_tail_) = fresh;
      } else {
        lru_unlink(r);
        size_.fetch_sub(1, std::memory_order_relaxed);
      }
      dead.push_back(r);
    }
    r = next;
  }
  for (std::size_t i = 0; i < kShards; ++i) publish(shards_[i], ops[i]);
  for (Record* r : dead) free_record(r);
}

void NameStore::clear() {
  std::lock_guard lock(mu_);
  for (Shard& s : shards_) publish_clear(s);
  for (Record* r = lru_head_; r != nullptr;) {
    Record* next = r->next;
    free_record(r);
    r = next;
  }
  lru_head_ = lru_tail_ = nullptr;
  size_.store(0, std::memory_order_relaxed);
}

NameStore::Entry NameStore::entry_of(const Record& r, std::int64_t now) const {
  Entry e;
  e.ip = r.ip;
  e.source = r.source;
  r.each([&](std::string_view n, std::int64_t x) {
    if (x + options_.grace.count() >= now) {
      e.names.emplace_back(n);
      e.expires_at = std::max(e.expires_at, x);
    }
    return false;
  });
  return e;
}

std::vector<NameStore::Entry> NameStore::list() const {
  std::lock_guard lock(mu_);
  const std::int64_t now = options_.clock();
  std::vector<Entry> out;
  out.reserve(size());
  for (const Record* r = lru_head_; r != nullptr; r = r->next) {
    Entry e = entry_of(*r, now);
    if (!e.names.empty()) out.push_back(std::move(e));
  }
  return out;
}

std::optional<NameStore::Entry> NameStore::find(const IpAddress& ip) const {
  std::lock_guard lock(mu_);
  const IpAddress key = ip.unmapped();
  const Record* r = writer_find(key, hash(key));
  if (r == nullptr) return std::nullopt;
  Entry e = entry_of(*r, options_.clock());
  if (e.names.empty()) return std::nullopt;
  return e;
}

std::size_t NameStore::names() const {
  std::lock_guard lock(mu_);
  return names_;
}

std::size_t NameStore::memory_bytes() const {
  std::lock_guard lock(mu_);
  std::size_t tables = 0;
  for (const Shard& s : shards_) {
    for (const Table& t : s.tables) tables += t.bytes();
  }
  return sizeof(*this) + record_bytes_ + tables;
}

std::size_t NameStore::skipped_lines() const {
  std::lock_guard lock(mu_);
  return skipped_lines_;
}

namespace {

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

bool write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace

Expected<void, std::string> NameStore::save(const std::string& path) const {
  std::string text;
  {
    std::lock_guard lock(mu_);
    const std::int64_t now = options_.clock();
    const std::int64_t grace = options_.grace.count();
    text.reserve(64 + names_ * 40);
    text.append(kHeader).push_back('\n');
    std::vector<std::pair<std::string_view, std::int64_t>> names;
    // Oldest first, and within an entry its oldest run of equal expiries first: load()
    // learns the lines in order and so rebuilds both orders.
    for (const Record* r = lru_tail_; r != nullptr; r = r->prev) {
      names.clear();
      r->each([&](std::string_view n, std::int64_t e) {
        if (e + grace >= now) names.emplace_back(n, e);
        return false;
      });
      std::size_t end = names.size();
      while (end > 0) {
        std::size_t begin = end - 1;
        while (begin > 0 && names[begin - 1].second == names[end - 1].second) --begin;
        text.append(r->ip.to_string()).push_back(' ');
        text.append(std::to_string(names[begin].second));
        for (std::size_t i = begin; i < end; ++i) text.append(" ").append(names[i].first);
        text.push_back('\n');
        end = begin;
      }
    }
  }
  const std::string tmp = path + ".tmp";
  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return unexpected(errno_text("open " + tmp));
  if (!write_all(fd.get(), text)) {
    auto e = errno_text("write " + tmp);
    ::unlink(tmp.c_str());
    return unexpected(std::move(e));
  }
  if (::fsync(fd.get()) != 0) {
    auto e = errno_text("fsync " + tmp);
    ::unlink(tmp.c_str());
    return unexpected(std::move(e));
  }
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    auto e = errno_text("rename " + tmp + " to " + path);
    ::unlink(tmp.c_str());
    return unexpected(std::move(e));
  }
  // The rename itself is durable once the directory is synced.
  const std::size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  if (Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); d) ::fsync(d.get());
  return {};
}

Expected<std::size_t, std::string> NameStore::load(const std::string& path) {
  std::string data;
  {
    Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      if (errno == ENOENT) return std::size_t{0};
      return unexpected(errno_text("open " + path));
    }
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return unexpected(errno_text("read " + path));
      if (n == 0) break;
      data.append(buf, static_cast<std::size_t>(n));
    }
  }
  constexpr std::size_t kMaxLine = 64 + kMaxNames * (kMaxNameLength + 1);
  std::size_t lineno = 0;
  std::size_t loaded = 0;
  std::size_t skipped = 0;
  std::vector<std::string> names;
  std::vector<std::string_view> fields;
  for (std::string_view all = data; !all.empty();) {
    const std::size_t nl = all.find('\n');
    const std::string_view line = all.substr(0, nl);
    all = nl == std::string_view::npos ? std::string_view() : all.substr(nl + 1);
    ++lineno;
    if (lineno == 1) {
      if (line != kHeader) {
        return unexpected(path + ":1: not a names file of this version (want \"" +
                          std::string(kHeader) + "\")");
      }
      continue;
    }
    if (line.empty()) continue;
    // ip expires_at name [name...], single spaces.
    fields.clear();
    std::string_view rest = line;
    bool ok = line.size() <= kMaxLine;
    while (ok && !rest.empty()) {
      const std::size_t sp = rest.find(' ');
      fields.push_back(rest.substr(0, sp));
      rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
    }
    ok = ok && fields.size() >= 3;
    std::optional<IpAddress> ip;
    std::int64_t expires_at = 0;
    if (ok) {
      ip = IpAddress::parse(fields[0]);
      const auto [p, ec] = std::from_chars(fields[1].data(), fields[1].data() + fields[1].size(), expires_at);
      ok = ip.has_value() && ec == std::errc() && p == fields[1].data() + fields[1].size();
    }
    names.clear();
    for (std::size_t i = 2; ok && i < fields.size(); ++i) {
      auto n = normalize(fields[i]);
      if (!n) ok = false;
      else if (names.size() < kMaxNames) names.push_back(std::move(*n));
    }
    if (!ok) {
      ++skipped;
      continue;
    }
    std::lock_guard lock(mu_);  // per line: the DNS thread learns in between
    const std::int64_t now = options_.clock();
    if (expires_at + options_.grace.count() < now) continue;  // stale, not malformed
    learn_locked(ip->unmapped(), names, expires_at, Source::kLoaded, now);
    ++loaded;
  }
  std::lock_guard lock(mu_);
  skipped_lines_ = skipped;
  return loaded;
}

}  // namespace splitd::dns
