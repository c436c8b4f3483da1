#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace splitd::proxy {

// A pipe for splice(2). Not RAII on purpose: it lives in a flow record and moves between
// the record and the worker's PipePool, which closes what it holds.
struct Pipe {
  int r = -1, w = -1;
  std::uint32_t capacity = 0;  // bytes it holds (F_SETPIPE_SZ may have been refused)
  bool valid() const { return r >= 0; }
  void close();
};

// Empty pipes of one worker, reused so an idle flow holds no pipe and no buffer. Pipes are
// asked for 1 MiB (fewer splices per byte than 64 KiB; pages are used only while full).
// Not thread-safe: one per worker.
class PipePool {
 public:
  explicit PipePool(std::size_t max_pooled = 64, int pipe_size = 1024 * 1024)
      : max_(max_pooled), pipe_size_(pipe_size) {}
  ~PipePool();
  PipePool(const PipePool&) = delete;
  PipePool& operator=(const PipePool&) = delete;

  bool take(Pipe& p);  // false with errno set
  void give(Pipe& p);  // an empty pipe back (closed when the pool is full); p becomes invalid
  std::size_t pooled() const { return pipes_.size(); }

 private:
  std::size_t max_;
  int pipe_size_;
  std::vector<Pipe> pipes_;
};

// One direction of a TCP flow: bytes read from one socket and written to the other.
struct Direction {
  Pipe pipe;                  // held only while bytes wait in it
  std::uint32_t pending = 0;  // bytes in the pipe
  bool eof = false;           // the source said EOF; shut the sink down once pending is 0
  bool done = false;          // EOF forwarded
  bool urgent = false;        // the source signalled urgent data (EPOLLPRI), see pump()
  bool queued = false;        // on the worker's list of directions with more to read
  // The source's last event said EOF, hang-up or error: read on to EAGAIN or EOF, since
  // a short read then does not mean that nothing is left.
  bool read_all = false;
  bool bulk = false;  // a copied read filled the buffer: splice until a read is small
};

// What pump() did and why it stopped.
struct PumpResult {
  enum Stop {
    kDrained,   // the source has nothing more for now (EAGAIN)
    kSinkFull,  // the sink took less than we have: wait for it to be writable
    kBudget,    // `rounds` used up with more to read: queue the direction for another turn
    kEof,       // EOF reached the sink's side: d.done is set, the caller shuts the sink down
    kError,     // `err` from `what` ("read", "write", "pipe"); the caller resets the flow
  };
  Stop stop = kDrained;
  int err = 0;
  const char* what = "";
  std::uint64_t read = 0;  // bytes taken from the source
  bool moved = false;      // any progress (read or written)
};

// Moves bytes from `src` to `sink` through the direction's pipe (taken from `pipes` when
// needed, given back when empty) until one of PumpResult's stops. Small messages
// (requests, answers, the usual case of a short flow) are copied instead: one recv into a
// 16 KiB buffer and one send, and a short read ends the call without a third system call
// to hear EAGAIN (for stream sockets a short read leaves nothing queued, and what comes
// later raises a new edge; d.read_all turns this off). A read that fills the buffer
// switches the direction to splice until a call that drains the source brought less than
// that in all. The sockets are non-blocking; nothing here waits, allocates or touches
// epoll. splice stops at TCP's urgent mark: with d.urgent set a plain recv passes it
// (SO_OOBINLINE keeps the urgent byte in the stream). Works on any pair of stream sockets (TCP, AF_UNIX socketpairs in tests).
PumpResult pump(Direction& d, int src, int sink, PipePool& pipes, int rounds);

}  // namespace splitd::proxy
