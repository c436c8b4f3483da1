#!/usr/bin/env bash
# Checks deploy/splitd.service offline (no systemd as PID 1 needed):
#   1. `systemd-analyze verify` on a copy whose /usr/local/sbin/splitd points at the built
#      binary (verify wants the ExecStart= binary to exist); any message about the unit fails.
#   2. `systemd-analyze security --offline=true`: prints the overall exposure level and fails
#      above the threshold (the score the unit reaches, plus a little slack).
# Usage: deploy/check-unit.sh [SPLITD_BINARY]   (default: build/daemon/splitd)
# Environment: SPLITD_MAX_EXPOSURE overrides the threshold.
set -euo pipefail

readonly max_exposure=${SPLITD_MAX_EXPOSURE:-3.9}  # reached: 3.6 (systemd 252), plus slack

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
unit_src=$here/splitd.service
binary=${1:-$here/../build/daemon/splitd}

command -v systemd-analyze >/dev/null || { echo "check-unit: systemd-analyze missing (apt-get install systemd)" >&2; exit 1; }
[[ -x $binary ]] || { echo "check-unit: no splitd binary at $binary (build it, or pass its path)" >&2; exit 1; }
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT
unit=$work/splitd.service
sed "s|/usr/local/sbin/splitd|$binary|g" "$unit_src" >"$unit"

status=0

# 1. verify. It also loads the units the unit names (multi-user.target...); only messages
# about ours count. --man=no: man pages are not installed in every image.
if ! out=$(systemd-analyze verify --man=no "$unit" 2>&1); then
  echo "check-unit: systemd-analyze verify failed:" >&2
  echo "$out" >&2
  status=1
fi
ours=$(grep -F -e "$unit" -e 'splitd.service' <<<"$out" || true)
if [[ -n $ours ]]; then
  echo "check-unit: systemd-analyze verify complains about the unit:" >&2
  echo "$ours" >&2
  status=1
else
  echo "check-unit: systemd-analyze verify: no warnings"
fi

# 2. security exposure, offline.
if ! sec=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1); then
  echo "check-unit: systemd-analyze security failed:" >&2
  echo "$sec" >&2
  exit 1
fi
line=$(grep -E 'Overall exposure level' <<<"$sec" | tail -n1)
score=$(sed -E 's/.*: *([0-9]+\.[0-9]+).*/\1/' <<<"$line")
if [[ ! $score =~ ^[0-9]+\.[0-9]+$ ]]; then
  echo "check-unit: no exposure level in the output of systemd-analyze security:" >&2
  echo "$sec" >&2
  exit 1
fi
echo "check-unit: ${line#→ }"
if awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s > m) }'; then
  echo "check-unit: exposure $score is above the threshold $max_exposure; what raised it:" >&2
  grep -E '^✗' <<<"$sec" >&2 || true
  status=1
fi
exit $status
