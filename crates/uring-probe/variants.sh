#!/usr/bin/env bash
# The probe's variants side by side (crates/uring-probe/RESULTS.md): testapp and
# probe on cpu 0, wrk -t1 -c50 on cpu 1, 2 s warm-up + 5 s measured, two rounds;
# CPU per request from /proc/PID/stat (utime+stime, 10 ms ticks).
#   crates/uring-probe/variants.sh   (after cargo build --release -p cutover-testapp -p cutover-uring-probe)
set -u
bin=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/target/release
taskset -c 0 $bin/cutover-testapp --port 0 --version direct --threads 1 > /tmp/v-ta.out 2>&1 &
ta=$!
sleep 0.5
up=$(grep -o '127.0.0.1:[0-9]*' /tmp/v-ta.out | head -1)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
for round in 1 2; do
for v in "multishot defer" "oneshot defer" "multishot coop" "multishot plain"; do
  set -- $v
  taskset -c 0 $bin/cutover-uring-probe --listen 127.0.0.1:18182 --upstream $up --workers 1 --recv $1 --taskrun $2 > /dev/null 2>&1 &
  p=$!
  sleep 0.3
  taskset -c 1 wrk -t1 -c50 -d2s http://127.0.0.1:18182/ > /dev/null
  c0=$(cpu $p); a0=$(cpu $ta)
  out=$(taskset -c 1 wrk -t1 -c50 -d5s http://127.0.0.1:18182/)
  c1=$(cpu $p); a1=$(cpu $ta)
  req=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  # clock ticks are 10 ms
  echo "round $round $1/$2: $rps req/s  proxy $(echo "($c1-$c0)*10000/$req" | bc -l | cut -c1-5) us/req  app $(echo "($a1-$a0)*10000/$req" | bc -l | cut -c1-5) us/req"
  kill $p; wait $p 2>/dev/null
done
done
kill $ta
