#pragma once

#include <cstdint>
#include <span>

#include "sniff/sniff.hpp"

namespace splitd::sniff {

// The Host of an HTTP/1.x request (RFC 9112 §3.2): the request line (a method token, a
// target, HTTP/1.0 or HTTP/1.1), then header fields up to the empty line; the Host field,
// case-insensitive, without its port. An absolute-form target ("GET http://h/ HTTP/1.1")
// names the host when there is no Host field. kNotThis as soon as the bytes cannot be
// the start of a request line. Bounded by kMaxHttpHead; no allocation but the name.
Result sniff_http(std::span<const std::uint8_t> stream);

}  // namespace splitd::sniff
