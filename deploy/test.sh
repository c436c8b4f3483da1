#!/usr/bin/env bash
# Builds splitd and runs every test: unit tests and the end-to-end tests in network
# namespaces (lab tests need root; without it they are reported as skipped).
#
#   deploy/test.sh                    # RelWithDebInfo build in build/, warnings as errors
#   deploy/test.sh --sanitize address # ASan+UBSan build in build-asan/
#   deploy/test.sh --sanitize thread  # TSan build in build-tsan/
#   deploy/test.sh --all              # the plain build, the ASan+UBSan build, then each fuzz
#                                     # target briefly (what CI runs)
#   deploy/test.sh --fuzz [SECONDS]   # only the fuzz targets (clang libFuzzer), 30 s each
#                                     # (20 s with CI=true)
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=""
all=0
fuzz_only=0
FUZZ_SECONDS=30
fuzz_seconds_given=0
while (($#)); do
  case $1 in
    --sanitize) sanitize=${2:?--sanitize needs address or thread}; shift 2 ;;
    --all) all=1; shift ;;
    --fuzz)
      fuzz_only=1
      shift
      if [[ ${1:-} =~ ^[0-9]+$ ]]; then FUZZ_SECONDS=$1; fuzz_seconds_given=1; shift; fi
      ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $1" >&2; exit 1 ;;
  esac
done

# CI runs each fuzz target 20 s unless --fuzz N says otherwise.
if [[ ${CI:-} == true ]] && ((!fuzz_seconds_given)); then FUZZ_SECONDS=20; fi

if [[ $(id -u) -eq 0 ]]; then
  bash deploy/install-deps.sh
else
  echo "test.sh: not root: not installing packages, lab tests will be skipped" >&2
fi

run_suite() {
  local kind=$1 dir opts=()
  case $kind in
    plain) dir=build ;;
    # The sanitizer builds leave out the benchmarks (and lab-load's own test): they are
    # measuring tools, built and tested by the plain build, and they take build time.
    address) dir=build-asan; opts=(-DSPLITD_SANITIZE_ADDRESS=ON -DSPLITD_BUILD_BENCH=OFF) ;;
    thread) dir=build-tsan; opts=(-DSPLITD_SANITIZE_THREAD=ON -DSPLITD_BUILD_BENCH=OFF) ;;
    *) echo "test.sh: unknown sanitizer '$kind' (address|thread)" >&2; exit 1 ;;
  esac
  echo "=== build ($kind) in $dir (at ${SECONDS}s)"
  # -g1 (line tables, no variables): sanitizer reports and test failures keep their file
  # and line, and the build takes much less time and disk than with full debug info.
  # The sanitizer builds use -O1: UBSan's instrumentation at -O2 made Beast's server.cpp
  # take 204 s to compile (122 s at -O1, 43 s plain), and -O1 is what the sanitizers'
  # authors recommend anyway.
  local opt=-O2
  [[ $kind == plain ]] || opt=-O1
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=$opt -g1 -DNDEBUG" \
    -DSPLITD_WERROR=ON "${opts[@]}" >/dev/null
  cmake --build "$dir" -j"$(nproc)"
  if [[ $kind == plain ]]; then
    echo "=== systemd unit (deploy/splitd.service, offline)"
    bash deploy/check-unit.sh "$dir/daemon/splitd"
  fi
  echo "=== tests ($kind) (at ${SECONDS}s)"
  # Sanitizer reports must fail the test that triggered them.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$dir" --output-on-failure -j2 --timeout 600
}

# The libFuzzer targets beside the parsers (clang only), each for FUZZ_SECONDS; a crash
# fails the run and leaves its input in build-fuzz/crashes/.
run_fuzz() {
  echo "=== fuzz targets (clang libFuzzer, ${FUZZ_SECONDS}s each) in build-fuzz (at ${SECONDS}s)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG" -DSPLITD_WERROR=OFF \
    -DSPLITD_BUILD_BENCH=OFF >/dev/null
  local targets=(fuzz_api fuzz_message fuzz_config fuzz_iface_netlink fuzz_firewall_netlink fuzz_patterns
    fuzz_sniff_stream fuzz_sniff_quic)
  cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]}"
  mkdir -p build-fuzz/crashes
  local t
  for t in "${targets[@]}"; do
    local bin seeds corpus=()
    bin=$(find build-fuzz/tests -type f -name "$t" -perm -u+x | head -n1)
    [[ -n $bin ]] || { echo "test.sh: fuzz target $t was not built" >&2; return 1; }
    # The committed seeds (tests/<folder>/corpus/<target>/) are copied into a scratch
    # corpus that the fuzzer grows; the committed one is never written to.
    seeds=$(find tests -type d -path "*/corpus/$t" | head -n1)
    if [[ -n $seeds ]]; then
      mkdir -p "build-fuzz/corpus/$t"
      cp -f "$seeds"/* "build-fuzz/corpus/$t/"
      corpus=("build-fuzz/corpus/$t")
    fi
    echo "--- $t${seeds:+ (seeds: $seeds)}"
    # QUIC: a client's Initial datagrams are at least 1200 bytes, and the target reads
    # several of them from one input.
    local max_len=4096
    [[ $t != fuzz_sniff_quic ]] || max_len=8192
    "$bin" -max_total_time="$FUZZ_SECONDS" -max_len="$max_len" -print_final_stats=1 \
      -artifact_prefix=build-fuzz/crashes/"$t"- "${corpus[@]}" 2>&1 | tail -n 12
    [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "test.sh: fuzz target $t failed" >&2; return 1; }
  done
}

leftovers() {
  # Labs of this run must all be gone; labs of dead owners are reaped first.
  [[ $(id -u) -eq 0 ]] || return 0
  bash tests/lab/lab.sh reap >/dev/null 2>&1 || true
  local left
  left=$(ip netns list 2>/dev/null | awk '$1 ~ /^sd(lab|fw)-/ {print $1}')
  if [[ -n $left ]]; then
    echo "test.sh: namespaces left behind by the tests: $left" >&2
    return 1
  fi
}

if ((fuzz_only)); then
  run_fuzz
  exit 0
fi
if ((all)); then
  run_suite plain
  run_suite address
  run_fuzz
elif [[ -n $sanitize ]]; then
  run_suite "$sanitize"
else
  run_suite plain
fi
leftovers
echo "test.sh: all suites passed in ${SECONDS}s"
