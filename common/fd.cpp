#include "common/fd.hpp"

#include <unistd.h>

namespace splitd {

void Fd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

}  // namespace splitd
