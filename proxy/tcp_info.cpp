#include "proxy/tcp_info.hpp"

#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace splitd::proxy {

bool tcp_segments(int fd, std::uint32_t& segs_in, std::uint32_t& segs_out) {
  tcp_info ti{};
  socklen_t len = sizeof ti;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return false;
  segs_in = ti.tcpi_segs_in;
  segs_out = ti.tcpi_segs_out;
  return true;
}

}  // namespace splitd::proxy
