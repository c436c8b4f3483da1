#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace splitd::proxy {

// The UDP relay's system-call seam: datagrams are read with one recvmmsg per batch and
// written with as few sendmsg/sendmmsg calls as the batch allows, coalescing runs of
// equal-sized datagrams to one destination into one UDP GSO send (UDP_SEGMENT), where the
// kernel crosses its stack once for the run instead of once per datagram. Works on any
// UDP sockets (loopback in tests, no privilege needed). Not thread-safe: one per worker.

// One datagram of a RecvBatch. `data` lies in the batch's buffer until its next read().
struct Datagram {
  std::span<const std::uint8_t> data;
  const sockaddr_storage* from = nullptr;
  // The original destination (IP_ORIGDSTADDR / IPV6_ORIGDSTADDR), or null.
  const sockaddr_storage* original_destination = nullptr;
  // Set by UDP_GRO: `data` is several datagrams of this size (the last may be shorter)
  // coalesced by the kernel. 0: one datagram.
  std::uint16_t segment = 0;
};

class RecvBatch {
 public:
  static constexpr std::size_t kMaxDatagram = 65535;  // also a GRO super-datagram's bound
  explicit RecvBatch(unsigned count = 32);
  RecvBatch(const RecvBatch&) = delete;
  RecvBatch& operator=(const RecvBatch&) = delete;

  // Reads what `fd` has, up to the batch size, without waiting. The count, 0 when there
  // was nothing (EAGAIN), or -errno. Truncated datagrams (cannot happen below 64 KiB) and
  // datagrams without the original destination when `need_destination` are dropped.
  int read(int fd, bool need_destination);
  const Datagram& operator[](std::size_t i) const { return out_[i]; }
  unsigned capacity() const { return count_; }

 private:
  unsigned count_;
  std::unique_ptr<std::uint8_t[]> buffer_;  // count_ × kMaxDatagram, not zero-filled
  std::vector<mmsghdr> msgs_;
  std::vector<iovec> iovs_;
  std::vector<sockaddr_storage> names_, destinations_;
  struct alignas(cmsghdr) Control {
    std::uint8_t b[CMSG_SPACE(sizeof(sockaddr_in6)) + CMSG_SPACE(sizeof(int)) + 32];
  };
  std::vector<Control> controls_;
  std::vector<Datagram> out_;
};

// Outgoing datagrams, queued until flush(). A queued datagram's bytes must stay valid
// until then (they usually lie in the RecvBatch they were read into: flush before the
// next read). Consecutive datagrams on one socket to one destination, all of one size but
// the last, go out as one GSO send while the socket's `gso` flag says it can take them; a
// socket that refuses GSO (a tun device without offloads, IPsec) gets the flag cleared
// and its datagrams sent one by one from then on.
class SendBatch {
 public:
  static constexpr std::size_t kMaxSegments = 64;     // UDP_MAX_SEGMENTS on older kernels
  static constexpr std::size_t kMaxGsoBytes = 65000;  // payload of one GSO send

  struct Stats {
    std::uint64_t calls = 0;      // sendmsg/sendmmsg calls
    std::uint64_t datagrams = 0;  // datagrams handed to the kernel
    std::uint64_t gso_sends = 0;  // sends that carried more than one datagram
    std::uint64_t dropped = 0;    // refused (EAGAIN: a full socket buffer; other errors)
  };

  explicit SendBatch(std::size_t capacity = 64);

  // `segment` > 0: `data` is already several datagrams of that size (from UDP_GRO).
  // `gso` may be null (never coalesce). Flushes by itself when full.
  void queue(int fd, const sockaddr_storage& to, socklen_t to_len, std::span<const std::uint8_t> data,
             std::uint16_t segment, bool* gso);
  void flush();
  bool empty() const { return entries_.empty(); }
  const Stats& stats() const { return stats_; }
  // The last error a send met other than EAGAIN (0 for none), for the caller's debug log.
  int take_error() { return std::exchange(last_error_, 0); }

  // On/off for every socket (tests compare both).
  void set_gso(bool on) { gso_allowed_ = on; }

 private:
  struct Entry {
    int fd;
    socklen_t to_len;
    sockaddr_storage to;
    std::span<const std::uint8_t> data;
    std::uint16_t segment;
    bool* gso;
  };
  void send_plain(std::size_t first, std::size_t last);  // [first, last) one by one
  bool send_gso(std::size_t first, std::size_t last, std::uint16_t segment);

  std::size_t capacity_;
  std::vector<Entry> entries_;
  std::vector<mmsghdr> msgs_;
  std::vector<iovec> iovs_;
  Stats stats_;
  int last_error_ = 0;
  bool gso_allowed_ = true;
};

}  // namespace splitd::proxy
