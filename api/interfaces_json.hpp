#pragma once

#include <string>

#include "iface/interface_snapshot.hpp"

namespace splitd::api {

// The interface cache as JSON: the document of `splitd interfaces --json` and of
// GET /api/v1/interfaces. indent < 0 gives one line.
std::string interfaces_json(const iface::InterfaceSnapshot& snapshot, int indent = 2);

}  // namespace splitd::api
