#pragma once

#include <string>

#include "iface/interface_snapshot.hpp"

namespace splitd::daemon {

// `splitd interfaces` for people: which interface is physical (per family) and which is
// the tunnel, then one row per interface.
std::string interfaces_text(const iface::InterfaceSnapshot& snapshot);

}  // namespace splitd::daemon
