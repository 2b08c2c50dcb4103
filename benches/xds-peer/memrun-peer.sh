#!/bin/bash
# Memory per idle delta stream of the peer (nebucloud-xds), as /work/memrun.sh measures meshflow.
# usage: memrun-peer.sh XDS_PEER MESHFLOW CLIENTS CONFIG_DIR PORT
#   starts `meshflow serve --config-dir CONFIG_DIR` on PORT+100 (the --from source), then
#   `xds-peer serve --from` on PORT with snapshots for the load's CLIENTS node ids, stops meshflow
#   once the peer has fetched, and reads the peer's VmRSS with 0 streams and with CLIENTS idle
#   streams that `meshflow xds load` reports hold the configuration.
P=$1; M=$2; N=$3; DIR=$4; PORT=${5:-25910}
MP=$((PORT+100)); STATE=$(mktemp -d /tmp/xds-peer-state.XXXX)
$M serve --config-dir "$DIR" --xds-addr 127.0.0.1:$MP --admin-addr 127.0.0.1:$((MP+4)) >/tmp/memrun-peer-meshflow.log 2>&1 &
MS=$!
sleep 4
$P control --state "$STATE" reset
$P serve --addr 127.0.0.1:$PORT --state "$STATE" --from 127.0.0.1:$MP --bench-nodes "$N" >/tmp/memrun-peer-serve.log 2>&1 &
S=$!
for i in $(seq 1 120); do grep -q "serving delta" /tmp/memrun-peer-serve.log && break; sleep 1; done
kill $MS 2>/dev/null
sleep 3
r0=$(grep VmRSS /proc/$S/status | awk '{print $2}')
$M xds load --server 127.0.0.1:$PORT --clients "$N" --hold 25s >/tmp/memrun-peer-load.log 2>&1 &
L=$!
for i in $(seq 1 90); do grep -q "hold the configuration\|Error\|error" /tmp/memrun-peer-load.log && break; sleep 1; done
sleep 8
r1=$(grep VmRSS /proc/$S/status | awk '{print $2}')
cat /tmp/memrun-peer-serve.log | head -3
tail -3 /tmp/memrun-peer-load.log
echo "rss0=${r0}kB rssN=${r1}kB per-stream=$(( (r1-r0)*1024/N )) bytes"
kill $L $S 2>/dev/null; wait 2>/dev/null
rm -rf "$STATE"
