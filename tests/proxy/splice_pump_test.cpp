// The splice pump on its own: pump(), PipePool and Pipe driven with AF_UNIX socketpairs and
// loopback TCP connections (no root, no namespaces). Every test is single-threaded: the
// test writes into the source's peer, calls pump() and reads the sink's peer itself, so
// each stop is the consequence of a known state of the sockets.

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "proxy/splice_pump.hpp"

namespace splitd::proxy {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// splice(2) into a socket the peer reset raises SIGPIPE (the proxy ignores it too).
void ignore_sigpipe() { ::signal(SIGPIPE, SIG_IGN); }

// Two connected stream sockets, both non-blocking.
struct Pair {
  Fd a, b;
};

Pair unix_pair() {
  int fds[2] = {-1, -1};
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds), 0) << std::strerror(errno);
  return {Fd(fds[0]), Fd(fds[1])};
}

void set_int(int fd, int level, int opt, int value) {
  EXPECT_EQ(::setsockopt(fd, level, opt, &value, sizeof value), 0) << std::strerror(errno);
}

// Socket buffer sizes for tcp_pair(); 0 keeps the default (and autotuning).
struct TcpOpts {
  int a_sndbuf = 0, a_rcvbuf = 0, b_sndbuf = 0, b_rcvbuf = 0;
};

// A loopback TCP connection on an ephemeral port: `a` connected, `b` accepted. Buffer sizes
// are set before the handshake so the window scale matches them.
Pair tcp_pair(const TcpOpts& o = {}) {
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(listener.valid()) << std::strerror(errno);
  if (o.b_sndbuf) set_int(listener.get(), SOL_SOCKET, SO_SNDBUF, o.b_sndbuf);
  if (o.b_rcvbuf) set_int(listener.get(), SOL_SOCKET, SO_RCVBUF, o.b_rcvbuf);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(::bind(listener.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(listener.get(), 1), 0) << std::strerror(errno);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  Fd a(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (o.a_sndbuf) set_int(a.get(), SOL_SOCKET, SO_SNDBUF, o.a_sndbuf);
  if (o.a_rcvbuf) set_int(a.get(), SOL_SOCKET, SO_RCVBUF, o.a_rcvbuf);
  EXPECT_EQ(::connect(a.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  Fd b(::accept4(listener.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC));
  EXPECT_TRUE(b.valid()) << std::strerror(errno);
  EXPECT_EQ(::fcntl(a.get(), F_SETFL, ::fcntl(a.get(), F_GETFL) | O_NONBLOCK), 0);
  return {std::move(a), std::move(b)};
}

// One direction under test: the test writes into in.a, pump() moves bytes from in.b (the
// source) to out.a (the sink), the test reads out.b.
struct Rig {
  Rig(Pair in_, Pair out_, std::size_t max_pooled = 4, int pipe_size = 1024 * 1024)
      : in(std::move(in_)), out(std::move(out_)), pool(max_pooled, pipe_size) {}
  ~Rig() { d.pipe.close(); }  // what a caller does with a direction it drops
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;
  Pair in, out;
  Direction d;
  PipePool pool;
  int src_peer() const { return in.a.get(); }
  int src() const { return in.b.get(); }
  int sink() const { return out.a.get(); }
  int sink_peer() const { return out.b.get(); }
  PumpResult pump(int rounds = 16) { return proxy::pump(d, src(), sink(), pool, rounds); }
};

// Byte i of the test stream: not periodic at any power of two, so a lost, doubled or
// reordered chunk shows.
std::uint8_t pattern(std::uint64_t i) { return static_cast<std::uint8_t>((i * 0x9E3779B97F4A7C15ull) >> 56); }

// Writes pattern bytes [sent, total) into `fd` until it would block.
void feed(int fd, std::uint64_t& sent, std::uint64_t total) {
  char buf[65536];
  while (sent < total) {
    const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(sizeof buf, total - sent));
    for (std::size_t i = 0; i < len; ++i) buf[i] = static_cast<char>(pattern(sent + i));
    const ssize_t n = ::send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) {
      EXPECT_EQ(errno, EAGAIN) << std::strerror(errno);
      return;
    }
    sent += static_cast<std::uint64_t>(n);
  }
}

// What the sink's peer got: a count, the first byte that differs from the pattern, EOF.
struct Received {
  std::uint64_t bytes = 0;
  std::uint64_t first_bad = UINT64_MAX;
  bool eof = false;
};

// Reads `fd` until it would block (or EOF), checking the bytes against the pattern.
void drain(int fd, Received& got) {
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      for (ssize_t i = 0; i < n; ++i) {
        if (got.first_bad == UINT64_MAX && static_cast<std::uint8_t>(buf[i]) != pattern(got.bytes + i)) {
          got.first_bad = got.bytes + static_cast<std::uint64_t>(i);
        }
      }
      got.bytes += static_cast<std::uint64_t>(n);
      continue;
    }
    if (n == 0) {
      got.eof = true;
    } else {
      EXPECT_EQ(errno, EAGAIN) << std::strerror(errno);
    }
    return;
  }
}

// Everything `fd` has now, as a string (EAGAIN or EOF ends it).
std::string read_now(int fd) {
  std::string s;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return s;
    s.append(buf, static_cast<std::size_t>(n));
  }
}

void send_all(int fd, const std::string& s, int flags = 0) {
  ASSERT_EQ(::send(fd, s.data(), s.size(), MSG_NOSIGNAL | flags), static_cast<ssize_t>(s.size()))
      << std::strerror(errno);
}

int queued(int fd) {
  int n = -1;
  EXPECT_EQ(::ioctl(fd, FIONREAD, &n), 0) << std::strerror(errno);
  return n;
}

// Loopback delivers in softirq, usually before send() returns; waits (bounded) for the
// bytes to be queued at `fd` so a test does not depend on that.
void wait_queued(int fd, int bytes) {
  const auto deadline = Clock::now() + 2s;
  while (queued(fd) < bytes && Clock::now() < deadline) ::poll(nullptr, 0, 1);
  ASSERT_GE(queued(fd), bytes);
}

// Waits (bounded) until poll() reports one of `events` on `fd`.
void wait_poll(int fd, short events) {
  pollfd p{fd, events, 0};
  ASSERT_EQ(::poll(&p, 1, 2000), 1) << "no event " << events << " on fd " << fd;
  ASSERT_NE(p.revents & events, 0);
}

// A reset instead of a FIN: SO_LINGER with a zero timeout, then close.
void reset_close(Fd& fd) {
  const linger l{1, 0};
  ASSERT_EQ(::setsockopt(fd.get(), SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
  fd.reset();
}

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

struct Outcome {
  std::uint64_t read = 0;
  int budget = 0, sink_full = 0, eof = 0;
};

// Moves `total` pattern bytes and then the EOF through the rig the way the proxy does:
// pump on every turn, shut the sink down on kEof. Checks every byte on arrival.
Outcome transfer(Rig& rig, std::uint64_t total, int rounds) {
  Outcome o;
  Received got;
  std::uint64_t sent = 0;
  bool shut = false;
  const auto deadline = Clock::now() + 5s;
  while (!got.eof) {
    const std::uint64_t sent_before = sent, got_before = got.bytes;
    feed(rig.src_peer(), sent, total);
    if (sent == total && !shut) {
      EXPECT_EQ(::shutdown(rig.src_peer(), SHUT_WR), 0);
      shut = true;
    }
    bool moved = false;
    if (!rig.d.done) {
      const PumpResult r = rig.pump(rounds);
      if (r.stop == PumpResult::kError) {
        ADD_FAILURE() << "pump: " << r.what << ": " << std::strerror(r.err);
        return o;
      }
      moved = r.moved;
      o.read += r.read;
      if (r.stop == PumpResult::kBudget) ++o.budget;
      if (r.stop == PumpResult::kSinkFull) ++o.sink_full;
      if (r.stop == PumpResult::kEof) {
        ++o.eof;
        EXPECT_TRUE(rig.d.done);
        EXPECT_EQ(rig.d.pending, 0u);
        EXPECT_EQ(::shutdown(rig.sink(), SHUT_WR), 0);
      }
    }
    drain(rig.sink_peer(), got);
    if (!moved && sent == sent_before && got.bytes == got_before) ::poll(nullptr, 0, 1);  // loopback in flight
    if (Clock::now() > deadline) {
      ADD_FAILURE() << "stuck: sent " << sent << ", received " << got.bytes << " of " << total;
      return o;
    }
  }
  EXPECT_EQ(got.bytes, total);
  EXPECT_EQ(got.first_bad, UINT64_MAX) << "first wrong byte at " << got.first_bad;
  EXPECT_EQ(o.read, total);
  EXPECT_EQ(o.eof, 1);
  return o;
}

// ---- PipePool ------------------------------------------------------------------------------

// A new pipe: both ends non-blocking (pump never waits) and of the size asked for.
TEST(PipePool, TakeMakesANonBlockingPipeOfTheAskedSize) {
  PipePool pool(4, 128 * 1024);
  Pipe p;
  EXPECT_FALSE(p.valid());
  ASSERT_TRUE(pool.take(p)) << std::strerror(errno);
  ASSERT_TRUE(p.valid());
  EXPECT_GE(p.w, 0);
  EXPECT_NE(::fcntl(p.r, F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(p.w, F_GETFL) & O_NONBLOCK, 0);
  EXPECT_NE(::fcntl(p.r, F_GETFD) & FD_CLOEXEC, 0);
  EXPECT_EQ(::fcntl(p.w, F_GETPIPE_SZ), 128 * 1024);
  EXPECT_EQ(pool.pooled(), 0u);  // a new pipe, not a pooled one
  // The ends are one pipe.
  ASSERT_EQ(::write(p.w, "x", 1), 1);
  char c = 0;
  EXPECT_EQ(::read(p.r, &c, 1), 1);
  EXPECT_EQ(c, 'x');
  const int r = p.r, w = p.w;
  p.close();
  EXPECT_FALSE(p.valid());
  EXPECT_EQ(p.w, -1);
  EXPECT_FALSE(fd_open(r));
  EXPECT_FALSE(fd_open(w));
  p.close();  // twice is harmless
}

// give() keeps at most max_pooled pipes (the rest are closed), take() hands pooled ones
// out again before it makes new ones, and the pool closes what it holds when it goes.
TEST(PipePool, KeepsAtMostMaxPooledAndReusesThem) {
  std::vector<int> fds;
  {
    PipePool pool(2);
    Pipe p[3];
    for (auto& x : p) {
      ASSERT_TRUE(pool.take(x));
      fds.push_back(x.r);
      fds.push_back(x.w);
    }
    EXPECT_NE(p[0].r, p[1].r);
    EXPECT_NE(p[1].r, p[2].r);
    const Pipe second = p[1], third = p[2];
    pool.give(p[0]);
    pool.give(p[1]);
    EXPECT_EQ(pool.pooled(), 2u);
    pool.give(p[2]);  // the pool is full: closed
    EXPECT_EQ(pool.pooled(), 2u);
    for (const auto& x : p) EXPECT_FALSE(x.valid());
    EXPECT_FALSE(fd_open(third.r));
    EXPECT_FALSE(fd_open(third.w));
    EXPECT_TRUE(fd_open(second.r));

    Pipe again;
    ASSERT_TRUE(pool.take(again));
    EXPECT_EQ(again.r, second.r);  // the last one given back
    EXPECT_EQ(again.w, second.w);
    EXPECT_EQ(pool.pooled(), 1u);

    Pipe none;
    pool.give(none);  // an invalid pipe is not pooled
    EXPECT_EQ(pool.pooled(), 1u);
    pool.give(again);
    EXPECT_EQ(pool.pooled(), 2u);
  }
  for (int fd : fds) EXPECT_FALSE(fd_open(fd)) << fd;
}

// The contract around a non-empty pipe: pump() never gives the pool a pipe with bytes in
// it (the direction holds it while the sink is full), gives it back once it is empty, and
// a pipe the pool hands out is empty. A caller that drops a flow closes a non-empty pipe
// instead (close() then give() is a no-op), as TcpProxy's end() does.
TEST(PipePool, PumpHoldsANonEmptyPipeAndReturnsItEmpty) {
  Pair out = unix_pair();
  set_int(out.a.get(), SOL_SOCKET, SO_SNDBUF, 4096);
  Rig rig(unix_pair(), std::move(out));
  std::uint64_t sent = 0;
  feed(rig.src_peer(), sent, 256 * 1024);
  PumpResult r = rig.pump();
  ASSERT_EQ(r.stop, PumpResult::kSinkFull);
  ASSERT_GT(rig.d.pending, 0u);
  ASSERT_TRUE(rig.d.pipe.valid());
  EXPECT_EQ(queued(rig.d.pipe.r), static_cast<int>(rig.d.pending));
  EXPECT_EQ(rig.pool.pooled(), 0u);  // not given back with bytes in it

  Received got;
  const auto deadline = Clock::now() + 5s;
  while (got.bytes < sent && Clock::now() < deadline) {
    drain(rig.sink_peer(), got);
    r = rig.pump();
    ASSERT_NE(r.stop, PumpResult::kError) << r.what << ": " << std::strerror(r.err);
  }
  drain(rig.sink_peer(), got);
  EXPECT_EQ(got.bytes, sent);
  EXPECT_EQ(got.first_bad, UINT64_MAX);
  EXPECT_EQ(rig.d.pending, 0u);
  EXPECT_FALSE(rig.d.pipe.valid());
  ASSERT_EQ(rig.pool.pooled(), 1u);
  Pipe back;
  ASSERT_TRUE(rig.pool.take(back));
  EXPECT_EQ(queued(back.r), 0);  // empty
  ASSERT_EQ(::write(back.w, "left over", 9), 9);
  back.close();  // what a caller does with bytes nobody will read
  rig.pool.give(back);
  EXPECT_EQ(rig.pool.pooled(), 0u);
}

// ---- pump(): the stops ---------------------------------------------------------------------

// Nothing to read: kDrained at once, nothing read or moved, and an idle direction holds no
// pipe, on the copy path as on the splice path (both take one and give it back).
TEST(SplicePump, EmptySourceDrains) {
  for (const bool bulk : {false, true}) {
    SCOPED_TRACE(bulk ? "splice path" : "copy path");
    Rig rig(unix_pair(), unix_pair());
    rig.d.bulk = bulk;
    const PumpResult r = rig.pump();
    EXPECT_EQ(r.stop, PumpResult::kDrained);
    EXPECT_EQ(r.read, 0u);
    EXPECT_FALSE(r.moved);
    EXPECT_EQ(r.err, 0);
    EXPECT_FALSE(rig.d.pipe.valid());
    EXPECT_EQ(rig.d.pending, 0u);
    EXPECT_FALSE(rig.d.done);
    EXPECT_EQ(rig.pool.pooled(), 1u);
  }
}

// A small message is copied whole in one call; with a sink that takes it all, the pipe
// (taken first, as the copy reads no more than it holds) goes back to the pool empty.
TEST(SplicePump, SmallMessageIsCopiedAndThePipeGoesBack) {
  Rig rig(unix_pair(), unix_pair());
  send_all(rig.src_peer(), "GET / HTTP/1.1\r\n\r\n");
  const PumpResult r = rig.pump();
  EXPECT_EQ(r.stop, PumpResult::kDrained);
  EXPECT_EQ(r.read, 18u);
  EXPECT_TRUE(r.moved);
  EXPECT_EQ(read_now(rig.sink_peer()), "GET / HTTP/1.1\r\n\r\n");
  EXPECT_FALSE(rig.d.pipe.valid());
  EXPECT_EQ(rig.pool.pooled(), 1u);
  EXPECT_FALSE(rig.d.bulk);
}

// A bulk run survives the small tail a wake usually ends with (16 KiB copied, then 1,000
// bytes spliced, then EAGAIN); a wake that brings less than 16 KiB in all ends it, and
// the next message is copied again.
TEST(SplicePump, ABulkRunEndsOnlyWhenAWakeBringsLittle) {
  Rig rig(unix_pair(), unix_pair());
  const std::string big(16384 + 1000, 'b');
  send_all(rig.src_peer(), big);
  PumpResult r = rig.pump();
  EXPECT_EQ(r.stop, PumpResult::kDrained);
  EXPECT_EQ(r.read, big.size());
  EXPECT_TRUE(rig.d.bulk);  // the 1,000-byte tail does not end it
  EXPECT_EQ(read_now(rig.sink_peer()), big);

  send_all(rig.src_peer(), std::string(100, 's'));
  r = rig.pump();  // spliced (still bulk), and little in all: the run ends
  EXPECT_EQ(r.stop, PumpResult::kDrained);
  EXPECT_EQ(r.read, 100u);
  EXPECT_FALSE(rig.d.bulk);
  EXPECT_EQ(read_now(rig.sink_peer()), std::string(100, 's'));

  send_all(rig.src_peer(), "next");
  r = rig.pump();  // copied: one recv, one send
  EXPECT_EQ(r.read, 4u);
  EXPECT_FALSE(rig.d.bulk);
  EXPECT_FALSE(rig.d.pipe.valid());
  EXPECT_EQ(read_now(rig.sink_peer()), "next");
}

// Bytes pass exactly: 4 MiB of patterned data, then the EOF, over AF_UNIX socketpairs, loopback
// TCP and a mix, with a small and a large budget and with read_all. Every byte is checked,
// `read` adds up to what was sent, and the direction ends done with its pipe in the pool.
TEST(SplicePump, PassesMiBsExactly) {
  constexpr std::uint64_t kTotal = 4u << 20;
  struct Case {
    const char* name;
    bool tcp_in, tcp_out;
  };
  for (const Case c : {Case{"unix to unix", false, false}, Case{"tcp to tcp", true, true},
                       Case{"tcp to unix", true, false}, Case{"unix to tcp", false, true}}) {
    for (const int rounds : {1, 16}) {
      for (const bool read_all : {false, true}) {
        SCOPED_TRACE(std::string(c.name) + ", rounds " + std::to_string(rounds) + (read_all ? ", read_all" : ""));
        Rig rig(c.tcp_in ? tcp_pair() : unix_pair(), c.tcp_out ? tcp_pair() : unix_pair());
        rig.d.read_all = read_all;
        transfer(rig, kTotal, rounds);
        EXPECT_TRUE(rig.d.done);
        EXPECT_FALSE(rig.d.pipe.valid());
        EXPECT_EQ(rig.pool.pooled(), 1u);  // one pipe at a time, back in the pool
        // A direction that is done does nothing more.
        const PumpResult r = rig.pump();
        EXPECT_EQ(r.stop, PumpResult::kDrained);
        EXPECT_FALSE(r.moved);
      }
    }
  }
}

// EOF after a short message: without read_all the short read ends the call (kDrained) and
// the next call finds the EOF; with read_all (the source said RDHUP) one call does both.
// pump() never shuts the sink down itself: that is the caller's job on kEof.
TEST(SplicePump, EofAfterAShortMessage) {
  for (const bool read_all : {false, true}) {
    SCOPED_TRACE(read_all ? "read_all" : "edge");
    Rig rig(unix_pair(), unix_pair());
    rig.d.read_all = read_all;
    send_all(rig.src_peer(), "bye");
    ASSERT_EQ(::shutdown(rig.src_peer(), SHUT_WR), 0);
    PumpResult r = rig.pump();
    if (!read_all) {
      EXPECT_EQ(r.stop, PumpResult::kDrained);
      EXPECT_EQ(r.read, 3u);
      EXPECT_FALSE(rig.d.done);
      r = rig.pump();
      EXPECT_EQ(r.read, 0u);
    } else {
      EXPECT_EQ(r.read, 3u);
    }
    EXPECT_EQ(r.stop, PumpResult::kEof);
    EXPECT_TRUE(rig.d.done);
    EXPECT_TRUE(rig.d.eof);
    EXPECT_FALSE(rig.d.pipe.valid());
    EXPECT_EQ(read_now(rig.sink_peer()), "bye");
    char c;
    EXPECT_EQ(::recv(rig.sink_peer(), &c, 1, MSG_DONTWAIT), -1);  // no EOF yet: the sink is open
    EXPECT_EQ(errno, EAGAIN);
  }
}

// An EOF with nothing before it, on TCP.
TEST(SplicePump, EofOfAnEmptyTcpSource) {
  Rig rig(tcp_pair(), tcp_pair());
  ASSERT_EQ(::shutdown(rig.src_peer(), SHUT_WR), 0);
  wait_poll(rig.src(), POLLRDHUP);
  const PumpResult r = rig.pump();
  EXPECT_EQ(r.stop, PumpResult::kEof);
  EXPECT_EQ(r.read, 0u);
  EXPECT_TRUE(rig.d.done);
}

// The EOF is forwarded only after the bytes before it: while the pipe holds bytes the sink
// did not take, the pump says kSinkFull (not kEof), and d.done comes with the last byte.
TEST(SplicePump, EofWaitsForPendingBytes) {
  constexpr std::uint64_t kTotal = 100000;  // fits the source's buffer, not the sink's
  Pair out = unix_pair();
  set_int(out.a.get(), SOL_SOCKET, SO_SNDBUF, 4096);
  Rig rig(unix_pair(), std::move(out));
  rig.d.read_all = true;
  std::uint64_t sent = 0;
  feed(rig.src_peer(), sent, kTotal);
  ASSERT_EQ(sent, kTotal);
  ASSERT_EQ(::shutdown(rig.src_peer(), SHUT_WR), 0);

  PumpResult r = rig.pump(1000);
  EXPECT_EQ(r.stop, PumpResult::kSinkFull);
  EXPECT_GT(rig.d.pending, 0u);
  EXPECT_FALSE(rig.d.done);
  Received got;
  std::uint64_t read = r.read;
  const auto deadline = Clock::now() + 5s;
  while (r.stop != PumpResult::kEof && Clock::now() < deadline) {
    EXPECT_FALSE(rig.d.done);
    drain(rig.sink_peer(), got);
    r = rig.pump(1000);
    ASSERT_NE(r.stop, PumpResult::kError) << r.what << ": " << std::strerror(r.err);
    read += r.read;
  }
  ASSERT_EQ(r.stop, PumpResult::kEof);
  EXPECT_TRUE(rig.d.done);
  EXPECT_EQ(rig.d.pending, 0u);
  EXPECT_EQ(read, kTotal);
  drain(rig.sink_peer(), got);
  EXPECT_EQ(got.bytes, kTotal);  // all of it was written before kEof
  EXPECT_EQ(got.first_bad, UINT64_MAX);
  EXPECT_FALSE(got.eof);
  EXPECT_EQ(rig.pool.pooled(), 1u);
}

// The sink takes less than one copied message: the rest waits in a pipe (kSinkFull,
// pending = what the sink did not take), a pump while the sink is still full moves nothing,
// and after the peer reads, pumping again delivers everything in order.
TEST(SplicePump, SinkFullKeepsTheRestAndResumes) {
  Pair out = unix_pair();
  set_int(out.a.get(), SOL_SOCKET, SO_SNDBUF, 4096);
  Rig rig(unix_pair(), std::move(out));
  std::uint64_t sent = 0;
  feed(rig.src_peer(), sent, 64 * 1024);
  ASSERT_EQ(sent, 64u * 1024);

  PumpResult r = rig.pump();
  ASSERT_EQ(r.stop, PumpResult::kSinkFull);
  EXPECT_EQ(r.read, 16384u);  // one copied read, the buffer's size
  EXPECT_TRUE(r.moved);
  EXPECT_GT(rig.d.pending, 0u);
  EXPECT_LT(rig.d.pending, 16384u);  // the sink took some
  EXPECT_EQ(rig.d.pending + static_cast<std::uint32_t>(queued(rig.sink_peer())), 16384u);
  EXPECT_TRUE(rig.d.bulk);  // a full read: go on with splice

  r = rig.pump();  // still full
  EXPECT_EQ(r.stop, PumpResult::kSinkFull);
  EXPECT_FALSE(r.moved);
  EXPECT_EQ(r.read, 0u);

  Received got;
  std::uint64_t read = 16384;
  const auto deadline = Clock::now() + 5s;
  while (got.bytes < sent && Clock::now() < deadline) {
    drain(rig.sink_peer(), got);
    r = rig.pump();
    ASSERT_NE(r.stop, PumpResult::kError) << r.what << ": " << std::strerror(r.err);
    read += r.read;
  }
  drain(rig.sink_peer(), got);
  EXPECT_EQ(got.bytes, sent);
  EXPECT_EQ(read, sent);
  EXPECT_EQ(got.first_bad, UINT64_MAX);
  EXPECT_EQ(r.stop, PumpResult::kDrained);
  EXPECT_EQ(rig.d.pending, 0u);
}

// The same over TCP: a sink whose peer does not read (small SO_SNDBUF and SO_RCVBUF) fills
// while the source still has bytes; once the peer reads, pumping again completes.
TEST(SplicePump, TcpSinkFullResumes) {
  TcpOpts sink_opts;
  sink_opts.a_sndbuf = 4096;
  sink_opts.b_rcvbuf = 4096;
  TcpOpts src_opts;
  src_opts.a_sndbuf = 1 << 20;
  src_opts.b_rcvbuf = 1 << 20;
  Rig rig(tcp_pair(src_opts), tcp_pair(sink_opts));
  constexpr std::uint64_t kTotal = 2u << 20;
  std::uint64_t sent = 0;
  feed(rig.src_peer(), sent, kTotal);
  ASSERT_GT(sent, 128u * 1024);
  wait_queued(rig.src(), 128 * 1024);

  PumpResult r = rig.pump(1000);
  ASSERT_EQ(r.stop, PumpResult::kSinkFull);
  EXPECT_GT(rig.d.pending, 0u);
  EXPECT_TRUE(rig.d.pipe.valid());
  EXPECT_GT(queued(rig.src()), 0);  // the source still has bytes: the sink stopped it
  std::uint64_t read = r.read;

  Received got;
  const auto deadline = Clock::now() + 5s;
  while (got.bytes < kTotal && Clock::now() < deadline) {
    feed(rig.src_peer(), sent, kTotal);
    drain(rig.sink_peer(), got);
    r = rig.pump(1000);
    ASSERT_NE(r.stop, PumpResult::kError) << r.what << ": " << std::strerror(r.err);
    read += r.read;
    if (!r.moved) ::poll(nullptr, 0, 1);
  }
  EXPECT_EQ(got.bytes, kTotal);
  EXPECT_EQ(read, kTotal);
  EXPECT_EQ(got.first_bad, UINT64_MAX);
}

// rounds=1 with more to read than one splice takes: kBudget, with the bytes read so far
// written out (nothing pending, the pipe back in the pool) and the rest still queued at the
// source for the next turn.
TEST(SplicePump, BudgetEndsARunWithMoreToRead) {
  Pair out = unix_pair();
  set_int(out.a.get(), SOL_SOCKET, SO_SNDBUF, 1 << 20);
  Rig rig(unix_pair(), std::move(out), 4, 64 * 1024);  // a splice moves at most 64 KiB
  constexpr std::uint64_t kTotal = 160 * 1024;
  std::uint64_t sent = 0;
  feed(rig.src_peer(), sent, kTotal);
  ASSERT_EQ(sent, kTotal);

  const PumpResult r = rig.pump(1);
  ASSERT_EQ(r.stop, PumpResult::kBudget);
  EXPECT_TRUE(r.moved);
  EXPECT_GT(r.read, 16384u);  // the copy and one splice
  EXPECT_LE(r.read, 16384u + 64 * 1024);
  EXPECT_EQ(rig.d.pending, 0u);
  EXPECT_FALSE(rig.d.pipe.valid());
  EXPECT_EQ(rig.pool.pooled(), 1u);
  EXPECT_EQ(static_cast<std::uint64_t>(queued(rig.sink_peer())), r.read);
  EXPECT_EQ(static_cast<std::uint64_t>(queued(rig.src())), kTotal - r.read);

  // The next turns finish it.
  ASSERT_EQ(::shutdown(rig.src_peer(), SHUT_WR), 0);
  Received got;
  drain(rig.sink_peer(), got);
  std::uint64_t read = r.read;
  PumpResult next;
  for (int turn = 0; turn < 100 && next.stop != PumpResult::kEof; ++turn) {
    next = rig.pump(1);
    ASSERT_NE(next.stop, PumpResult::kError) << next.what << ": " << std::strerror(next.err);
    read += next.read;
    drain(rig.sink_peer(), got);
  }
  EXPECT_EQ(next.stop, PumpResult::kEof);
  EXPECT_EQ(read, kTotal);
  EXPECT_EQ(got.bytes, kTotal);
  EXPECT_EQ(got.first_bad, UINT64_MAX);
}

// ---- pump(): errors ------------------------------------------------------------------------

// A sink whose peer reset the connection: kError from "write" with ECONNRESET or EPIPE, on
// the copy path (a small message) and on the splice path (bytes already in the pipe).
TEST(SplicePump, ResetSinkIsAWriteError) {
  ignore_sigpipe();
  {
    SCOPED_TRACE("copy path");
    Rig rig(unix_pair(), tcp_pair());
    reset_close(rig.out.b);
    wait_poll(rig.sink(), POLLHUP | POLLERR);
    send_all(rig.src_peer(), "hello");
    const PumpResult r = rig.pump();
    EXPECT_EQ(r.stop, PumpResult::kError);
    EXPECT_TRUE(r.err == ECONNRESET || r.err == EPIPE) << std::strerror(r.err);
    EXPECT_STREQ(r.what, "write");
    EXPECT_EQ(r.read, 5u);
  }
  {
    SCOPED_TRACE("splice path");
    TcpOpts sink_opts;
    sink_opts.a_sndbuf = 4096;
    sink_opts.b_rcvbuf = 4096;
    Rig rig(unix_pair(), tcp_pair(sink_opts));
    std::uint64_t sent = 0;
    feed(rig.src_peer(), sent, 150 * 1024);
    PumpResult r = rig.pump(1000);
    ASSERT_EQ(r.stop, PumpResult::kSinkFull);
    ASSERT_GT(rig.d.pending, 0u);
    reset_close(rig.out.b);
    wait_poll(rig.sink(), POLLHUP | POLLERR);
    r = rig.pump(1000);
    EXPECT_EQ(r.stop, PumpResult::kError);
    EXPECT_TRUE(r.err == ECONNRESET || r.err == EPIPE) << std::strerror(r.err);
    EXPECT_STREQ(r.what, "write");
    EXPECT_GT(rig.d.pending, 0u);  // the caller closes the pipe, bytes and all
    EXPECT_TRUE(rig.d.pipe.valid());
    rig.d.pipe.close();
  }
}

// An AF_UNIX sink whose peer is gone: EPIPE from "write" (and no SIGPIPE on the copy path).
TEST(SplicePump, ClosedUnixSinkIsEpipe) {
  ::signal(SIGPIPE, SIG_DFL);  // MSG_NOSIGNAL: the copy path must not need SIG_IGN
  Rig rig(unix_pair(), unix_pair());
  rig.out.b.reset();
  send_all(rig.src_peer(), "hello");
  const PumpResult r = rig.pump();
  ignore_sigpipe();
  EXPECT_EQ(r.stop, PumpResult::kError);
  EXPECT_EQ(r.err, EPIPE) << std::strerror(r.err);
  EXPECT_STREQ(r.what, "write");
}

// A source whose peer reset the connection: kError from "read" (ECONNRESET), on both paths.
TEST(SplicePump, ResetSourceIsAReadError) {
  for (const bool bulk : {false, true}) {
    SCOPED_TRACE(bulk ? "splice path" : "copy path");
    Rig rig(tcp_pair(), unix_pair());
    rig.d.bulk = bulk;
    reset_close(rig.in.a);
    wait_poll(rig.src(), POLLHUP | POLLERR);
    const PumpResult r = rig.pump();
    EXPECT_EQ(r.stop, PumpResult::kError);
    EXPECT_EQ(r.err, ECONNRESET) << std::strerror(r.err);
    EXPECT_STREQ(r.what, "read");
    EXPECT_EQ(r.read, 0u);
  }
}

// ---- urgent data ---------------------------------------------------------------------------

// TCP urgent data with SO_OOBINLINE: splice stops at the urgent mark (EAGAIN with bytes still
// queued), so without d.urgent the splice path leaves the rest; with d.urgent (EPOLLPRI) a
// plain read passes the mark and the urgent byte arrives in the stream, in order.
TEST(SplicePump, UrgentByteArrivesInStream) {
  Rig rig(tcp_pair(), unix_pair());
  set_int(rig.src(), SOL_SOCKET, SO_OOBINLINE, 1);
  set_int(rig.src_peer(), IPPROTO_TCP, TCP_NODELAY, 1);
  send_all(rig.src_peer(), "abc");
  send_all(rig.src_peer(), "!", MSG_OOB);
  send_all(rig.src_peer(), "def");
  wait_queued(rig.src(), 7);
  wait_poll(rig.src(), POLLPRI);

  rig.d.bulk = true;  // the splice path, where the mark matters
  PumpResult r = rig.pump();
  EXPECT_EQ(r.stop, PumpResult::kDrained);
  EXPECT_EQ(r.read, 3u);
  EXPECT_EQ(read_now(rig.sink_peer()), "abc");
  EXPECT_EQ(queued(rig.src()), 4);  // stuck at the mark

  rig.d.urgent = true;
  r = rig.pump();
  EXPECT_EQ(r.stop, PumpResult::kDrained);
  EXPECT_EQ(r.read, 4u);
  EXPECT_FALSE(rig.d.urgent);  // nothing at the mark any more
  EXPECT_EQ(read_now(rig.sink_peer()), "!def");
  EXPECT_EQ(queued(rig.src()), 0);

  // After the mark, the stream goes on as usual.
  send_all(rig.src_peer(), "more");
  wait_queued(rig.src(), 4);
  r = rig.pump();
  EXPECT_EQ(r.read, 4u);
  EXPECT_EQ(read_now(rig.sink_peer()), "more");
}

// The same with d.urgent set from the start: one call delivers all of it in order.
TEST(SplicePump, UrgentFromTheStart) {
  Rig rig(tcp_pair(), tcp_pair());
  set_int(rig.src(), SOL_SOCKET, SO_OOBINLINE, 1);
  set_int(rig.src_peer(), IPPROTO_TCP, TCP_NODELAY, 1);
  send_all(rig.src_peer(), "GET");
  send_all(rig.src_peer(), "\xff", MSG_OOB);
  send_all(rig.src_peer(), "tail");
  wait_queued(rig.src(), 8);
  rig.d.urgent = true;
  const PumpResult r = rig.pump();
  EXPECT_EQ(r.stop, PumpResult::kDrained);
  EXPECT_EQ(r.read, 8u);
  EXPECT_FALSE(rig.d.urgent);
  wait_queued(rig.sink_peer(), 8);
  EXPECT_EQ(read_now(rig.sink_peer()), "GET\xfftail");
}

// ---- a pipe smaller than the copy buffer -------------------------------------------------

// A pipe smaller than the copy buffer (16 KiB) is what PipePool gets once the user's pipes
// pass fs.pipe-user-pages-soft without CAP_SYS_RESOURCE (new pipes have 2 pages and
// F_SETPIPE_SZ fails): about 80 pipes of 1 MiB, after the privilege drop. The copy path
// used to write more than the pipe holds: a short write, kError "pipe" with d.pending 0,
// and the caller gave the full pipe back to the pool, where it stalled the next bulk flow.
// Now no more is read than the pipe holds, and the transfer completes.
TEST(SplicePump, SinkFullWithAPipeSmallerThanTheCopyBuffer) {
  Pair out = unix_pair();
  set_int(out.a.get(), SOL_SOCKET, SO_SNDBUF, 4096);
  Rig rig(unix_pair(), std::move(out), 4, 8192);
  transfer(rig, 256 * 1024, 16);
  ASSERT_EQ(rig.pool.pooled(), 1u);
  Pipe back;
  ASSERT_TRUE(rig.pool.take(back));
  EXPECT_EQ(queued(back.r), 0);  // never pooled with bytes in it
  back.close();
}

}  // namespace
}  // namespace splitd::proxy
