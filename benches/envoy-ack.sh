#!/bin/bash
# One endpoint change, timed to a real Envoy's ACK (issue 9: "event → a real Envoy's ACK").
#
# usage: benches/envoy-ack.sh MESHFLOW ENVOY CONFIG_DIR [CHANGES] [PORT]
#
# Serves CONFIG_DIR (plus the conformance suite's services, `meshflow xds control reset`) with
# meshflow at debug level for its xDS module, runs one Envoy on meshflow's bootstrap, then makes
# CHANGES endpoint changes of `alpha` through the control adapter (a file written into the
# watched directory), one every 300 ms. From meshflow's log (microsecond timestamps) it prints,
# per change, the time from the control adapter's exit to meshflow's push of the assignment to
# Envoy (the directory watcher's 50 ms quiet window, the engine, the cache), and from that push
# to Envoy's ACK of its nonce (Envoy decoding and applying the assignment, and the round trip);
# then p50/p90/p99/max of each.
set -euo pipefail
M=$1; ENVOY=$2; DIR=$3; K=${4:-30}; P=${5:-26510}
NODE="sidecar~127.0.0.1~envoy-ack-0.default~default.svc.cluster.local"
WORK=$(mktemp -d /tmp/envoy-ack.XXXX)
cp -r "$DIR" "$WORK/dir"
CTL="$M xds control --config-dir $WORK/dir"
$CTL reset >/dev/null
NO_COLOR=1 RUST_LOG=info,meshflow::xds=debug "$M" serve --config-dir "$WORK/dir" --xds-addr 127.0.0.1:$P \
  --admin-addr 127.0.0.1:$((P+4)) >"$WORK/serve.log" 2>&1 &
S=$!
trap 'kill $S ${E:-} 2>/dev/null || true; wait 2>/dev/null || true' EXIT
sleep 3
"$M" bootstrap --node-id "$NODE" --xds-addr 127.0.0.1:$P --admin-port $((P+5)) --bind-address 127.0.0.1 > "$WORK/bootstrap.yaml"
"$ENVOY" -c "$WORK/bootstrap.yaml" --base-id $((P % 1000 + 7000)) --concurrency 1 -l warning >"$WORK/envoy.log" 2>&1 &
E=$!
for _ in $(seq 1 100); do
  curl -sf "127.0.0.1:$((P+5))/clusters" > "$WORK/clusters" || true
  grep -q "alpha.conformance" "$WORK/clusters" && break
  sleep 0.1
done
sleep 2
: > "$WORK/changes"
for k in $(seq 1 "$K"); do
  ep="10.252.$((k / 250)).$((1 + k % 250)):8080"
  $CTL set-endpoint alpha "$ep" >/dev/null
  echo "$(date -u +%s.%N) $ep" >> "$WORK/changes"
  sleep 0.3
done
sleep 1
curl -sf "127.0.0.1:$((P+5))/clusters" > "$WORK/clusters"
grep -q "10.252.$((K / 250)).$((1 + K % 250)):" "$WORK/clusters" \
  || { echo "Envoy does not hold the last endpoint (see $WORK)" >&2; exit 1; }
rm -rf "$WORK/dir"
python3 - "$WORK/serve.log" "$WORK/changes" "$NODE" <<'PY'
import re, sys, datetime
log, changes, node = sys.argv[1:4]
def ts(s):
    d = datetime.datetime.strptime(s[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()
pushes, acks = [], {}
for line in open(log):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    m = re.match(r'(\S+Z)\s+DEBUG\s+\S+\s+push node="?([^" ]+)"? type_url=\S+ClusterLoadAssignment nonce="?(\w+)', line)
    if m and m.group(2) == node:
        pushes.append((ts(m.group(1)), m.group(3)))
    m = re.match(r'(\S+Z)\s+DEBUG\s+\S+\s+ACK node="?([^" ]+)"? ty="?EDS"? nonce="?(\w+)', line)
    if m and m.group(2) == node:
        acks[m.group(3)] = ts(m.group(1))
made = [float(l.split()[0]) for l in open(changes)]
to_push, to_ack, total = [], [], []
for i, t in enumerate(made):
    end = made[i + 1] if i + 1 < len(made) else float("inf")
    # The push of this change: the first assignment push after the file was written (the
    # adapter exits once the file is renamed into place, before the watcher can see it).
    p = next(((pt, n) for pt, n in pushes if t - 0.005 <= pt < end), None)
    if p is None or p[1] not in acks:
        print(f"change {i}: no push/ACK found", file=sys.stderr)
        continue
    to_push.append(p[0] - t); to_ack.append(acks[p[1]] - p[0]); total.append(acks[p[1]] - t)
def q(v):
    v = sorted(v); at = lambda x: v[round((len(v) - 1) * x)] * 1e3
    return f"{at(.5):.2f} / {at(.9):.2f} / {at(.99):.2f} / {at(1):.2f}"
print(f"{len(total)} of {len(made)} changes pushed and ACKed")
print("| measure | p50 / p90 / p99 / max ms |\n| --- | --- |")
print(f"| control adapter's exit → push to Envoy | {q(to_push)} |")
print(f"| push → Envoy's ACK | {q(to_ack)} |")
print(f"| control adapter's exit → Envoy's ACK | {q(total)} |")
PY
