#!/usr/bin/env bash
# Two "pods" in two network namespaces, each with Istio's capture rules from
# `remora iptables` and a Remora sidecar running as uid 1337. A client in pod A
# calls the app in pod B (python3 -m http.server) over IPv4 and IPv6; the
# traffic goes A's outbound capture (15001) → B's inbound capture (15006) → app.
# Prints what each sidecar saw, then removes everything (also on Ctrl-C/error).
#
# Needs root, iproute2, iptables, python3, setpriv. Run from anywhere:
#   sudo tests/demo/two-pods.sh            # REDIRECT mode (Istio's default)
#   sudo tests/demo/two-pods.sh TPROXY     # pod B's inbound in TPROXY mode
set -euo pipefail

MODE="${1:-REDIRECT}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
A="rmr3-demo-$$-a"
B="rmr3-demo-$$-b"
WORK="$(mktemp -d /tmp/rmr3-demo.XXXXXX)"
chmod 755 "$WORK"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces, iptables)" >&2; exit 1; }
case "$ROOT" in /root/*) echo "note: uid 1337 must be able to reach $ROOT/target (FACTS.md)" >&2 ;; esac

echo "== building remora"
(cd "$ROOT" && cargo build --quiet)
REMORA="$ROOT/target/debug/remora"

echo "== two pods: $A (10.203.0.1, fd00:203::1) <-veth-> $B (10.203.0.2, fd00:203::2)"
ip netns add "$A"
ip netns add "$B"
ip -n "$A" link add eth0 type veth peer name eth0 netns "$B"
for spec in "$A 10.203.0.1 fd00:203::1" "$B 10.203.0.2 fd00:203::2"; do
    set -- $spec
    ip -n "$1" link set lo up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" -6 addr add "$3/64" dev eth0 nodad
    ip -n "$1" link set eth0 up
done

echo "== remora iptables in both pods (pod B inbound mode: $MODE)"
ip netns exec "$A" "$REMORA" iptables
ip netns exec "$B" "$REMORA" iptables -m "$MODE"

echo "== app in pod B: python3 -m http.server 8080 (dual stack)"
( cd "$WORK" && echo "hello from pod B" > index.html &&
  exec ip netns exec "$B" python3 -m http.server 8080 --bind :: ) >"$WORK/app.log" 2>&1 &
PIDS+=($!)

start_sidecar() { # ns log [extra setpriv args...] -- remora args
    local ns="$1" log="$2"; shift 2
    NO_COLOR=1 ip netns exec "$ns" setpriv --reuid 1337 --regid 1337 --clear-groups "$@" \
        >"$log" 2>&1 &
    PIDS+=($!)
}
start_sidecar "$A" "$WORK/sidecar-a.log" "$REMORA" run --cores 1 --log-level debug
if [ "$MODE" = TPROXY ]; then
    printf '[capture]\ntransparent = true\n' > "$WORK/tproxy.toml"
    chmod 644 "$WORK/tproxy.toml"
    start_sidecar "$B" "$WORK/sidecar-b.log" --inh-caps +net_admin --ambient-caps +net_admin \
        "$REMORA" run --cores 1 --log-level debug --config "$WORK/tproxy.toml"
else
    start_sidecar "$B" "$WORK/sidecar-b.log" "$REMORA" run --cores 1 --log-level debug
fi
SIDECAR_A="${PIDS[1]}"
SIDECAR_B="${PIDS[2]}"

wait_for() { # file pattern
    for _ in $(seq 1 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
}
wait_for "$WORK/sidecar-a.log" "ready"
wait_for "$WORK/sidecar-b.log" "ready"
for _ in $(seq 1 200); do
    ip netns exec "$B" python3 -c 'import socket; socket.create_connection(("::1", 8080), 1)' 2>/dev/null && break
    sleep 0.05
done

fetch() {
    ip netns exec "$A" python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())' "$1"
}
echo "== client in pod A (root, so captured) -> http://10.203.0.2:8080/"
fetch "http://10.203.0.2:8080/"
echo "== client in pod A -> http://[fd00:203::2]:8080/"
fetch "http://[fd00:203::2]:8080/"

echo "== stopping the sidecars (SIGTERM: they log their totals)"
kill -TERM "$SIDECAR_A" "$SIDECAR_B"
wait "$SIDECAR_A" "$SIDECAR_B" || true

show() { # title log
    echo "---- $1"
    grep -E "connection closed|stopped" "$2" | sed -E 's/^[^ ]+ +//'
}
show "sidecar A (pod A, outbound 15001)" "$WORK/sidecar-a.log"
show "sidecar B (pod B, inbound 15006)" "$WORK/sidecar-b.log"
echo "---- app in pod B (its clients are the sidecar's passthrough source 127.0.0.6 / ::6)"
grep -E '"GET' "$WORK/app.log" || true

echo "== remora iptables --clean"
ip netns exec "$A" "$REMORA" iptables --clean
ip netns exec "$B" "$REMORA" iptables --clean
echo "== done; namespaces are removed on exit"
