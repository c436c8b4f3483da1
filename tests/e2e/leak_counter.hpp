#pragma once

// A counter in the lab's wan namespace for every packet to the tunnel-only servers
// (198.51.100.10 and 2001:db8:1::10): a packet of theirs that leaks out the host's
// physical interface shows up there.

#include <cstdint>

#include "tests/lab/lab.hpp"

namespace splitd::e2e {

// Adds table inet leak in wan (a failed assertion if it cannot).
void add_leak_counter(const lab::Lab& lab);
// Packets counted so far, both families.
std::uint64_t leaked_packets(const lab::Lab& lab);
// A failed expectation, with the counters, unless both are zero.
void expect_no_leak(const lab::Lab& lab);

}  // namespace splitd::e2e
