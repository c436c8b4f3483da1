#pragma once
// An intrusive doubly linked list of indices into a vector of slots (any type with
// `std::uint32_t prev, next` members). The client modes keep their in-flight slots in
// start order in one: every slot has the same timeout, so the front is always the next
// to expire, and insertion, removal and the expiry check are O(1) without a heap.

#include <cstdint>
#include <limits>
#include <vector>

namespace splitd::bench {

constexpr std::uint32_t kNoSlot = std::numeric_limits<std::uint32_t>::max();

template <typename Slot>
class SlotList {
 public:
  explicit SlotList(std::vector<Slot>& slots) : slots_(slots) {}

  std::uint32_t front() const noexcept { return head_; }
  bool empty() const noexcept { return head_ == kNoSlot; }
  bool contains(std::uint32_t i) const noexcept { return slots_[i].prev != kNoSlot || head_ == i; }

  void push_back(std::uint32_t i) noexcept {
    Slot& s = slots_[i];
    s.prev = tail_;
    s.next = kNoSlot;
    if (tail_ != kNoSlot) {
      slots_[tail_].next = i;
    } else {
      head_ = i;
    }
    tail_ = i;
  }

  // `i` must be in this list.
  void remove(std::uint32_t i) noexcept {
    Slot& s = slots_[i];
    if (s.prev != kNoSlot) {
      slots_[s.prev].next = s.next;
    } else {
      head_ = s.next;
    }
    if (s.next != kNoSlot) {
      slots_[s.next].prev = s.prev;
    } else {
      tail_ = s.prev;
    }
    s.prev = s.next = kNoSlot;
  }

 private:
  std::vector<Slot>& slots_;
  std::uint32_t head_ = kNoSlot;
  std::uint32_t tail_ = kNoSlot;
};

}  // namespace splitd::bench
