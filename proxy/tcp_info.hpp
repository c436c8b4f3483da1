#pragma once

#include <cstdint>

namespace splitd::proxy {

// Segments received and sent by a TCP socket (TCP_INFO's tcpi_segs_in/out). Kept in its
// own file: <linux/tcp.h> has these fields but clashes with <netinet/tcp.h>.
bool tcp_segments(int fd, std::uint32_t& segs_in, std::uint32_t& segs_out);

}  // namespace splitd::proxy
