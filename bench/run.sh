#!/usr/bin/env bash
# Benchmarks rexec (agent + ctl) against OpenSSH and pdsh, on loopback only, and writes
# docs/benchmarks.md (with a chart of the fan-out times) from what it measured.
#
#   bench/run.sh            the full run (about 10-15 minutes on 2 cores)
#   bench/run.sh --quick    small sizes and few runs, to check the script itself; writes
#                           target/bench/benchmarks-quick.md instead of docs/
#
# Options: --quick, --no-install (fail instead of apt-get installing what is missing),
#          --no-criterion (skip the micro-benchmarks), --out FILE (markdown to write),
#          --only lat,bulk,fan,mem,pty (sections to run; the page then shows only those),
#          --no-build (use the release binaries already in target/release).
#
# What it starts, all stopped by pid when it exits (trap cleanup EXIT):
#   - an OpenSSH server with its own config, host key and authorized_keys in a temp dir,
#     listening on 0.0.0.0:<free port> so that every 127.x.y.z address reaches it; it is
#     never the system's sshd and never uses the system's config or keys;
#   - our agent, also on 0.0.0.0:<free port>, with a key made for the run;
#   - an ssh ControlMaster connection, bench-hold (idle connections) and pv.
# Every connection goes to a 127.x.y.z address. Every loop is bounded in count.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
INSTALL=1
CRITERION=1
OUT=""
ONLY=lat,bulk,fan,mem,pty
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-install) INSTALL=0 ;;
        --no-criterion) CRITERION=0 ;;
        --only) ONLY=$2; shift ;;
        --no-build) BUILD=0 ;;
        --out) OUT=$2; shift ;;
        -h | --help) sed -n "2,/^set -E/p" "$0" | sed "\$d"; exit 0 ;;
        *) echo "bench/run.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    BYTES=$((64 * 1024 * 1024))      # bulk transfer size
    FANOUT=(10 50)                   # target counts
    RUNS_FAST=5; RUNS_SLOW=3; RUNS_PDSH_MAX=2; WARMUP=1
    HOLD=50                          # idle authenticated connections
    PTY_KEYS=50                      # keys timed per interactive session
    SLOW_RATE=64m                    # slow reader's rate (pv -L)
    CRIT_ARGS=(--warm-up-time 0.2 --measurement-time 0.5)
    OUT=${OUT:-$ROOT/target/bench/benchmarks-quick.md}
else
    BYTES=1073741824                 # 1 GiB
    FANOUT=(10 100 500)
    RUNS_FAST=30; RUNS_SLOW=10; RUNS_PDSH_MAX=3; WARMUP=2
    HOLD=500
    PTY_KEYS=300
    SLOW_RATE=64m
    CRIT_ARGS=(--warm-up-time 1 --measurement-time 3)
    OUT=${OUT:-$ROOT/docs/benchmarks.md}
fi
PARALLEL=64                          # ctl -P and pdsh -f
RESULTS=$ROOT/target/bench/results
BIN=$ROOT/target/release

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- what the script needs ----------------------------------------------------------------
need_packages=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ] || need_packages+=("$2"); }
need hyperfine hyperfine
need /usr/sbin/sshd openssh-server
need ssh openssh-client
need ssh-keygen openssh-client
need pdsh pdsh
need pv pv
need /usr/bin/time time
need python3 python3
need cargo cargo
if [ ${#need_packages[@]} -gt 0 ]; then
    [ "$INSTALL" = 1 ] || die "missing: ${need_packages[*]} (rerun without --no-install)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    log "installing ${need_packages[*]} with apt-get"
    $sudo apt-get update -qq
    # Installing openssh-server does not start anything here (no init system in the sandbox);
    # where it does, that system sshd is left alone: this script starts its own.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

if [ "$BUILD" = 1 ]; then
    log "building release binaries (nice -n 19)"
    (cd "$ROOT" && nice -n 19 cargo build --release -q -p agent -p ctl -p rexec-bench)
fi
if [ "$CRITERION" = 1 ]; then
    (cd "$ROOT" && nice -n 19 cargo bench -q -p rexec-shared --no-run >/dev/null 2>&1) ||
        die "cannot build the criterion benches"
fi
for b in agent ctl bench-hold; do [ -x "$BIN/$b" ] || die "$BIN/$b was not built"; done

rm -rf "$RESULTS"
mkdir -p "$RESULTS" "$(dirname "$OUT")"
TMP=$(mktemp -d /tmp/rexec-bench.XXXXXX)

# --- cleanup: every process this script started, by pid ----------------------------------
PIDS=()
cleanup() {
    local status=$?
    set +e
    trap - ERR
    if [ -S "$TMP/cm.sock" ]; then
        ssh -F "$TMP/ssh_config" -o ControlPath="$TMP/cm.sock" -O exit 127.0.0.1 2>/dev/null
    fi
    for pid in "${PIDS[@]}"; do
        stop "$pid"
    done
    rm -rf "$TMP"
    exit $status
}

# Stops one process this script started: SIGTERM, up to 5 s, then SIGKILL; forgets its pid so
# that cleanup never signals a number the system may have handed to someone else since.
stop() {
    local pid=$1 kept=() p
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
    PIDS=("${kept[@]}")
}
trap cleanup EXIT
trap 'log "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT
trap 'exit 143' TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (bounded) until FILE contains PATTERN.
wait_for_line() {
    local file=$1 pattern=$2
    for _ in $(seq 100); do
        grep -q "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    die "timed out waiting for '$pattern' in $file: $(tail -5 "$file" 2>/dev/null)"
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

# --- the machine ---------------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$RESULTS/machine.json" <<EOF
import json, os, platform, subprocess, sys
def out(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"unknown ({e})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
osr = next((l.split("=", 1)[1].strip().strip('"') for l in open("/etc/os-release") if l.startswith("PRETTY_NAME")), "unknown")
json.dump({
    "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 1024 / 1024, 1),
    "kernel": platform.release(), "os": osr,
    "date": subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True, text=True).stdout.strip(),
    "load_start": "$LOAD_START",
    "openssh": out("ssh", "-V"), "pdsh": out("pdsh", "-V"), "hyperfine": out("hyperfine", "--version"),
    "rustc": out("rustc", "--version"), "agent": out("$BIN/agent", "--version"),
    "commit": out("git", "-C", "$ROOT", "describe", "--always", "--dirty"),
}, open(sys.argv[1], "w"), indent=1)
EOF
log "machine: $(nproc) cores, load $LOAD_START"

# --- our agent -----------------------------------------------------------------------------
"$BIN/ctl" keygen --id bench -o "$TMP/key" 2>/dev/null
export CTL_KEY_FILE=$TMP/key
# The agent is reached as 127.0.0.1 and, for the fan-out, as 127.1.x.y: one enrolled line each.
{
    echo 127.0.0.1
    for ((i = 0; i < ${FANOUT[-1]}; i++)); do echo "127.1.$((i / 250)).$((i % 250 + 1))"; done
} >"$TMP/agent-names"
(umask 077; "$BIN/ctl" enroll --hosts-file "$TMP/agent-names" >"$TMP/agent-keys")
APORT=$(free_port)
"$BIN/agent" --key-file "$TMP/agent-keys" --listen "0.0.0.0:$APORT" 2>"$TMP/agent.log" &
PIDS+=($!)
wait_for_line "$TMP/agent.log" listening
log "agent listening on 0.0.0.0:$APORT"

# --- a private OpenSSH server --------------------------------------------------------------
SPORT=$(free_port)
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$TMP/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$TMP/id_ed25519"
cp "$TMP/id_ed25519.pub" "$TMP/authorized_keys"
# Any host name matches the one host key: a real check, without a known_hosts line per address.
echo "* $(cut -d' ' -f1,2 "$TMP/host_ed25519.pub")" >"$TMP/known_hosts"
cat >"$TMP/sshd_config" <<EOF
Port $SPORT
ListenAddress 0.0.0.0
HostKey $TMP/host_ed25519
PidFile $TMP/sshd.pid
AuthorizedKeysFile $TMP/authorized_keys
AllowUsers $(id -un)
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# The temp dir sits in world-writable /tmp, which StrictModes would refuse.
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
# sshd runs a command as \$SHELL -c; Debian's bash then reads ~/.bashrc when it sees it was
# started by sshd, unless SHLVL says it is nested. The agent runs plain sh -c, which reads no
# rc file: so that both measure the transport and not the account's shell start-up files.
SetEnv SHLVL=1
# pdsh opens up to $PARALLEL connections at once; the default (10:30:100) would drop some.
MaxStartups 1024
MaxSessions 64
LogLevel ERROR
EOF
cat >"$TMP/ssh_config" <<EOF
Host *
  Port $SPORT
  User $(id -un)
  IdentityFile $TMP/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $TMP/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  UpdateHostKeys no
  BatchMode yes
  ForwardAgent no
  ForwardX11 no
  ControlMaster no
  ControlPath none
  LogLevel ERROR
EOF
# sshd running as root wants its privilege separation directory (Debian creates it at boot).
[ "$(id -u)" != 0 ] || [ -d /run/sshd ] || mkdir -p -m 0755 /run/sshd
/usr/sbin/sshd -D -f "$TMP/sshd_config" -E "$TMP/sshd.log" &
PIDS+=($!)
SSH=(ssh -F "$TMP/ssh_config")
for i in $(seq 100); do
    "${SSH[@]}" -n 127.0.0.1 true 2>/dev/null && break
    [ "$i" = 100 ] && die "sshd did not answer: $(tail -5 "$TMP/sshd.log")"
    sleep 0.1
done
log "sshd listening on 0.0.0.0:$SPORT"

"${SSH[@]}" -o ControlMaster=yes -o ControlPath="$TMP/cm.sock" -o ControlPersist=yes -fN 127.0.0.1
# The cipher ssh negotiates by default with this server: its first preference.
SSH_CIPHER=$("${SSH[@]}" -G 127.0.0.1 | awk '$1 == "ciphers" {split($2, c, ","); print c[1]}')
python3 - "$RESULTS/machine.json" "$SSH_CIPHER" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); m["ssh_cipher"] = sys.argv[2]; json.dump(m, open(sys.argv[1], "w"), indent=1)
EOF
CM_PID=$("${SSH[@]}" -o ControlPath="$TMP/cm.sock" -O check 127.0.0.1 2>&1 | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
[ -n "$CM_PID" ] || die "ssh ControlMaster did not start"
PIDS+=("$CM_PID")

# Quoted the way hyperfine -N splits a command line; shows up verbatim in the doc.
CTL="$BIN/ctl"
SSHC="ssh -F $TMP/ssh_config"
commands_file=$RESULTS/commands.tsv
: >"$commands_file"

# bench NAME RUNS WARMUP COMMAND: times COMMAND (no shell in between) into NAME.json.
bench() {
    local name=$1 runs=$2 warmup=$3 cmd=$4
    log "timing $name ($runs runs)"
    printf '%s\t%s\t%s\t%s\n' "$name" "$runs" "$warmup" "$cmd" >>"$commands_file"
    hyperfine -N --style none --warmup "$warmup" --runs "$runs" \
        --export-json "$RESULTS/$name.json" "$cmd" >/dev/null 2>"$RESULTS/$name.stderr" ||
        die "hyperfine $name failed: $(tail -5 "$RESULTS/$name.stderr")"
}

# bench_pair NAME_A NAME_B RUNS WARMUP CMD_A CMD_B: the two run by run in turn (A, B, A, B, ...),
# so that a shared machine's drift hits both alike; each gets the JSON `bench` would write.
bench_pair() {
    local a=$1 b=$2 runs=$3 warmup=$4 cmd_a=$5 cmd_b=$6 i w
    log "timing $a and $b in turn ($runs runs each)"
    printf '%s\t%s\t%s\t%s\n' "$a" "$runs" "$warmup" "$cmd_a" >>"$commands_file"
    printf '%s\t%s\t%s\t%s\n' "$b" "$runs" "$warmup" "$cmd_b" >>"$commands_file"
    for ((i = 0; i < runs; i++)); do
        w=0
        [ "$i" = 0 ] && w=$warmup
        hyperfine -N --style none --warmup "$w" --runs 1 --export-json "$RESULTS/$a.$i.json" \
            "$cmd_a" >/dev/null 2>"$RESULTS/$a.stderr" || die "hyperfine $a failed: $(tail -5 "$RESULTS/$a.stderr")"
        hyperfine -N --style none --warmup "$w" --runs 1 --export-json "$RESULTS/$b.$i.json" \
            "$cmd_b" >/dev/null 2>"$RESULTS/$b.stderr" || die "hyperfine $b failed: $(tail -5 "$RESULTS/$b.stderr")"
    done
    python3 - "$RESULTS" "$runs" "$a" "$b" <<'PY'
import json, pathlib, statistics, sys
res, runs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
for name in sys.argv[3:]:
    parts = [res / f"{name}.{i}.json" for i in range(runs)]
    merged = json.loads(parts[0].read_text())
    times = [t for p in parts for t in json.loads(p.read_text())["results"][0]["times"]]
    merged["results"][0].update(
        times=times, mean=statistics.mean(times), median=statistics.median(times),
        stddev=statistics.stdev(times) if len(times) > 1 else 0.0, min=min(times), max=max(times))
    (res / f"{name}.json").write_text(json.dumps(merged))
    for p in parts:
        p.unlink()
PY
}

section() { [[ ",$ONLY," == *",$1,"* ]]; }

mem=$RESULTS/memory.txt
: >"$mem"
: >"$RESULTS/loads.txt"
# One 127.x.y.z address per line, N distinct ones, for the fan-out and ctl's memory.
for n in "${FANOUT[@]}"; do
    for ((i = 0; i < n; i++)); do echo "127.1.$((i / 250)).$((i % 250 + 1))"; done >"$TMP/hosts-$n"
done

# As each part starts, for the page: the 1-minute load average, and the CPU time counters from
# /proc/stat (steal, then all), whose differences tell how much CPU the hypervisor gave other
# guests during each part. The machine is shared, as a VM and with other users, and pdsh at
# many targets loads it by itself (64 ssh clients and as many sshd children at once).
note_load() {
    echo "$1 $(cut -d' ' -f1 /proc/loadavg) $(awk '$1 == "cpu" {print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat)" \
        >>"$RESULTS/loads.txt"
}

# --- 5. micro-benchmarks (one core), first while the machine is quietest ----------------
if [ "$CRITERION" = 1 ]; then
    note_load criterion
    log "criterion: frame codec and sealed-frame throughput"
    rm -rf "$ROOT/target/criterion"
    (cd "$ROOT" && cargo bench -q -p rexec-shared --bench seal --bench frame -- \
        "${CRIT_ARGS[@]}" >"$RESULTS/criterion.txt" 2>&1) || die "criterion failed: see $RESULTS/criterion.txt"
fi

# --- 1. one remote `true` ------------------------------------------------------------------
if section lat; then
note_load latency
bench lat_ctl "$RUNS_FAST" 5 "$CTL exec -n 127.0.0.1:$APORT true"
bench lat_ssh "$RUNS_SLOW" "$WARMUP" "$SSHC -n 127.0.0.1 true"
bench lat_ssh_cm "$RUNS_FAST" 5 "$SSHC -o ControlPath=$TMP/cm.sock -n 127.0.0.1 true"
bench lat_local "$RUNS_FAST" 5 "sh -c true"
fi

# --- 6. keystroke echo on a terminal (-t), right after the latency part -------------------
# bench/pty_echo.py runs each client on a pseudo-terminal of its own, types one key at a time
# and times each until its echo (from the remote terminal's line discipline) is read back.
if section pty; then
note_load pty
: >"$RESULTS/pty.tsv"
ECHO="echo READY; exec cat"
pty_echo() {
    local name=$1
    shift
    log "timing $name ($PTY_KEYS keys)"
    printf '%s\t%s\t%s\n' "$name" "$PTY_KEYS" "$*" >>"$RESULTS/pty.tsv"
    python3 "$ROOT/bench/pty_echo.py" --keys "$PTY_KEYS" --out "$RESULTS/$name.json" -- "$@" \
        2>"$RESULTS/$name.stderr" || die "pty_echo $name failed: $(tail -5 "$RESULTS/$name.stderr")"
}
pty_echo pty_ctl "$CTL" exec -t "127.0.0.1:$APORT" "$ECHO"
pty_echo pty_ssh "${SSH[@]}" -t 127.0.0.1 "$ECHO"
pty_echo pty_local sh -c "$ECHO"
fi

# --- 2. bulk stdout ------------------------------------------------------------------------
HEAD="head -c $BYTES /dev/zero"
if section bulk; then
note_load bulk
# Once each, counted: a fast wrong answer must not pass for a fast right one.
for check in "$CTL exec -n 127.0.0.1:$APORT '$HEAD'" "$SSHC -n 127.0.0.1 '$HEAD'"; do
    got=$(eval "$check" | wc -c)
    [ "$got" = "$BYTES" ] || die "$check delivered $got bytes, not $BYTES"
done
# The heartbeat's cost: the same stream with liveness off on both sides (one announcing
# heartbeat each way, none after), from a second agent started for it, run in turn with ours.
NPORT=$(free_port)
"$BIN/agent" --key-file "$TMP/agent-keys" --listen "127.0.0.1:$NPORT" --alive-timeout 0 \
    2>"$TMP/agent-nolive.log" &
NOLIVE_PID=$!
PIDS+=($NOLIVE_PID)
wait_for_line "$TMP/agent-nolive.log" listening
bench_pair bulk_ctl bulk_ctl_nolive "$RUNS_SLOW" 1 "$CTL exec -n 127.0.0.1:$APORT '$HEAD'" \
    "$CTL exec --alive-timeout 0 -n 127.0.0.1:$NPORT '$HEAD'"
stop "$NOLIVE_PID"
bench bulk_ssh "$RUNS_SLOW" 1 "$SSHC -n 127.0.0.1 '$HEAD'"
bench bulk_ssh_aes128gcm "$RUNS_SLOW" 1 "$SSHC -c aes128-gcm@openssh.com -n 127.0.0.1 '$HEAD'"
bench bulk_local "$RUNS_SLOW" 1 "sh -c '$HEAD | cat'"
fi

# --- 4. memory -----------------------------------------------------------------------------
if section mem; then
note_load memory
N_MAX=${FANOUT[-1]}
LIST_MAX=$(paste -sd, "$TMP/hosts-$N_MAX")
for i in 1 2 3; do
    /usr/bin/time -f %M -o "$TMP/ctl-rss" "$CTL" exec -P "$PARALLEL" --port "$APORT" -H "$LIST_MAX" true 2>/dev/null
    echo "ctl_fanout_maxrss_kib $(cat "$TMP/ctl-rss")" >>"$mem"
done
echo "ctl_fanout_targets $N_MAX" >>"$mem"

# A fresh agent for memory: idle, then holding authenticated connections that send nothing.
log "memory: agent idle and with $HOLD idle authenticated connections"
MPORT=$(free_port)
"$BIN/agent" --key-file "$TMP/agent-keys" --listen "127.0.0.1:$MPORT" --handshake-timeout 300 \
    --max-connections $((HOLD + 64)) 2>"$TMP/agent-mem.log" &
MPID=$!
PIDS+=("$MPID")
wait_for_line "$TMP/agent-mem.log" listening
sleep 1
echo "agent_idle_rss_kib $(rss_kib "$MPID")" >>"$mem"
"$BIN/bench-hold" --target "127.0.0.1:$MPORT" --key-file "$TMP/key" --count "$HOLD" \
    --parallel 16 --ready-file "$TMP/held" --hold-secs 120 >/dev/null &
HPID=$!
PIDS+=("$HPID")
for _ in $(seq 600); do [ -s "$TMP/held" ] || ! kill -0 "$HPID" 2>/dev/null && break; sleep 0.1; done
[ "$(cat "$TMP/held" 2>/dev/null)" = "$HOLD" ] || die "bench-hold did not hold $HOLD connections"
sleep 1
echo "agent_held_rss_kib $(rss_kib "$MPID")" >>"$mem"
echo "agent_held_connections $HOLD" >>"$mem"
stop "$HPID"

# Streaming to a slow reader: the agent must hold a bounded amount, not buffer the output.
log "memory: agent while streaming $BYTES bytes to a reader limited to $SLOW_RATE/s"
stop "$MPID"
"$BIN/agent" --key-file "$TMP/agent-keys" --listen "127.0.0.1:$MPORT" 2>"$TMP/agent-slow.log" &
MPID=$!
PIDS+=("$MPID")
wait_for_line "$TMP/agent-slow.log" listening
/usr/bin/time -f %M -o "$TMP/ctl-slow-rss" "$CTL" exec -n "127.0.0.1:$MPORT" "$HEAD" |
    pv -q -L "$SLOW_RATE" >/dev/null &
SLOW=$!
peak=0
samples=0
# Bounded: at the rate above the transfer takes BYTES/rate seconds; sample every 0.2 s.
for _ in $(seq 3000); do
    kill -0 "$SLOW" 2>/dev/null || break
    r=$(rss_kib "$MPID")
    samples=$((samples + 1))
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
done
wait "$SLOW"
echo "agent_stream_peak_rss_kib $peak" >>"$mem"
echo "agent_stream_hwm_kib $(hwm_kib "$MPID")" >>"$mem"
echo "agent_stream_samples $samples" >>"$mem"
echo "ctl_stream_maxrss_kib $(cat "$TMP/ctl-slow-rss")" >>"$mem"
echo "stream_bytes $BYTES" >>"$mem"
echo "stream_rate $SLOW_RATE" >>"$mem"
fi

# --- 3. fan-out: `true` on N distinct 127.x.y.z targets --------------------------------------
# pdsh runs `ssh ARGS`; %u and %h are its user and host.
export PDSH_SSH_ARGS="-F $TMP/ssh_config -l%u %h"
export PDSH_RCMD_TYPE=ssh
for n in "${FANOUT[@]}"; do
    section fan || break
    note_load "fanout_$n"
    hosts=$TMP/hosts-$n
    list=$(paste -sd, "$hosts")
    got=$("$CTL" exec -P "$PARALLEL" --port "$APORT" -H "$list" echo ok 2>/dev/null | grep -c ': ok$' || true)
    [ "$got" = "$n" ] || die "ctl fan-out to $n targets answered $got times"
    got=$(pdsh -R ssh -f "$PARALLEL" -w "^$hosts" echo ok 2>&1 | grep -c ': ok$' || true)
    [ "$got" = "$n" ] || die "pdsh fan-out to $n targets answered $got times"
    bench "fan_ctl_$n" "$RUNS_SLOW" "$WARMUP" "$CTL exec -P $PARALLEL --port $APORT -H $list true"
    # pdsh costs about 0.1 s per target: fewer runs at the largest size, said in the doc.
    pruns=$RUNS_SLOW
    if [ "$n" = "${FANOUT[-1]}" ]; then pruns=$RUNS_PDSH_MAX; fi
    bench "fan_pdsh_$n" "$pruns" 1 "pdsh -R ssh -f $PARALLEL -w ^$hosts true"
done

LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load_end $LOAD_END" >>"$mem"
note_load end

log "writing $OUT"
crit_dir=$ROOT/target/criterion
[ "$CRITERION" = 1 ] || crit_dir=/nonexistent
python3 "$ROOT/bench/report.py" --results "$RESULTS" --criterion "$crit_dir" \
    --out "$OUT" --quick "$QUICK" --parallel "$PARALLEL" --tmp "$TMP" --bytes "$BYTES"
log "done: load average at start $LOAD_START, at end $LOAD_END"
