#pragma once

// The one place Boost.Asio comes in (CONVENTIONS: Asio types through one alias header).
#include <boost/asio.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include "common/ip_address.hpp"

namespace splitd::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using udp = asio::ip::udp;
template <typename T = void>
using awaitable = asio::awaitable<T>;
using asio::use_awaitable;
using error_code = boost::system::error_code;

inline IpAddress to_ip(const asio::ip::address& a) {
  if (a.is_v4()) return IpAddress::v4(a.to_v4().to_uint());
  const auto bytes = a.to_v6().to_bytes();
  return *IpAddress::from_bytes(bytes);
}

inline asio::ip::address to_asio(const IpAddress& ip) {
  if (ip.is_v4()) {
    asio::ip::address_v4::bytes_type b;
    std::copy(ip.bytes().begin(), ip.bytes().end(), b.begin());
    return asio::ip::address_v4(b);
  }
  asio::ip::address_v6::bytes_type b;
  std::copy(ip.bytes().begin(), ip.bytes().end(), b.begin());
  return asio::ip::address_v6(b);
}

}  // namespace splitd::net
