#!/usr/bin/env bash
# ctl's peak RSS in --group mode: TARGETS targets (default 10) each sending MIB MiB (default
# 16) of distinct stdout (random bytes, so no two outputs fold together and every one must be
# kept to the end), on loopback only. Prints a markdown table (for docs/benchmarks.md).
#
#   bench/group_memory.sh                        the ctl built from this tree
#   bench/group_memory.sh /path/to/old/ctl ...   also these ctl binaries, for a before/after
#
# Options (environment): TARGETS, MIB; NO_BUILD=1 uses the release binaries already in
# target/release.
#
# What it starts, stopped by pid when it exits: one agent on 0.0.0.0:<free port> (so that
# every 127.0.0.x address reaches it), enrolled for 127.0.0.1..127.0.0.TARGETS; then one
# `ctl exec --group` per binary, its output to /dev/null, measured by /usr/bin/time.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGETS=${TARGETS:-10}
MIB=${MIB:-16}
BIN=$ROOT/target/release
TMP=$(mktemp -d)
PIDS=()

log() { echo "group_memory: $*" >&2; }
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ -x /usr/bin/time ] || { log "needs /usr/bin/time (apt-get install time)"; exit 1; }
if [ "${NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release --locked -p agent -p ctl >&2)
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

"$BIN/ctl" keygen --id group -o "$TMP/key" 2>/dev/null
names=()
for i in $(seq "$TARGETS"); do names+=("127.0.0.$i"); done
(umask 077; "$BIN/ctl" enroll --key-file "$TMP/key" "${names[@]}" >"$TMP/agent-keys")
port=$(free_port)
"$BIN/agent" --key-file "$TMP/agent-keys" --listen "0.0.0.0:$port" 2>"$TMP/agent.log" &
PIDS+=($!)
for _ in $(seq 100); do
    grep -q listening "$TMP/agent.log" 2>/dev/null && break
    sleep 0.1
done
grep -q listening "$TMP/agent.log" || { log "the agent did not start"; exit 1; }
hosts=$(printf "%s:$port," "${names[@]}")
hosts=${hosts%,}
bytes=$((MIB * 1024 * 1024))
log "$TARGETS targets x $MIB MiB; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

echo "| ctl | targets x stdout | ctl max RSS | wall time | exit |"
echo "|---|---:|---:|---:|---:|"
for ctl in "$BIN/ctl" "$@"; do
    status=0
    /usr/bin/time -f '%M %e' -o "$TMP/time" "$ctl" exec --key-file "$TMP/key" --group \
        -H "$hosts" "head -c $bytes /dev/urandom" >/dev/null 2>"$TMP/ctl.err" || status=$?
    # Every target ran and was shown: the summary says so.
    grep -q "ctl: $TARGETS targets: $TARGETS ok" "$TMP/ctl.err" ||
        status="$status ($(tail -1 "$TMP/ctl.err"))"
    read -r rss wall < <(tail -1 "$TMP/time")
    echo "| \`$ctl\` | $TARGETS x $MIB MiB | $((rss / 1024)) MiB ($rss KiB) | $wall s | $status |"
done
