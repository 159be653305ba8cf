#!/usr/bin/env python3
"""Keystroke echo latency of an interactive session, as a person at a terminal sees it.

Runs COMMAND on a new pseudo-terminal (24 x 80) whose remote side prints READY and then runs
`cat` on a terminal of its own (`ctl exec -t ... 'echo READY; exec cat'`, or `ssh -t`), types
one key at a time and times each from the write of the key to the read of its echo, which the
remote terminal's line discipline sends back. Keys are spaced out, so each is a round trip of
its own. Writes the samples and their summary as JSON.

    bench/pty_echo.py --keys 300 --out FILE.json -- ctl exec -t HOST 'echo READY; exec cat'
"""

import argparse
import fcntl
import json
import os
import pty
import select
import signal
import statistics
import struct
import sys
import termios
import time


def read_until(fd, needle, timeout, buf=b""):
    """Reads from fd until buf holds needle; returns buf. Exits with a message after timeout."""
    end = time.monotonic() + timeout
    while needle not in buf:
        left = end - time.monotonic()
        if left <= 0:
            sys.exit(f"pty_echo: {needle!r} did not show within {timeout}s; screen: {buf[-400:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError as e:
                sys.exit(f"pty_echo: the session ended before {needle!r} showed ({e}); screen: {buf[-400:]!r}")
            if not chunk:
                sys.exit(f"pty_echo: the session ended before {needle!r} showed; screen: {buf[-400:]!r}")
            buf += chunk
    return buf


def drain(fd, quiet):
    """Reads until nothing has come for `quiet` seconds."""
    while select.select([fd], [], [], quiet)[0]:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


def percentile(sorted_values, p):
    i = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=300, help="keys to time (at most 4000)")
    ap.add_argument("--gap", type=float, default=0.01, help="seconds between an echo and the next key")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        ap.error("missing COMMAND")
    # The remote terminal is in canonical mode; its line holds at most 4095 characters.
    keys = max(1, min(args.keys, 4000))

    pid, fd = pty.fork()
    if pid == 0:
        os.environ.setdefault("TERM", "xterm")
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        read_until(fd, b"READY", 30)
        # Whatever else the start-up prints (a newline, a prompt) is not an echo.
        drain(fd, 0.3)
        samples = []
        for _ in range(keys):
            time.sleep(args.gap)
            start = time.perf_counter()
            os.write(fd, b"x")
            read_until(fd, b"x", 10)
            samples.append((time.perf_counter() - start) * 1000)
        os.write(fd, b"\x03")
    finally:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            drain(fd, 0.05)
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    ordered = sorted(samples)
    result = {
        "command": " ".join(cmd),
        "keys": len(samples),
        "gap_s": args.gap,
        "median_ms": statistics.median(ordered),
        "mean_ms": statistics.fmean(ordered),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
        "samples_ms": samples,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{result['command']}: median {result['median_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms "
          f"over {len(samples)} keys", file=sys.stderr)


if __name__ == "__main__":
    main()
