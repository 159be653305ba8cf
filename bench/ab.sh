#!/usr/bin/env bash
# A/B on this machine: starting ctl (`ctl --version`), `ctl ping` (the handshake), one remote `true` and 1 GiB of stdout through two builds of agent and
# ctl, run by run in turn (A, B, A, B, ...) so that drift in a shared machine's speed hits
# both alike; and the heartbeat's cost, the new build with `--alive-timeout 0` on both sides.
# Prints a markdown table (for docs/benchmarks.md).
#
#   bench/ab.sh OLD_BIN_DIR [NEW_BIN_DIR]     (NEW_BIN_DIR: this tree's target/release)
#
# OLD_BIN_DIR holds an `agent` and a `ctl` of an older commit, e.g. built with
#   git worktree add /tmp/old <commit> && cargo build --release --manifest-path /tmp/old/Cargo.toml
# A build without `ctl enroll` (protocol version 1) gets its client key file as the agent's.
# Options (environment): RUNS (default 40) for `true`, RUNS_BULK (default 10) for the stream.
#
# What it starts, stopped by pid when it exits: three agents on 127.0.0.1:<free port> (old,
# new, new with liveness off). Every connection goes to 127.0.0.1.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: bench/ab.sh OLD_BIN_DIR [NEW_BIN_DIR]}
NEW=${2:-$ROOT/target/release}
RUNS=${RUNS:-40}
RUNS_BULK=${RUNS_BULK:-10}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { echo "ab: $*" >&2; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME BIN_DIR [AGENT ARGS...]: keys and an agent for one variant; its port in PORT.
start() {
    local name=$1 bin=$2 port
    shift 2
    mkdir -p "$TMP/$name"
    "$bin/ctl" keygen --id ab -o "$TMP/$name/key" >/dev/null 2>&1
    if "$bin/ctl" enroll --help >/dev/null 2>&1; then
        (umask 077; "$bin/ctl" enroll --key-file "$TMP/$name/key" 127.0.0.1 >"$TMP/$name/agent-keys")
    else
        cp "$TMP/$name/key" "$TMP/$name/agent-keys"
    fi
    port=$(free_port)
    "$bin/agent" --key-file "$TMP/$name/agent-keys" --listen "127.0.0.1:$port" "$@" \
        </dev/null >/dev/null 2>"$TMP/$name/agent.log" &
    PIDS+=($!)
    for _ in $(seq 100); do grep -q listening "$TMP/$name/agent.log" && break; sleep 0.05; done
    grep -q listening "$TMP/$name/agent.log" || { log "$name agent did not start"; exit 1; }
    PORT=$port
}

start old "$OLD"; P_OLD=$PORT
start new "$NEW"; P_NEW=$PORT
start off "$NEW" --alive-timeout 0; P_OFF=$PORT
log "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); old $("$OLD/agent" --version 2>/dev/null || echo '?')"

python3 - "$RUNS" "$RUNS_BULK" <<PY
import os, statistics, subprocess, sys, time
runs, runs_bulk = int(sys.argv[1]), int(sys.argv[2])
tmp = "$TMP"
variants = {
    "old": ("$OLD/ctl", [], "$P_OLD", "old"),
    "new": ("$NEW/ctl", [], "$P_NEW", "new"),
    "new, --alive-timeout 0 (both sides)": ("$NEW/ctl", ["--alive-timeout", "0"], "$P_OFF", "off"),
}
def once(name, command):
    ctl, extra, port, dir = variants[name]
    key = os.path.join(tmp, dir, "key")
    if command == "--version":  # starting ctl alone: loading, clap, no runtime, no connection
        argv = [ctl, "--version"]
    elif command is None:  # connect, handshake, ping and pong: no command
        argv = [ctl, "ping", "--key-file", key, f"127.0.0.1:{port}"]
    else:
        argv = [ctl, "exec", "-n", "--key-file", key, *extra, f"127.0.0.1:{port}", command]
    start = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{name}: {' '.join(argv)} failed: {done.stderr.decode()}")
    return took
def measure(command, n, names):
    times = {name: [] for name in names}
    for name in names:  # warm-up
        once(name, command)
    for _ in range(n):
        for name in names:
            times[name].append(once(name, command))
    return {name: statistics.median(t) for name, t in times.items()}
start = measure("--version", runs, ["old", "new"])
ping = measure(None, runs, ["old", "new"])
lat = measure("true", runs, ["old", "new"])
bulk = measure("head -c 1073741824 /dev/zero", runs_bulk, list(variants))
print("| measure | old build | this build | this / old |")
print("|---|---:|---:|---:|")
print(f"| \`ctl --version\`: starting ctl, no connection (median of {runs}) | {start['old'] * 1e3:.2f} ms | {start['new'] * 1e3:.2f} ms | {start['new'] / start['old']:.2f}x |")
print(f"| \`ctl ping\`: connect, handshake, ping (median of {runs}) | {ping['old'] * 1e3:.2f} ms | {ping['new'] * 1e3:.2f} ms | {ping['new'] / ping['old']:.2f}x |")
print(f"| one remote \`true\` (median of {runs}) | {lat['old'] * 1e3:.2f} ms | {lat['new'] * 1e3:.2f} ms | {lat['new'] / lat['old']:.2f}x |")
print(f"| 1 GiB of stdout (median of {runs_bulk}) | {bulk['old']:.3f} s | {bulk['new']:.3f} s | {bulk['new'] / bulk['old']:.2f}x |")
sizes = [os.path.getsize(variants[v][0]) / 1e6 for v in ("old", "new")]
print()
print(f"ctl's binary: {sizes[0]:.1f} MB (old build), {sizes[1]:.1f} MB (this build).")
off = bulk["new, --alive-timeout 0 (both sides)"]
print()
print(f"Heartbeat's cost on the 1 GiB stream: {bulk['new']:.3f} s with liveness on, {off:.3f} s with")
print(f"\`--alive-timeout 0\` on both sides: {(bulk['new'] / off - 1) * 100:+.1f} %.")
PY
log "done; load $(cut -d' ' -f1-3 /proc/loadavg)"
