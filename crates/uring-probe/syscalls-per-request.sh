#!/usr/bin/env bash
# Syscalls per request of a running proxy (issue 19's measurement):
#   crates/uring-probe/syscalls-per-request.sh PORT PID [PID...]
# attaches `strace -c -f` to every PID (-f: all threads of it), runs
# `wrk -t1 -c50 -d5s http://127.0.0.1:PORT/` (on cpu $WRK_CPU, default 1),
# stops strace, and divides each syscall's count by wrk's request count.
# strace slows the proxy down a lot: only the counts per request matter.
set -euo pipefail
port=$1; shift
out=$(mktemp -d)
attach=()
for pid in "$@"; do attach+=(-p "$pid"); done
strace -c -f -o "$out/strace" "${attach[@]}" &
strace_pid=$!
sleep 1
taskset -c "${WRK_CPU:-1}" wrk -t1 -c"${CONNS:-50}" -d"${DURATION:-5s}" "http://127.0.0.1:$port/" > "$out/wrk"
kill -INT "$strace_pid"
wait "$strace_pid" || true
requests=$(awk '/requests in/ {print $1}' "$out/wrk")
echo "requests: $requests ($(grep -E 'Requests/sec|Non-2xx|Socket errors' "$out/wrk" | tr '\n' ' '))"
# strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall.
awk -v n="$requests" '
  $1 ~ /^[0-9.]+$/ && NF >= 5 {
    calls = $4; name = $NF
    if (name == "total") next
    total += calls
    printf "  %-20s %10d calls  %8.3f /req\n", name, calls, calls / n
  }
  END { printf "  %-20s %10d calls  %8.3f /req\n", "TOTAL", total, total / n }
' "$out/strace"
rm -rf "$out"
