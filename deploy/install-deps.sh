#!/usr/bin/env bash
# Installs everything splitd's build, tests, demo and benchmarks use, on Debian 12.
# Idempotent: installs only what is missing; runs `apt-get update` only then.
# Services shipped by these packages (dnsmasq, nginx, haproxy) are NOT started:
# the lab starts its own instances inside network namespaces.
set -euo pipefail

PACKAGES=(
  # build
  cmake g++ make pkg-config git clang libclang-rt-14-dev  # clang: the libFuzzer targets
  libboost1.81-dev libmnl-dev libnftnl-dev libcap-dev libtomlplusplus-dev
  nlohmann-json3-dev libsodium-dev
  libsystemd-dev  # daemon/notify: sd_notify and the watchdog for Type=notify
  libknot-dev  # dns/: the DNS wire library (Knot DNS's, fuzzed in OSS-Fuzz)
  libssl-dev   # sniff/: libcrypto (HKDF, AES-GCM) to read QUIC Initial packets
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  # runtime and lab
  nftables iproute2 procps psmisc kmod dnsmasq-base curl bind9-dnsutils iperf3 nginx-light haproxy
  # real VPN clients of the lab (wireguard-go: there is no kernel WireGuard module here)
  openvpn wireguard-go wireguard-tools iptables util-linux
  # tests and benches
  python3 jq
  # sniffing: real TLS servers and clients (openssl s_server, s_client, s_time; test
  # certificates), and QUIC (ngtcp2's example server and client, GnuTLS builds)
  openssl ngtcp2-client ngtcp2-server
  # lab-bench's DNS round: the load generator and the peer (PowerDNS's DNS proxy); the
  # package's service is not started
  dnsperf dnsdist
  # promtool (checks /metrics); the package's service is not started
  prometheus
  # systemd-analyze (deploy/check-unit.sh verifies deploy/splitd.service offline). Never
  # systemd-resolved, libnss-resolve or resolvconf: they would take over /etc/resolv.conf.
  systemd
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: must run as root (uses apt-get)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Keep package maintainer scripts from starting daemons in the root namespace.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  created_policy=1
fi
cleanup() { if ((created_policy)); then rm -f "$policy"; fi; }
trap cleanup EXIT

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
