#!/bin/bash
# One endpoint change to many delta streams, and the server's memory per idle stream (issue 10:
# "one endpoint change reaches all 5,000 in < 50 ms; under 10 KiB of server memory per idle
# stream beyond the shared resources").
#
# usage: benches/fanout.sh SERVER LOAD CONFIG_DIR [CLIENTS] [PER_CONNECTION] [CHANGES] [CLASSES] [PORT]
#
# SERVER (`meshflow serve`) serves a copy of CONFIG_DIR plus the conformance suite's services
# (alpha, beta); LOAD (a meshflow binary: `meshflow xds load`) opens CLIENTS delta streams,
# PER_CONNECTION to an HTTP/2 connection, waits until each holds the configuration, then makes
# CHANGES endpoint changes of alpha (each a file written into the watched directory) and times
# each from the first client receiving it to the last. It prints the CPU time the server and
# the load process spent during the changes, per change (pauses included: idle streams cost
# nothing). With CLASSES > 0 the clients send pod labels (node metadata LABELS, as istio-agent
# does) falling into that many classes, as the pods of that many Deployments; with 0 they send
# none, and each proxy is a class of its own. The server's VmRSS is read before any stream and
# 3 s into the idle hold after the changes: their difference over CLIENTS is the memory per
# idle stream. With PERF=FILE in the environment, `perf record` samples the server (PERF_OF=load:
# the load process) during the changes into FILE, with PERF_CALLS as its call-graph option
# (default -g).
set -euo pipefail
S=$1; L=$2; DIR=$3; N=${4:-5000}; PER=${5:-100}; K=${6:-20}; C=${7:-0}; P=${8:-25930}
. "$(dirname "$0")/serve-copy.sh"
trap 'kill ${SERVER:-} 2>/dev/null || true; [[ -n "${PERFPID:-}" ]] && kill -INT $PERFPID 2>/dev/null || true' EXIT
serve_copy "$S" "$L" "$DIR" "$P" fanout
rss() { awk '/VmRSS/ {print $2 * 1024}' "/proc/$SERVER/status"; }
BEFORE=$(rss)
"$L" xds load --server "127.0.0.1:$P" --clients "$N" --streams-per-connection "$PER" --classes "$C" --hold 8s \
    --control "$L xds control --config-dir $WORK/dir" --changes "$K" >"$WORK/load.out" 2>"$WORK/load.err" &
LOAD=$!
until grep -q "hold the configuration" "$WORK/load.err" 2>/dev/null || ! kill -0 $LOAD 2>/dev/null; do
    sleep 0.1
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
CPU0=$(cpu $SERVER); LCPU0=$(cpu $LOAD)
if [[ -n "${PERF:-}" ]]; then
    # PERF_OF=load samples the load process instead.
    perf record -F 499 ${PERF_CALLS:--g} -o "$PERF" -p "$([[ "${PERF_OF:-}" == load ]] && echo $LOAD || echo $SERVER)" 2>/dev/null &
    PERFPID=$!
fi
until grep -q "idle for" "$WORK/load.err" 2>/dev/null || ! kill -0 $LOAD 2>/dev/null; do
    sleep 0.1
done
CPU1=$(cpu $SERVER); LCPU1=$(cpu $LOAD)
if [[ -n "${PERFPID:-}" ]]; then
    kill -INT $PERFPID
    wait $PERFPID || true
    PERFPID=
fi
sleep 3
AFTER=$(rss)
wait $LOAD
cat "$WORK/load.err" "$WORK/load.out"
TICK=$(getconf CLK_TCK)
echo "CPU during the changes, per change: server $(((CPU1 - CPU0) * 1000 / TICK / K)) ms, load $(((LCPU1 - LCPU0) * 1000 / TICK / K)) ms"
echo "server RSS: $BEFORE B with no stream, $AFTER B with $N idle streams: $(((AFTER - BEFORE) / N)) B per stream"
rm -rf "$WORK"
