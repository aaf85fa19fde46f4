#!/usr/bin/env bash
# TFTP download benchmark: the project's server (lock-step and with sender
# anticipation) against Debian's in.tftpd, same client (curl), 64 MiB,
# server pinned to CPU 0 and client to CPU 1, median of N runs (MB/s).
#
# usage: testdata/tftp-bench.sh [-n RUNS] [-c curl|atftp] [-w WINDOW]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=3 client=curl window=16
while getopts n:c:w: o; do
  case $o in n) runs=$OPTARG;; c) client=$OPTARG;; w) window=$OPTARG;; *) exit 2;; esac
done
for t in in.tftpd curl atftp taskset; do command -v $t >/dev/null || { echo "missing $t (apt-get install tftpd-hpa curl atftp util-linux)" >&2; exit 1; }; done

work=$(mktemp -d /dev/shm/tftp-bench.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/srv"
head -c $((64 << 20)) /dev/urandom > "$work/srv/file"
go build -o "$work/tftpbench" ./testdata/tftpbench
port=16969

start_server() { # kind window
  case $1 in
    hpa) taskset -c 0 in.tftpd -L -a 127.0.0.1:$port -s "$work/srv" -B 65464 & ;;
    go)  taskset -c 0 "$work/tftpbench" -addr 127.0.0.1:$port -root "$work/srv" -window "$2" & ;;
  esac
  server_pid=$!
  sleep 0.3
}
stop_server() { kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null || true; server_pid=; }

download() { # blksize -> MB/s, or FAIL
  rm -f "$work/out"
  local t0 t1
  t0=$(date +%s.%N)
  case $client in
    curl)  taskset -c 1 curl -sS --tftp-blksize "$1" -o "$work/out" "tftp://127.0.0.1:$port/file" 2>/dev/null || { echo FAIL; return; } ;;
    atftp) taskset -c 1 atftp -g -r file -l "$work/out" --option "blksize $1" 127.0.0.1 $port >/dev/null 2>&1 || { echo FAIL; return; } ;;
  esac
  t1=$(date +%s.%N)
  cmp -s "$work/out" "$work/srv/file" || { echo CORRUPT; return; }
  echo "scale=1; 67108864 / ($t1 - $t0) / 1000000" | bc
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

measure() { # kind window blksize -> "median fails"
  start_server "$1" "$2"
  local r=() fails=0 v
  for _ in $(seq "$runs"); do
    v=$(download "$3")
    case $v in FAIL|CORRUPT) fails=$((fails + 1));; *) r+=("$v");; esac
  done
  stop_server
  if [ ${#r[@]} -eq 0 ]; then echo "- $fails"; else echo "$(median "${r[@]}") $fails"; fi
}

printf '%-28s %8s %8s %8s %8s\n' "server ($client, MB/s)" 512 1468 8192 65464
declare -A hpa
line="in.tftpd lock-step"; printf '%-28s' "$line"
for b in 512 1468 8192 65464; do read -r m f < <(measure hpa 1 $b); hpa[$b]=$m; printf ' %8s' "$m$([ "$f" = 0 ] || echo "!$f")"; done; echo
line="bbot tftp lock-step"; printf '%-28s' "$line"; ratios=
for b in 512 1468 8192 65464; do read -r m f < <(measure go 1 $b); printf ' %8s' "$m$([ "$f" = 0 ] || echo "!$f")"; ratios+=" $(echo "scale=2; $m / ${hpa[$b]}" | bc)x"; done; echo
printf '%-28s' "  ratio to in.tftpd"; for r in $ratios; do printf ' %8s' "$r"; done; echo
line="bbot tftp anticipate w=$window"; printf '%-28s' "$line"; ratios=
for b in 512 1468; do read -r m f < <(measure go "$window" $b); printf ' %8s' "$m$([ "$f" = 0 ] || echo "!$f")"; ratios+=" $(echo "scale=2; $m / ${hpa[$b]}" | bc)x"; done; echo
printf '%-28s' "  ratio to in.tftpd"; for r in $ratios; do printf ' %8s' "$r"; done; echo
echo "(!N: N failed runs of $runs)"
