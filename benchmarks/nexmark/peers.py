"""Nexmark side by side: millstream and peer frameworks on the same events file, in one run.

    python benchmarks/nexmark/peers.py --events 1000000 --queries q0,q1,q2,q5,q7,q11 \\
        --peers-python /tmp/peers/bin/python [--modes native,microbatch] [--peers bytewax,pathway,pyspark] \\
        [--peer-events pathway=200000,pyspark=1000000] [--repeat 3] [--json results.json]

The peers live in their own venv (see benchmarks/nexmark/peers/requirements.txt)::

    python -m venv /tmp/peers
    /tmp/peers/bin/pip install -r benchmarks/nexmark/peers/requirements.txt

Steps:

1. The events file: ``--events`` events of millstream's generator (``NexmarkConfig(events=N,
   rate=--rate)``, Beam's defaults otherwise) as JSON lines, one object per event with
   ``"type"`` and the camelCase fields, times as epoch ms. Written from the public columnar
   generator (``nexmark.persons_batch/auctions_batch/bids_batch``, interleaved by
   ``nexmark.kind_of(id)``) and cached under /tmp (``/tmp/nexmark-<N>-r<rate>.jsonl``).
2. millstream: ``millstream nexmark run --query qN --mode M --input FILE --out OUT`` per query
   and mode, pinned with ``taskset -c 1``. Its time is the subprocess's wall clock minus the
   median wall clock of ``python -c "import millstream"`` (so interpreter start-up and the
   import are excluded, as far as an external timer can). When the command is missing or
   fails, the row says n/a.
3. Each peer script (benchmarks/nexmark/peers/<peer>_nexmark.py) with the peers' Python; it
   times itself (see its docstring for what is inside the timer). bytewax and pathway are
   pinned to one core (``taskset -c 1``); PySpark runs ``local[2]`` on both cores
   (``taskset -c 0,1``), so its figure is per two cores.
4. Agreement: every output is compared, as a multiset of rows over the query's columns, with
   a pure-Python oracle computed here from the same file (float prices compare after rounding
   to 1/1000 of a cent). For each peer and query: yes/no and the row counts. When a peer ran
   on a smaller prefix of the events (``--peer-events``), it is compared with the oracle of
   that prefix, and its ratio is computed against millstream on the same prefix when
   millstream ran there too, else against the full-size millstream figure (marked).
5. A table of events/s (best of ``--repeat``, with the range) and the ratio millstream/peer;
   ``--json PATH`` writes every measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / "peers"
PEERS = ("bytewax", "pathway", "pyspark")
ALL_QUERIES = ("q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11")

sys.path.insert(0, str(PEER_DIR))
from _common import AUCTION_SKIP, COLUMNS, HOP_MS, WINDOW_MS  # noqa: E402

# How each peer runs: the CPUs it is pinned to, and the number of cores that figure is for.
PINNING = {"millstream": ("1", 1), "bytewax": ("1", 1), "pathway": ("1", 1), "pyspark": ("0,1", 2)}


# -- the events file ------------------------------------------------------------------------------------
def write_events(n: int, path: Path, rate: int, chunk: int = 200_000) -> None:
    """``n`` events of millstream's generator as JSON lines (id order = event-time order)."""
    import orjson

    from millstream import nexmark

    cfg = nexmark.NexmarkConfig(events=n, rate=rate)
    makers = {"person": nexmark.persons_batch, "auction": nexmark.auctions_batch, "bid": nexmark.bids_batch}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            rows = {kind: iter(make(lo, hi, cfg).to_pylist()) for kind, make in makers.items()}
            out = []
            for i in range(lo, hi):
                kind = nexmark.kind_of(i)
                out.append(orjson.dumps({"type": kind, **next(rows[kind])}))
            f.write(b"\n".join(out) + b"\n")
    tmp.rename(path)


def events_file(n: int, rate: int) -> Path:
    path = Path(f"/tmp/nexmark-{n}-r{rate}.jsonl")
    if not path.exists():
        t = time.perf_counter()
        write_events(n, path, rate)
        print(f"# wrote {n:,} events to {path} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


def prefix_file(path: Path, n: int, rate: int) -> Path:
    """The first ``n`` events of the same stream (the generator is a pure function of the id)."""
    return events_file(n, rate)


# -- the oracle -----------------------------------------------------------------------------------------
def read_events(path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    import orjson

    persons, auctions, bids = [], [], []
    by = {"person": persons, "auction": auctions, "bid": bids}
    with open(path, "rb") as f:
        for line in f:
            row = orjson.loads(line)
            by[row["type"]].append(row)
    return persons, auctions, bids


def oracle(query: str, events: tuple[list[dict], list[dict], list[dict]]) -> list[dict]:
    """The query's result over a bounded input, computed the plain way (docs/NEXMARK.md §B5)."""
    persons, auctions, bids = events
    if query == "q0":
        return [{k: b[k] for k in COLUMNS["q0"]} for b in bids]
    if query == "q1":
        return [{**{k: b[k] for k in COLUMNS["q1"]}, "price": b["price"] * 0.908} for b in bids]
    if query == "q2":
        return [{"auction": b["auction"], "price": b["price"]} for b in bids if b["auction"] % AUCTION_SKIP == 0]
    if query == "q3":
        people = {p["id"]: p for p in persons if p["state"] in ("OR", "ID", "CA")}
        return [{"name": p["name"], "city": p["city"], "state": p["state"], "id": a["id"]}
                for a in auctions if a["category"] == 10 and (p := people.get(a["seller"])) is not None]
    if query == "q5":
        counts: dict[int, Counter] = defaultdict(Counter)
        per = WINDOW_MS // HOP_MS
        for b in bids:
            t = b["dateTime"]
            last = t - t % HOP_MS
            for k in range(per):
                counts[last - k * HOP_MS][b["auction"]] += 1
        out = []
        for start, c in counts.items():
            top = max(c.values())
            out += [{"auction": a, "num": n, "window_start": start, "window_end": start + WINDOW_MS}
                    for a, n in c.items() if n == top]
        return out
    if query == "q7":
        top: dict[int, int] = {}
        for b in bids:
            w = b["dateTime"] - b["dateTime"] % WINDOW_MS
            if b["price"] > top.get(w, -1):
                top[w] = b["price"]
        return [{"auction": b["auction"], "price": b["price"], "bidder": b["bidder"], "dateTime": b["dateTime"],
                 "extra": b["extra"], "window_end": w + WINDOW_MS}
                for b in bids if b["price"] == top[(w := b["dateTime"] - b["dateTime"] % WINDOW_MS)]]
    if query == "q8":
        sellers = {(a["seller"], a["dateTime"] - a["dateTime"] % WINDOW_MS) for a in auctions}
        seen = set()
        out = []
        for p in persons:
            key = (p["id"], p["name"], p["dateTime"] - p["dateTime"] % WINDOW_MS)
            if (key[0], key[2]) in sellers and key not in seen:
                seen.add(key)
                out.append({"id": key[0], "name": key[1], "starttime": key[2]})
        return out
    if query == "q11":
        times: dict[int, list[int]] = defaultdict(list)
        for b in bids:
            times[b["bidder"]].append(b["dateTime"])
        out = []
        for bidder, ts in times.items():
            ts.sort()
            first = last = ts[0]
            n = 0
            for t in ts:
                if t - last >= WINDOW_MS:  # events less than the gap apart share a session
                    out.append({"bidder": bidder, "bid_count": n, "starttime": first, "endtime": last + WINDOW_MS})
                    first, n = t, 0
                last = t
                n += 1
            out.append({"bidder": bidder, "bid_count": n, "starttime": first, "endtime": last + WINDOW_MS})
        return out
    raise ValueError(query)


def canonical(query: str, row: dict) -> tuple:
    """A row as a comparable tuple of the query's columns (floats to 1/1000, times as int ms)."""
    out = []
    for col in COLUMNS[query]:
        v = row.get(col)
        if isinstance(v, float):
            v = round(v * 1000) if (query == "q1" and col == "price") else (int(v) if v == int(v) else v)
        out.append(v)
    return tuple(out)


def multiset(query: str, rows: list[dict]) -> Counter:
    """Rows counted by their canonical tuple; a ``diff`` column (Pathway's changelog) is the row's weight."""
    out: Counter = Counter()
    for r in rows:
        out[canonical(query, r)] += r.get("diff", 1)
    return +out


def read_rows(path: Path) -> list[dict]:
    import orjson

    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def compare(query: str, got: Path, want: Counter) -> dict[str, Any]:
    try:
        rows = read_rows(got)
    except (OSError, ValueError) as exc:
        return {"agree": "no", "rows": None, "expected_rows": sum(want.values()), "why": f"unreadable: {exc}"}
    ms = multiset(query, rows)
    ok = ms == want
    res: dict[str, Any] = {"agree": "yes" if ok else "no", "rows": sum(ms.values()),
                           "expected_rows": sum(want.values())}
    if not ok:
        missing, extra = want - ms, ms - want
        res["missing"] = sum(missing.values())
        res["extra"] = sum(extra.values())
        res["example_missing"] = [list(r) for r in list(missing)[:2]]
        res["example_extra"] = [list(r) for r in list(extra)[:2]]
    return res


# -- running --------------------------------------------------------------------------------------------
# A small launcher that forks and execs the command and reports its wall clock and peak RSS. The
# driver holds the oracle (hundreds of MB); a child forked straight from it would inherit that
# high-water mark in ru_maxrss, so the measured process is forked from this small one instead.
LAUNCHER = r"""
import json, os, sys, time
res, cmd = sys.argv[1], sys.argv[2:]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(res, "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "wall": wall, "maxrss_kb": ru.ru_maxrss}, f)
"""


def run_timed(cmd: list[str], cpus: str, timeout: float) -> tuple[int, float, float, str, str]:
    """Run ``cmd`` pinned to ``cpus``: (exit code, wall seconds, peak RSS MiB of the process, out, err).

    The peak RSS is ``ru_maxrss`` of the command's process (its largest waited-for descendant
    when larger); a JVM started by PySpark is reported by the peer script itself.
    """
    pin = ["taskset", "-c", cpus] if shutil.which("taskset") else []
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "res.json"
        full = [*pin, sys.executable, "-S", "-c", LAUNCHER, str(res), *cmd]
        with open(Path(tmp) / "out", "w+b") as out, open(Path(tmp) / "err", "w+b") as err:
            proc = subprocess.Popen(full, stdout=out, stderr=err, start_new_session=True)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)  # the launcher's own process group (start_new_session)
                proc.wait()
                return -9, timeout, 0.0, "", f"timeout after {timeout:.0f} s"
            out.seek(0)
            err.seek(0)
            stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        if not res.exists():
            return proc.returncode or -1, 0.0, 0.0, stdout, stderr or "launcher failed"
        r = json.loads(res.read_text())
        return r["code"], r["wall"], r["maxrss_kb"] / 1024, stdout, stderr


def startup_seconds(repeat: int = 5) -> float:
    """Median wall clock of ``python -c "import millstream"`` on the same core."""
    times = []
    for _ in range(repeat):
        code, wall, *_ = run_timed([sys.executable, "-c", "import millstream"], PINNING["millstream"][0], 60)
        if code == 0:
            times.append(wall)
    return statistics.median(times) if times else 0.0


def millstream_cmd() -> list[str]:
    exe = shutil.which("millstream")
    if exe:
        return [exe]
    return [sys.executable, "-m", "millstream.cli"]


def _why(code: int, stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln or ln.startswith("millstream:") or "error:" in ln:
            return ln[:200]
    return (lines[-1] if lines else f"exit {code}")[:200]


def run_millstream(query: str, mode: str, path: Path, out: Path, events: int, startup: float,
                   timeout: float) -> dict[str, Any]:
    cmd = [*millstream_cmd(), "nexmark", "run", "--query", query, "--mode", mode, "--input", str(path),
           "--out", str(out)]
    code, wall, rss, _stdout, stderr = run_timed(cmd, PINNING["millstream"][0], timeout)
    if code != 0:
        return {"ok": False, "why": _why(code, stderr)}
    seconds = max(wall - startup, 1e-9)
    return {"ok": True, "seconds": seconds, "wall": wall, "events_per_s": events / seconds, "peak_rss_mb": rss}


def run_peer(peer: str, python: str, query: str, path: Path, out: Path, timeout: float) -> dict[str, Any]:
    script = PEER_DIR / f"{peer}_nexmark.py"
    cmd = [python, str(script), "--query", query, "--input", str(path), "--out", str(out)]
    code, wall, rss, stdout, stderr = run_timed(cmd, PINNING[peer][0], timeout)
    line = next((ln for ln in reversed(stdout.splitlines()) if ln.startswith("{")), None)
    if code != 0 or line is None:
        return {"ok": False, "why": _why(code, stderr)}
    res = json.loads(line)
    return {"ok": True, **res, "wall": wall, "tree_peak_rss_mb": rss}


def versions(python: str, peers: list[str]) -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    try:
        head = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain", "--", "../../src"],
                               capture_output=True, text=True).stdout.strip()
        out["millstream"] = head + (" + uncommitted changes in src/" if dirty else "")
    except OSError:
        pass
    dists = {"bytewax": "bytewax", "pathway": "pathway", "pyspark": "pyspark"}
    code = ("import importlib.metadata as m, json, sys; "
            "print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))")
    try:
        r = subprocess.run([python, "-c", code, *[dists[p] for p in peers if p in dists]], capture_output=True,
                           text=True, timeout=60)
        out.update(json.loads(r.stdout))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
        out["java"] = java.splitlines()[0] if java else "?"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


# -- the report -----------------------------------------------------------------------------------------
def fmt_eps(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1e6:.2f} M" if v >= 1e6 else f"{v / 1e3:.0f} k"


def summary(samples: list[dict]) -> dict[str, Any] | None:
    ok = [s for s in samples if s.get("ok")]
    if not ok:
        return None
    eps = sorted(s["events_per_s"] for s in ok)
    return {"best": eps[-1], "low": eps[0], "high": eps[-1], "median": statistics.median(eps), "runs": len(ok),
            "peak_rss_mb": max(s.get("peak_rss_mb", 0.0) for s in ok), "rows": ok[-1].get("rows_out")}


def parse_sizes(text: str | None) -> dict[str, int]:
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            peer, _, n = part.partition("=")
            out[peer.strip()] = int(n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second of event time (generator)")
    ap.add_argument("--queries", default="q0,q1,q2,q5,q7,q11")
    ap.add_argument("--modes", default="native", help="millstream modes, comma-separated")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--peers-python", default="/tmp/peers/bin/python")
    ap.add_argument("--peer-events", default="", help="smaller sizes for slow peers, e.g. pathway=200000")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    ap.add_argument("--keep", default="", help="directory to keep the output files in")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()

    queries = [q for q in args.queries.split(",") if q]
    for q in queries:
        if q not in ALL_QUERIES:
            ap.error(f"unknown query {q}; known: {', '.join(ALL_QUERIES)}")
    modes = [m for m in args.modes.split(",") if m]
    peers = [p for p in args.peers.split(",") if p]
    sizes = parse_sizes(args.peer_events)
    n = args.events

    main_file = events_file(n, args.rate)
    files = {n: main_file}
    for peer in peers:
        m = sizes.get(peer, n)
        if m not in files:
            files[m] = prefix_file(main_file, m, args.rate)

    # the oracle of every size in use
    print("# computing the oracle", file=sys.stderr)
    want: dict[tuple[int, str], Counter] = {}
    for size, path in files.items():
        events = read_events(path)
        for q in queries:
            want[(size, q)] = multiset(q, oracle(q, events))
        del events

    outdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="nexmark-peers-"))
    outdir.mkdir(parents=True, exist_ok=True)
    startup = startup_seconds()
    print(f"# millstream start-up (python -c 'import millstream'): {startup:.3f} s", file=sys.stderr)

    results: dict[str, Any] = {"events": n, "rate": args.rate, "versions": versions(args.peers_python, peers),
                               "repeat": args.repeat, "startup_s": startup,
                               "pinning": {k: {"cpus": v[0], "cores": v[1]} for k, v in PINNING.items()},
                               "peer_events": {p: sizes.get(p, n) for p in peers}, "runs": []}
    ms_sizes = sorted({n} | {sizes.get(p, n) for p in peers})
    for rep in range(args.repeat):
        for q in queries:
            for size in ms_sizes:
                for mode in modes:
                    out = outdir / f"millstream-{mode}-{q}-{size}.jsonl"
                    r = run_millstream(q, mode, files[size], out, size, startup, args.timeout)
                    if r["ok"]:
                        r.update(compare(q, out, want[(size, q)]))
                    results["runs"].append({"engine": "millstream", "mode": mode, "query": q, "events": size,
                                            "repeat": rep, **r})
                    print(f"# millstream {mode} {q} {size}: "
                          f"{fmt_eps(r.get('events_per_s')) if r['ok'] else 'n/a (' + r['why'] + ')'}",
                          file=sys.stderr)
            for peer in peers:
                size = sizes.get(peer, n)
                out = outdir / f"{peer}-{q}-{size}.jsonl"
                r = run_peer(peer, args.peers_python, q, files[size], out, args.timeout)
                if r["ok"]:
                    r.update(compare(q, out, want[(size, q)]))
                results["runs"].append({"engine": peer, "mode": "-", "query": q, "events": size, "repeat": rep,
                                        **{k: v for k, v in r.items() if k not in ("query", "events")}})
                said = f"{fmt_eps(r.get('events_per_s'))} agree={r['agree']}" if r["ok"] else f"failed ({r['why']})"
                print(f"# {peer} {q} {size}: {said}", file=sys.stderr)

    # -- tables
    def group(engine: str, mode: str, q: str, size: int) -> list[dict]:
        return [r for r in results["runs"] if r["engine"] == engine and r["mode"] == mode and r["query"] == q
                and r["events"] == size]

    lines = []
    head = ["query"] + [f"millstream {m} ({n:,})" for m in modes]
    for peer in peers:
        head += [f"{peer} ({sizes.get(peer, n):,}; {PINNING[peer][1]} core{'s' if PINNING[peer][1] > 1 else ''})",
                 "agree (rows)"] + [f"{m} / {peer}" + (f" (both at {sizes[peer]:,})" if sizes.get(peer, n) != n else "")
                                    for m in modes]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    table_rows = []
    for q in queries:
        cells = [q]
        ms_best = {}
        for m in modes:
            s = summary(group("millstream", m, q, n))
            ms_best[m] = s
            cells.append(_cell(s, group("millstream", m, q, n)))
        for peer in peers:
            size = sizes.get(peer, n)
            runs = group(peer, "-", q, size)
            s = summary(runs)
            cells.append(_cell(s, runs))
            ok_runs = [r for r in runs if r.get("ok")]
            if ok_runs:
                last = ok_runs[-1]
                cells.append(f"{last['agree']} ({last['rows']:,} / {last['expected_rows']:,})")
            else:
                cells.append("-")
            for m in modes:
                ms = summary(group("millstream", m, q, size)) if size != n else ms_best[m]
                mark = ""
                if ms is None and size != n:
                    ms, mark = ms_best[m], " *"
                if ms is None or s is None:
                    cells.append("n/a")
                else:
                    cells.append(f"{ms['best'] / s['best']:.2f}x{mark}")
            table_rows.append({"query": q, "peer": peer, "events": size, "peer_eps": s and s["best"],
                               "millstream_eps": {m: (ms_best[m] or {}).get("best") for m in modes}})
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    results["table_markdown"] = table
    results["summary"] = table_rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"# wrote {args.json}", file=sys.stderr)


def _cell(s: dict | None, runs: list[dict]) -> str:
    if s is None:  # every run failed (or the millstream command is missing): the reasons are in the JSON
        return "n/a"
    if s["runs"] > 1 and not math.isclose(s["low"], s["high"]):
        return f"{fmt_eps(s['best'])} ({fmt_eps(s['low'])}-{fmt_eps(s['high'])})"
    return fmt_eps(s["best"])


if __name__ == "__main__":
    main()
