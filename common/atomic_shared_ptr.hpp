#pragma once

#include <atomic>
#include <memory>
#include <thread>
#include <utility>

namespace splitd {

// A shared_ptr that one thread replaces while others read it: how every immutable
// snapshot (rules, interfaces) is published. load() and store() hold a spin lock only
// while copying or swapping the pointer, never while the old value is destroyed.
//
// Not std::atomic<std::shared_ptr>: libstdc++ 12 implements that as a spin lock too, but
// its load() releases the lock with a relaxed store after reading the pointer, so a
// concurrent store() is a data race (ThreadSanitizer reports it; on weakly ordered CPUs a
// reader could pair the new pointer with the old reference count). Here the lock is taken
// with acquire and released with release. Thread-safe.
template <typename T>
class AtomicSharedPtr {
 public:
  AtomicSharedPtr() = default;
  explicit AtomicSharedPtr(std::shared_ptr<T> value) : value_(std::move(value)) {}
  AtomicSharedPtr(const AtomicSharedPtr&) = delete;
  AtomicSharedPtr& operator=(const AtomicSharedPtr&) = delete;

  std::shared_ptr<T> load() const {
    Guard guard(lock_);
    return value_;
  }

  void store(std::shared_ptr<T> value) {
    {
      Guard guard(lock_);
      value_.swap(value);
    }
    // `value` (the old snapshot) is released here, outside the lock.
  }

 private:
  class Guard {
   public:
    explicit Guard(std::atomic_flag& flag) : flag_(flag) {
      for (unsigned spins = 0; flag_.test_and_set(std::memory_order_acquire); ++spins) {
        while (flag_.test(std::memory_order_relaxed)) {
          if (++spins > 64) std::this_thread::yield();
        }
      }
    }
    ~Guard() { flag_.clear(std::memory_order_release); }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;

   private:
    std::atomic_flag& flag_;
  };

  mutable std::atomic_flag lock_ = ATOMIC_FLAG_INIT;
  std::shared_ptr<T> value_;
};

}  // namespace splitd
