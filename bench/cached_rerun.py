#!/usr/bin/env python3
"""Benchmark of a fully cached rerun against no-op tasks (``make bench``).

Two DAGs of the same shape (20 tasks: a generator, three branches of six
tasks, a join), written by this script into a temporary DAGS_FOLDER and run
with ``dag.test()`` against a SQLite metadata DB in a temporary AIRFLOW_HOME,
all in this process:

* ``bench_cached``: 20 ``DataflowOperator`` tasks on tiny inputs (local runner),
  whole and per-file mixed: ``gen`` (whole, no input) -> per-file -> per-file
  -> whole -> per-file -> per-file -> whole (three times) -> ``join`` (whole,
  three inputs);
* ``bench_noop``: 20 ``PythonOperator`` tasks that do nothing, same edges.

Two informational variants of the same shape show where the difference goes
(``--no-info`` skips them): ``bench_noop_assets``, the no-op tasks declaring the
same inlets and outlets as the dataflow tasks (what Airflow itself charges for
asset-aware tasks: inlet/outlet validation, asset events), and
``bench_cached_noxcom``, the dataflow DAG with ``do_xcom_push=False``.

The no-op DAG runs once untimed first: the first ``dag.test()`` of a process
starts the in-process API server (about 20 s). The dataflow DAG then runs once
cold (every command runs), after which its inputs never change. The timed
rounds run every variant once, in turn, ``--repeat`` times (default 5); the
medians count. Besides wall time, the CPU time of this process (every thread,
the in-process API server included) is reported: on a busy machine it is the
steadier figure. Every cached run must start no task command
(``LocalRunner.started`` does not move) and every task's commit must record
``cache: hit``. A missed target is printed as MISS (exit status 0); a broken
invariant exits 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import drop_workdir, log, make_workdir, print_closing  # noqa: E402

TARGET_RATIO = 1.5  # median cached run / median no-op run
DAG_MODULE = "bench_cached_rerun_dags"

DAG_FILE = r'''
"""DAGs of bench/cached_rerun.py (generated; do not edit)."""
import os
from datetime import datetime

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.operators.dataflow import DataflowOperator

ROOT = os.environ["DATAFLOW_BENCH_ROOT"]
START = datetime(2026, 1, 1)
# per branch: the mode of each of the six tasks
BRANCH = ("per_file", "per_file", "whole", "per_file", "per_file", "whole")

GEN = 'for i in 1 2 3 4 5; do printf "%s,row\n" "$i" > "$DATAFLOW_OUTPUT_DIR/part-$i.csv"; done'
PER_FILE = 'while IFS= read -r f; do sed "s/$/,{tag}/" "$DATAFLOW_INPUT_DIR/$f" > "$DATAFLOW_OUTPUT_DIR/$f"; done < "$DATAFLOW_FILES"'
WHOLE = 'for f in "$DATAFLOW_INPUT_DIR"/*.csv; do sort -r "$f" > "$DATAFLOW_OUTPUT_DIR/${{f##*/}}"; done; echo {tag} > "$DATAFLOW_OUTPUT_DIR/stamp.txt"'
JOIN = 'cat "$DATAFLOW_INPUT_B0"/*.csv "$DATAFLOW_INPUT_B1"/*.csv "$DATAFLOW_INPUT_B2"/*.csv | sort > "$DATAFLOW_OUTPUT_DIR/joined.csv"'


def dataset(name):
    return DirectoryDataset(f"bench_{name}", f"file://{ROOT}/{{env}}/{name}")


def noop():
    return None


def shape(make):
    """Build the 20-task shape with ``make(task_id, inputs, output, mode, command)``."""
    gen_out = dataset("gen")
    gen = make("gen", None, gen_out, "whole", GEN)
    ends = []
    for b in range(3):
        upstream, up_task = gen_out, gen
        for i, mode in enumerate(BRANCH, 1):
            name = f"b{b}_{i}"
            out = dataset(name)
            template = PER_FILE if mode == "per_file" else WHOLE
            task = make(name, {"in": upstream}, out, mode, template.format(tag=name))
            up_task >> task
            upstream, up_task = out, task
        ends.append((upstream, up_task))
    join = make("join", {f"b{b}": ds for b, (ds, _) in enumerate(ends)}, dataset("join"), "whole", JOIN)
    for _, task in ends:
        task >> join


def make_dataflow(task_id, inputs, output, mode, command):
    return DataflowOperator(
        task_id=task_id, command=["sh", "-c", command], inputs=inputs, output=output, mode=mode, runner="local"
    )


def make_dataflow_noxcom(task_id, inputs, output, mode, command):
    return DataflowOperator(
        task_id=task_id, command=["sh", "-c", command], inputs=inputs, output=output, mode=mode, runner="local",
        do_xcom_push=False,
    )


def make_noop(task_id, inputs, output, mode, command):
    return PythonOperator(task_id=task_id, python_callable=noop)


def make_noop_assets(task_id, inputs, output, mode, command):
    return PythonOperator(
        task_id=task_id, python_callable=noop, inlets=list((inputs or {}).values()), outlets=[output]
    )


with DAG(dag_id="bench_cached", schedule=None, start_date=START, catchup=False) as cached:
    shape(make_dataflow)

with DAG(dag_id="bench_noop", schedule=None, start_date=START, catchup=False) as noop_dag:
    shape(make_noop)

# informational variants: where the difference goes
with DAG(dag_id="bench_noop_assets", schedule=None, start_date=START, catchup=False) as noop_assets:
    shape(make_noop_assets)

with DAG(dag_id="bench_cached_noxcom", schedule=None, start_date=START, catchup=False) as cached_noxcom:
    shape(make_dataflow_noxcom)
'''





def cpu_s() -> float:
    """CPU seconds of this process, every thread (the in-process API server included)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


CPU: dict[str, list[float]] = {}  # dag_id -> CPU seconds of each run


def run_dag(dag: Any) -> float:
    """Run ``dag`` once with ``dag.test()``; return the wall time (and record the CPU time)."""
    cpu = cpu_s()
    started = time.perf_counter()
    run = dag.test()
    took = time.perf_counter() - started
    CPU.setdefault(dag.dag_id, []).append(cpu_s() - cpu)
    state = str(getattr(run, "state", None))
    if "success" not in state:
        raise SystemExit(f"[bench] {dag.dag_id}: the DAG run ended {state}; see the logs under $AIRFLOW_HOME")
    return took


def cache_states(root: Path, dag: Any) -> dict[str, str]:
    """Return each dataflow task's ``cache`` field of its last commit."""
    from airflow_dataflow.hooks.manifest import DatasetManifestHook

    hook = DatasetManifestHook()
    return {
        t.task_id: str(hook.log_records(f"file://{root}/prod/{t.task_id}")[-1].info.stats.get("cache"))
        for t in dag.tasks
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5, help="timed runs of each DAG (default 5, at least 3 advised; the median counts)")
    p.add_argument("--root", help="work directory (default: a new temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    p.add_argument("--no-info", action="store_true", help="skip the informational variants (assets-only no-op, no-XCom)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")

    root, dags = make_workdir(args.root, "dataflow-bench-cached-", DAG_MODULE, DAG_FILE)
    os.environ.update({"DATAFLOW_BENCH_ROOT": str(root), "DATAFLOW_ENV": "prod"})
    try:
        return bench(root, dags, args)
    finally:
        drop_workdir(root, args.keep or bool(args.root))


def bench(root: Path, dags: Path, args: argparse.Namespace) -> int:
    from dags_examples.demo import prepare_airflow

    log(f"work directory {root}; migrating a SQLite metadata DB")
    prepare_airflow(root / "airflow-home", dags)
    load_start = os.getloadavg()[0]
    sys.path.insert(0, str(dags))
    mod = __import__(DAG_MODULE)
    from airflow_dataflow.runners.local import LocalRunner

    n_tasks = len(mod.cached.tasks)
    assert n_tasks == len(mod.noop_dag.tasks) == 20, (n_tasks, len(mod.noop_dag.tasks))
    f: dict[str, Any] = {"tasks": n_tasks, "repeat": args.repeat}
    f["warmup_s"] = round(run_dag(mod.noop_dag), 2)
    log(f"warm-up no-op run (starts the in-process API server, not counted): {f['warmup_s']:.1f}s")
    before = LocalRunner.started
    f["cold_s"] = round(run_dag(mod.cached), 2)
    f["cold_commands"] = LocalRunner.started - before
    log(f"cold dataflow run: {f['cold_s']:.1f}s, {f['cold_commands']} command(s)")

    variants = [  # (key, dag, label, dataflow?) in the order each round runs them
        ("noop", mod.noop_dag, "no-op PythonOperators", False),
        ("cached", mod.cached, "dataflow, fully cached", True),
        ("noop_assets", mod.noop_assets, "no-op + same inlets/outlets (info)", False),
        ("cached_noxcom", mod.cached_noxcom, "dataflow cached, no XCom (info)", True),
    ]
    if args.no_info:
        variants = variants[:2]
    times: dict[str, list[float]] = {key: [] for key, *_ in variants}
    commands: list[int] = []
    broken: list[str] = []
    for i in range(args.repeat):
        for key, dag, _, dataflow in variants:
            before = LocalRunner.started
            times[key].append(run_dag(dag))
            if dataflow:
                commands.append(LocalRunner.started - before)
                misses = sorted(t for t, s in cache_states(root, dag).items() if s != "hit")
                if misses:
                    broken.append(f"{key} run {i + 1}: tasks not recorded as cache hits: {misses}")
        log(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()) + f"; commands {commands}")
    if any(commands):
        broken.append(f"cached runs started task commands: {commands}")

    for key, dag, _, _ in variants:
        f[f"{key}_s"] = [round(t, 3) for t in times[key]]
        f[f"{key}_median_s"] = round(statistics.median(times[key]), 3)
        f[f"{key}_cpu_median_s"] = round(statistics.median(CPU[dag.dag_id][-args.repeat :]), 3)
    f["cpu_ratio_cached_to_noop"] = round(f["cached_cpu_median_s"] / f["noop_cpu_median_s"], 3)
    f["cached_commands"] = commands
    f["ratio_cached_to_noop"] = round(f["cached_median_s"] / f["noop_median_s"], 3)
    f["per_task_overhead_s"] = round((f["cached_median_s"] - f["noop_median_s"]) / n_tasks, 3)
    if not args.no_info:
        f["ratio_noop_assets_to_noop"] = round(f["noop_assets_median_s"] / f["noop_median_s"], 3)
        f["ratio_cached_noxcom_to_noop"] = round(f["cached_noxcom_median_s"] / f["noop_median_s"], 3)
        f["ratio_cached_to_noop_assets"] = round(f["cached_median_s"] / f["noop_assets_median_s"], 3)
    f["verdict"] = "PASS" if f["ratio_cached_to_noop"] <= TARGET_RATIO else "MISS"
    f["invariants_broken"] = broken
    f["load_start"], f["load_end"] = round(load_start, 2), round(os.getloadavg()[0], 2)

    print(f"\ncached-rerun benchmark: {n_tasks}-task DAGs, median of {args.repeat} runs each (rounds interleave "
          f"the variants), {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}")
    print(f"warm-up: the no-op DAG ran once first ({f['warmup_s']:.1f}s, not counted) so that no DAG pays "
          "the one-time start of dag.test()'s in-process API server")
    print(f"\n{'run':<36} {'median s':>9} {'x no-op':>8} {'CPU s':>6} {'x no-op':>8}   runs (s)")
    print(f"{'dataflow, cold (once, untimed)':<36} {f['cold_s']:>9.2f} {'':>8} {'':>6} {'':>8}   "
          f"{f['cold_commands']} command(s)")
    for key, _, label, _ in variants:
        med, cpu = f[f"{key}_median_s"], f[f"{key}_cpu_median_s"]
        print(f"{label:<36} {med:>9.2f} {med / f['noop_median_s']:>8.2f} {cpu:>6.2f} "
              f"{cpu / f['noop_cpu_median_s']:>8.2f}   {' '.join(f'{t:.2f}' for t in times[key])}")
    print(f"\ncached runs: LocalRunner.started moved by {commands} -> "
          f"{'no task command executed' if not any(commands) else 'BROKEN: task commands ran'}")
    print(f"extra cost of a cached dataflow task over a no-op task: {f['per_task_overhead_s'] * 1000:.0f} ms")
    print(f"ratio cached / no-op (median wall times): {f['ratio_cached_to_noop']:.3f} (target <= {TARGET_RATIO}) "
          f"{f['verdict']}")
    print(f"ratio cached / no-op (median CPU times of this process, all threads; no target, less sensitive to "
          f"a busy machine): {f['cpu_ratio_cached_to_noop']:.3f}")
    for b in broken:
        print(f"BROKEN: {b}")
    print_closing(f, "cached_rerun", args.json)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
