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
wait $LOAD 2>/dev/null || true
# heaptrack writes its file once the server is gone.
for _ in $(seq 1 100); do
    ls "$OUT"/heap*.zst >/dev/null 2>&1 && ! pgrep -f heaptrack_interpret >/dev/null && break
    sleep 0.3
done
cat "$WORK/load.err"
heaptrack_print -f "$OUT"/heap*.zst --print-leaks 1 --print-peaks 0 --print-allocators 0 --print-temporary 0 \
    --merge-backtraces 1 -n 100 -s 100 >"$OUT/report.txt" 2>/dev/null || true
grep -E "^(peak heap|total memory leaked)" "$OUT/report.txt" || true
echo "live at the kill, by site, where the site was called about once per stream or more:"
python3 - "$OUT/report.txt" "$N" <<'PY'
import re, sys
lines, n = open(sys.argv[1]).read().split("\n"), int(sys.argv[2])
def size(v):
    v = v.rstrip("B")
    return float(v[:-1]) * {"K": 1e3, "M": 1e6, "G": 1e9}[v[-1]] if v[-1] in "KMG" else float(v)
rows, i = [], 0
while i < len(lines):
    m = re.match(r"^([\d.]+[KMG]?B?) leaked over (\d+) calls from:", lines[i])
    i += 1
    if not m:
        continue
    frames = []
    while i < len(lines) and not re.match(r"^\s*[\d.]+[KMG]?B? leaked over", lines[i]):
        at = lines[i].strip()
        if at.startswith("at ") and "/rustc/" not in at:
            frames.append(lines[i - 1].strip().split("<")[0] + "@" + "/".join(at[3:].split("/")[-3:]))
        i += 1
    rows.append((size(m.group(1)), int(m.group(2)), frames[:4]))
total = 0
for b, calls, frames in sorted(rows, reverse=True):
    if calls >= 0.9 * n and b / n >= 8:
        total += b
        print(f"{b / n:7.0f} B/stream  {calls} calls: " + " <- ".join(frames))
print(f"{total / n:7.0f} B/stream in these sites")
PY
echo "full report: $OUT/report.txt"
rm -rf "$WORK"
