#!/usr/bin/env bash
# The demo: builds splitd, starts the lab (namespaces host/wan/vpn) with a real VPN client
# in host (wg-quick with wireguard-go by default, AllowedIPs 0/0 and ::/0; or OpenVPN, or
# the lab's relay), runs splitd in exclude mode with one server network and one domain
# excluded, and shows which side answers each request and each DNS query. Cleans up after
# itself.
#
#   deploy/demo.sh [--vpn wireguard|openvpn|relay]
#
# Needs root (network namespaces); touches nothing outside its own namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

VPN=wireguard
while (($#)); do
  case $1 in
    --vpn) VPN=${2:?--vpn needs wireguard, openvpn or relay}; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; exit 1 ;;
  esac
done
case $VPN in
  wireguard|openvpn) LAB_ARGS=(--vpn "$VPN") ;;
  relay) LAB_ARGS=(--vpn-default-route) ;;
  *) echo "demo.sh: --vpn must be wireguard, openvpn or relay, not '$VPN'" >&2; exit 1 ;;
esac

if [[ $(id -u) -ne 0 ]]; then
  echo "demo.sh: needs root (it builds network namespaces)" >&2
  exit 1
fi
bash deploy/install-deps.sh >/dev/null
echo "== building (Release)"
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DSPLITD_BUILD_BENCH=OFF >/dev/null
cmake --build build-release -j"$(nproc)" --target splitd splitctl lab-tun-relay lab-responder >/dev/null
SPLITD=$PWD/build-release/daemon/splitd
SPLITCTL=$PWD/build-release/daemon/splitctl

LAB_ID=""
SPLITD_PID=""
HOLD_PID=""
cleanup() {
  [[ -n $HOLD_PID ]] && kill "$HOLD_PID" 2>/dev/null || true
  [[ -n $SPLITD_PID ]] && kill "$SPLITD_PID" 2>/dev/null && wait "$SPLITD_PID" 2>/dev/null || true
  [[ -n $LAB_ID ]] && bash tests/lab/lab.sh down "$LAB_ID" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

eval "$(bash tests/lab/lab.sh up "${LAB_ARGS[@]}" --owner $$ --bin-dir build-release/tests/lab)"
in_host() { ip netns exec "$LAB_HOST" "$@"; }
ask() { printf '  %-28s -> %s' "$1" "$(in_host curl -s -g --max-time 5 "$1")"; echo; }
# What the VPN client installed: splitd must leave it as it found it.
vpn_state() { in_host sh -c 'ip -4 rule; ip -6 rule; ip -4 route show table all; ip -6 route show table all | grep -v "^local\|expires"; nft list ruleset'; }

echo
case $VPN in
  wireguard) echo "== the lab: host has phys0 (to wan) and tun0, brought up by wg-quick (wireguard-go, AllowedIPs 0/0 and ::/0)" ;;
  openvpn) echo "== the lab: host has phys0 (to wan) and tun0, brought up by OpenVPN 2.6 (--redirect-gateway def1 ipv6)" ;;
  relay) echo "== the lab: host has phys0 (to wan) and tun0 (the lab's relay), with a VPN's default route" ;;
esac
in_host ip -brief address show | sed 's/^/  /'
in_host ip route | sed 's/^/  /'
if [[ $VPN == wireguard ]]; then
  in_host ip rule | sed 's/^/  /'
fi
VPN_BEFORE=$(vpn_state)
echo
echo "== without splitd: every request goes through the VPN (servers answer 'SIDE PEER PORT')"
ask http://203.0.113.10/
ask http://198.51.100.10/

cat >"$LAB_DIR/demo.toml" <<TOML
[daemon]
log_level = "debug"
api_socket = "$LAB_DIR/api.sock"                  # the lab's own, not /run/splitd
state_dir = "$LAB_DIR/state"
[split]
mode = "exclude"                                  # everything through the tunnel...
ips = ["203.0.113.0/24", "2001:db8::/64"]         # ...except these, which go direct,
domains = ["*.direct.lab.test"]                   # ...and these names
[dns]
enabled = true                                    # every query is captured and routed by its name:
servers = ["203.0.113.53"]                        # tunnel names: the lab's resolver via tun0 (vpn's)
direct_servers = ["203.0.113.53"]                 # direct names: the same address via phys0 (wan's)
TOML
echo
echo "== splitd run, exclude mode: 203.0.113.0/24, 2001:db8::/64 and *.direct.lab.test go direct"
cat "$LAB_DIR/demo.toml" | sed 's/^/  /'
# `ip netns exec` execs splitd, so $! is splitd's own pid.
ip netns exec "$LAB_HOST" "$SPLITD" run --config "$LAB_DIR/demo.toml" 2>"$LAB_DIR/splitd.log" &
SPLITD_PID=$!
for _ in $(seq 100); do grep -q ' ready: ' "$LAB_DIR/splitd.log" && break; sleep 0.05; done
grep -q ' ready: ' "$LAB_DIR/splitd.log" || { cat "$LAB_DIR/splitd.log"; exit 2; }
echo
echo "== splitd interfaces (in host)"
in_host "$SPLITD" interfaces | sed 's/^/  /'
echo
echo "== with splitd: the excluded network is answered by wan, the rest by vpn"
ask http://203.0.113.10/
ask http://198.51.100.10/
ask 'http://[2001:db8::10]/'
ask 'http://[2001:db8:1::10]/'

echo
echo "== names from the flow itself: curl --resolve asks no DNS, so the HTTP Host header (the"
echo "   TLS SNI, the QUIC Initial) names the server; 198.51.100.10 is not excluded by IP"
sniffed() {
  printf '  %-28s -> %s\n' "http://$1/" \
    "$(in_host curl -s --max-time 5 --resolve "$1:80:198.51.100.10" "http://$1/")"
}
sniffed www.direct.lab.test
sniffed www.tunnel.lab.test

echo
echo "== DNS is routed by name: the same server address answers from wan for a direct name,"
echo "   from vpn for a tunnel name (side.*.lab.test TXT says which dnsmasq answered)"
dig_short() { in_host dig +short +time=2 +tries=1 "$@" | tr '\n' ' '; }
printf '  %-48s -> %s\n' "dig @203.0.113.53 side.lab.test TXT" "$(dig_short @203.0.113.53 side.lab.test TXT)"
printf '  %-48s -> %s\n' "dig @203.0.113.53 side.direct.lab.test TXT" "$(dig_short @203.0.113.53 side.direct.lab.test TXT)"
printf '  %-48s -> %s\n' "dig @192.0.2.1 +tcp side.direct.lab.test TXT" "$(dig_short @192.0.2.1 +tcp side.direct.lab.test TXT)"
echo
echo "== connections by name: the name's rule routes the connection (resolv.conf names a"
echo "   server that exists nowhere; only splitd's capture can answer)"
echo "nameserver 192.0.2.53" >"$LAB_DIR/resolv.conf"
by_name() {
  printf '  %-28s -> %s\n' "$1" \
    "$(in_host unshare -m sh -c "mount --bind '$LAB_DIR/resolv.conf' /etc/resolv.conf && curl -s --max-time 5 '$1'")"
}
by_name http://www.direct.lab.test/
by_name http://whoami.lab.test/
echo
echo "== splitctl dns: what splitd learned from the answers (the CNAME chain included)"
"$SPLITCTL" --socket "$LAB_DIR/api.sock" dns | sed 's/^/  /'
echo
echo "== UDP too: a datagram to the tunnelled network goes through the tunnel"
printf '  %-28s -> %s\n' "udp 198.51.100.10:9000" \
  "$(in_host bash -c 'exec 3<>/dev/udp/198.51.100.10/9000; echo hi >&3; timeout 2 dd bs=65536 count=1 status=none <&3 | head -n1')"

# Hold one tunnelled TCP connection open so the session list has a live entry.
in_host bash -c 'exec 3<>/dev/tcp/198.51.100.10/9000; read -r greeting <&3; echo hello >&3; read -r echo <&3; sleep 30' &
HOLD_PID=$!
sleep 0.3
kill -USR1 "$SPLITD_PID"
sleep 0.2
echo
echo "== splitd's session list (SIGUSR1) and the finished sessions it logged"
grep -E 'sessions: |  #' "$LAB_DIR/splitd.log" | sed 's/^[^ ]* [A-Z]* /  /' || true
grep -E 'DEBUG tcp #' "$LAB_DIR/splitd.log" | sed 's/^[^ ]* [A-Z]* /  /' || true
echo
echo "== nft list table inet splitd (in host)"
in_host nft list table inet splitd | sed 's/^/  /'
if [[ $VPN == wireguard ]]; then
  echo
  echo "== wg-quick's anti-spoofing chain, with splitd's allow rule for its loopback replies"
  in_host nft list chain ip wg-quick-tun0 preraw | sed 's/^/  /'
fi
kill "$HOLD_PID" 2>/dev/null || true
HOLD_PID=""
echo
echo "== SIGTERM: splitd removes its table and rules"
kill -TERM "$SPLITD_PID"
wait "$SPLITD_PID" && echo "  splitd exited 0"
SPLITD_PID=""
echo "  nft tables left in host: $(in_host nft list tables | grep -c splitd || true)"
echo "  splitd's policy rules left in host: $(in_host ip rule | grep -c 'lookup 1501' || true)"
if [[ $(vpn_state) == "$VPN_BEFORE" ]]; then
  echo "  the VPN client's rules, routes and tables: exactly as splitd found them"
else
  echo "  the VPN client's state changed:"; diff <(echo "$VPN_BEFORE") <(vpn_state) | sed 's/^/    /'
  exit 2
fi
echo
echo "== done; removing the lab"
