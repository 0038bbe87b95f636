#!/usr/bin/env python3
"""Benchmark of incremental processing through a real DAG (``make bench``).

A generated source of many small CSV files (default 10,000) feeds two DAGs,
written by this script into a temporary DAGS_FOLDER and run with ``dag.test()``
against a SQLite metadata DB in a temporary AIRFLOW_HOME, all in this process:

* ``bench_dataflow``: ``DirectoryChangeSensor`` (``wait=False``) -> three per-file
  ``DataflowOperator`` stages (local runner, sh/awk reading ``$DATAFLOW_FILES``)
  -> one whole-mode aggregate;
* ``bench_plain``: the same pipeline the way most Airflow users write it: three
  ``BashOperator`` tasks that each loop over every file of the previous stage's
  directory and rewrite all outputs, then the same aggregate. The per-file
  shell body and the awk programs are the same text in both DAGs.

Timed runs: the dataflow DAG cold, then with nothing changed (no task command
may start: ``LocalRunner.started`` must not move), then with ``--changed`` files
modified (every per-file stage must process exactly that many); the plain DAG
cold and after the same change. The work ratio of each stage (files processed /
files in the source) is read from the commit log.

A trivial DAG runs first, untimed: the first ``dag.test()`` of a process starts
the in-process API server (about 20 s), which would otherwise be charged to
whichever pipeline ran first. A missed target is printed as MISS; the exit
status is 0 unless a run fails or an invariant (no command on the no-change
run, exactly ``--changed`` files per stage) is broken.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
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

TARGET_RATIO = 0.5  # (dataflow, N changed) / (plain, after the same change)
DAG_MODULE = "bench_incremental_dags"
STAGES = ("clean", "enrich", "flag")  # per-file stages, in order
CATEGORIES = ["books", "toys", "garden", "music", "food"]

# The DAG file written into the temporary DAGS_FOLDER. It reads its settings
# from the environment so that the scheduler-side parse and this process agree.
DAG_FILE = r'''
"""DAGs of bench/incremental.py (generated; do not edit)."""
import os
from datetime import datetime

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.operators.dataflow import DataflowOperator
from airflow_dataflow.sensors.change import DirectoryChangeSensor

ROOT = os.environ["DATAFLOW_BENCH_ROOT"]
BATCH_SIZE = int(os.environ["DATAFLOW_BENCH_BATCH_SIZE"])
START = datetime(2026, 1, 1)

# awk programs, one per stage (the same text in both DAGs)
AWK = {
    "clean": r"""!/^#/ && NF { gsub(/[ \t\r]/, ""); print tolower($0) }""",
    "enrich": r"""BEGIN { FS = OFS = "," } NR == 1 { print $0, "total"; next } { printf "%s,%s,%s,%s,%.2f\n", $1, $2, $3, $4, $3 * $4 }""",
    "flag": r"""BEGIN { FS = OFS = "," } NR == 1 { print $0, "size"; next } { print $0, ($5 >= 25 ? "big" : "small") }""",
}

# one file: the same body in both DAGs ($IN, $OUT, $f relative, no fork but awk)
BODY = """
  d="$OUT/${f%/*}"; [ -d "$d" ] || mkdir -p "$d"
  awk 'PROGRAM' "$IN/$f" > "$OUT/$f"
"""

AGGREGATE = r"""
set -eu
cd "$IN"
find . -type f -name '*.csv' | sort \
  | xargs awk -F, 'FNR > 1 { total[$2] += $5; n[$2] += 1 } END { for (c in total) printf "%s,%d,%.2f\n", c, n[c], total[c] }' \
  | sort > "$OUT/by_category.csv"
"""


def dataflow_script(stage):
    """Per-file stage: process the files listed in $DATAFLOW_FILES."""
    return (
        'set -eu\nIN="$DATAFLOW_INPUT_DIR"; OUT="$DATAFLOW_OUTPUT_DIR"\n'
        'while IFS= read -r f; do' + BODY.replace("PROGRAM", AWK[stage]) + 'done < "$DATAFLOW_FILES"\n'
    )


def plain_script(stage, src, dst):
    """Plain stage: loop over every file of $IN and rewrite every output."""
    return (
        f'set -eu\nIN="{src}"; OUT="{dst}"\nrm -rf "$OUT"; mkdir -p "$OUT"\n'
        'cd "$IN"\nfind . -type f -name "*.csv" | sed "s|^[.]/||" | while IFS= read -r f; do'
        + BODY.replace("PROGRAM", AWK[stage]) + 'done\n'
    )


with DAG(dag_id="bench_warmup", schedule=None, start_date=START, catchup=False) as warmup:
    BashOperator(task_id="noop", bash_command="true")

with DAG(dag_id="bench_dataflow", schedule=None, start_date=START, catchup=False) as dataflow:
    landing = DirectoryDataset("bench_landing", f"file://{ROOT}/landing", owned=False)
    previous = DirectoryChangeSensor(task_id="wait_for_landing", dataset=landing, wait=False)
    upstream = landing
    for stage in ("clean", "enrich", "flag"):
        ds = DirectoryDataset(f"bench_{stage}", f"file://{ROOT}/{{env}}/{stage}")
        task = DataflowOperator(
            task_id=stage,
            command=["sh", "-c", dataflow_script(stage)],
            inputs={stage: upstream},
            output=ds,
            mode="per_file",
            runner="local",
            batch_size=BATCH_SIZE,
        )
        previous >> task
        previous, upstream = task, ds
    aggregate = DataflowOperator(
        task_id="aggregate",
        command=["sh", "-c", 'IN="$DATAFLOW_INPUT_DIR"; OUT="$DATAFLOW_OUTPUT_DIR"' + AGGREGATE],
        inputs={"flag": upstream},
        output=DirectoryDataset("bench_summary", f"file://{ROOT}/{{env}}/summary"),
        mode="whole",
        runner="local",
    )
    previous >> aggregate

with DAG(dag_id="bench_plain", schedule=None, start_date=START, catchup=False) as plain:
    src = f"{ROOT}/landing"
    previous = None
    for stage in ("clean", "enrich", "flag"):
        dst = f"{ROOT}/plain/{stage}"
        task = BashOperator(task_id=stage, bash_command=plain_script(stage, src, dst))
        if previous is not None:
            previous >> task
        previous, src = task, dst
    aggregate = BashOperator(
        task_id="aggregate",
        bash_command=f'IN="{src}"; OUT="{ROOT}/plain/summary"; mkdir -p "$OUT"' + AGGREGATE,
    )
    previous >> aggregate
'''





def write_file(path: Path, rng: random.Random, rows: int) -> None:
    lines = ["id, Category, qty, price"]
    for i in range(rows):
        lines.append(f"{i}, {rng.choice(CATEGORIES).title()} , {rng.randint(1, 9)}, {rng.randint(100, 9999) / 100}")
    path.write_text("\n".join(lines) + "\n")


def source_paths(n: int) -> list[str]:
    """Relative paths of the source: 100 files per folder."""
    return [f"region-{i // 100:03d}/sales-{i:05d}.csv" for i in range(n)]


def generate(landing: Path, n: int) -> None:
    rng = random.Random(7)
    for rel in source_paths(n):
        path = landing / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, rng, rows=20)


def change(landing: Path, n: int, k: int) -> list[str]:
    """Rewrite ``k`` files spread over the source with other data (one more row: always different)."""
    rng = random.Random(11)
    paths = source_paths(n)
    picked = [paths[i * n // k] for i in range(k)]
    for rel in picked:
        write_file(landing / rel, rng, rows=21)
    return picked


# ---------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------
def task_durations(dag_id: str, run_id: str) -> dict[str, float]:
    from airflow import settings
    from airflow.models.taskinstance import TaskInstance
    from sqlalchemy import select

    with settings.Session() as session:
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id))
        return {ti.task_id: round(float(ti.duration or 0.0), 2) for ti in tis}


def run_dag(dag: Any) -> tuple[float, dict[str, float]]:
    """Run ``dag`` once with ``dag.test()``; return the wall time and the task durations."""
    started = time.perf_counter()
    run = dag.test()
    took = time.perf_counter() - started
    state = str(getattr(run, "state", None))
    if "success" not in state:
        raise SystemExit(f"[bench] {dag.dag_id}: the DAG run ended {state}; see the logs under $AIRFLOW_HOME")
    return took, task_durations(dag.dag_id, run.run_id)


def stage_stats(root: Path) -> dict[str, dict[str, Any]]:
    """Return the last commit's stats of every dataflow stage (and of the sensor's source snapshot)."""
    from airflow_dataflow.hooks.manifest import DatasetManifestHook

    hook = DatasetManifestHook()
    out = {}
    for stage, uri in [(s, f"file://{root}/prod/{s}") for s in STAGES] + [("aggregate", f"file://{root}/prod/summary")]:
        stats = hook.log_records(uri)[-1].info.stats
        out[stage] = {k: stats.get(k) for k in ("cache", "processed", "reused", "deleted", "files")}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10_000, help="files in the source (default 10000)")
    p.add_argument("--changed", type=int, default=100, help="files changed before the incremental run (default 100)")
    p.add_argument("--batch-size", type=int, default=2_000, help="per-file batch size (default 2000)")
    p.add_argument("--root", help="work directory (default: a new temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    args = p.parse_args(argv)
    if not 0 < args.changed <= args.files:
        p.error("--changed must be between 1 and --files")

    root, dags = make_workdir(args.root, "dataflow-bench-incr-", DAG_MODULE, DAG_FILE)
    os.environ.update(
        {
            "DATAFLOW_BENCH_ROOT": str(root),
            "DATAFLOW_BENCH_BATCH_SIZE": str(args.batch_size),
            "DATAFLOW_ENV": "prod",
        }
    )
    try:
        return bench(root, dags, args)
    finally:
        drop_workdir(root, args.keep or bool(args.root))


def bench(root: Path, dags: Path, args: argparse.Namespace) -> int:
    from dags_examples.demo import prepare_airflow

    log(f"work directory {root}; migrating a SQLite metadata DB")
    prepare_airflow(root / "airflow-home", dags)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    generate(root / "landing", args.files)
    log(f"generated {args.files} source files in {time.perf_counter() - t0:.1f}s")

    sys.path.insert(0, str(dags))
    mod = __import__(DAG_MODULE)
    from airflow_dataflow.runners.local import LocalRunner

    f: dict[str, Any] = {"files": args.files, "changed": args.changed, "batch_size": args.batch_size}
    f["warmup_s"], _ = run_dag(mod.warmup)
    log(f"warm-up DAG (starts the in-process API server, not counted): {f['warmup_s']:.1f}s")

    runs: dict[str, dict[str, Any]] = {}

    def timed(name: str, dag: Any) -> None:
        before = LocalRunner.started
        took, tasks = run_dag(dag)
        runs[name] = {"wall_s": round(took, 2), "commands": LocalRunner.started - before, "tasks": tasks}
        if dag is mod.dataflow:
            runs[name]["stages"] = stage_stats(root)
        log(f"{name}: {took:.1f}s, tasks {tasks}")

    timed("dataflow_cold", mod.dataflow)
    timed("plain_cold", mod.plain)
    timed("dataflow_nochange", mod.dataflow)
    picked = change(root / "landing", args.files, args.changed)
    log(f"changed {len(picked)} source files ({picked[0]} ... {picked[-1]})")
    timed("dataflow_changed", mod.dataflow)
    timed("plain_changed", mod.plain)

    broken = []
    if runs["dataflow_nochange"]["commands"] != 0:
        broken.append(f"the no-change run started {runs['dataflow_nochange']['commands']} task command(s)")
    for stage in STAGES:
        got = runs["dataflow_changed"]["stages"][stage]["processed"]
        if got != args.changed:
            broken.append(f"stage {stage} processed {got} files on the changed run, not {args.changed}")
        cold = runs["dataflow_cold"]["stages"][stage]["processed"]
        if cold != args.files:
            broken.append(f"stage {stage} processed {cold} files on the cold run, not {args.files}")

    for name, r in runs.items():
        f[f"{name}_s"] = r["wall_s"]
        f[f"{name}_commands"] = r["commands"]
    f["nochange_commands"] = runs["dataflow_nochange"]["commands"]
    f["ratio_changed_to_plain"] = round(runs["dataflow_changed"]["wall_s"] / runs["plain_changed"]["wall_s"], 3)
    f["ratio_cold_to_plain"] = round(runs["dataflow_cold"]["wall_s"] / runs["plain_cold"]["wall_s"], 3)
    f["work_ratio"] = {
        name: {s: runs[name]["stages"][s]["processed"] / args.files for s in (*STAGES, "aggregate")}
        for name in ("dataflow_cold", "dataflow_nochange", "dataflow_changed")
    }
    f["task_s"] = {name: r["tasks"] for name, r in runs.items()}
    f["invariants_broken"] = broken
    f["load_start"], f["load_end"] = round(load_start, 2), round(os.getloadavg()[0], 2)

    report(f, runs, args)
    return 1 if broken else 0


def report(f: dict[str, Any], runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    n, k = args.files, args.changed
    print(f"\nincremental benchmark: {n} source files, {k} changed, batch size {args.batch_size}, "
          f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}")
    print(f"warm-up: a trivial DAG ran first ({f['warmup_s']:.1f}s, not counted) so that neither pipeline pays "
          "the one-time start of dag.test()'s in-process API server")
    print(f"\n{'run':<26} {'wall s':>8} {'cmds':>5}   work ratio per stage (processed / {n} source files)")
    for name, label in (
        ("dataflow_cold", "dataflow, cold"),
        ("dataflow_nochange", "dataflow, no change"),
        ("dataflow_changed", f"dataflow, {k} changed"),
        ("plain_cold", "plain, cold"),
        ("plain_changed", f"plain, {k} changed"),
    ):
        r = runs[name]
        if "stages" in r:
            work = "  ".join(f"{s}={r['stages'][s]['processed'] / n:.3f}" for s in (*STAGES, "aggregate"))
        else:
            work = "  ".join(f"{s}=1.000" for s in (*STAGES, "aggregate")) + "  (every file, by construction)"
        cmds = str(r["commands"]) if "stages" in r else "-"
        print(f"{label:<26} {r['wall_s']:>8.1f} {cmds:>5}   {work}")
    ok_cmd = f["nochange_commands"] == 0
    print(f"\nno-change run: LocalRunner.started moved by {f['nochange_commands']} -> "
          f"{'no task command executed' if ok_cmd else 'BROKEN: task commands ran'}")
    per_stage = {s: runs["dataflow_changed"]["stages"][s]["processed"] for s in STAGES}
    print(f"{k}-changed run: files processed per per-file stage {per_stage} "
          f"({'exactly ' + str(k) + ' each' if all(v == k for v in per_stage.values()) else 'BROKEN'})")
    ratio = f["ratio_changed_to_plain"]
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    print(f"ratio dataflow {k}-changed / plain after the change: {ratio:.3f} (target <= {TARGET_RATIO}) {verdict}")
    print(f"ratio dataflow cold / plain cold: {f['ratio_cold_to_plain']:.3f} (no target)")
    print("task durations (s):")
    for name, r in runs.items():
        print(f"  {name:<20} " + "  ".join(f"{t}={d:.1f}" for t, d in sorted(r["tasks"].items(), key=lambda kv: kv[0])))
    for b in f["invariants_broken"]:
        print(f"BROKEN: {b}")
    f["verdict"] = verdict
    print_closing(f, "incremental", args.json)


if __name__ == "__main__":
    sys.exit(main())
