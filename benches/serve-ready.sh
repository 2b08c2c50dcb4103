#!/bin/bash
# Loads a config directory into `meshflow serve` and reports how long until /ready, the
# process's CPU by then, its RSS 2 s after ready and its peak RSS (VmHWM).
#
#   benches/serve-ready.sh MESHFLOW DIR [PORT]
#
# DIR as exported by `meshflow bench --preset large --export DIR --scenario initial-sync
# --clients 0 --duration 1s --out /tmp/bo` (BENCHMARKS.md, "Session 27").
set -euo pipefail
bin=$1 dir=$2 p=${3:-27110}
start=$(date +%s.%N)
"$bin" serve --config-dir "$dir" --xds-addr "127.0.0.1:$p" --admin-addr "127.0.0.1:$((p + 4))" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
until curl -sf -o /dev/null "http://127.0.0.1:$((p + 4))/ready"; do
    kill -0 $pid 2>/dev/null || { echo "meshflow serve exited before ready" >&2; exit 1; }
    sleep 0.05
done
ready=$(echo "$(date +%s.%N) - $start" | bc)
sleep 2
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
cpu=$(awk '{print ($14 + $15) / 100}' /proc/$pid/stat)
echo "ready ${ready} s, CPU ${cpu} s, RSS $((rss / 1024)) MiB, peak $((hwm / 1024)) MiB"
