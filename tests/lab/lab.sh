#!/usr/bin/env bash
# lab.sh — builds and removes the splitd network-namespace lab (see README.md here).
#
#   lab.sh up [--vpn relay|openvpn|wireguard] [--vpn-default-route] [--tunnel tun|veth]
#             [--tunnel-delay-ms N] [--owner PID] [--bin-dir DIR]
#             (--tunnel-delay-ms: the TUN relay delays each packet N ms each way, 0..1000)
#   lab.sh down ID
#   lab.sh vpn-route ID on|off
#   lab.sh vpn ID up|down
#   lab.sh reap
#   lab.sh list
#   lab.sh exec ID host|wan|vpn CMD...
#
# Safety: nothing here touches the root network namespace. Every link is created inside a
# lab namespace, every address is a documentation/benchmark address, every process the
# lab starts lives in (or is recorded for) the lab and is killed by `down`.
#
# State: /run/splitd-lab/<ID>/ holds `owner` ("PID STARTTIME", STARTTIME = field 22 of
# /proc/PID/stat, so a reused pid is not mistaken for a live owner), pid files and logs.
# A lab whose owner is gone is stale and `reap` (run by every `up`) removes it.
set -euo pipefail

readonly STATE_ROOT=/run/splitd-lab
readonly NS_PREFIX=sdlab
readonly ROLES=(host wan vpn)
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

# Lab addresses (keep in sync with lab.hpp and README.md).
readonly HOST_PHYS4=198.18.1.2/24 HOST_PHYS6=2001:db8:ff:1::2/64
readonly WAN_GW4=198.18.1.1 WAN_GW6=2001:db8:ff:1::1
readonly HOST_TUN4=198.18.2.2/24 HOST_TUN6=2001:db8:ff:2::2/64
readonly VPN_PEER4=198.18.2.1 VPN_PEER6=2001:db8:ff:2::1
readonly SERVER_A4=203.0.113.10 SERVER_B4=198.51.100.10
readonly SERVER_A6=2001:db8::10 SERVER_B6=2001:db8:1::10
readonly DNS4=203.0.113.53 DNS6=2001:db8::53
readonly TCP_PORT=9000 HTTP_PORT=80
# Real VPN clients (--vpn openvpn|wireguard): their server runs in vpn, reached from host
# over wan through a carrier link wan1 <-> uplink0, so the client's carrier flow leaves
# host by phys0 like on a real machine.
readonly WAN_CARRIER4=198.18.3.1/24 WAN_CARRIER6=2001:db8:ff:3::1/64
readonly VPN_SERVER4=198.18.3.2 VPN_SERVER6=2001:db8:ff:3::2
readonly OPENVPN_PORT=1194 WIREGUARD_PORT=51820

die() {
  echo "lab.sh: $*" >&2
  exit 1
}
note() { echo "lab.sh: $*" >&2; }

usage() {
  sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

valid_id() { [[ $1 =~ ^[0-9a-f]{8}$ ]]; }
ns_name() { echo "$NS_PREFIX-$1-$2"; }
ns_exists() { [[ -e /run/netns/$1 ]]; }

# Prints field 22 (start time) of a live process; fails for a missing or zombie pid.
proc_starttime() {
  local stat rest
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  # The command name (field 2) may contain spaces and parentheses: cut after the last ')'.
  rest=${stat##*) }
  local -a f
  read -r -a f <<<"$rest"
  # f[0] is field 3 (state), so field 22 is f[19].
  [[ ${f[0]:-} == Z || ${f[0]:-} == X ]] && return 1
  echo "${f[19]:-}"
}
pid_alive() { proc_starttime "$1" >/dev/null; }

# True if the lab's owner (recorded in DIR/owner) is still the same live process.
owner_alive() {
  local file=$1/owner pid start now
  [[ -r $file ]] || return 1
  read -r pid start <"$file" || return 1
  now=$(proc_starttime "$pid") || return 1
  [[ -n $start && $now == "$start" ]]
}

# The state root lock serialises reaping and the birth of a state dir, so a concurrent
# `up` never mistakes a lab being built for a stale one.
lock_state_root() {
  mkdir -p "$STATE_ROOT"
  exec {LOCK_FD}>"$STATE_ROOT/.lock"
  flock -w 60 "$LOCK_FD" || die "timed out waiting for $STATE_ROOT/.lock"
}
# Closing the fd drops the lock; it must not leak into the daemons we start.
unlock_state_root() {
  if [[ -n ${LOCK_FD:-} ]]; then
    exec {LOCK_FD}>&-
    LOCK_FD=
  fi
}

# Pids that belong to lab ID: every process in its namespaces, plus pid files whose
# process still names the lab on its command line (guards against pid reuse).
lab_pids() {
  local id=$1 role ns f pid cmdline
  {
    for role in "${ROLES[@]}"; do
      ns=$(ns_name "$id" "$role")
      if ns_exists "$ns"; then ip netns pids "$ns" 2>/dev/null || true; fi
    done
    for f in "$STATE_ROOT/$id"/*.pid; do
      [[ -f $f ]] || continue
      pid=$(head -c 32 "$f" 2>/dev/null | tr -dc 0-9) || true
      [[ -n $pid ]] || continue
      cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
      if [[ $cmdline == *"$id"* ]]; then echo "$pid"; fi
    done
  } | sort -un | while read -r pid; do
    # Never kill ourselves or whoever called us (e.g. a test running inside the lab).
    if [[ $pid != "$$" && $pid != "$PPID" ]]; then echo "$pid"; fi
  done
}

# TERM, a short bounded wait, then KILL.
kill_pids() {
  local -a pids=("$@") left
  local pid i sig
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for sig in TERM KILL; do
    for ((i = 0; i < 100; i++)); do  # up to 2 s per round
      left=()
      for pid in "${pids[@]}"; do
        if pid_alive "$pid"; then left+=("$pid"); fi
      done
      ((${#left[@]})) || return 0
      sleep 0.02
    done
    [[ $sig == KILL ]] && break
    note "pids ${left[*]} ignored SIGTERM; sending SIGKILL"
    kill -KILL "${left[@]}" 2>/dev/null || true
    pids=("${left[@]}")
  done
  note "warning: pids ${left[*]} still alive after SIGKILL"
}

# Removes lab ID completely; succeeds if it is already gone.
lab_down() {
  local id=$1 role ns _round
  local -a pids
  # Repeat: a process may have been started in a namespace while we were killing.
  for _round in 1 2 3; do
    mapfile -t pids < <(lab_pids "$id")
    ((${#pids[@]})) || break
    kill_pids "${pids[@]}"
  done
  for role in "${ROLES[@]}"; do
    ns=$(ns_name "$id" "$role")
    if ns_exists "$ns" && ! ip netns del "$ns" 2>/dev/null && ns_exists "$ns"; then
      note "warning: cannot delete namespace $ns"
    fi
  done
  # Logs die with the lab unless the caller asks to keep them (debugging, CI artifacts).
  if [[ -n ${LAB_KEEP_LOGS:-} && -d $STATE_ROOT/$id ]]; then
    { mkdir -p "$LAB_KEEP_LOGS/$id" && cp -p "$STATE_ROOT/$id"/*.log "$LAB_KEEP_LOGS/$id/"; } 2>/dev/null ||
      note "warning: could not keep the logs of lab $id in $LAB_KEEP_LOGS"
  fi
  rm -rf -- "${STATE_ROOT:?}/$id"
}

# Removes labs whose owner is gone and lab namespaces that have no state dir.
# Caller holds the state root lock.
reap_locked() {
  local d id ns role
  for d in "$STATE_ROOT"/*; do
    [[ -d $d ]] || continue
    id=${d##*/}
    valid_id "$id" || continue
    if ! owner_alive "$d"; then
      local owner_pid='?' _start
      read -r owner_pid _start <"$d/owner" 2>/dev/null || true
      note "reaping stale lab $id (its owner, pid $owner_pid, is gone)"
      lab_down "$id"
    fi
  done
  while read -r ns _; do
    if [[ $ns =~ ^$NS_PREFIX-([0-9a-f]{8})-(host|wan|vpn)$ ]]; then
      id=${BASH_REMATCH[1]}
      if [[ ! -d $STATE_ROOT/$id ]]; then
        note "reaping orphan namespace $ns (no state dir)"
        lab_down "$id"
      fi
    fi
  done < <(ip netns list 2>/dev/null || true)
}

# The newest directory holding the helper programs; a veth lab (NEED_RELAY=0) needs no relay.
find_bin_dir() {
  local d best="" best_time=0 t
  for d in "$SCRIPT_DIR" "$SCRIPT_DIR"/../../build*/tests/lab; do
    if [[ -x $d/lab-responder ]] && { ((!NEED_RELAY)) || [[ -x $d/lab-tun-relay ]]; }; then
      t=$(stat -c %Y "$d/lab-responder")
      if ((t > best_time)); then best=$d best_time=$t; fi
    fi
  done
  [[ -n $best ]] && (cd "$best" && pwd)
}

# Polls CMD (a shell string) every 20 ms until it succeeds; dies after LIMIT seconds.
wait_for() {
  local what=$1 limit=$2 cmd=$3 i
  for ((i = 0; i < limit * 50; i++)); do
    if eval "$cmd"; then return 0; fi
    sleep 0.02
  done
  die "timed out after ${limit}s waiting for $what"
}

# Dies with the log of a background daemon that exited before becoming ready.
check_started() {
  local pid=$1 name=$2 log=$3
  if ! pid_alive "$pid"; then
    die "$name exited during start-up; its log ($log):"$'\n'"$(tail -n 20 "$log" 2>/dev/null)"
  fi
}

# Run inside the host namespace by `up` (via declare -f): waits (bounded) until the
# responder at ADDR answers TCP PORT and HTTP at URLHOST with greetings from SIDE.
probe_server() {
  local addr=$1 port=$2 urlhost=$3 side=$4 wait=${5:-1} i line  # wait: s per answer
  for ((i = 0; i < 100; i++)); do
    if { exec 3<>"/dev/tcp/$addr/$port"; } 2>/dev/null && read -r -t "$wait" line <&3 &&
      [[ $line == "$side "* ]] &&
      [[ $(curl -sS --noproxy "*" --max-time "$wait" -g "http://$urlhost/" 2>/dev/null) == "$side "* ]]; then
      exec 3<&-
      return 0
    fi
    exec 3<&-
    sleep 0.02
  done
  echo "lab.sh: no answer from the $side responder at $addr" >&2
  return 1
}

# Run inside a side's namespace by `up`: waits (bounded) until dnsmasq on SERVER answers
# side.lab.test TXT with SIDE.
probe_dns() {
  local server=$1 side=$2 i
  for ((i = 0; i < 50; i++)); do
    if [[ $(dig +short +time=1 +tries=1 "@$server" side.lab.test TXT 2>/dev/null) == "\"$side\"" ]]; then
      return 0
    fi
    sleep 0.02
  done
  echo "lab.sh: dnsmasq ($side) does not answer on $server" >&2
  return 1
}

# ---- real VPN clients (--vpn openvpn|wireguard) ----------------------------------

# Runs CMD in namespace NS with DIR mounted on /run/wireguard, in a private mount
# namespace: wireguard-go and wg keep their control sockets in /run/wireguard/<if>.sock,
# which is not per network namespace, so the host's and the vpn's tun0 (and those of
# parallel labs) would take each other's sockets.
in_wg_ns() {
  local ns=$1 run=$2
  shift 2
  mkdir -p /run/wireguard "$run"
  ip netns exec "$ns" unshare -m --propagation private \
    sh -c 'mount --bind "$0" /run/wireguard && exec "$@"' "$run" "$@"
}

# The VPN server, in vpn (beyond wan): OpenVPN in peer-to-peer mode without TLS or keys
# (a VPN without crypto, like the relay, but a real client), or wireguard-go.
vpn_server_start() {
  local id=$1 dir=$STATE_ROOT/$1 vpn kind
  vpn=$(ns_name "$id" vpn)
  kind=$(cat "$dir/tunnel")
  case $kind in
    openvpn)
      ip netns exec "$vpn" setsid openvpn --dev tun0 --dev-type tun --proto udp \
        --local "$VPN_SERVER4" --lport "$OPENVPN_PORT" --float \
        --ifconfig "$VPN_PEER4" "${HOST_TUN4%/*}" --ifconfig-ipv6 "$VPN_PEER6/64" "${HOST_TUN6%/*}" \
        --ping 1 --verb 3 --writepid "$dir/openvpn-server.pid" \
        </dev/null >>"$dir/openvpn-server.log" 2>&1 &
      wait_for "the OpenVPN server's tun0" 10 "ip -n '$vpn' link show tun0 >/dev/null 2>&1"
      ;;
    wireguard)
      mkdir -p -m 0700 "$dir/wg"
      (umask 077 && wg genkey >"$dir/wg/host.key" && wg genkey >"$dir/wg/vpn.key")
      wg pubkey <"$dir/wg/host.key" >"$dir/wg/host.pub"
      wg pubkey <"$dir/wg/vpn.key" >"$dir/wg/vpn.pub"
      LOG_LEVEL=verbose in_wg_ns "$vpn" "$dir/wg/run-vpn" wireguard-go tun0 \
        >>"$dir/wireguard-server.log" 2>&1 || die "up: wireguard-go in $vpn failed: $(tail -n 5 "$dir/wireguard-server.log")"
      # The control socket appears before wireguard-go answers on it.
      wait_for "wireguard-go (server) to answer" 5 \
        "in_wg_ns '$vpn' '$dir/wg/run-vpn' wg show tun0 >/dev/null 2>&1"
      in_wg_ns "$vpn" "$dir/wg/run-vpn" wg set tun0 listen-port "$WIREGUARD_PORT" \
        private-key "$dir/wg/vpn.key" peer "$(cat "$dir/wg/host.pub")" \
        allowed-ips "${HOST_TUN4%/*}/32,${HOST_TUN6%/*}/128"
      ip -n "$vpn" -batch - <<EOF
address add $VPN_PEER4/24 dev tun0
address add $VPN_PEER6/64 dev tun0 nodad
link set tun0 up
EOF
      (umask 077 && cat >"$dir/wg/tun0.conf" <<EOF
[Interface]
PrivateKey = $(cat "$dir/wg/host.key")
Address = $HOST_TUN4, $HOST_TUN6

[Peer]
PublicKey = $(cat "$dir/wg/vpn.pub")
Endpoint = $VPN_SERVER4:$WIREGUARD_PORT
AllowedIPs = 0.0.0.0/0, ::/0
EOF
      )
      ;;
    *) die "vpn_server_start: lab $id has no real VPN ($kind)" ;;
  esac
}

# The VPN client in host, installing its own routes as it does on a user's machine:
# OpenVPN with --redirect-gateway def1 (a host route to the server via phys0's gateway,
# 0/1 + 128/1 and the v6 halves via tun0); wg-quick with AllowedIPs 0/0 and ::/0 (fwmark
# 0xca6c policy routing, table 51820, its nft table with the anti-spoofing raw rule).
vpn_client_up() {
  local id=$1 dir=$STATE_ROOT/$1 host kind
  host=$(ns_name "$id" host)
  kind=$(cat "$dir/tunnel")
  case $kind in
    openvpn)
      local before
      before=$(grep -c 'Initialization Sequence Completed' "$dir/openvpn-client.log" 2>/dev/null || true)
      ip netns exec "$host" setsid openvpn --dev tun0 --dev-type tun --proto udp \
        --remote "$VPN_SERVER4" "$OPENVPN_PORT" --nobind \
        --ifconfig "${HOST_TUN4%/*}" "$VPN_PEER4" --ifconfig-ipv6 "$HOST_TUN6" "$VPN_PEER6" \
        --redirect-gateway def1 ipv6 --ping 1 --verb 3 --writepid "$dir/openvpn-client.pid" \
        </dev/null >>"$dir/openvpn-client.log" 2>&1 &
      local pid=$!
      wait_for "the OpenVPN client to connect" 15 \
        "(( \$(grep -c 'Initialization Sequence Completed' '$dir/openvpn-client.log') > ${before:-0} )) || { check_started $pid openvpn '$dir/openvpn-client.log'; false; }"
      ;;
    wireguard)
      WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-go LOG_LEVEL=verbose \
        in_wg_ns "$host" "$dir/wg/run-host" wg-quick up "$dir/wg/tun0.conf" \
        >>"$dir/wireguard-client.log" 2>&1 ||
        die "wg-quick up failed: $(tail -n 8 "$dir/wireguard-client.log")"
      ;;
    *) die "lab $id has no real VPN client ($kind)" ;;
  esac
}

vpn_client_down() {
  local id=$1 dir=$STATE_ROOT/$1 host kind pid
  host=$(ns_name "$id" host)
  kind=$(cat "$dir/tunnel")
  case $kind in
    openvpn)
      pid=$(cat "$dir/openvpn-client.pid" 2>/dev/null || true)
      if [[ -n $pid ]] && pid_alive "$pid"; then kill_pids "$pid"; fi
      rm -f "$dir/openvpn-client.pid"
      ;;
    wireguard)
      if ip -n "$host" link show tun0 >/dev/null 2>&1; then
        in_wg_ns "$host" "$dir/wg/run-host" wg-quick down "$dir/wg/tun0.conf" \
          >>"$dir/wireguard-client.log" 2>&1 ||
          die "wg-quick down failed: $(tail -n 8 "$dir/wireguard-client.log")"
      fi
      ;;
    *) die "lab $id has no real VPN client ($kind)" ;;
  esac
  wait_for "tun0 to disappear from host" 5 "! ip -n '$host' link show tun0 >/dev/null 2>&1"
}

# ---- up ----------------------------------------------------------------------------

BUILD_ID=
on_up_exit() {
  local rc=$?
  trap '' INT TERM
  unlock_state_root
  if [[ -n $BUILD_ID ]]; then
    note "bring-up of lab $BUILD_ID failed; removing what was created"
    lab_down "$BUILD_ID" || true
    ((rc != 0)) || rc=1
  fi
  exit "$rc"
}

NEED_RELAY=1
cmd_up() {
  local vpn_route=0 owner=$PPID bin_dir=${LAB_BIN_DIR:-} tunnel=tun vpn_kind=relay tunnel_delay=
  while (($#)); do
    case $1 in
      --vpn-default-route) vpn_route=1 ;;
      --vpn)
        vpn_kind=${2:?--vpn needs relay, openvpn or wireguard}; shift
        [[ $vpn_kind == relay || $vpn_kind == openvpn || $vpn_kind == wireguard ]] ||
          die "up: --vpn must be relay, openvpn or wireguard, not '$vpn_kind'"
        ;;
      --tunnel)
        tunnel=${2:?--tunnel needs tun or veth}; shift
        [[ $tunnel == tun || $tunnel == veth ]] || die "up: --tunnel must be tun or veth, not '$tunnel'"
        ;;
      --tunnel-delay-ms)
        tunnel_delay=${2:?--tunnel-delay-ms needs milliseconds}; shift
        if [[ ! $tunnel_delay =~ ^[0-9]{1,4}$ ]] || ((10#$tunnel_delay > 1000)); then
          die "up: --tunnel-delay-ms must be whole milliseconds 0..1000, not '$tunnel_delay'"
        fi
        tunnel_delay=$((10#$tunnel_delay))
        ;;
      --owner) owner=${2:?--owner needs a PID}; shift ;;
      --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift ;;
      *) die "up: unknown argument '$1'" ;;
    esac
    shift
  done
  ((EUID == 0)) || die "up: the lab needs root (network namespaces, TUN devices)"
  if [[ $vpn_kind != relay ]]; then
    [[ $tunnel == tun ]] || die "up: --tunnel veth is for the relay lab, not --vpn $vpn_kind"
    ((!vpn_route)) || die "up: --vpn-default-route is for the relay lab; $vpn_kind installs its own routes"
    tunnel=$vpn_kind
  fi
  [[ $tunnel == tun ]] || NEED_RELAY=0
  [[ -z $tunnel_delay ]] || ((NEED_RELAY)) ||
    die "up: --tunnel-delay-ms is for the TUN relay lab (--tunnel tun), not $tunnel"
  if ((NEED_RELAY)) || [[ $vpn_kind != relay ]]; then
    [[ -c /dev/net/tun ]] || die "up: /dev/net/tun is missing (no TUN support)"
  fi
  local tool tools=(ip dnsmasq dig curl flock setsid)
  case $vpn_kind in
    openvpn) tools+=(openvpn) ;;
    wireguard) tools+=(wg wg-quick wireguard-go nft unshare mount) ;;
  esac
  for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || die "up: '$tool' not found in PATH"
  done
  if [[ -z $bin_dir ]]; then
    bin_dir=$(find_bin_dir) || die "up: cannot find lab-tun-relay and lab-responder; build them or pass --bin-dir (or set LAB_BIN_DIR)"
  fi
  if ((NEED_RELAY)); then
    [[ -x $bin_dir/lab-tun-relay && -x $bin_dir/lab-responder ]] ||
      die "up: $bin_dir does not hold executable lab-tun-relay and lab-responder"
  else
    [[ -x $bin_dir/lab-responder ]] || die "up: $bin_dir does not hold an executable lab-responder"
  fi
  bin_dir=$(cd -- "$bin_dir" && pwd)  # absolute: `ps` and `lab.sh list` show real paths
  local owner_start
  owner_start=$(proc_starttime "$owner") || die "up: owner pid '$owner' is not a live process"

  trap on_up_exit EXIT
  trap 'note "interrupted"; exit 130' INT
  trap 'note "terminated"; exit 143' TERM

  local id dir
  lock_state_root
  reap_locked
  for _ in 1 2 3 4 5 6 7 8; do
    id=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
    if [[ ! -e $STATE_ROOT/$id && $(ip netns list) != *"-$id-"* ]]; then break; fi
    id=
  done
  [[ -n $id ]] || die "up: cannot pick a free lab id"
  dir=$STATE_ROOT/$id
  mkdir -m 0755 "$dir"
  BUILD_ID=$id  # from here on, a failure removes the lab
  echo "$owner $owner_start" >"$dir/owner.tmp"
  mv -f "$dir/owner.tmp" "$dir/owner"
  echo "$tunnel" >"$dir/tunnel"
  unlock_state_root

  local host wan vpn
  host=$(ns_name "$id" host) wan=$(ns_name "$id" wan) vpn=$(ns_name "$id" vpn)
  local ns
  for ns in "$host" "$wan" "$vpn"; do
    ip netns add "$ns"
    # rp_filter off: replies legitimately arrive on another interface than the route back.
    # DAD off: addresses are usable at once instead of after ~1 s of tentative state.
    # shellcheck disable=SC2016  # $k expands in the namespace's shell
    ip netns exec "$ns" sh -ec '
      for k in ipv4/conf/all/rp_filter ipv4/conf/default/rp_filter ipv4/conf/lo/rp_filter \
               ipv6/conf/all/accept_dad ipv6/conf/default/accept_dad \
               ipv6/conf/all/disable_ipv6 ipv6/conf/default/disable_ipv6; do
        echo 0 > /proc/sys/net/$k
      done'
  done

  local relay_pid=
  if [[ $tunnel == tun ]]; then
    # The relay creates tun0 in host and vpn; start it early and configure while it starts.
    local relay_delay=()
    [[ -z $tunnel_delay ]] || relay_delay=(--delay-ms "$tunnel_delay")
    setsid "$bin_dir/lab-tun-relay" --netns-a "/run/netns/$host" --name-a tun0 \
      --netns-b "/run/netns/$vpn" --name-b tun0 --pidfile "$dir/relay.pid" "${relay_delay[@]}" \
      </dev/null >>"$dir/relay.log" 2>&1 &
    relay_pid=$!
  elif [[ $tunnel == veth ]]; then
    # --tunnel veth: tun0 is a veth pair between host and vpn (in-kernel, no relay, so it
    # is never the bottleneck of a benchmark), created in host with its peer placed straight
    # into vpn. Both ends are NOARP and share one MAC address: a NOARP device sends every
    # frame to its own address, which is then the peer's too, so like a TUN device it needs
    # no neighbour resolution and routes "dev tun0" without a gateway work for any
    # destination, IPv4 and IPv6.
    ip -n "$host" link add tun0 address 02:5d:1a:b0:00:01 type veth \
      peer name tun0 address 02:5d:1a:b0:00:01 netns "$vpn"
    ip -n "$host" link set tun0 arp off
    ip -n "$vpn" link set tun0 arp off
  fi

  # The veth pair is created inside host with its peer placed straight into wan, so
  # no link ever exists in the root namespace.
  ip -n "$host" -batch - <<EOF
link set lo up
link add phys0 type veth peer name wan0 netns $wan
EOF
  local side
  for side in wan vpn; do
    ns=$(ns_name "$id" "$side")
    ip -n "$ns" -batch - <<EOF
link set lo up
address add $SERVER_A4/32 dev lo
address add $SERVER_B4/32 dev lo
address add $DNS4/32 dev lo
address add $SERVER_A6/128 dev lo nodad
address add $SERVER_B6/128 dev lo nodad
address add $DNS6/128 dev lo nodad
EOF
  done
  ip -n "$wan" -batch - <<EOF
link set wan0 up
address add $WAN_GW4/24 dev wan0
address add $WAN_GW6/64 dev wan0 nodad
EOF
  ip -n "$host" -batch - <<EOF
link set phys0 up
address add $HOST_PHYS4 dev phys0
address add $HOST_PHYS6 dev phys0 nodad
route add default via $WAN_GW4 dev phys0 metric 100
route add ::/0 via $WAN_GW6 dev phys0 metric 100
EOF
  if [[ $vpn_kind != relay ]]; then
    # The VPN server's uplink: wan routes between host and the server's address, and
    # nothing else (the servers wan and vpn both hold stay local to each side).
    ip -n "$wan" link add wan1 type veth peer name uplink0 netns "$vpn"
    ip -n "$wan" -batch - <<EOF
link set wan1 up
address add $WAN_CARRIER4 dev wan1
address add $WAN_CARRIER6 dev wan1 nodad
EOF
    ip -n "$vpn" -batch - <<EOF
link set uplink0 up
address add $VPN_SERVER4/24 dev uplink0
address add $VPN_SERVER6/64 dev uplink0 nodad
route add ${HOST_PHYS4%/*}/32 via ${WAN_CARRIER4%/*} dev uplink0
route add ${HOST_PHYS6%/*}/128 via ${WAN_CARRIER6%/*} dev uplink0
EOF
    ip netns exec "$wan" sh -ec 'echo 1 > /proc/sys/net/ipv4/ip_forward
      echo 1 > /proc/sys/net/ipv6/conf/all/forwarding'
  fi

  # Servers: one responder and one dnsmasq per side, each answering with its side.
  local -A responder_pid
  for side in wan vpn; do
    ns=$(ns_name "$id" "$side")
    ip netns exec "$ns" setsid "$bin_dir/lab-responder" --side "$side" \
      --tcp-port "$TCP_PORT" --udp-port "$TCP_PORT" --http-port "$HTTP_PORT" \
      --pidfile "$dir/responder-$side.pid" </dev/null >>"$dir/responder-$side.log" 2>&1 &
    responder_pid[$side]=$!
  done
  local a4 a6 big k
  for side in wan vpn; do
    # An answer too large for 1232 bytes (dig's EDNS size): 12 strings of 250 bytes, so a
    # UDP answer is truncated and the full one comes over TCP.
    big=""
    for k in $(seq 12); do big+="${big:+,}$side-$(printf '%0246d' "$k")"; done
    ns=$(ns_name "$id" "$side")
    if [[ $side == wan ]]; then a4=$SERVER_A4 a6=$SERVER_A6; else a4=$SERVER_B4 a6=$SERVER_B6; fi
    # dnsmasq forks only once it listens, so this returns when DNS is ready. No upstream
    # servers: names it does not own get NXDOMAIN (lab.test) or REFUSED, never forwarded.
    ip netns exec "$ns" dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
      --bind-interfaces --listen-address="$DNS4" --listen-address="$DNS6" --port=53 \
      --user=root --group=root --pid-file="$dir/dnsmasq-$side.pid" \
      --log-facility="$dir/dnsmasq-$side.log" --log-queries \
      --local=/lab.test/ --host-record="whoami.lab.test,$a4,$a6" \
      --txt-record="side.lab.test,$side" --txt-record="side.direct.lab.test,$side" \
      --cname="alias.lab.test,whoami.lab.test" --cname="www.direct.lab.test,whoami.lab.test" \
      --txt-record="big.lab.test,$big" \
      </dev/null >>"$dir/dnsmasq-$side.log" 2>&1 ||
      die "up: dnsmasq in $ns failed to start: $(tail -n 5 "$dir/dnsmasq-$side.log" 2>/dev/null)"
  done

  if [[ -n $relay_pid ]]; then
    wait_for "lab-tun-relay to create tun0" 5 \
      "[[ -s '$dir/relay.pid' ]] || { check_started $relay_pid lab-tun-relay '$dir/relay.log'; false; }"
  fi
  if [[ $vpn_kind == relay ]]; then
    ip -n "$host" -batch - <<EOF
link set tun0 up
address add $HOST_TUN4 dev tun0
address add $HOST_TUN6 dev tun0 nodad
EOF
    ip -n "$vpn" -batch - <<EOF
link set tun0 up
address add $VPN_PEER4/24 dev tun0
address add $VPN_PEER6/64 dev tun0 nodad
EOF
  else
    vpn_server_start "$id"
    vpn_client_up "$id"
  fi
  for side in wan vpn; do
    wait_for "lab-responder ($side) to listen" 5 \
      "[[ -s '$dir/responder-$side.pid' ]] || { check_started ${responder_pid[$side]} lab-responder '$dir/responder-$side.log'; false; }"
  done

  # Prove every path works before handing the lab out: from host over the veth and over
  # the tunnel, v4 and v6, TCP and HTTP; and each side's DNS on both of its addresses.
  # A delayed tunnel gets 1 s more per 250 ms of delay (curl's HTTP GET takes 2 RTTs).
  local tunnel_wait=$((1 + (4 * ${tunnel_delay:-0} + 999) / 1000))
  ip netns exec "$host" bash -c "$(declare -f probe_server)
    probe_server $WAN_GW4 $TCP_PORT $WAN_GW4 wan &&
    probe_server $WAN_GW6 $TCP_PORT [$WAN_GW6] wan &&
    probe_server $VPN_PEER4 $TCP_PORT $VPN_PEER4 vpn $tunnel_wait &&
    probe_server $VPN_PEER6 $TCP_PORT [$VPN_PEER6] vpn $tunnel_wait" ||
    die "up: the lab's servers do not answer from $host (logs in $dir)"
  for side in wan vpn; do
    ns=$(ns_name "$id" "$side")
    ip netns exec "$ns" bash -c "$(declare -f probe_dns)
      probe_dns $DNS4 $side && probe_dns $DNS6 $side" ||
      die "up: dnsmasq in $ns does not answer (log: $dir/dnsmasq-$side.log)"
  done

  if ((vpn_route)); then set_vpn_route "$id" on; fi
  echo "$vpn_kind" >"$dir/vpn"
  BUILD_ID=  # complete: keep it
  printf 'LAB_ID=%s\nLAB_HOST=%s\nLAB_WAN=%s\nLAB_VPN=%s\nLAB_DIR=%s\n' \
    "$id" "$host" "$wan" "$vpn" "$dir"
}

# ---- other commands ----------------------------------------------------------------

require_root() { ((EUID == 0)) || die "$1: needs root"; }

require_lab() {
  valid_id "${1:-}" || die "invalid lab id '${1:-}' (expected 8 hex digits)"
  ns_exists "$(ns_name "$1" host)" || die "no lab $1 (namespace $(ns_name "$1" host) missing)"
}

# The "VPN default route" a real VPN client installs: two halves that beat the default.
set_vpn_route() {
  local id=$1 mode=$2 host left
  host=$(ns_name "$id" host)
  case $mode in
    on)
      ip -n "$host" -batch - <<EOF
route replace 0.0.0.0/1 dev tun0
route replace 128.0.0.0/1 dev tun0
route replace ::/1 dev tun0
route replace 8000::/1 dev tun0
EOF
      ;;
    off)
      # Deleting a route that is not there is fine (idempotent); check the result instead.
      ip -n "$host" -force -batch - >/dev/null 2>&1 <<EOF || true
route del 0.0.0.0/1 dev tun0
route del 128.0.0.0/1 dev tun0
route del ::/1 dev tun0
route del 8000::/1 dev tun0
EOF
      left=$( (ip -n "$host" -4 route show dev tun0; ip -n "$host" -6 route show dev tun0) |
        grep -E '^(0\.0\.0\.0/1|128\.0\.0\.0/1|::/1|8000::/1) ' || true)
      [[ -z $left ]] || die "vpn-route: could not remove: $left"
      ;;
    *) die "vpn-route: expected on or off, got '$mode'" ;;
  esac
}

cmd_down() {
  (($# == 1)) || die "usage: lab.sh down ID"
  valid_id "$1" || die "down: invalid lab id '$1' (expected 8 hex digits)"
  require_root down
  lab_down "$1"
}

cmd_vpn_route() {
  (($# == 2)) || die "usage: lab.sh vpn-route ID on|off"
  require_root vpn-route
  require_lab "$1"
  set_vpn_route "$1" "$2"
}

cmd_vpn() {
  (($# == 2)) || die "usage: lab.sh vpn ID up|down"
  require_root vpn
  require_lab "$1"
  local kind
  kind=$(cat "$STATE_ROOT/$1/tunnel" 2>/dev/null || echo tun)
  [[ $kind == openvpn || $kind == wireguard ]] ||
    die "vpn: lab $1 runs the relay, not a real VPN client (bring it up with --vpn openvpn|wireguard)"
  case $2 in
    up)
      ! ip -n "$(ns_name "$1" host)" link show tun0 >/dev/null 2>&1 || die "vpn: $kind is already up in lab $1"
      vpn_client_up "$1"
      ;;
    down)
      ip -n "$(ns_name "$1" host)" link show tun0 >/dev/null 2>&1 || die "vpn: $kind is already down in lab $1"
      vpn_client_down "$1"
      ;;
    *) die "vpn: expected up or down, got '$2'" ;;
  esac
}

cmd_reap() {
  (($# == 0)) || die "usage: lab.sh reap"
  require_root reap
  lock_state_root
  reap_locked
  unlock_state_root
}

cmd_list() {
  local d id state owner
  for d in "$STATE_ROOT"/*; do
    [[ -d $d ]] || continue
    id=${d##*/}
    valid_id "$id" || continue
    owner=$(cut -d' ' -f1 "$d/owner" 2>/dev/null || echo '?')
    if owner_alive "$d"; then state=live; else state=stale; fi
    printf '%s owner=%s %s namespaces:' "$id" "$owner" "$state"
    local role
    for role in "${ROLES[@]}"; do
      if ns_exists "$(ns_name "$id" "$role")"; then printf ' %s' "$(ns_name "$id" "$role")"; fi
    done
    printf '\n'
  done
  local ns
  while read -r ns _; do
    if [[ $ns =~ ^$NS_PREFIX-([0-9a-f]{8})-(host|wan|vpn)$ && ! -d $STATE_ROOT/${BASH_REMATCH[1]} ]]; then
      printf '%s orphan namespace without state dir (reap removes it)\n' "$ns"
    fi
  done < <(ip netns list 2>/dev/null || true)
}

cmd_exec() {
  (($# >= 3)) || die "usage: lab.sh exec ID host|wan|vpn CMD..."
  local id=$1 role=$2
  shift 2
  case $role in host | wan | vpn) ;; *) die "exec: role must be host, wan or vpn" ;; esac
  require_lab "$id"
  exec ip netns exec "$(ns_name "$id" "$role")" "$@"
}

main() {
  (($#)) || usage
  local cmd=$1
  shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    vpn-route) cmd_vpn_route "$@" ;;
    vpn) cmd_vpn "$@" ;;
    reap) cmd_reap "$@" ;;
    list) cmd_list "$@" ;;
    exec) cmd_exec "$@" ;;
    -h | --help | help) usage ;;
    *) note "unknown command '$cmd'"; usage ;;
  esac
}

main "$@"
