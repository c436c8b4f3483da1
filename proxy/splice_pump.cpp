#include "proxy/splice_pump.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace splitd::proxy {

namespace {
constexpr std::size_t kSpliceChunk = 1 << 20;  // ask for up to the pipe's capacity
constexpr std::size_t kUrgentChunk = 4096;     // PIPE_BUF: fits an empty pipe of any size, at once
constexpr std::size_t kCopyChunk = 16384;      // a small message's buffer; an empty pipe takes it whole

enum class Copied { kDone, kSplice, kError };

// The small-message path: one recv, one send; what the sink does not take goes into the
// (empty) pipe. kDone: `res` says why it stopped; kSplice: the buffer filled, go on with
// splice; kError: `res` holds the error.
Copied copy_once(Direction& d, int src, int sink, PipePool& pipes, PumpResult& res) {
  const auto error = [&res](int err, const char* what) {
    res.stop = PumpResult::kError;
    res.err = err;
    res.what = what;
    return Copied::kError;
  };
  // The pipe first (from the pool, no system call once it has some): what the sink does
  // not take must fit in it whole, so no more is read than it holds.
  if (!d.pipe.valid() && !pipes.take(d.pipe)) return error(errno, "pipe");
  char buf[kCopyChunk];
  const std::size_t want = std::min<std::size_t>(sizeof buf, d.pipe.capacity);
  ssize_t n;
  do {
    n = ::recv(src, buf, want, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return Copied::kDone;  // kDrained
    return error(errno, "read");
  }
  if (n == 0) {
    d.eof = true;
    return Copied::kSplice;  // the loop forwards the EOF
  }
  res.read += static_cast<std::uint64_t>(n);
  res.moved = true;
  ssize_t w;
  do {
    w = ::send(sink, buf, static_cast<std::size_t>(n), MSG_DONTWAIT | MSG_NOSIGNAL);
  } while (w < 0 && errno == EINTR);
  if (w < 0) {
    if (errno != EAGAIN) return error(errno, "write");
    w = 0;
  }
  const bool full = static_cast<std::size_t>(n) == want;
  if (w < n) {
    // The sink is full: the rest waits in the (empty) pipe, as spliced bytes would.
    const auto rest = static_cast<std::size_t>(n - w);
    const ssize_t put = ::write(d.pipe.w, buf + w, rest);
    if (put > 0) d.pending = static_cast<std::uint32_t>(put);  // the caller must not pool it
    if (put != static_cast<ssize_t>(rest)) return error(put < 0 ? errno : EIO, "pipe");
    res.stop = PumpResult::kSinkFull;
    if (full) d.bulk = true;
    return Copied::kDone;
  }
  if (full) {
    d.bulk = true;
    return Copied::kSplice;
  }
  if (d.read_all) return Copied::kSplice;  // a short read may hide the EOF behind it
  return Copied::kDone;  // kDrained
}
}  // namespace

void Pipe::close() {
  if (r >= 0) ::close(r);
  if (w >= 0) ::close(w);
  r = w = -1;
}

PipePool::~PipePool() {
  for (auto& p : pipes_) p.close();
}

bool PipePool::take(Pipe& p) {
  if (!pipes_.empty()) {
    p = pipes_.back();
    pipes_.pop_back();
    return true;
  }
  int fds[2];
  if (::pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) return false;
  // Best effort: beyond fs.pipe-user-pages-soft the kernel refuses, and new pipes may even
  // be smaller than the default 64 KiB.
  int capacity = ::fcntl(fds[1], F_SETPIPE_SZ, pipe_size_);
  if (capacity <= 0) capacity = ::fcntl(fds[1], F_GETPIPE_SZ);
  p = {fds[0], fds[1], static_cast<std::uint32_t>(capacity > 0 ? capacity : 4096)};
  return true;
}

void PipePool::give(Pipe& p) {
  if (!p.valid()) return;
  if (pipes_.size() < max_) {
    pipes_.push_back(p);
  } else {
    p.close();
  }
  p = {};
}

PumpResult pump(Direction& d, int src, int sink, PipePool& pipes, int rounds) {
  PumpResult res;
  const auto error = [&res](int err, const char* what) {
    res.stop = PumpResult::kError;
    res.err = err;
    res.what = what;
    return res;
  };
  if (d.done) return res;
  if (d.pending == 0 && !d.bulk && !d.urgent && !d.eof) {
    switch (copy_once(d, src, sink, pipes, res)) {
      case Copied::kError: return res;
      case Copied::kDone:
        if (d.pending == 0) pipes.give(d.pipe);
        return res;
      case Copied::kSplice: break;
    }
  }
  for (int round = 0;; ++round) {
    while (d.pending > 0) {
      const ssize_t m = ::splice(d.pipe.r, nullptr, sink, nullptr, d.pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m > 0) {
        d.pending -= static_cast<std::uint32_t>(m);
        res.moved = true;
      } else if (m < 0 && errno == EINTR) {
        continue;
      } else if (m < 0 && errno == EAGAIN) {
        res.stop = PumpResult::kSinkFull;  // the sink's EPOLLOUT resumes this direction
        return res;
      } else {
        return error(m < 0 ? errno : EPIPE, "write");
      }
    }
    if (d.eof) {
      pipes.give(d.pipe);
      d.done = true;
      res.stop = PumpResult::kEof;
      return res;
    }
    if (round == rounds) {
      res.stop = PumpResult::kBudget;
      break;
    }
    if (!d.pipe.valid() && !pipes.take(d.pipe)) return error(errno, "pipe");
    const ssize_t n = ::splice(src, nullptr, d.pipe.w, nullptr, kSpliceChunk, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      d.pending = static_cast<std::uint32_t>(n);
      res.read += static_cast<std::uint64_t>(n);
      res.moved = true;
    } else if (n == 0) {
      d.eof = true;
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EAGAIN) {
      return error(errno, "read");
    } else if (d.urgent) {
      // splice stops at TCP's urgent mark and says EAGAIN with bytes still there. A plain
      // read passes the mark; the pipe, empty here, holds what it read.
      char buf[kUrgentChunk];
      const ssize_t r = ::recv(src, buf, sizeof buf, MSG_DONTWAIT);
      if (r > 0 && ::write(d.pipe.w, buf, static_cast<std::size_t>(r)) == r) {
        d.pending = static_cast<std::uint32_t>(r);
        res.read += static_cast<std::uint64_t>(r);
        res.moved = true;
      } else if (r == 0) {
        d.eof = true;
      } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        d.urgent = false;  // nothing at the mark (any more)
        break;
      } else {
        return error(r < 0 ? errno : EIO, "read");
      }
    } else {
      // Drained. A wake that brought less than a small message's buffer ends a bulk run:
      // the next bytes start as a small message again. Not a small read alone: a bulk
      // stream's last read before EAGAIN is usually a small tail, and copying the next
      // 16 KiB of every wake cost 15 % more CPU per GB (lab-bench, one stream).
      if (res.read < kCopyChunk) d.bulk = false;
      break;
    }
  }
  if (d.pending == 0) pipes.give(d.pipe);
  return res;
}

}  // namespace splitd::proxy
