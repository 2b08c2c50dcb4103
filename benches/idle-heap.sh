#!/bin/bash
# Where the server's memory per idle delta stream goes (issue 10: "under 10 KiB of server
# memory per idle stream beyond the shared resources"), by allocation site.
#
# usage: benches/idle-heap.sh SERVER LOAD CONFIG_DIR [CLIENTS] [PER_CONNECTION] [CLASSES] [PORT]
#
# SERVER is a meshflow built with `--features system-allocator` (heaptrack intercepts malloc;
# mimalloc bypasses it), e.g. `cargo build --profile profiling --features system-allocator`.
# It serves a copy of CONFIG_DIR under heaptrack; LOAD (`meshflow xds load`) opens CLIENTS
# delta streams, PER_CONNECTION to a connection, with pod labels in CLASSES classes (0: none),
# and holds them idle. 3 s into the hold the server is killed (SIGKILL: nothing is freed), so
# what heaptrack reports as leaked is what was live with CLIENTS idle streams. The script
# prints heaptrack's summary and the allocation sites of the most live memory, with the bytes
# per stream of each (a site that holds a few bytes per stream at 5,000 streams shows as a
# round number of bytes per stream; the configuration itself does not scale with CLIENTS:
# run twice with different CLIENTS to tell the two apart).
set -euo pipefail
S=$1; L=$2; DIR=$3; N=${4:-2000}; PER=${5:-100}; C=${6:-10}; P=${7:-25940}
command -v heaptrack >/dev/null || { echo "heaptrack is not installed (apt-get install heaptrack)" >&2; exit 1; }
WRAP=$(mktemp /tmp/heaptrack-serve.XXXX)
OUT=$(mktemp -d /tmp/idle-heap.XXXX)
# serve_copy starts "$S serve …": run it under heaptrack instead.
printf '#!/bin/sh\nexec heaptrack -o %s/heap "%s" "$@"\n' "$OUT" "$S" >"$WRAP"
chmod +x "$WRAP"
. "$(dirname "$0")/serve-copy.sh"
trap 'pkill -9 -f "$S serve --config-dir $WORK/dir" 2>/dev/null || true; rm -f "$WRAP"' EXIT
serve_copy "$WRAP" "$L" "$DIR" "$P" idleheap
"$L" xds load --server "127.0.0.1:$P" --clients "$N" --streams-per-connection "$PER" --classes "$C" --hold 10s \
    >"$WORK/load.out" 2>"$WORK/load.err" &
LOAD=$!
until grep -q "idle for" "$WORK/load.err" 2>/dev/null || ! kill -0 $LOAD 2>/dev/null; do
    sleep 0.1
done
sleep 3
pkill -9 -f "$S serve --config-dir $WORK/dir"
wait $LOAD || true
# heaptrack writes its file once the server is gone.
for _ in $(seq 1 100); do
    ls "$OUT"/heap*.zst >/dev/null 2>&1 && ! pgrep -f heaptrack_interpret >/dev/null && break
    sleep 0.3
done
cat "$WORK/load.err"
heaptrack_print -f "$OUT"/heap*.zst --print-leaks 1 --print-peaks 0 --print-allocators 0 --print-temporary 0 \
    --print-histogram "" --merge-backtraces 1 -n 25 >"$OUT/report.txt" 2>/dev/null || true
grep -E "^(total runtime|calls to allocation|temporary|peak heap|peak RSS|total memory leaked)" "$OUT/report.txt" || true
echo "live at the kill, by site (bytes per stream = live / $N):"
awk -v n="$N" '/^MOST MEMORY LEAKED/ {on = 1; next} on && /^[0-9.]+[KMG]?B? leaked over/ {
        v = $1; m = 1; if (v ~ /K$/) m = 1e3; if (v ~ /M$/) m = 1e6; if (v ~ /G$/) m = 1e9; sub(/[KMGB]+$/, "", v)
        printf "%9.0f B/stream  %s\n", v * m / n, $0; getline; print "      " $0; getline; print "      " $0; getline; print "      " $0 }' \
    "$OUT/report.txt" | head -120
echo "full report: $OUT/report.txt"
rm -rf "$WORK"
