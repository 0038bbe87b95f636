#!/usr/bin/env python3
"""Benchmark of local scanning and manifest diffing (``make bench``).

Figures (see bench/README.md for what each one means):

* cold scan of a tree of many small files plus a few large ones, against the
  best hashing floor measured in the same run (``b3sum`` and OpenSSL sha256, both
  using every core);
* rescan of the unchanged tree with the stat cache, against ``find -printf``;
* read and diff of two 1,000,000-row manifests differing in 1%, with the peak
  RSS of a fresh process that reads both and diffs them.

Every contender of the scan part runs on a warm page cache: the tree is written,
synced, read once in full, and each contender then runs ``--repeat`` times; the
best run counts. Misses are printed, never turned into a failing exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

MARKER = ".dataflow-bench"  # a directory holding it was made by this script
WARM_NOTE = (
    "all scan contenders read a warm page cache (tree synced, read once in full, "
    "best of --repeat runs each); no cache is dropped"
)

# target: (comparison, threshold)
TARGETS = {
    "cold_ratio_to_floor": (">=", 0.8),
    "rescan_ratio_to_find": ("<=", 2.0),
    "diff_s": ("<=", 2.0),
    "diff_peak_rss_mb": ("<=", 500.0),
}


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run_shell(cmd: str) -> float:
    """Run a bash pipeline (stdout discarded by the command itself); return seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-c", "set -o pipefail; " + cmd], stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {cmd}\n{proc.stderr[-2000:]}")
    return dt


def best_of(n: int, fn) -> tuple[float, Any]:
    """Run ``fn`` (returning (seconds, value)) ``n`` times; return the fastest run."""
    best: tuple[float, Any] | None = None
    for _ in range(n):
        dt, value = fn()
        if best is None or dt < best[0]:
            best = (dt, value)
    assert best is not None
    return best


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (VmHWM, else ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def current_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def q(path: str) -> str:
    import shlex

    return shlex.quote(path)


# ---------------------------------------------------------------------------------
# the tree
# ---------------------------------------------------------------------------------
def prepare_dir(path: str) -> None:
    """Make ``path`` a fresh empty directory; refuse to wipe one this script did not make."""
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            if os.listdir(path) and not os.path.exists(os.path.join(path, MARKER)):
                raise SystemExit(
                    f"{path} exists, is not empty and was not made by bench/scan.py (no {MARKER}); "
                    "remove it or set DATAFLOW_BENCH_DIR elsewhere"
                )
            shutil.rmtree(path)
        else:
            raise SystemExit(f"{path} exists and is not a directory; set DATAFLOW_BENCH_DIR elsewhere")
    os.makedirs(path)
    with open(os.path.join(path, MARKER), "w", encoding="ascii") as fh:
        fh.write("made by bench/scan.py; removed at its end unless --keep\n")


def build_tree(root: str, args: argparse.Namespace) -> tuple[str, int, int]:
    """Write the small and large files under ``root/tree``; return (tree, files, bytes)."""
    tree = os.path.join(root, "tree")
    rng = random.Random(args.seed)
    dirs = [os.path.join(tree, f"d{i:03d}") for i in range(args.dirs)]
    for d in dirs:
        os.makedirs(d)
    sizes = [rng.randint(args.min_size, args.max_size) for _ in range(args.files)]
    total_small = sum(sizes)
    blob = os.urandom(total_small)
    mv = memoryview(blob)
    off = 0
    for i, size in enumerate(sizes):
        path = os.path.join(dirs[i % args.dirs], f"f{i:07d}.bin")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, mv[off : off + size])
        finally:
            os.close(fd)
        off += size
    del mv, blob
    total = total_small
    chunk = 8 << 20
    large_bytes = args.large_mb << 20
    for j in range(args.large):
        # spread over the directories so the batches of `xargs -P2` share them
        d = dirs[(j * args.dirs) // max(args.large, 1)]
        path = os.path.join(d, f"large{j:02d}.bin")
        with open(path, "wb", buffering=0) as fh:
            left = large_bytes
            while left:
                n = min(chunk, left)
                fh.write(os.urandom(n))
                left -= n
        total += large_bytes
    return tree, args.files + args.large, total


# ---------------------------------------------------------------------------------
# the scan part
# ---------------------------------------------------------------------------------
def bench_scan(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    from airflow_dataflow.core.statcache import RACY_MARGIN_NS
    from airflow_dataflow.storage.local import scan_directory

    base = os.environ.get("DATAFLOW_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "dataflow-bench")
    base = os.path.abspath(base)
    prepare_dir(base)
    try:
        log(f"writing {args.files} small files in {args.dirs} dirs and {args.large} x {args.large_mb} MiB under {base}")
        t0 = time.perf_counter()
        tree, nfiles, nbytes = build_tree(base, args)
        os.sync()  # no writeback may run during the timed phases
        figures["tree_files"] = nfiles
        figures["tree_bytes"] = nbytes
        figures["tree_build_s"] = round(time.perf_counter() - t0, 2)
        log(f"tree ready: {nfiles} files, {nbytes / 1e6:.0f} MB in {figures['tree_build_s']} s")

        # the stat cache does not trust files modified within RACY_MARGIN_NS of the scan
        # that cached them: make sure the whole tree is older than that before scanning
        time.sleep(2 * RACY_MARGIN_NS / 1e9)

        n_xargs = args.xargs_n
        find0 = f"find {q(tree)} -type f -print0"
        log("warming the page cache (one full read)")
        run_shell(f"{find0} | xargs -0 -P2 -n {n_xargs} cat > /dev/null")

        # -- hashing floors -----------------------------------------------------------
        floors = {
            "b3sum": f"{find0} | xargs -0 -P2 -n {n_xargs} b3sum --num-threads 2 > /dev/null",
            "b3sum_1proc": f"{find0} | xargs -0 b3sum --num-threads 2 > /dev/null",
            "openssl_sha256": f"{find0} | xargs -0 -P2 -n {n_xargs} openssl dgst -sha256 > /dev/null",
        }
        if shutil.which("b3sum") is None:
            log("b3sum is missing (make bench installs the Debian package b3sum): floor without it")
            floors = {k: v for k, v in floors.items() if not k.startswith("b3sum")}
        floor_times = {}
        for name, cmd in floors.items():
            dt, _ = best_of(args.repeat, lambda cmd=cmd: (run_shell(cmd), None))
            floor_times[name] = dt
            figures[f"floor_{name}_s"] = round(dt, 3)
            figures[f"floor_{name}_mb_s"] = round(nbytes / dt / 1e6, 1)
            log(f"floor {name}: {dt:.3f} s ({nbytes / dt / 1e6:.0f} MB/s)")
        floor_name = min(floor_times, key=floor_times.__getitem__)
        floor_s = floor_times[floor_name]
        figures["floor"] = floor_name
        figures["floor_s"] = round(floor_s, 3)
        figures["floor_mb_s"] = round(nbytes / floor_s / 1e6, 1)
        figures["floor_files_s"] = round(nfiles / floor_s)

        # -- cold scan: no stat cache ---------------------------------------------------
        def cold() -> tuple[float, Any]:
            t = time.perf_counter()
            manifest, cache = scan_directory(tree)
            return time.perf_counter() - t, (manifest, cache)

        cold_s, (manifest, cache) = best_of(args.repeat, cold)
        if len(manifest) != nfiles or manifest.total_bytes != nbytes:
            raise RuntimeError(f"cold scan saw {len(manifest)} files / {manifest.total_bytes} B, expected {nfiles} / {nbytes}")
        figures["cold_s"] = round(cold_s, 3)
        figures["cold_files_s"] = round(nfiles / cold_s)
        figures["cold_mb_s"] = round(nbytes / cold_s / 1e6, 1)
        figures["cold_ratio_to_floor"] = round(floor_s / cold_s, 3)  # = our throughput / floor throughput
        log(f"cold scan: {cold_s:.3f} s ({nbytes / cold_s / 1e6:.0f} MB/s, {nfiles / cold_s:.0f} files/s)")

        # -- rescan with the stat cache of the cold scan --------------------------------
        hashed = [0]

        def rescan() -> tuple[float, Any]:
            t = time.perf_counter()
            m, new_cache = scan_directory(tree, cache=cache)
            took = time.perf_counter() - t
            hashed[0] += new_cache.hashed  # files the cache failed to vouch for
            return took, m

        rescan_s, m2 = best_of(args.repeat, rescan)
        if m2.digest != manifest.digest:
            raise RuntimeError("the rescan of the unchanged tree gave another snapshot digest")
        find_s, _ = best_of(args.repeat, lambda: (run_shell(f"find {q(tree)} -printf '%s %T@\\n' > /dev/null"), None))
        figures["rescan_s"] = round(rescan_s, 3)
        figures["rescan_rehashed_files"] = hashed[0] // args.repeat
        figures["find_s"] = round(find_s, 3)
        figures["rescan_ratio_to_find"] = round(rescan_s / find_s, 2)
        log(f"rescan: {rescan_s:.3f} s (find: {find_s:.3f} s), files rehashed per run: {hashed[0] // args.repeat}")
    finally:
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------------------------
# the diff part
# ---------------------------------------------------------------------------------
def make_manifests(rows: int, pct: float, extra: int, seed: int, out_a: str, out_b: str) -> dict[str, Any]:
    """Write two manifests of ``rows`` rows differing in ``pct`` % of digests (+ ``extra`` added/deleted)."""
    import pyarrow as pa

    from airflow_dataflow.core.manifest import Manifest

    rng = random.Random(seed)
    t0 = time.perf_counter()
    hexes = os.urandom(32 * (rows + extra)).hex()
    digests = [hexes[i * 64 : (i + 1) * 64] for i in range(rows + extra)]
    del hexes
    paths = [f"part={i % 1000:03d}/batch-{i // 1000:04d}/file-{i:07d}.parquet" for i in range(rows + extra)]
    sizes = [rng.randint(100, 10_000_000) for _ in range(rows + extra)]
    mtime0 = time.time_ns()
    mtimes = [mtime0 - rng.randint(0, 10**15) for _ in range(rows + extra)]
    locs = [f"file:///data/warehouse/events/{p}" for p in paths]

    def manifest(idx: list[int], digs: list[str]) -> Manifest:
        table = pa.table(
            {
                "path": [paths[i] for i in idx],
                "size": pa.array([sizes[i] for i in idx], pa.int64()),
                "mtime_ns": pa.array([mtimes[i] for i in idx], pa.int64()),
                "digest": digs,
                "location": [locs[i] for i in idx],
            }
        )
        return Manifest.from_table(table, where="bench")

    # a: rows 0..rows-1; b: drop `extra` of them, add `extra` new ones, modify pct %
    a_idx = list(range(rows))
    a = manifest(a_idx, [digests[i] for i in a_idx])
    deleted = set(rng.sample(range(rows), extra))
    kept = [i for i in a_idx if i not in deleted]
    n_mod = int(rows * pct / 100)
    modified = set(rng.sample(kept, n_mod))
    b_idx = kept + list(range(rows, rows + extra))
    b_digs = [os.urandom(32).hex() if i in modified else digests[i] for i in b_idx]
    b = manifest(b_idx, b_digs)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    a.write(out_a)
    b.write(out_b)
    write_s = time.perf_counter() - t0
    return {
        "expected": {"added": extra, "deleted": extra, "modified": n_mod, "unchanged": len(kept) - n_mod},
        "build_s": round(build_s, 2),
        "write_s": round(write_s, 2),
        "parquet_mb": round((os.path.getsize(out_a) + os.path.getsize(out_b)) / 1e6, 1),
    }


def diff_only(a_path: str, b_path: str) -> dict[str, Any]:
    """Read two manifests and diff them in this (fresh) process; return timings and peak RSS."""
    from airflow_dataflow.core.changeset import diff
    from airflow_dataflow.core.manifest import Manifest, use_returning_memory_pool

    use_returning_memory_pool()  # as `airflow-dataflow diff` does
    rss_start = current_rss_mb()
    t0 = time.perf_counter()
    a = Manifest.read(a_path, columns=("path", "digest"))  # what `airflow-dataflow diff` reads
    b = Manifest.read(b_path, columns=("path", "digest"))
    read_s = time.perf_counter() - t0
    rss_read = current_rss_mb()
    hwm_read = peak_rss_mb()
    t0 = time.perf_counter()
    change = diff(a, b)
    diff_s = time.perf_counter() - t0
    counts = change.counts()
    return {
        "rows": len(a),
        "read_s": round(read_s, 3),
        "diff_s": round(diff_s, 3),
        "counts": counts,
        "rss_after_imports_mb": round(rss_start, 1),
        "rss_after_read_mb": round(rss_read, 1),
        "peak_rss_after_read_mb": round(hwm_read, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def bench_diff(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="dataflow-bench-diff-") as tmp:
        a_path, b_path = os.path.join(tmp, "a.parquet"), os.path.join(tmp, "b.parquet")
        log(f"building two {args.rows}-row manifests differing in {args.change_pct}% (+{args.added} added/deleted)")
        made = make_manifests(args.rows, args.change_pct, args.added, args.seed, a_path, b_path)
        figures["manifest_rows"] = args.rows
        figures["manifest_parquet_mb"] = made["parquet_mb"]
        figures["manifest_build_s"] = made["build_s"]
        figures["manifest_write_s"] = made["write_s"]
        runs = []
        for _ in range(args.repeat):
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--diff-only", a_path, b_path],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        res = min(runs, key=lambda r: r["diff_s"])
        if res["counts"] != made["expected"]:
            raise RuntimeError(f"diff counted {res['counts']}, expected {made['expected']}")
        figures["manifest_read_s"] = min(r["read_s"] for r in runs)
        figures["diff_s"] = res["diff_s"]
        figures["diff_peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        figures["diff_rss_after_read_mb"] = res["rss_after_read_mb"]
        figures["diff_peak_rss_after_read_mb"] = res["peak_rss_after_read_mb"]
        figures["diff_rss_after_imports_mb"] = res["rss_after_imports_mb"]
        log(f"diff: read {figures['manifest_read_s']} s, diff {res['diff_s']} s, peak RSS {figures['diff_peak_rss_mb']} MB")


# ---------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------
def verdict(name: str, figures: dict[str, Any]) -> str:
    if name not in figures:
        return "-"
    op, limit = TARGETS[name]
    ok = figures[name] >= limit if op == ">=" else figures[name] <= limit
    return "PASS" if ok else "MISS"


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    f = figures
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, value: str, target: str = "", key: str | None = None) -> None:
        rows.append((label, value, target, verdict(key, f) if key else ""))

    if "cold_s" in f:
        mb = f["tree_bytes"] / 1e6
        row("tree", f"{f['tree_files']} files, {mb:.0f} MB")
        for k in ("b3sum", "b3sum_1proc", "openssl_sha256"):
            if f"floor_{k}_s" in f:
                row(f"floor {k}", f"{f[f'floor_{k}_s']:.3f} s  {f[f'floor_{k}_mb_s']:.0f} MB/s")
        row("hashing floor (best)", f"{f['floor']}: {f['floor_mb_s']:.0f} MB/s  {f['floor_files_s']} files/s")
        row("cold scan", f"{f['cold_s']:.3f} s  {f['cold_mb_s']:.0f} MB/s  {f['cold_files_s']} files/s")
        row("cold scan / floor", f"{f['cold_ratio_to_floor']:.2f}x", ">= 0.8x", "cold_ratio_to_floor")
        row("rescan (stat cache)", f"{f['rescan_s']:.3f} s  ({f['rescan_rehashed_files']} files rehashed)")
        row("find -printf", f"{f['find_s']:.3f} s")
        row("rescan / find", f"{f['rescan_ratio_to_find']:.2f}x", "<= 2x", "rescan_ratio_to_find")
    if "diff_s" in f:
        row("manifests", f"2 x {f['manifest_rows']} rows, {f['manifest_parquet_mb']} MB Parquet")
        row("read both manifests", f"{f['manifest_read_s']:.3f} s")
        row("diff", f"{f['diff_s']:.3f} s", "<= 2 s", "diff_s")
        row(
            "diff process peak RSS",
            f"{f['diff_peak_rss_mb']:.0f} MB (after read: {f['diff_rss_after_read_mb']:.0f})",
            "<= 500 MB",
            "diff_peak_rss_mb",
        )
    w = [max(len(r[i]) for r in rows + [("figure", "value", "target", "")]) for i in range(4)]
    print()
    print(
        f"airflow-dataflow bench  ({f['cpus']} CPUs, {f['cpu']}, Python {f['python']}; "
        f"1-min load average {f['loadavg_start']} at start, {f['loadavg_end']} at end)"
    )
    if max(f["loadavg_start"], f["loadavg_end"]) > (f["cpus"] or 1):
        print("warning: the machine was busy with other work; figures are noisy, rerun on an idle machine")
    if "cold_s" in f:
        print(f"note: {WARM_NOTE}")
    print(f"{'figure':<{w[0]}}  {'value':<{w[1]}}  {'target':<{w[2]}}  result")
    print("-" * (sum(w) + 6 + 6))
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip())
    misses = [k for k in TARGETS if verdict(k, f) == "MISS"]
    print()
    print("ALL TARGETS MET" if not misses else f"MISSED TARGETS: {', '.join(misses)}")
    if args.json:
        f["misses"] = misses
        print(json.dumps(f, sort_keys=True))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100_000, help="small files in the tree (default 100000)")
    p.add_argument("--dirs", type=int, default=100, help="directories they are spread over (default 100)")
    p.add_argument("--min-size", type=int, default=200, help="smallest small file, bytes (default 200)")
    p.add_argument("--max-size", type=int, default=4096, help="largest small file, bytes (default 4096)")
    p.add_argument("--large", type=int, default=4, help="large files in the tree (default 4)")
    p.add_argument("--large-mb", type=int, default=256, help="size of each large file, MiB (default 256)")
    p.add_argument("--rows", type=int, default=1_000_000, help="rows of each manifest in the diff (default 1000000)")
    p.add_argument("--change-pct", type=float, default=1.0, help="percent of rows with a modified digest (default 1)")
    p.add_argument("--added", type=int, default=100, help="rows added and rows deleted in the diff (default 100)")
    p.add_argument("--repeat", type=int, default=2, help="runs of each contender; the best counts (default 2)")
    p.add_argument("--xargs-n", type=int, default=5000, help="files per b3sum/openssl process (default 5000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-scan", action="store_true", help="only the diff part")
    p.add_argument("--skip-diff", action="store_true", help="only the scan part")
    p.add_argument("--keep", action="store_true", help="keep the tree under $DATAFLOW_BENCH_DIR")
    p.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    p.add_argument("--diff-only", nargs=2, metavar=("A", "B"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.diff_only:  # internal: the fresh process whose peak RSS is the diff's
        print(json.dumps(diff_only(*args.diff_only)))
        return 0
    if args.repeat < 1:
        p.error("--repeat must be at least 1")

    figures: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "repeat": args.repeat,
        "warm_cache": True,
        "loadavg_start": round(os.getloadavg()[0], 2),
    }
    t0 = time.perf_counter()
    if not args.skip_scan:
        bench_scan(args, figures)
    if not args.skip_diff:
        bench_diff(args, figures)
    figures["bench_total_s"] = round(time.perf_counter() - t0, 1)
    figures["loadavg_end"] = round(os.getloadavg()[0], 2)
    report(figures, args)
    return 0  # a MISS is reported, not an error


if __name__ == "__main__":
    sys.exit(main())
