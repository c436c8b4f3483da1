// lab-load udp-download: one UDP flow at full rate, server to client (a QUIC download).
// One connected socket asks lab-load serve for a stream of numbered datagrams
// (download_wire.hpp) for warm-up + duration seconds and counts what arrives: datagrams
// and Mbit/s received after the warm-up, and the loss over the whole stream against
// the count the server reports at its end.

#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "common.hpp"
#include "download_wire.hpp"
#include "modes.hpp"

namespace splitd::bench {
namespace {

constexpr unsigned kBatch = 64;
constexpr int kSocketBuffer = 8 * 1024 * 1024;
// The request is repeated until the first datagram comes (UDP may lose it), this often.
constexpr Nanos kRequestRetry = 200'000'000;
constexpr int kRequestTries = 10;
// After the stream's end, how long the end marker may take before the run fails (the
// loss would be unknown), and how long stragglers may come after it.
constexpr Nanos kEndGrace = 3'000'000'000;
constexpr Nanos kLinger = 20'000'000;
// Sequence numbers beyond this are not tracked (2^31 datagrams: hours at full rate).
constexpr std::uint64_t kMaxSeq = std::uint64_t{1} << 31;

struct DownloadOptions {
  Endpoint target;
  std::uint32_t size = 1200;
  std::uint64_t rate = 0;
  double duration = 10;
  double warmup = 0.5;
  std::string device;
};

struct DownloadResult {
  std::uint64_t server_sent = 0;
  std::uint64_t received = 0;  // distinct sequence numbers, whole stream
  std::uint64_t received_measured = 0;
  std::uint64_t duplicates = 0;
  std::uint64_t gaps = 0;       // times a datagram came with a higher number than the next due
  std::uint64_t reordered = 0;  // came after a higher-numbered one
  std::uint64_t odd = 0;        // wrong size, other session, or beyond kMaxSeq
  std::uint64_t refused = 0;
  int requests = 0;
  Nanos first_rx = 0;
  Nanos last_rx = 0;
  Nanos measure_from = 0;
};

// The client: one socket, one epoll loop, one thread.
class DownloadClient {
 public:
  explicit DownloadClient(const DownloadOptions& o) : o_(o) {}

  DownloadResult run() {
    fd_ = connected_udp_socket(o_.target, o_.device, kSocketBuffer);
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) fail_errno("epoll_create1", errno);
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd_.get(), &ev) != 0) {
      fail_errno("epoll_ctl", errno);
    }
    // Never 0: the server remembers recent sessions in a zero-filled ring.
    while (session_ == 0) {
      if (::getrandom(&session_, sizeof session_, 0) != sizeof session_) {
        session_ = static_cast<std::uint64_t>(now_ns()) ^ static_cast<std::uint64_t>(::getpid());
      }
    }
    const auto stream_ms =
        static_cast<std::uint32_t>(std::llround((o_.warmup + o_.duration) * 1000.0));
    if (stream_ms == 0 || stream_ms > download::kMaxDurationMs) {
      throw UsageError("udp-download: --warmup + --duration must be 0.001..3600 s");
    }
    download::Request req{session_, stream_ms, o_.size, o_.rate};
    download::encode_request(req, request_);
    buf_ = std::make_unique_for_overwrite<char[]>(kBatch * static_cast<size_t>(o_.size));
    for (unsigned j = 0; j < kBatch; ++j) {
      iov_[j] = {buf_.get() + j * static_cast<size_t>(o_.size), o_.size};
      msgs_[j].msg_hdr.msg_iov = &iov_[j];
      msgs_[j].msg_hdr.msg_iovlen = 1;
    }

    const Nanos t0 = now_ns();
    Nanos asked_at = t0;
    send_request();
    // The stream cannot outlast this (its length plus the grace for the end marker).
    Nanos deadline = t0 + static_cast<Nanos>(stream_ms) * 1'000'000 + kEndGrace;
    Nanos ended_at = 0;
    std::array<epoll_event, 4> events{};
    for (;;) {
      const Nanos now = now_ns();
      if (stop_requested()) fail("interrupted");
      if (ended_at != 0 && now >= ended_at + kLinger) break;
      if (r_.first_rx == 0 && now >= asked_at + kRequestRetry) {
        if (r_.requests >= kRequestTries) {
          fail("no datagram from " + o_.target.text + " after " + std::to_string(r_.requests) +
               " requests (" + std::to_string(r_.refused) +
               " port unreachable): is lab-load serve there?");
        }
        asked_at = now;
        deadline = now + static_cast<Nanos>(stream_ms) * 1'000'000 + kEndGrace;
        send_request();
      }
      if (now >= deadline) {
        fail("the stream's end marker did not come (" + std::to_string(r_.received) +
             " datagrams received): the loss is unknown");
      }
      Nanos next = deadline;
      if (ended_at != 0) next = std::min(next, ended_at + kLinger);
      if (r_.first_rx == 0) next = std::min(next, asked_at + kRequestRetry);
      const int timeout_ms =
          next <= now ? 0
                      : static_cast<int>(std::min<Nanos>((next - now + 999'999) / 1'000'000, 1000));
      const int n = ::epoll_pwait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                                  timeout_ms, &stop_wait_mask());
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno("epoll_wait", errno);
      }
      if (n > 0 && receive_all() && ended_at == 0) ended_at = now_ns();
    }
    return r_;
  }

 private:
  void send_request() {
    ++r_.requests;
    if (::send(fd_.get(), request_, sizeof request_, 0) < 0) {
      if (errno == ECONNREFUSED) {
        ++r_.refused;  // an earlier request's port unreachable
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fail_errno("send", errno);
      }
    }
  }

  // Reads everything queued; true if the end marker was among it.
  bool receive_all() {
    bool ended = false;
    for (;;) {
      const int n = ::recvmmsg(fd_.get(), msgs_.data(), kBatch, MSG_DONTWAIT, nullptr);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return ended;
        if (errno == ECONNREFUSED) {
          ++r_.refused;
          continue;
        }
        if (errno == EINTR) continue;
        fail_errno("recvmmsg", errno);
      }
      const Nanos t = now_ns();
      for (int j = 0; j < n; ++j) {
        const char* p = buf_.get() + static_cast<size_t>(j) * o_.size;
        const size_t len = msgs_[j].msg_len;
        if ((msgs_[j].msg_hdr.msg_flags & MSG_TRUNC) != 0 || len < download::kHeaderSize ||
            download::get64(p) != session_) {
          ++r_.odd;
          continue;
        }
        const std::uint64_t seq = download::get64(p + 8);
        if (seq == download::kEndSeq && len == download::kEndSize) {
          r_.server_sent = download::get64(p + 16);
          ended = ended || !got_end_;
          got_end_ = true;
          continue;
        }
        if (len != o_.size || seq >= kMaxSeq) {
          ++r_.odd;
          continue;
        }
        on_data(seq, t);
      }
      if (static_cast<unsigned>(n) < kBatch) return ended;
    }
  }

  void on_data(std::uint64_t seq, Nanos t) {
    const size_t word = seq / 64;
    if (word >= seen_.size()) seen_.resize(std::max(word + 1, seen_.size() * 2), 0);
    const std::uint64_t bit = std::uint64_t{1} << (seq % 64);
    if ((seen_[word] & bit) != 0) {
      ++r_.duplicates;
      return;
    }
    seen_[word] |= bit;
    if (r_.first_rx == 0) {
      r_.first_rx = t;
      r_.measure_from = t + seconds_to_ns(o_.warmup);
    }
    r_.last_rx = t;
    ++r_.received;
    if (t >= r_.measure_from) ++r_.received_measured;
    if (seq > next_seq_) ++r_.gaps;
    if (seq + 1 > next_seq_) {
      next_seq_ = seq + 1;
    } else {
      ++r_.reordered;
    }
  }

  const DownloadOptions& o_;
  Fd fd_;
  Fd epoll_;
  std::uint64_t session_ = 0;
  char request_[download::kRequestSize]{};
  std::unique_ptr<char[]> buf_;
  std::array<iovec, kBatch> iov_{};
  std::array<mmsghdr, kBatch> msgs_{};
  std::vector<std::uint64_t> seen_;  // a bit per sequence number
  std::uint64_t next_seq_ = 0;
  bool got_end_ = false;
  DownloadResult r_;
};

}  // namespace

int run_udp_download(int argc, char** argv) {
  const Args args(
      "udp-download", argc, argv,
      {{"--target"}, {"--size"}, {"--rate"}, {"--duration"}, {"--warmup"}, {"--bind-dev"}});
  DownloadOptions o;
  o.target = parse_endpoint(args.required("--target"), "udp-download: --target");
  o.size = static_cast<std::uint32_t>(
      args.integer("--size", 1200, download::kHeaderSize, download::kMaxSize));
  o.rate = args.integer("--rate", 0, 0, 100'000'000);
  o.duration = args.seconds("--duration", 10.0, 0.001);
  o.warmup = args.seconds("--warmup", 0.5, 0.0);
  o.device = args.device();
  install_stop_signals(/*block=*/true);

  DownloadClient client(o);
  const DownloadResult r = client.run();
  if (r.odd > 0) {
    std::fprintf(stderr, "lab-load udp-download: %llu datagrams of the wrong size or session\n",
                 static_cast<unsigned long long>(r.odd));
  }
  const double seconds =
      r.last_rx > r.measure_from ? ns_to_seconds(r.last_rx - r.measure_from) : 0.0;
  const auto measured = static_cast<double>(r.received_measured);
  const std::uint64_t lost = r.server_sent > r.received ? r.server_sent - r.received : 0;
  print_json(
      Json()
          .field("mode", "udp-download")
          .field("size", std::uint64_t{o.size})
          .field("rate_asked", o.rate)
          .field("requests", static_cast<std::uint64_t>(r.requests))
          .field("server_sent", r.server_sent)
          .field("received", r.received)
          .field("lost", lost)
          .field("loss_pct", loss_pct(lost, r.server_sent))
          .field("duplicates", r.duplicates)
          .field("gaps", r.gaps)
          .field("reordered", r.reordered)
          .field("measured_s", seconds)
          .field("received_measured", r.received_measured)
          .field("datagrams_per_s", seconds > 0 ? measured / seconds : 0.0, 1)
          .field("mbit_per_s", seconds > 0 ? measured * o.size * 8 / seconds / 1e6 : 0.0));
  return 0;
}

}  // namespace splitd::bench
