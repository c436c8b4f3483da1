#include "proxy/udp_batch.hpp"

#include <netinet/udp.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace splitd::proxy {

namespace {
#ifndef UDP_SEGMENT
constexpr int UDP_SEGMENT = 103;
#endif
#ifndef UDP_GRO
constexpr int UDP_GRO = 104;
#endif
}  // namespace

RecvBatch::RecvBatch(unsigned count)
    : count_(count == 0 ? 1 : count),
      buffer_(new std::uint8_t[static_cast<std::size_t>(count_) * kMaxDatagram]),
      msgs_(count_),
      iovs_(count_),
      names_(count_),
      destinations_(count_),
      controls_(count_),
      out_(count_) {
  for (unsigned i = 0; i < count_; ++i) {
    iovs_[i] = {buffer_.get() + static_cast<std::size_t>(i) * kMaxDatagram, kMaxDatagram};
  }
}

int RecvBatch::read(int fd, bool need_destination) {
  for (unsigned i = 0; i < count_; ++i) {
    msghdr& h = msgs_[i].msg_hdr;
    h.msg_name = &names_[i];
    h.msg_namelen = sizeof(sockaddr_storage);
    h.msg_iov = &iovs_[i];
    h.msg_iovlen = 1;
    h.msg_control = controls_[i].b;
    h.msg_controllen = sizeof controls_[i].b;
    h.msg_flags = 0;
    msgs_[i].msg_len = 0;
  }
  int n;
  do {
    n = ::recvmmsg(fd, msgs_.data(), count_, MSG_DONTWAIT, nullptr);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    msghdr& h = msgs_[static_cast<std::size_t>(i)].msg_hdr;
    if (h.msg_flags & MSG_TRUNC) continue;
    Datagram d;
    d.data = {static_cast<const std::uint8_t*>(iovs_[static_cast<std::size_t>(i)].iov_base),
              msgs_[static_cast<std::size_t>(i)].msg_len};
    d.from = &names_[static_cast<std::size_t>(i)];
    for (cmsghdr* c = CMSG_FIRSTHDR(&h); c != nullptr; c = CMSG_NXTHDR(&h, c)) {
      if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR) ||
          (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR)) {
        sockaddr_storage& dst = destinations_[static_cast<std::size_t>(i)];
        std::memset(&dst, 0, sizeof dst);
        std::memcpy(&dst, CMSG_DATA(c), std::min<std::size_t>(c->cmsg_len - CMSG_LEN(0), sizeof dst));
        d.original_destination = &dst;
      } else if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
        int size = 0;
        std::memcpy(&size, CMSG_DATA(c), sizeof size);
        if (size > 0 && static_cast<std::size_t>(size) < d.data.size()) d.segment = static_cast<std::uint16_t>(size);
      }
    }
    if (need_destination && d.original_destination == nullptr) continue;
    out_[static_cast<std::size_t>(kept++)] = d;
  }
  return kept;
}

SendBatch::SendBatch(std::size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {
  entries_.reserve(capacity_);
}

void SendBatch::queue(int fd, const sockaddr_storage& to, socklen_t to_len, std::span<const std::uint8_t> data,
                      std::uint16_t segment, bool* gso) {
  if (entries_.size() >= capacity_) flush();
  Entry& e = entries_.emplace_back();
  e.fd = fd;
  e.to_len = to_len;
  std::memcpy(&e.to, &to, to_len);
  e.data = data;
  e.segment = segment;
  e.gso = gso;
}

namespace {
std::size_t segments_of(std::size_t bytes, std::uint16_t segment) {
  return segment == 0 ? 1 : (bytes + segment - 1) / segment;
}
bool same_destination(const sockaddr_storage& a, socklen_t a_len, const sockaddr_storage& b, socklen_t b_len) {
  return a_len == b_len && std::memcmp(&a, &b, a_len) == 0;
}
}  // namespace

void SendBatch::flush() {
  const std::size_t n = entries_.size();
  constexpr std::size_t kNone = ~std::size_t{0};
  std::size_t plain = kNone;  // the start of a run of one-by-one entries on one socket
  const auto end_plain = [&](std::size_t end) {
    if (plain != kNone) send_plain(plain, end);
    plain = kNone;
  };
  std::size_t i = 0;
  while (i < n) {
    const Entry& e = entries_[i];
    const bool can_gso = gso_allowed_ && e.gso != nullptr && *e.gso;
    std::size_t j = i + 1;
    std::uint16_t segment = e.segment;
    if (can_gso && e.segment == 0 && !e.data.empty() && e.data.size() <= 0xffff) {
      // A run: same socket and destination, every datagram as big as the first but the
      // last, which may be shorter (GSO's rule), within the segment and byte limits.
      const std::size_t size = e.data.size();
      std::size_t total = size;
      while (j < n && j - i < kMaxSegments) {
        const Entry& f = entries_[j];
        if (f.fd != e.fd || f.segment != 0 || f.data.empty() || f.data.size() > size ||
            total + f.data.size() > kMaxGsoBytes || !same_destination(f.to, f.to_len, e.to, e.to_len)) {
          break;
        }
        total += f.data.size();
        ++j;
        if (f.data.size() < size) break;
      }
      segment = static_cast<std::uint16_t>(size);
    }
    if (can_gso && (j - i >= 2 || e.segment != 0)) {
      end_plain(i);
      if (send_gso(i, j, segment)) {
        i = j;
        continue;
      }
      // The socket refused GSO (its flag is now cleared): these go one by one.
    }
    if (plain != kNone && entries_[plain].fd != e.fd) end_plain(i);
    if (plain == kNone) plain = i;
    i = j;
  }
  end_plain(n);
  entries_.clear();
}

bool SendBatch::send_gso(std::size_t first, std::size_t last, std::uint16_t segment) {
  const Entry& e = entries_[first];
  iovs_.clear();
  std::size_t datagrams = 0;
  for (std::size_t k = first; k < last; ++k) {
    const Entry& f = entries_[k];
    iovs_.push_back({const_cast<std::uint8_t*>(f.data.data()), f.data.size()});
    datagrams += f.segment != 0 ? segments_of(f.data.size(), f.segment) : 1;
  }
  alignas(cmsghdr) std::uint8_t control[CMSG_SPACE(sizeof(std::uint16_t))] = {};
  msghdr h{};
  h.msg_name = const_cast<sockaddr_storage*>(&e.to);
  h.msg_namelen = e.to_len;
  h.msg_iov = iovs_.data();
  h.msg_iovlen = iovs_.size();
  h.msg_control = control;
  h.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&h);
  c->cmsg_level = SOL_UDP;
  c->cmsg_type = UDP_SEGMENT;
  c->cmsg_len = CMSG_LEN(sizeof(std::uint16_t));
  std::memcpy(CMSG_DATA(c), &segment, sizeof segment);
  ssize_t r;
  do {
    r = ::sendmsg(e.fd, &h, MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  ++stats_.calls;
  if (r >= 0) {
    stats_.datagrams += datagrams;
    ++stats_.gso_sends;
    return true;
  }
  switch (errno) {
    case EIO:          // no checksum offload on the route's device, or IPsec
    case EINVAL:       // segment + headers above the path MTU, too many segments
    case EOPNOTSUPP:
    case ENOPROTOOPT:  // a kernel without UDP_SEGMENT
    case EMSGSIZE:
      *e.gso = false;
      return false;
    case EAGAIN:
      stats_.dropped += datagrams;
      return true;
    default:
      last_error_ = errno;
      stats_.dropped += datagrams;
      return true;
  }
}

void SendBatch::send_plain(std::size_t first, std::size_t last) {
  iovs_.clear();
  for (std::size_t k = first; k < last; ++k) {
    const Entry& f = entries_[k];
    if (f.segment == 0) {
      iovs_.push_back({const_cast<std::uint8_t*>(f.data.data()), f.data.size()});
      continue;
    }
    for (std::size_t off = 0; off < f.data.size(); off += f.segment) {  // a GRO datagram, split
      iovs_.push_back({const_cast<std::uint8_t*>(f.data.data() + off),
                       std::min<std::size_t>(f.segment, f.data.size() - off)});
    }
  }
  msgs_.resize(iovs_.size());
  std::size_t m = 0;
  for (std::size_t k = first; k < last; ++k) {
    const Entry& f = entries_[k];
    for (std::size_t s = 0, count = segments_of(f.data.size(), f.segment); s < count; ++s, ++m) {
      msghdr& h = msgs_[m].msg_hdr;
      h = {};
      h.msg_name = const_cast<sockaddr_storage*>(&f.to);
      h.msg_namelen = f.to_len;
      h.msg_iov = &iovs_[m];
      h.msg_iovlen = 1;
      msgs_[m].msg_len = 0;
    }
  }
  const int fd = entries_[first].fd;
  std::size_t done = 0;
  while (done < m) {
    const int r = ::sendmmsg(fd, msgs_.data() + done, static_cast<unsigned>(m - done), MSG_DONTWAIT);
    if (r < 0 && errno == EINTR) continue;
    ++stats_.calls;
    if (r > 0) {
      done += static_cast<std::size_t>(r);
      stats_.datagrams += static_cast<std::size_t>(r);
      continue;
    }
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      stats_.dropped += m - done;  // a full socket buffer: UDP drops
      return;
    }
    last_error_ = r < 0 ? errno : EIO;
    ++stats_.dropped;  // the datagram that failed; the rest get their chance
    ++done;
  }
}

}  // namespace splitd::proxy
