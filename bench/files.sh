#!/usr/bin/env bash
# Benchmarks `ctl push` against scp and pdcp (pdsh's copy) on loopback: one file to 1 target
# and to 8 targets, and writes docs/benchmarks-files.md from what it measured.
#
#   bench/files.sh            1 GiB, 3 runs each
#   bench/files.sh --quick    64 MiB, 2 runs each; writes target/bench/benchmarks-files-quick.md
#
# Options: --quick, --no-build (use the release binaries in target/release), --out FILE,
#          --size MIB (the file's size; a quick run's page unless it is 1024).
#
# What it starts, all stopped by pid when it exits: an OpenSSH server with its own config,
# host key and authorized_keys in a temp dir (never the system's), listening on
# 0.0.0.0:<free port>; our agent on 0.0.0.0:<free port>. The 8 targets are 8 addresses
# 127.1.0.1-8 of this machine, so each target is its own connection, as it would be to 8 hosts.
# Destinations are in a directory under /dev/shm (tmpfs: the figures measure the transfer,
# not this machine's disk; ctl's fsync costs nothing there), removed after each run.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
BUILD=1
OUT=""
SIZE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --no-build) BUILD=0 ;;
        --out) OUT=$2; shift ;;
        --size) SIZE=$2; QUICK=1; shift ;;
        -h | --help) sed -n "2,/^set -E/p" "$0" | sed "\$d"; exit 0 ;;
        *) echo "bench/files.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then
    MIB=${SIZE:-64}; RUNS=2
    OUT=${OUT:-$ROOT/target/bench/benchmarks-files-quick.md}
else
    MIB=1024; RUNS=3
    OUT=${OUT:-$ROOT/docs/benchmarks-files.md}
fi
BIN=$ROOT/target/release
RESULTS=$ROOT/target/bench/files
log() { printf '[bench-files %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in hyperfine pdcp scp /usr/sbin/sshd python3; do
    command -v "$tool" >/dev/null || [ -x "$tool" ] ||
        die "missing $tool (apt-get install hyperfine pdsh openssh-client openssh-server python3)"
done
if [ "$BUILD" = 1 ]; then
    log "building release binaries (nice -n 19)"
    (cd "$ROOT" && nice -n 19 cargo build --release -q -p agent -p ctl)
fi
rm -rf "$RESULTS"
mkdir -p "$RESULTS" "$(dirname "$OUT")"
TMP=$(mktemp -d /tmp/rexec-bench-files.XXXXXX)
DST=$(mktemp -d /dev/shm/rexec-bench-files.XXXXXX)

PIDS=()
stop() {
    local pid=$1
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local status=$?
    set +e
    for pid in "${PIDS[@]}"; do stop "$pid"; done
    rm -rf "$TMP" "$DST"
    exit $status
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for_line() {
    for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    die "timed out waiting for '$2' in $1"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
SRC=$TMP/payload
log "making a $MIB MiB file of random bytes"
head -c $((MIB * 1024 * 1024)) /dev/urandom >"$SRC"

"$BIN/ctl" keygen --id bench -o "$TMP/key" 2>/dev/null
export CTL_KEY_FILE=$TMP/key
# The agent is reached as 127.0.0.1 and as 127.1.0.1-8: one enrolled line for each name.
{ echo 127.0.0.1; for i in $(seq 8); do echo "127.1.0.$i"; done; } >"$TMP/agent-names"
(umask 077; "$BIN/ctl" enroll --hosts-file "$TMP/agent-names" >"$TMP/agent-keys")
APORT=$(free_port)
"$BIN/agent" --key-file "$TMP/agent-keys" --listen "0.0.0.0:$APORT" 2>"$TMP/agent.log" &
PIDS+=($!)
wait_for_line "$TMP/agent.log" listening

SPORT=$(free_port)
ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$TMP/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$TMP/id_ed25519"
cp "$TMP/id_ed25519.pub" "$TMP/authorized_keys"
echo "* $(cut -d' ' -f1,2 "$TMP/host_ed25519.pub")" >"$TMP/known_hosts"
cat >"$TMP/sshd_config" <<EOC
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
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
SetEnv SHLVL=1
MaxStartups 1024
# scp speaks SFTP since OpenSSH 9.0.
Subsystem sftp internal-sftp
LogLevel ERROR
EOC
cat >"$TMP/ssh_config" <<EOC
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
  ControlMaster no
  ControlPath none
  LogLevel ERROR
EOC
[ "$(id -u)" != 0 ] || [ -d /run/sshd ] || mkdir -p -m 0755 /run/sshd
/usr/sbin/sshd -D -f "$TMP/sshd_config" -E "$TMP/sshd.log" &
PIDS+=($!)
for i in $(seq 100); do
    ssh -F "$TMP/ssh_config" -n 127.0.0.1 true 2>/dev/null && break
    [ "$i" = 100 ] && die "sshd did not answer: $(tail -5 "$TMP/sshd.log")"
    sleep 0.1
done
SSH_CIPHER=$(ssh -F "$TMP/ssh_config" -G 127.0.0.1 | awk '$1 == "ciphers" {split($2, c, ","); print c[1]}')

HOSTS8=$(for i in $(seq 8); do printf '127.1.0.%d ' "$i"; done)
CTL_TARGETS8=$(for h in $HOSTS8; do printf '%s:%s,' "$h" "$APORT"; done)
CTL_TARGETS8=${CTL_TARGETS8%,}
export PDSH_SSH_ARGS="-F $TMP/ssh_config -l%u %h"
export PDSH_RCMD_TYPE=ssh
WANT=$(sha256sum <"$SRC" | cut -d' ' -f1)
# Each run starts from an empty destination (--prepare), and every tool's result is checked
# once (a fast wrong copy must not pass for a fast right one).
PREP="rm -rf $DST/d && mkdir $DST/d"
declare -A CMDS=(
    [ctl_1]="$BIN/ctl push 127.0.0.1:$APORT $SRC $DST/d/"
    [scp_1]="scp -F $TMP/ssh_config -q $SRC 127.0.0.1:$DST/d/"
    [ctl_8]="$BIN/ctl push -H $CTL_TARGETS8 $SRC $DST/d/"
    [scp_8]="sh -c 'for h in $HOSTS8; do scp -F $TMP/ssh_config -q $SRC \$h:$DST/d/ & done; wait'"
    [pdcp_8]="pdcp -R ssh -f 64 -w $(echo $HOSTS8 | tr ' ' ,) $SRC $DST/d/"
)
ORDER=(ctl_1 scp_1 ctl_8 scp_8 pdcp_8)
for name in "${ORDER[@]}"; do
    eval "$PREP"
    eval "${CMDS[$name]}" >/dev/null 2>"$RESULTS/$name.check" ||
        die "$name failed: $(tail -3 "$RESULTS/$name.check")"
    got=$(sha256sum <"$DST/d/payload" | cut -d' ' -f1)
    [ "$got" = "$WANT" ] || die "$name delivered other bytes"
done
for name in "${ORDER[@]}"; do
    log "timing $name ($RUNS runs)"
    echo "$(cut -d' ' -f1 /proc/loadavg)" >"$RESULTS/$name.load"
    hyperfine --style none --runs "$RUNS" --prepare "$PREP" \
        --export-json "$RESULTS/$name.json" "${CMDS[$name]}" >/dev/null 2>"$RESULTS/$name.stderr" ||
        die "hyperfine $name failed: $(tail -5 "$RESULTS/$name.stderr")"
done
# ctl's own memory while sending to 8 targets: bounded by chunks in flight, not by the file.
eval "$PREP"
/usr/bin/time -f %M -o "$RESULTS/ctl_8.rss" $BIN/ctl push -H "$CTL_TARGETS8" "$SRC" "$DST/d/" >/dev/null 2>&1 ||
    log "could not measure ctl's memory (/usr/bin/time missing?)"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$RESULTS" "$OUT" "$MIB" "$LOAD_START" "$LOAD_END" "$SSH_CIPHER" <<'EOF'
import json, os, platform, subprocess, sys
res, out, mib, load_start, load_end, cipher = sys.argv[1:]
mib = int(mib)
def t(name):
    r = json.load(open(f"{res}/{name}.json"))["results"][0]
    return r["mean"], r["stddev"] or 0.0, r["min"], len(r["times"])
def first(*cmd):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"unknown ({e})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
rows = [("ctl push, 1 target", "ctl_1", 1), ("scp, 1 target", "scp_1", 1),
        ("ctl push -H, 8 targets", "ctl_8", 8), ("scp, 8 in parallel", "scp_8", 8),
        ("pdcp -R ssh, 8 targets", "pdcp_8", 8)]
lines = [
    "# File copy benchmarks",
    "",
    f"One {mib} MiB file of random bytes, written by `bench/files.sh`"
    f" ({'quick run' if mib < 1024 else 'full run'}) on {os.cpu_count()} cores ({cpu}),"
    f" {first('uname', '-sr')}, {subprocess.run(['date', '-u', '+%Y-%m-%d %H:%M UTC'], capture_output=True, text=True).stdout.strip()};"
    f" {first('ssh', '-V')} (cipher {cipher}), {first('pdsh', '-V')}.",
    f"Load average (1, 5, 15 min) {load_start} at the start and {load_end} at the end:"
    " the machine is shared, so treat the figures as this run's, not as constants.",
    "",
    "Every target is an address 127.1.0.N of this machine (its own TCP connection and, for"
    " ssh, its own sshd child); destinations are on tmpfs (`/dev/shm`), emptied before each run,"
    " and each tool's copy was checked against the source's SHA-256 once. For 8 targets the"
    " machine both sends and receives all 8 copies, so the time is bounded by its 2 cores"
    " encrypting and decrypting 8 streams, not by a network.",
    "",
    "| what | runs | mean | ± | fastest | throughput (all copies) |",
    "|---|---:|---:|---:|---:|---:|",
]
for label, name, n in rows:
    mean, sd, lo, runs = t(name)
    lines.append(f"| {label} | {runs} | {mean:.2f} s | {sd:.2f} s | {lo:.2f} s | {n * mib / mean:.0f} MiB/s |")
ctl8, pdcp8 = t("ctl_8")[0], t("pdcp_8")[0]
lines += ["", f"At 8 targets ctl push took {ctl8:.2f} s and pdcp {pdcp8:.2f} s: ctl is"
          f" {pdcp8 / ctl8:.1f}x as fast (target: at least 2x)."]
loads = [float(open(f"{res}/{name}.load").read().split()[0]) for _, name, _ in rows]
if max(loads) > os.cpu_count():
    lines += ["", "The 1-minute load average as each part started was "
              + ", ".join(f"{l:.1f} ({name})" for l, (_, name, _) in zip(loads, rows))
              + f", above the {os.cpu_count()} cores: other work competed for the CPU, and the"
              " scheduler shares it out by runnable thread, so a tool that runs more processes"
              " (pdcp and scp: an ssh, an sshd and a copy process per target) gets more of it"
              " than one that runs fewer (ctl and one agent). Rerun on an idle machine before"
              " comparing."]
try:
    rss = int(open(f"{res}/ctl_8.rss").read().split()[-1])
    lines += ["", f"ctl's peak memory (max RSS) while pushing the {mib} MiB file to 8 targets: {rss / 1024:.1f} MiB."]
except Exception:
    pass
lines += ["", "ctl reads the file once for the 8 targets (one reader thread, 256 KiB chunks shared"
          " by reference, at most 8 chunks queued per target); each agent writes a temporary file,"
          " fsyncs it, checks its BLAKE3 digest and renames it into place.", ""]
lines.append("Commands (hyperfine, `--prepare` empties the destination):")
lines.append("")
lines.append("```text")
for label, name, n in rows:
    lines.append(json.load(open(f"{res}/{name}.json"))["results"][0]["command"])
lines.append("```")
open(out, "w").write("\n".join(lines) + "\n")
print(out)
EOF
log "done: load average $LOAD_START at the start, $LOAD_END at the end"
