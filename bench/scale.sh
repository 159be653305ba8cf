#!/usr/bin/env bash
# The scale curve of one ctl fan-out: ctl's wall time and peak RSS running `true` on 1k, 10k
# and 100k targets, on loopback only. Prints a markdown table (for docs/benchmarks.md).
#
#   bench/scale.sh                 1000 10000 100000 targets
#   bench/scale.sh 1000 10000      the counts given
#
# Options (environment): AGENTS (default 4) agents share the targets; PARALLEL (default 256)
# is ctl's -P; NO_BUILD=1 uses the release binaries already in target/release.
#
# What it starts, all stopped by pid when it exits: AGENTS agents on 0.0.0.0:<free port>
# (so that every 127.x.y.z address reaches them) with their admission limits raised, and
# one ctl per count. Targets are 127.x.y.z addresses; nothing leaves the machine.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1000 10000 100000)
AGENTS=${AGENTS:-4}
PARALLEL=${PARALLEL:-256}
BIN=$ROOT/target/release
TMP=$(mktemp -d)
PIDS=()

log() { echo "scale: $*" >&2; }
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

[ -x /usr/bin/time ] || { log "needs /usr/bin/time (apt-get install time)"; exit 1; }
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --locked -p agent -p ctl >&2)
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

"$BIN/ctl" keygen --id scale -o "$TMP/key" 2>/dev/null
PORTS=()
for i in $(seq "$AGENTS"); do
    port=$(free_port)
    # Agent i is enrolled for the one name scale<i>; the hosts file names it for its targets.
    (umask 077; "$BIN/ctl" enroll --key-file "$TMP/key" "scale$i" >"$TMP/agent$i.keys")
    "$BIN/agent" --key-file "$TMP/agent$i.keys" --listen "0.0.0.0:$port" \
        --max-connections 4096 --max-unauthenticated 1024 2>"$TMP/agent$i.log" &
    PIDS+=($!)
    for _ in $(seq 100); do
        grep -q listening "$TMP/agent$i.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -q listening "$TMP/agent$i.log" || { log "agent $i did not start"; exit 1; }
    PORTS+=("$port")
done
log "$AGENTS agents on 0.0.0.0:${PORTS[*]}; ctl -P $PARALLEL; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

echo "| targets | ctl wall time | ctl max RSS | per target | exit |"
echo "|---:|---:|---:|---:|---:|"
for n in "${COUNTS[@]}"; do
    # 127.x.y.z, z in 1..250, spread over the agents' ports.
    python3 - "$n" "${PORTS[@]}" >"$TMP/hosts" <<'PY'
import sys
n, ports = int(sys.argv[1]), sys.argv[2:]
for i in range(n):
    x, y, z = (i // 62500) % 250 + 1, (i // 250) % 250, i % 250 + 1
    a = i % len(ports)
    print(f"127.{x}.{y}.{z}:{ports[a]} scale{a + 1}")
PY
    status=0
    /usr/bin/time -v -o "$TMP/time" "$BIN/ctl" exec --key-file "$TMP/key" \
        --hosts-file "$TMP/hosts" -P "$PARALLEL" --connect-timeout 30 true \
        >/dev/null 2>"$TMP/ctl.err" || status=$?
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$TMP/time")
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$TMP/time")
    per=$(python3 -c "print(f'{$rss * 1024 / $n:.0f} B')")
    echo "| $n | $wall | $((rss / 1024)) MiB ($rss KiB) | $per | $status |"
    log "$n targets: $(tail -1 "$TMP/ctl.err")"
done
