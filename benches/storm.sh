#!/bin/bash
# Reconnect storms: the server's memory while every client connects at once, and while every
# stream is closed and every client reconnects at once (issue 10: "a reconnect storm (every
# client at once) is served in bounded memory").
#
# usage: benches/storm.sh SERVER LOAD CONFIG_DIR CLIENTS [STORMS] [PORT]
#
# SERVER serves a copy of CONFIG_DIR (plus the conformance suite's services); LOAD (a meshflow
# binary too: `meshflow xds load`) opens CLIENTS delta streams at once, waits until they hold
# the configuration, then STORMS times closes every stream at once and reopens them all at once.
# The server's VmRSS is sampled every 50 ms; for each phase (the first connect, each close,
# each reconnect) it prints the peak and the value at its end, and the load's own lines (how
# long each sync took, how many bytes).
set -euo pipefail
S=$1; L=$2; DIR=$3; N=$4; K=${5:-1}; P=${6:-25910}
. "$(dirname "$0")/serve-copy.sh"
trap 'kill ${SERVER:-} 2>/dev/null || true' EXIT
serve_copy "$S" "$L" "$DIR" "$P" storm
echo "$(date +%s.%N) start" >"$WORK/load.err"
"$L" xds load --server "127.0.0.1:$P" --clients "$N" --hold 3s --storms "$K" >"$WORK/load.out" \
    2> >(while read -r l; do echo "$(date +%s.%N) $l"; done >>"$WORK/load.err") &
LOAD=$!
while kill -0 $LOAD 2>/dev/null; do
    echo "$(date +%s.%N) $(awk '/VmRSS/ {print $2}' /proc/$SERVER/status)"
    sleep 0.05
done >"$WORK/rss"
sleep 1
python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
events = []
for line in open(f"{work}/load.err"):
    at, _, text = line.strip().partition(" ")
    if text:
        events.append((float(at), text))
rss = [(float(a), int(b)) for a, b in (l.split() for l in open(f"{work}/rss") if len(l.split()) == 2)]
marks = [e for e in events if e[1] == "start" or "hold the configuration" in e[1] or "closed in" in e[1]
         or e[1].startswith("idle for")]
print(f"server RSS before any stream: {rss[0][1] / 1024:.0f} MB")
for (a, what), (b, until) in zip(marks, marks[1:]):
    phase = [r for t, r in rss if a <= t <= b]
    if phase:
        print(f"until: {until}\n    peak {max(phase) / 1024:.0f} MB, at its end {phase[-1] / 1024:.0f} MB")
PY
