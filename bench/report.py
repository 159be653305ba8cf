#!/usr/bin/env python3
"""Writes docs/benchmarks.md and its fan-out chart from what bench/run.sh measured.

Inputs, all in --results: hyperfine's JSON exports (one file per benchmark), machine.json,
commands.tsv, memory.txt; and criterion's estimates under --criterion. Every figure in the
document comes from those files: nothing here is typed in by hand but the targets the project
set itself (issue 5 and issue 3), which are labelled as such.
"""

import argparse
import json
import os
import re
import statistics
from pathlib import Path

# The project's targets (issue 5; fan-out and ctl memory also issue 3), on its 2-core machine.
TARGET_TRUE_MS = 3.0
TARGET_BULK_S = 1.5
TARGET_FANOUT_500_S = 1.0
TARGET_FANOUT_RATIO = 10.0
TARGET_AGENT_IDLE_MIB = 10.0
TARGET_PER_CONN_KIB = 100.0
TARGET_CTL_MIB = 64.0


def load(results, name):
    path = results / f"{name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())["results"][0]
    times = data["times"]
    return {
        "median": statistics.median(times),
        "mean": data["mean"],
        "stddev": data.get("stddev") or 0.0,
        "min": data["min"],
        "max": data["max"],
        "runs": len(times),
    }


def fmt_time(seconds):
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(x):
    return f"{x:.0f}x" if x >= 10 else f"{x:.1f}x"


def rate_text(pv_rate):
    """pv's -L rate (`64m` = 64 MiB/s) as text."""
    units = {"k": "KiB/s", "m": "MiB/s", "g": "GiB/s"}
    unit = pv_rate[-1:].lower()
    return f"{pv_rate[:-1]} {units[unit]}" if unit in units else f"{pv_rate} B/s"


def verdict(ok):
    return "met" if ok else "**missed**"


def criterion_results(root):
    """(group, size, bytes per second) for every criterion benchmark with a byte throughput."""
    out = []
    if not root.is_dir():
        return out
    for bench in sorted(root.rglob("new/benchmark.json")):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        throughput = meta.get("throughput") or {}
        ns = est["median"]["point_estimate"]
        group = meta["group_id"]
        ident = meta.get("value_str") or meta.get("function_id") or ""
        if "Bytes" in throughput:
            out.append((group, ident, throughput["Bytes"] / ns * 1e9, ns))
        elif "Elements" in throughput:
            out.append((group, ident, None, ns / throughput["Elements"]))
    return out


def chart(path, sizes, ours, peers, title):
    """A grouped bar chart (log scale) of fan-out wall times, as a standalone SVG."""
    import math

    width, height = 640, 360
    left, right, top, bottom = 70, 20, 40, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for v in ours + peers if v]
    lo = 10 ** math.floor(math.log10(min(values)))
    hi = 10 ** math.ceil(math.log10(max(values)))

    def y(v):
        return top + plot_h * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
    ]
    decade = lo
    while decade <= hi * 1.0001:
        yy = y(decade)
        label = fmt_time(decade).replace(".00 ", " ").replace(".0 ", " ")
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        decade *= 10
    group_w = plot_w / len(sizes)
    bar_w = group_w / 3
    colors = ("#2b7bba", "#d95f02")
    for i, n in enumerate(sizes):
        x0 = left + i * group_w + group_w / 6
        for j, v in enumerate((ours[i], peers[i])):
            if not v:
                continue
            x = x0 + j * bar_w
            yy = y(v)
            parts.append(
                f'<rect x="{x:.1f}" y="{yy:.1f}" width="{bar_w - 4:.1f}" '
                f'height="{top + plot_h - yy:.1f}" fill="{colors[j]}"/>'
            )
            parts.append(
                f'<text x="{x + (bar_w - 4) / 2:.1f}" y="{yy - 4:.1f}" text-anchor="middle">{fmt_time(v)}</text>'
            )
        parts.append(
            f'<text x="{left + i * group_w + group_w / 2:.1f}" y="{top + plot_h + 18}" '
            f'text-anchor="middle">{n} targets</text>'
        )
    parts.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="black"/>')
    legend_y = height - 16
    for j, name in enumerate(("ctl exec -H (rexec)", "pdsh -R ssh (OpenSSH)")):
        lx = left + j * 220
        parts.append(f'<rect x="{lx}" y="{legend_y - 10}" width="12" height="12" fill="{colors[j]}"/>')
        parts.append(f'<text x="{lx + 18}" y="{legend_y}">{name}</text>')
    parts.append(
        f'<text x="16" y="{top + plot_h / 2}" transform="rotate(-90 16 {top + plot_h / 2})" '
        f'text-anchor="middle">median wall time (log scale)</text>'
    )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


# Marks where the sections measured by other scripts begin on the page.
CARRIED = "<!-- Sections below, up to Commands, come from other scripts; kept on a rerun. -->"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--criterion", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", default="0")
    ap.add_argument("--parallel", default="64")
    ap.add_argument("--tmp", default="")
    ap.add_argument("--bytes", type=int, required=True)
    args = ap.parse_args()
    res = args.results
    quick = args.quick == "1"
    machine = json.loads((res / "machine.json").read_text())
    mem = {}
    for line in (res / "memory.txt").read_text().splitlines():
        key, _, value = line.partition(" ")
        mem.setdefault(key, []).append(value)
    repo = Path(__file__).resolve().parent.parent

    def cmd_text(cmd):
        """A command as a reader would retype it: temp dir, ports and host lists named."""
        if args.tmp:
            cmd = cmd.replace(args.tmp, "$TMP")
        cmd = cmd.replace(str(repo) + "/", "")
        cmd = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:$PORT", cmd)
        cmd = re.sub(r"--port \d+", "--port $PORT", cmd)
        cmd = re.sub(r"-H (127\.[0-9.]+,)+127\.[0-9.]+", lambda m: f"-H $(paste -sd, $TMP/hosts-{m.group(0).count(',') + 1})", cmd)
        return cmd

    commands = []
    for line in (res / "commands.tsv").read_text().splitlines():
        name, runs, warmup, cmd = line.split("\t", 3)
        commands.append((name, runs, warmup, cmd_text(cmd)))

    r = {name: load(res, name) for name, *_ in commands}
    gib = args.bytes / 2**30
    size_text = "1 GiB" if args.bytes == 2**30 else f"{args.bytes // 2**20} MiB"
    fan_sizes = sorted({int(n.split("_")[-1]) for n in r if n.startswith("fan_")})
    n_max = fan_sizes[-1] if fan_sizes else 0

    md = []
    w = md.append
    w("# Benchmarks")
    w("")
    if quick:
        w("> **Quick run** (`bench/run.sh --quick`): reduced sizes and run counts, to check the")
        w("> script. These figures are not the project's; see docs/benchmarks.md for a full run.")
        w("")
    w("Every figure on this page was measured and written by `bench/run.sh` (this file and the")
    w("chart are its output; edit the script, not the page). Rerun it to reproduce them:")
    w("")
    w("```sh")
    w("bench/run.sh            # installs what is missing with apt-get, builds, measures, writes this page")
    w("```")
    w("")
    w("It starts, on loopback only, a private OpenSSH server (own config, host key and")
    w("authorized_keys in a temp dir; never the system's) and our agent, both listening on")
    w("`0.0.0.0:<free port>` so that every `127.x.y.z` address reaches them, and connects only to")
    w("`127.x.y.z` addresses. Times are hyperfine medians (no shell in between, `-N`) after warm-up")
    w("runs; the run counts are in the command list at the end.")
    w("")
    w("sshd runs a command as `$SHELL -c`, here bash, which reads `~/.bashrc` when it was started")
    w("by sshd; the script's sshd sets `SHLVL=1` (`SetEnv`) so that it does not, as the agent's")
    w("`sh -c` reads no start-up file either: both sides then measure the transport, not the")
    w("account's shell set-up.")
    w("")
    w("File copies (`ctl push` against scp and pdcp, 1 GiB to 1 and to 8 targets) are measured")
    w("by `bench/files.sh` and written to [benchmarks-files.md](benchmarks-files.md).")
    w("")
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {machine['cpu']} |")
    w(f"| cores | {machine['cores']} |")
    w(f"| memory | {machine['mem_gib']} GiB |")
    w(f"| kernel | {machine['kernel']} ({machine['os']}) |")
    w(f"| date | {machine['date']} |")
    w(f"| load average (1, 5, 15 min) | at start {machine['load_start']}; at end {mem.get('load_end', ['?'])[0]} |")
    loads = []
    if (res / "loads.txt").exists():
        rows_ = [line.split() for line in (res / "loads.txt").read_text().splitlines()]
        for i, row in enumerate(rows_):
            text = f"{row[0].replace('_', ' ')} {row[1]}"
            if i + 1 < len(rows_) and len(row) >= 4 and len(rows_[i + 1]) >= 4:
                steal = int(rows_[i + 1][2]) - int(row[2])
                total = int(rows_[i + 1][3]) - int(row[3])
                if total > 0:
                    text += f" ({100 * steal / total:.0f}% stolen)"
            loads.append(text)
    if loads:
        w(f"| as each part ran, in run order: 1-minute load at its start (CPU stolen by the hypervisor during it) | {'; '.join(loads)} |")
    w(f"| peers | {machine['openssh']}; {machine['pdsh']} |")
    w(f"| tools | {machine['hyperfine']}; {machine['rustc']} |")
    w(f"| ours | {machine['agent']}, commit {machine['commit']}, release build |")
    w("")
    w("The machine is shared (a 2-core VM): a load average well above 0 as a part starts means")
    w("other work ran alongside it, and CPU time stolen by the hypervisor (other guests running on")
    w("the same host; `st` in vmstat) slows everything in the guest without showing in its load.")
    w("Either, above a few percent, makes that part's wall times pessimistic. The parts run in the order")
    w("above, pdsh last: at many targets pdsh loads the machine by itself (64 ssh clients and as")
    w("many sshd children at once), and the 1-minute average takes minutes to fall back, so the")
    w("load at the end is mostly the benchmark's own. Likewise criterion keeps one core busy for")
    w("the few minutes before the latency part, which alone puts the 1-minute load near 1 there.")
    w("")

    # --- summary against the targets
    rows = []
    lat = r.get("lat_ctl")
    if lat:
        rows.append(("one remote `true`", fmt_time(lat["median"]), f"<= {TARGET_TRUE_MS:.0f} ms",
                     verdict(lat["median"] * 1000 <= TARGET_TRUE_MS)))
    bulk = r.get("bulk_ctl")
    if bulk:
        target = TARGET_BULK_S * gib
        rows.append((f"{size_text} of stdout", fmt_time(bulk["median"]), f"<= {fmt_time(target)}",
                     verdict(bulk["median"] <= target)))
    nolive = r.get("bulk_ctl_nolive")
    if bulk and nolive:
        cost = bulk["median"] / nolive["median"] - 1
        rows.append((f"heartbeat's cost on {size_text} (vs `--alive-timeout 0`)", f"{cost * 100:+.1f} %",
                     "<= 2 %", verdict(cost <= 0.02)))
    ctl_max, pdsh_max = r.get(f"fan_ctl_{n_max}"), r.get(f"fan_pdsh_{n_max}")
    if ctl_max:
        rows.append((f"`true` on {n_max} targets", fmt_time(ctl_max["median"]), "<= 1 s (at 500)",
                     verdict(ctl_max["median"] <= TARGET_FANOUT_500_S)))
    if ctl_max and pdsh_max:
        ratio = pdsh_max["median"] / ctl_max["median"]
        rows.append((f"pdsh / ctl at {n_max} targets", fmt_ratio(ratio), ">= 10x (at 500)",
                     verdict(ratio >= TARGET_FANOUT_RATIO)))
    has_mem = "agent_idle_rss_kib" in mem
    if has_mem:
        idle = int(mem["agent_idle_rss_kib"][0])
        held = int(mem["agent_held_rss_kib"][0])
        nheld = int(mem["agent_held_connections"][0])
        per_conn = (held - idle) / nheld
        ctl_rss = sorted(int(v) for v in mem["ctl_fanout_maxrss_kib"])
        ctl_rss_med = ctl_rss[len(ctl_rss) // 2]
        mem_targets = mem["ctl_fanout_targets"][0]
        stream_peak = max(int(mem["agent_stream_peak_rss_kib"][0]), int(mem["agent_stream_hwm_kib"][0]))
        rows.append(("agent RSS, idle", f"{idle / 1024:.1f} MiB", f"< {TARGET_AGENT_IDLE_MIB:.0f} MiB",
                     verdict(idle / 1024 < TARGET_AGENT_IDLE_MIB)))
        rows.append((f"agent RSS per idle authenticated connection ({nheld} held)", f"{per_conn:.1f} KiB",
                     f"< {TARGET_PER_CONN_KIB:.0f} KiB", verdict(per_conn < TARGET_PER_CONN_KIB)))
        rows.append((f"ctl max RSS, {mem_targets} targets", f"{ctl_rss_med / 1024:.1f} MiB",
                     f"< {TARGET_CTL_MIB:.0f} MiB", verdict(ctl_rss_med / 1024 < TARGET_CTL_MIB)))
    w("## Summary against the targets")
    w("")
    w("Targets are the project's own (issues 3 and 5), set for this 2-core machine.")
    w("")
    w("| what | ours | target | |")
    w("|---|---:|---:|---|")
    for row in rows:
        w("| " + " | ".join(row) + " |")
    w("")

    # --- 1. latency
    def table(entries, base_name, unit_extra=None):
        base = r.get(base_name)
        if not any(r.get(name) for name, _ in entries):
            w("(not run)")
            w("")
            return
        w("| | median | mean ± σ | min … max | runs | vs ours |" + (" throughput |" if unit_extra else ""))
        w("|---|---:|---:|---:|---:|---:|" + ("---:|" if unit_extra else ""))
        for name, label in entries:
            x = r.get(name)
            if not x:
                continue
            ratio = fmt_ratio(x["median"] / base["median"]) if base else ""
            row = (f"| {label} | {fmt_time(x['median'])} | {fmt_time(x['mean'])} ± {fmt_time(x['stddev'])} | "
                   f"{fmt_time(x['min'])} … {fmt_time(x['max'])} | {x['runs']} | {ratio} |")
            if unit_extra:
                row += f" {unit_extra(x):.0f} MB/s |"
            w(row)
        w("")

    w("## 1. One remote `true`")
    w("")
    w("From starting the client to its exit: connect, authenticate, run `sh -c true`, report.")
    w("")
    table([("lat_ctl", "**ctl exec** (ours)"), ("lat_ssh", "ssh, fresh connection"),
           ("lat_ssh_cm", "ssh through an established ControlMaster"),
           ("lat_local", "local floor: `sh -c true`")], "lat_ctl")

    w(f"## 2. {size_text} of stdout to /dev/null")
    w("")
    w(f"`head -c {args.bytes} /dev/zero` on the remote side, its stdout to /dev/null on ours.")
    w(f"ssh's default cipher here is {machine.get('ssh_cipher', '?')}; ours is AES-256-GCM (ring).")
    w("")
    table([("bulk_ctl", "**ctl exec** (ours)"),
           ("bulk_ctl_nolive", "ctl exec with liveness off (`--alive-timeout 0`, both sides)"),
           ("bulk_ssh", "ssh, default cipher"),
           ("bulk_ssh_aes128gcm", "ssh -c aes128-gcm@openssh.com"),
           ("bulk_local", f"local pipe floor: `head ... \\| cat`")], "bulk_ctl",
          unit_extra=lambda x: args.bytes / x["median"] / 1e6)
    if r.get("bulk_ctl_nolive"):
        w("The liveness-off row ran run by run in turn with ours (A, B, A, B, ...), so that drift of")
        w("the shared machine hits both alike.")
        w("")

    w("## 3. Fan-out: `true` on many targets")
    w("")
    w(f"Distinct `127.x.y.z` targets, {args.parallel} at a time on both sides (`ctl exec -P {args.parallel} -H ...`")
    w(f"against `pdsh -R ssh -f {args.parallel}`). pdsh makes a fresh ssh connection per target.")
    w("")
    w("| targets | ctl exec -H (median) | pdsh -R ssh (median) | pdsh / ctl | runs (ctl, pdsh) |")
    w("|---:|---:|---:|---:|---|")
    ours, peers = [], []
    for n in fan_sizes:
        c, p = r.get(f"fan_ctl_{n}"), r.get(f"fan_pdsh_{n}")
        ours.append(c["median"] if c else None)
        peers.append(p["median"] if p else None)
        ratio = fmt_ratio(p["median"] / c["median"]) if c and p else ""
        w(f"| {n} | {fmt_time(c['median']) if c else ''} | {fmt_time(p['median']) if p else ''} | {ratio} | "
          f"{c['runs'] if c else ''}, {p['runs'] if p else ''} |")
    w("")
    if pdsh_max and pdsh_max["runs"] < 10:
        w(f"pdsh at {n_max} targets takes long enough that it ran {pdsh_max['runs']} times (after one warm-up)")
        w("instead of 10, to keep the whole script within about 15 minutes.")
        w("")
    svg = args.out.with_name(args.out.stem + "-fanout.svg")
    if fan_sizes:
        chart(svg, fan_sizes, ours, peers, "true on N targets: median wall time")
        w(f"![fan-out wall times]({svg.name})")
        w("")

    if has_mem:
        w("## 4. Memory")
        w("")
        w("Resident set size (VmRSS from /proc, or max RSS from `/usr/bin/time -f %M`).")
        w("")
        w("| what | figure |")
        w("|---|---:|")
        w(f"| agent, idle (fresh start) | {idle / 1024:.1f} MiB |")
        w(f"| agent holding {nheld} idle authenticated connections | {held / 1024:.1f} MiB |")
        w(f"| agent, per idle authenticated connection | {per_conn:.1f} KiB |")
        w(f"| agent, peak while streaming {size_text} to a reader limited to {rate_text(mem['stream_rate'][0])} "
          f"| {stream_peak / 1024:.1f} MiB |")
        w(f"| ctl, same stream | {int(mem['ctl_stream_maxrss_kib'][0]) / 1024:.1f} MiB |")
        w(f"| ctl exec -H, {mem_targets} targets (median of {len(ctl_rss)}) | {ctl_rss_med / 1024:.1f} MiB |")
        w("")
        w("The idle connections are held by `bench-hold` (bench/src/main.rs): it completes the")
        w("handshake and then sends nothing, against an agent started with `--handshake-timeout 300`")
        w("so that it keeps them. The slow reader is `pv -L`; the agent's RSS was sampled every 0.2 s")
        w(f"({mem['agent_stream_samples'][0]} samples) and its VmHWM read at the end; the larger is shown.")
        w("")

    pty_runs = []
    if (res / "pty.tsv").exists():
        for line in (res / "pty.tsv").read_text().splitlines():
            name, keys, cmd = line.split("\t", 2)
            data = json.loads((res / f"{name}.json").read_text())
            pty_runs.append((name, keys, cmd_text(cmd), data))
    if pty_runs:
        w("## 5. Keystroke echo on a terminal (`exec -t`, `ssh -t`)")
        w("")
        w("Each client runs on a pseudo-terminal of `bench/pty_echo.py`'s, with `echo READY; exec cat`")
        w("on a remote terminal; one key at a time is typed and timed from its write to the read of")
        w("its echo, which the remote terminal sends back (so: client, network, agent or sshd, remote")
        w("line discipline, and back). Keys are 10 ms apart, each a round trip of its own.")
        w("")
        w("| | median | mean | p90 | p99 | min … max | keys | vs ours |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        labels = {"pty_ctl": "**ctl exec -t** (ours)", "pty_ssh": "ssh -t, fresh connection",
                  "pty_local": "local floor: `cat` on the same terminal"}
        base = next((d for n, _, _, d in pty_runs if n == "pty_ctl"), None)
        for name, keys, _, d in pty_runs:
            ratio = fmt_ratio(d["median_ms"] / base["median_ms"]) if base else ""
            w(f"| {labels.get(name, name)} | {d['median_ms']:.3f} ms | {d['mean_ms']:.3f} ms | "
              f"{d['p90_ms']:.3f} ms | {d['p99_ms']:.3f} ms | {d['min_ms']:.3f} … {d['max_ms']:.3f} ms | "
              f"{d['keys']} | {ratio} |")
        w("")

    crit = criterion_results(args.criterion)
    if crit:
        w("## 6. Micro-benchmarks (criterion, one core)")
        w("")
        w("`cargo bench -p rexec-shared --bench seal --bench frame` (shared/benches/). Median of")
        w("criterion's samples; MB/s = 10^6 bytes per second of plaintext.")
        w("")
        seal = [(g, s, bps) for g, s, bps, _ in crit if bps and g.startswith(("aead_", "session_"))]
        sizes = sorted({int(s) for _, s, _ in seal if s.isdigit()})
        if seal:
            w("| AEAD, operation | " + " | ".join(f"{s // 1024} KiB" for s in sizes) + " |")
            w("|---|" + "---:|" * len(sizes))
            for g in sorted({g for g, _, _ in seal}):
                vals = {int(s): bps for gg, s, bps in seal if gg == g and s.isdigit()}
                w(f"| {g} | " + " | ".join(f"{vals[s] / 1e6:.0f}" if s in vals else "" for s in sizes) + " |")
            w("")
            w("`aead_*` are the bare AEADs (`aes256gcm`, `chacha20poly1305`: RustCrypto 0.10;")
            w("`ring_*`: ring 0.17); `session_*` is our `Sealer::seal_in_place` / `Opener::open`")
            w("with the cipher in use, which is what the agent and ctl run per frame.")
            w("")
        frames = [(g, s, bps, ns) for g, s, bps, ns in crit if g.startswith("frame_")]
        if frames:
            w("| frame codec | size | time | throughput |")
            w("|---|---:|---:|---:|")
            for g, s, bps, ns in sorted(frames, key=lambda f: (f[0], int(f[1]) if f[1].isdigit() else 0)):
                thr = f"{bps / 1e9:.1f} GB/s" if bps else "per frame"
                w(f"| {g} | {s} | {ns:.1f} ns | {thr} |")
            w("")

    # Sections measured by other scripts (bench/scale.sh, bench/group_memory.sh) are kept
    # from the page being replaced: a rerun of this one must not drop their figures.
    if args.out.exists():
        old = args.out.read_text()
        start, end = old.find("\n" + CARRIED), old.find("\n## Commands")
        if start != -1 and end > start:
            md.extend(old[start + 1:end].rstrip("\n").split("\n"))
            w("")

    w("## Commands")
    w("")
    w("As run by `bench/run.sh` (hyperfine `-N`, so no shell in between); `$TMP` is the run's temp")
    w("dir, `$PORT` the agent's or sshd's port, `$TMP/hosts-N` one `127.x.y.z` address per line.")
    w("`ssh -F $TMP/ssh_config` sets the port, the key, the private known_hosts and `BatchMode`;")
    w("pdsh runs ssh with `PDSH_SSH_ARGS='-F $TMP/ssh_config -l%u %h'`.")
    w("")
    w("| benchmark | runs | warm-up | command |")
    w("|---|---:|---:|---|")
    for name, runs, warmup, cmd in commands:
        w(f"| {name} | {runs} | {warmup} | `{cmd}` |".replace(" | cat", r" \| cat"))
    for name, keys, cmd, _ in pty_runs:
        w(f"| {name} | {keys} keys | | `bench/pty_echo.py --keys {keys} -- {cmd}` |")
    w("")
    w("Memory: `/usr/bin/time -f %M ctl exec -P 64 --port $PORT -H ... true` (3 times);")
    w("`bench-hold --count N` against a fresh agent; `ctl exec -n 127.0.0.1:$PORT 'head -c ...'")
    w("| pv -q -L RATE > /dev/null` while sampling the agent's `/proc/PID/status`.")
    args.out.write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
