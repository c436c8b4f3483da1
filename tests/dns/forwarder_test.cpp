// The forwarder's pieces that need no network: the system's resolvers from resolv.conf
// text and files, and the names of its metrics labels. The forwarder itself (capture,
// routing by name, upstream tries, TCP, truncation, the cache) is tested end to end in
// tests/e2e/dns_test.cpp against real dig, curl and dnsmasq.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "dns/forwarder.hpp"

namespace splitd::dns {
namespace {

std::vector<std::string> text(const std::vector<IpAddress>& v) {
  std::vector<std::string> out;
  for (const auto& ip : v) out.push_back(ip.to_string());
  return out;
}

TEST(ResolvConf, LocalStubsAreLeftOutAndScopesDropped) {
  const auto servers = parse_resolv_conf(
      "# generated\n"
      "nameserver 127.0.0.53\n"
      "nameserver 192.168.1.1\n"
      "options edns0 trust-ad\n"
      "nameserver ::1\n"
      "nameserver fe80::1%eth0\n"
      "nameserver 0.0.0.0\n"
      "nameserver not-an-address\n"
      "search lan\n"
      "nameserver 2001:db8::53   \n"
      "nameserver 192.168.1.1\n"
      "nameserver\n"
      "nameserver ::ffff:10.0.0.1\n");
  EXPECT_EQ(text(servers), (std::vector<std::string>{"192.168.1.1", "fe80::1", "2001:db8::53", "10.0.0.1"}));
  EXPECT_TRUE(parse_resolv_conf("").empty());
  EXPECT_TRUE(parse_resolv_conf(std::string(100000, 'x')).empty());
}

TEST(ResolvConf, ResolvedsOwnUpstreamsWhenResolvConfNamesOnlyItsStub) {
  char dir[] = "/tmp/splitd-resolv-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string etc = std::string(dir) + "/resolv.conf";
  const std::string resolved = std::string(dir) + "/resolved.conf";
  std::ofstream(etc) << "nameserver 127.0.0.53\noptions edns0\n";
  std::ofstream(resolved) << "nameserver 10.8.0.1\nnameserver 192.168.1.1\n";
  EXPECT_EQ(text(system_resolvers(etc, resolved)), (std::vector<std::string>{"10.8.0.1", "192.168.1.1"}));
  std::ofstream(etc) << "nameserver 9.9.9.9\n";
  EXPECT_EQ(text(system_resolvers(etc, resolved)), (std::vector<std::string>{"9.9.9.9"}));
  EXPECT_TRUE(system_resolvers(std::string(dir) + "/missing", std::string(dir) + "/missing2").empty());
  std::remove(etc.c_str());
  std::remove(resolved.c_str());
  ::rmdir(dir);
}

TEST(Upstreams, DirectFallsBackToTheSystems) {
  Upstreams u;
  u.system = {*IpAddress::parse("192.168.1.1")};
  EXPECT_EQ(text(u.for_direct()), (std::vector<std::string>{"192.168.1.1"}));
  u.direct = {*IpAddress::parse("10.0.0.53")};
  EXPECT_EQ(text(u.for_direct()), (std::vector<std::string>{"10.0.0.53"}));
}

TEST(ForwarderLabels, EveryRouteAndResultHasAName) {
  for (std::size_t r = 0; r < kQueryRoutes; ++r) {
    EXPECT_STRNE(to_string(static_cast<QueryRoute>(r)), "?");
  }
  for (std::size_t k = 0; k < kQueryResults; ++k) {
    EXPECT_STRNE(to_string(static_cast<QueryResult>(k)), "?");
  }
}

}  // namespace
}  // namespace splitd::dns
