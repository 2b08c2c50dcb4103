# Sourced by the xDS bench scripts: `serve_copy SERVER LOAD CONFIG_DIR PORT NAME` copies
# CONFIG_DIR into a new WORK directory (/tmp/NAME.XXXX), adds the conformance suite's services
# (alpha, beta) with LOAD's control adapter, starts SERVER (`meshflow serve`) on it with xDS on
# PORT and admin on PORT + 4, and returns once the server is ready. Sets WORK and SERVER; the
# caller's EXIT trap kills SERVER.
serve_copy() {
    local s=$1 l=$2 dir=$3 p=$4 name=$5
    WORK=$(mktemp -d "/tmp/$name.XXXX")
    cp -r "$dir" "$WORK/dir"
    "$l" xds control --config-dir "$WORK/dir" reset >/dev/null
    "$s" serve --config-dir "$WORK/dir" --xds-addr "127.0.0.1:$p" --admin-addr "127.0.0.1:$((p + 4))" \
        >"$WORK/serve.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 1 600); do
        sleep 0.2
        curl -sf "127.0.0.1:$((p + 4))/ready" >/dev/null && break
    done
    sleep 2
}
