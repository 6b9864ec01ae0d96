#!/usr/bin/env bash
# perf stat (no strace) of running PIDs during `wrk -t1 -c50 -d5s` on cpu 1:
# syscalls (raw_syscalls:sys_enter), task-clock and context switches per request.
#   crates/uring-probe/perf-stat-per-request.sh PORT PID [PID...]
port=$1; shift
pids=$(echo "$@" | tr ' ' ',')
perf stat -e raw_syscalls:sys_enter,task-clock,context-switches -p "$pids" -o "${PERF_OUT:-/tmp/perfstat.txt}" &
p=$!
sleep 0.5
out=$(taskset -c 1 wrk -t1 -c50 -d5s "http://127.0.0.1:$port/")
kill -INT $p; wait $p
req=$(echo "$out" | awk '/requests in/ {print $1}')
echo "requests $req, $(echo "$out" | grep Requests/sec)"
awk -v n="$req" '
  /task-clock/ { gsub(",","",$1); printf "  %-28s %14s ms  %8.2f us/req\n", "task-clock", $1, $1*1000/n; next }
  /raw_syscalls|context-switches/ { gsub(",","",$1); printf "  %-28s %14s  %10.3f /req\n", $2, $1, $1/n }' "${PERF_OUT:-/tmp/perfstat.txt}"
