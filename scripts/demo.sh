#!/usr/bin/env bash
# Quick start on loopback: build, make a fresh client key, enroll the agent "127.0.0.1" with it,
# start that agent on 127.0.0.1:50007,
# run `ctl exec 127.0.0.1:50007 'ls -l'`, stop the agent. Usage: scripts/demo.sh [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
port="${1:-50007}"
cargo build --release --locked --quiet
bin=target/release
work=$(mktemp -d)
agent_pid=
cleanup() {
  if [ -n "$agent_pid" ]; then kill "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/ctl" keygen --id demo -o "$work/key"                       # the client's master key
"$bin/ctl" enroll --key-file "$work/key" -o "$work/agent-keys" 127.0.0.1   # the agent's line
"$bin/agent" --key-file "$work/agent-keys" --listen "127.0.0.1:$port" 2>"$work/agent.log" &
agent_pid=$!
for _ in $(seq 200); do
  grep -q listening "$work/agent.log" && break
  kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; exit 1; }
  sleep 0.05
done
grep listening "$work/agent.log"

echo "\$ ctl exec 127.0.0.1:$port 'ls -l'"
CTL_KEY_FILE="$work/key" "$bin/ctl" exec "127.0.0.1:$port" 'ls -l'
echo "(exit status $?)"

kill "$agent_pid"; wait "$agent_pid"; agent_pid=
echo "agent stopped; its audit log:"
grep audit "$work/agent.log"
