#!/usr/bin/env bash
# Every figure of README's "Measured" table, in one command (as root).
# A/B comparisons are interleaved (A, B, A, B, ...), N runs each; each
# figure is the median with min-max; a ratio is of the medians of two
# things run side by side in the same loop.
#
# usage: sudo testdata/bench.sh [-n RUNS] [SECTION...]
#   sections: enum tftp memory result vm (default: all; vm boots QEMU and
#   takes minutes: slots throughput and per-task overhead)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=7
while getopts n: o; do
  case $o in n) runs=$OPTARG;; *) exit 2;; esac
done
shift $((OPTIND - 1))
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(enum tftp memory result vm)
want() { local s; for s in "${sections[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
export PATH="/usr/local/go/bin:$PATH"

work=$(mktemp -d /dev/shm/bbot-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# stats V... -> "median (min-max)"
stats() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%s (%s-%s)", a[int((NR+1)/2)], a[1], a[NR]}'; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }

echo "bbot-agent benchmarks, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $runs runs each"
echo

if want enum; then
  echo "== enumeration of idle bootstrapped machines (real btrfs; absolute times)"
  # One setup per size (10,000 subvolumes take a while): RUNS scans of it.
  out=$(go test -run '^$' -bench 'Enumerate/' -benchtime "${runs}x" -timeout 60m ./agent/inventory)
  for n in 1000 10000; do
    grep "machines=$n-" <<<"$out" | awk -v n=$n '{for (i = 1; i < NF; i++) v[$(i+1)] = $i}
      END {printf "  %d machines: %s (%s-%s) ms per scan, %.0f ns/machine (median), snapshots %s\n", n, v["median-ms"], v["min-ms"], v["max-ms"], v["ns/machine"], v["snapshots"]}'
  done
  echo
fi

if want tftp; then
  echo "== TFTP GET of 64 MiB, curl on CPU 1, servers on CPU 0, MB/s (absolute)"
  for t in in.tftpd curl taskset; do command -v $t >/dev/null || { echo "missing $t" >&2; exit 1; }; done
  mkdir -p "$work/srv"
  head -c $((64 << 20)) /dev/urandom > "$work/srv/file"
  go build -o "$work/tftpbench" ./testdata/tftpbench
  taskset -c 0 in.tftpd -L -a 127.0.0.1:16901 -s "$work/srv" -B 65464 & pids+=($!)
  taskset -c 0 "$work/tftpbench" -addr 127.0.0.1:16902 -root "$work/srv" -window 1 & pids+=($!)
  taskset -c 0 "$work/tftpbench" -addr 127.0.0.1:16903 -root "$work/srv" -window 16 & pids+=($!)
  taskset -c 0 "$work/tftpbench" -addr 127.0.0.1:16904 -root "$work/srv" -window 1 -pin-sender & pids+=($!)
  sleep 0.5
  get() { # port blksize -> MB/s
    rm -f "$work/out"
    local t0 t1
    t0=$(date +%s.%N)
    taskset -c 1 curl -sS --tftp-blksize "$2" -o "$work/out" "tftp://127.0.0.1:$1/file" || { echo FAIL; return; }
    t1=$(date +%s.%N)
    cmp -s "$work/out" "$work/srv/file" || { echo CORRUPT; return; }
    echo "scale=1; 67108864 / ($t1 - $t0) / 1000000" | bc
  }
  declare -A res
  for _ in $(seq "$runs"); do
    for b in 512 1468 8192 65464; do
      res[hpa$b]+=" $(get 16901 $b)"
      res[go$b]+=" $(get 16902 $b)"
      res[pin$b]+=" $(get 16904 $b)"
      if [ $b -le 1468 ]; then res[win$b]+=" $(get 16903 $b)"; fi
    done
  done
  for b in 512 1468 8192 65464; do
    # shellcheck disable=SC2086
    h=$(median ${res[hpa$b]}) g=$(median ${res[go$b]}) p=$(median ${res[pin$b]})
    line="  blksize $b: in.tftpd $(stats ${res[hpa$b]}), ours lock-step $(stats ${res[go$b]}): $(ratio "$g" "$h")x; with pin/tftp's sender $(stats ${res[pin$b]}): $(ratio "$p" "$h")x"
    if [ $b -le 1468 ]; then w=$(median ${res[win$b]}); line+="; ours anticipating (window 16) $(stats ${res[win$b]}): $(ratio "$w" "$h")x"; fi
    echo "$line"
  done
  case "${res[*]}" in *FAIL*|*CORRUPT*) echo "  (some runs failed: ${res[*]})";; esac
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()
  echo
fi

if want memory; then
  echo "== memory: peak RSS (ru_maxrss), metrics off / on interleaved"
  go build -o "$work/bbot-agent" ./cmd/bbot-agent
  go build -o "$work/maxrss" ./testdata/maxrss
  idle() { # extra options... -> KiB
    local d="$work/idle" pid
    rm -rf "$d"; mkdir -p "$d/m" "$d/t"
    "$work/maxrss" "$work/bbot-agent" --machines "$d/m" --tftp "$d/t" --network user --state-dir "$d/s" --run-dir "$d/r" \
      --tftp-port 29400 --poll-interval 1 "$@" http://127.0.0.1:9/?build-task 2>"$d/err" &
    pid=$!
    sleep 5
    if [ $# -gt 0 ]; then for _ in 1 2 3; do curl -s http://127.0.0.1:29464/metrics >/dev/null; done; fi
    sleep 1
    kill -INT $pid; wait $pid || true
    awk '/^maxrss-kib/ {print $2}' "$d/err"
  }
  off=() on=()
  for _ in $(seq "$runs"); do
    off+=("$(echo "scale=1; $(idle) / 1024" | bc)")
    on+=("$(echo "scale=1; $(idle --metrics 127.0.0.1:29464) / 1024" | bc)")
  done
  echo "  idle daemon, 1 slot: metrics off $(stats "${off[@]}") MB, on (3 scrapes) $(stats "${on[@]}") MB (goal < 15 MB off)"
  # A 64 MiB result through the agent's real path: --fake-machine serves
  # the task over TFTP, curl PUTs the result, the agent parses, cuts and
  # journals it and prints the result request's result.
  res64="$work/result.manifest"
  { printf ': 1\nname: hello\nversion: 1.0.0\nstatus: success\nupdate-status: success\nupdate-log:\n\\\n'
    head -c $((47 << 20)) /dev/urandom | base64 -w 99 # under the 64 MiB upload cap
    printf '\\\n'; } > "$res64"
  size=$(stat -c %s "$res64")
  go build -o "$work/brepbench" ./testdata/brepbench
  mib=$(echo "scale=1; $size / 1048576" | bc)
  daemon=() dry=()
  for _ in $(seq "$runs"); do
    # The daemon's path: --fake-machine offered to a controller (the
    # strict test controller, its own process), curl PUTs the result, the
    # agent parses, cuts, journals and POSTs it.
    d="$work/big"; rm -rf "$d"; mkdir -p "$d"
    "$work/brepbench" -machine x86_64-linux_test-busybox -url-file "$d/url" >"$d/results" 2>"$d/brep.err" &
    brep=$!
    for _ in $(seq 100); do [ -s "$d/url" ] && break; sleep 0.05; done
    "$work/maxrss" "$work/bbot-agent" --fake-machine testdata/dry-run/machine.manifest --tftp "$d/tftp" --tftp-port 24600 \
      --toolchain-num 7 --toolchain-name ci --state-dir "$d/s" --run-dir "$d/r" --poll-interval 1 "$(cat "$d/url")" 2>"$d/err" &
    pid=$!
    for _ in $(seq 200); do [ -e "$d/tftp/build/ci-1/get/manifest" ] && break; sleep 0.05; done
    curl -sS -T "$res64" tftp://127.0.0.1:25201/result.manifest
    wait $brep || { echo "the controller got no result:"; cat "$d/brep.err"; tail -3 "$d/err"; exit 1; }
    kill -INT $pid; wait $pid || true
    grep -q ' success$' "$d/results" || { echo "64 MiB result not delivered:"; cat "$d/results"; exit 1; }
    daemon+=("$(echo "scale=1; $(awk '/^maxrss-kib/ {print $2}' "$d/err") / 1024" | bc)")
    # The dry run (--fake-request --dump-result) prints the result too.
    d="$work/dry"; rm -rf "$d"; mkdir -p "$d"
    "$work/maxrss" "$work/bbot-agent" --fake-machine testdata/dry-run/machine.manifest --fake-request testdata/dry-run/task.manifest \
      --tftp "$d/tftp" --tftp-port 24600 --toolchain-num 7 --toolchain-name ci --state-dir "$d/s" --run-dir "$d/r" --dump-result >"$d/out" 2>"$d/err" &
    pid=$!
    for _ in $(seq 200); do [ -e "$d/tftp/build/ci-1/get/manifest" ] && break; sleep 0.05; done
    curl -sS -T "$res64" tftp://127.0.0.1:25201/result.manifest
    wait $pid || true
    grep -q '^status: success' "$d/out" || { echo "64 MiB result not handled:"; tail -3 "$d/err"; exit 1; }
    dry+=("$(echo "scale=1; $(awk '/^maxrss-kib/ {print $2}' "$d/err") / 1024" | bc)")
  done
  echo "  a $mib MiB result (one log), bound 2 x $mib + 20 = $(echo "scale=1; 2 * $size / 1048576 + 20" | bc) MB:"
  echo "    daemon (--fake-machine to a controller, POSTed): $(stats "${daemon[@]}") MB"
  echo "    dry run (--fake-request --dump-result, printed): $(stats "${dry[@]}") MB"
  echo
fi

if want result; then
  echo "== result pipeline (absolute times)"
  go test -run '^$' -bench 'Write64MiB' -benchtime 3x -count "$runs" ./agent/result | awk '/^BenchmarkWrite64MiB/ {print $3/1e9}' > "$work/r64"
  # shellcheck disable=SC2046
  echo "  64 MiB result parsed, cut and persisted: $(stats $(cat "$work/r64")) s"
  echo
fi

if want vm; then
  echo "== with QEMU (TCG; absolute times)"
  out=$(BBOT_BENCH_RUNS=$runs go test -run '^$' -bench 'SlotsThroughput' -benchtime 1x -timeout 60m ./agent)
  grep -E '^Benchmark' <<<"$out" | sed 's/^/  /'
  out=$(go test -run '^$' -bench 'TaskOverhead' -benchtime "${runs}x" -timeout 30m ./agent)
  grep -E '^Benchmark' <<<"$out" | sed 's/^/  /'
  echo
fi
