#pragma once

// The network-namespace lab for GoogleTest tests (see tests/lab/README.md).
//
//   auto lab = SPLITD_LAB_OR_SKIP(splitd::lab::LabOptions{});
//   auto r = lab->exec(lab->host_ns(), "curl -s http://203.0.113.10/");
//
// A lab is three namespaces (host, wan, vpn) built by lab.sh. `wan` and `vpn` serve the
// same addresses and answer with their own name, so a test sees which path a flow took.

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <ostream>
#include <memory>
#include <string>
#include <vector>

namespace splitd::lab {

// Served by both wan and vpn (on lo); the responders answer on every one of them.
inline constexpr char kServerA4[] = "203.0.113.10";
inline constexpr char kServerB4[] = "198.51.100.10";
inline constexpr char kServerA6[] = "2001:db8::10";
inline constexpr char kServerB6[] = "2001:db8:1::10";
// dnsmasq of each side.
inline constexpr char kDns4[] = "203.0.113.53";
inline constexpr char kDns6[] = "2001:db8::53";
// host's side of the veth to wan, and wan's side (host's default gateway).
inline constexpr char kHostPhys4[] = "198.18.1.2";
inline constexpr char kHostPhys6[] = "2001:db8:ff:1::2";
inline constexpr char kWanGw4[] = "198.18.1.1";
inline constexpr char kWanGw6[] = "2001:db8:ff:1::1";
// host's tun0 and the vpn end of the tunnel.
inline constexpr char kHostTun4[] = "198.18.2.2";
inline constexpr char kHostTun6[] = "2001:db8:ff:2::2";
inline constexpr char kVpnPeer4[] = "198.18.2.1";
inline constexpr char kVpnPeer6[] = "2001:db8:ff:2::1";
// With a real VPN client (LabOptions::vpn): the VPN server's address in vpn, reached from
// host through wan (the carrier flow leaves host by phys0), and its ports.
inline constexpr char kVpnServer4[] = "198.18.3.2";
inline constexpr char kVpnServer6[] = "2001:db8:ff:3::2";
inline constexpr uint16_t kOpenVpnPort = 1194;
inline constexpr uint16_t kWireGuardPort = 51820;
// Interface names inside host.
inline constexpr char kPhysIf[] = "phys0";
inline constexpr char kTunIf[] = "tun0";
// Responder and DNS ports.
inline constexpr uint16_t kTcpPort = 9000;  // greeting line, then echo until EOF
inline constexpr uint16_t kUdpPort = 9000;  // greeting line + the datagram's payload
inline constexpr uint16_t kHttpPort = 80;   // 200 text/plain, body = greeting line
inline constexpr uint16_t kDnsPort = 53;
// DNS names served differently per side.
inline constexpr char kWhoamiName[] =
    "whoami.lab.test";                                // A/AAAA: kServerA* (wan), kServerB* (vpn)
inline constexpr char kSideName[] = "side.lab.test";  // TXT "wan" / "vpn"

inline constexpr std::chrono::milliseconds kDefaultCmdTimeout{30'000};

// What carries host's tun0 to vpn.
enum class Vpn {
  kRelay,      // lab-tun-relay: two TUN devices joined in user space, no VPN client
  kOpenVpn,    // OpenVPN 2.6 client in host (--redirect-gateway def1 ipv6), server in vpn
  kWireGuard,  // wg-quick + wireguard-go in host (AllowedIPs 0/0, ::/0), wireguard-go in vpn
};
const char* to_string(Vpn vpn);  // "relay", "openvpn", "wireguard"
inline void PrintTo(Vpn vpn, std::ostream* os) { *os << to_string(vpn); }

struct LabOptions {
  bool vpn_default_route = false;  // relay only: install 0/1,128/1,::/1,8000::/1 via tun0 in host
  Vpn vpn = Vpn::kRelay;           // real clients install their own routes
};

struct CmdResult {
  int exit_code;    // exit status; 128+N if killed by signal N; 124 if it timed out
  std::string out;  // stdout
  std::string err;  // stderr
};

// Runs argv[0] (looked up in PATH plus /usr/sbin:/sbin) without a shell, stdin from
// /dev/null, capturing stdout and stderr. After `timeout` the process group gets SIGTERM,
// then SIGKILL 5 s later. Throws only if the process cannot be started. Thread-safe.
CmdResult run_command(const std::vector<std::string>& argv,
                      std::chrono::milliseconds timeout = kDefaultCmdTimeout);

// This build's lab.sh and helper programs (compile definitions from CMake).
const char* lab_script();
const char* tun_relay_path();
const char* responder_path();

// Empty when a lab can run here, else why not (not root, no /dev/net/tun, no netns
// permission, missing ip/dnsmasq/curl/dig...).
std::string unavailable_reason();

// Every pid whose command line mentions `text` (e.g. a lab id); zombies excluded.
std::vector<pid_t> live_pids_mentioning(const std::string& text);

// One running lab. Owns it: the destructor tears it down (lab.sh down). exec, in_ns and
// set_vpn_default_route may be called from several threads; stop() and destruction
// must not race with them.
class Lab {
 public:
  // nullptr (and *skip_reason set) when the lab cannot run here; throws
  // std::runtime_error if it could run but bring-up failed.
  static std::unique_ptr<Lab> start(const LabOptions& opts, std::string* skip_reason);

  Lab(const Lab&) = delete;
  Lab& operator=(const Lab&) = delete;
  ~Lab();

  const std::string& id() const { return id_; }
  const std::string& host_ns() const { return host_ns_; }
  const std::string& wan_ns() const { return wan_ns_; }
  const std::string& vpn_ns() const { return vpn_ns_; }
  const std::string& state_dir() const { return dir_; }

  // `ip netns exec NS sh -c CMD`; ns is a namespace name or a role ("host", "wan", "vpn").
  CmdResult exec(const std::string& ns, const std::string& shell_cmd,
                 std::chrono::milliseconds timeout = kDefaultCmdTimeout) const;

  // Adds or removes host's "VPN default route" (idempotent). Throws on failure.
  void set_vpn_default_route(bool on) const;

  Vpn vpn() const { return vpn_; }
  // Real VPN clients only: stops the client (OpenVPN killed with SIGTERM, `wg-quick down`)
  // or starts it again (a new tun0, a new ifindex), as users do. Returns once tun0 is
  // gone, or the client reports itself connected. Throws on failure.
  void set_vpn_up(bool up) const;

  // Runs fn on a fresh thread that has setns()'d into namespace ns (name or role), so
  // sockets it opens live there; joins it and rethrows fn's exception, if any.
  void in_ns(const std::string& ns, const std::function<void()>& fn) const;

  // The lab's processes now: everything in its namespaces plus its pid files.
  std::vector<pid_t> processes() const;

  // Tears the lab down; idempotent. Throws if lab.sh down failed.
  void stop();

 private:
  Lab(std::string id, std::string host, std::string wan, std::string vpn, std::string dir,
      Vpn kind);
  std::string resolve_ns(const std::string& ns) const;

  std::string id_, host_ns_, wan_ns_, vpn_ns_, dir_;
  Vpn vpn_ = Vpn::kRelay;
  bool stopped_ = false;
};

}  // namespace splitd::lab

// In a TEST body: `auto lab = SPLITD_LAB_OR_SKIP(opts);` gives a std::unique_ptr<Lab>, or
// skips the test with the reason (e.g. "needs root") when no lab can run here.
// __extension__ keeps -Wpedantic quiet about the GNU statement expression, which is the
// only way to both yield a value and return from the test body.
#define SPLITD_LAB_OR_SKIP(opts)                                                      \
  __extension__({                                                                     \
    std::string splitd_lab_skip_reason_;                                              \
    std::unique_ptr<::splitd::lab::Lab> splitd_lab_ =                                 \
        ::splitd::lab::Lab::start((opts), &splitd_lab_skip_reason_);                  \
    if (!splitd_lab_) GTEST_SKIP() << "lab unavailable: " << splitd_lab_skip_reason_; \
    std::move(splitd_lab_);                                                           \
  })
