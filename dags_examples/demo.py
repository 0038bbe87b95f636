"""``make demo``: run the example sales pipeline end to end, change its inputs, run again.

Everything is local and embedded: the local runner, a SQLite Airflow metadata DB
under ``<root>/airflow-home`` and plain directories under ``<root>`` (the
checkout's ``demo-data/`` or ``$DATAFLOW_DEMO_ROOT``). The demo starts from an
empty root each time and leaves the data there for inspection:

1. lands 40 raw CSV files and runs the pipeline (everything is processed);
2. changes two files, touches only comments of a third (cleaned to identical
   bytes: early cutoff), adds two and deletes one, and runs again: each per-file
   stage processes exactly the changed files;
3. runs once more with nothing changed: no task command runs at all.

After each run it prints, per task, what the commit log recorded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
CATEGORIES = ["books", "toys", "garden", "music", "food"]
STAGES = [("clean", "sales_clean"), ("enrich", "sales_enriched"), ("aggregate", "sales_summary")]


def prepare_airflow(home: Path, dags_folder: Path | None = None) -> None:
    """Point Airflow at a SQLite DB under ``home`` and create its tables (before importing Airflow)."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder or CHECKOUT / "dags_examples"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING"),
        }
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def write_sales_file(path: Path, rng: random.Random, rows: int = 20, comment: str | None = None) -> None:
    """Write one raw sales CSV (mixed case, stray blanks, optional comment line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["id, Category, qty, price"] if comment is None else [f"# {comment}", "id, Category, qty, price"]
    for i in range(rows):
        cat = rng.choice(CATEGORIES)
        lines.append(f"{i}, {cat.title()} , {rng.randint(1, 9)}, {rng.randint(100, 9999) / 100}")
    path.write_text("\n".join(lines) + "\n")


def land_initial(landing: Path, n: int = 40) -> None:
    """Generate ``n`` raw files in four regional folders."""
    rng = random.Random(7)
    for i in range(n):
        write_sales_file(landing / f"region-{i % 4}" / f"sales-{i:03d}.csv", rng)


def change_inputs(landing: Path) -> dict[str, list[str]]:
    """Change, comment-touch, add and delete a few raw files; return what was done."""
    rng = random.Random(11)
    changed = ["region-1/sales-001.csv", "region-2/sales-006.csv"]
    for rel in changed:
        write_sales_file(landing / rel, rng, rows=25)
    cosmetic = "region-3/sales-007.csv"
    text = (landing / cosmetic).read_text()
    (landing / cosmetic).write_text("# re-exported by the vendor, same data\n" + text)
    added = ["region-0/sales-100.csv", "region-4/sales-101.csv"]
    for rel in added:
        write_sales_file(landing / rel, rng)
    deleted = ["region-0/sales-004.csv"]
    for rel in deleted:
        (landing / rel).unlink()
    return {"modified": changed, "comment_only": [cosmetic], "added": added, "deleted": deleted}


def run_pipeline(conf: dict | None = None) -> str:
    """Run the example DAG once with ``dag.test()``; return the run's state."""
    from dags_examples.sales_pipeline import dag

    run = dag.test(run_conf=conf)
    return str(getattr(run, "state", None))


def report(root: Path, title: str, commands: int) -> list[dict]:
    """Print what each task did in its last commit, with the files it changed."""
    from airflow_dataflow.core.changeset import diff
    from airflow_dataflow.core.manifest import Manifest
    from airflow_dataflow.hooks.manifest import DatasetManifestHook

    hook = DatasetManifestHook()
    print(f"\n== {title}: {commands} task command(s) ran")
    print(f"{'task':<10} {'cache':<8} {'processed':>9} {'reused':>7} {'deleted':>7} {'files':>6}  changed outputs")
    rows = []
    for task, dataset in STAGES:
        uri = f"file://{root}/prod/{dataset.split('_', 1)[1]}"
        records = hook.log_records(uri)
        last = records[-1]
        stats = last.info.stats
        before = hook.snapshot(uri, last.parent) if last.parent else Manifest.empty()
        change = diff(before, hook.snapshot(uri, last.digest)).to_dict()
        touched = [f"+{p}" for p in change["added"]] + [f"M{p}" for p in change["modified"]]
        touched += [f"-{p}" for p in change["deleted"]]
        shown = " ".join(touched[:6]) + (f" ... and {len(touched) - 6} more" if len(touched) > 6 else "")
        print(
            f"{task:<10} {stats['cache']:<8} {stats['processed']:>9} {stats['reused']:>7} {stats['deleted']:>7} "
            f"{last.files:>6}  {shown or '(none)'}"
        )
        rows.append({"task": task, **{k: stats[k] for k in ("cache", "processed", "reused", "deleted")}})
    return rows


def main() -> int:
    """Run the demo; return the exit status."""
    root = Path(os.environ.get("DATAFLOW_DEMO_ROOT") or CHECKOUT / "demo-data").resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    os.environ["DATAFLOW_DEMO_ROOT"] = str(root)
    os.environ.setdefault("DATAFLOW_ENV", "prod")
    sys.path.insert(0, str(CHECKOUT))
    print(f"demo data and Airflow home under {root}")
    prepare_airflow(root / "airflow-home")

    from airflow_dataflow.runners.local import LocalRunner

    landing = root / "landing"
    land_initial(landing)
    results = {}
    for title, conf, mutate in (
        ("run 1: 40 new files", None, None),
        ("run 2: 2 changed, 1 comment-only, 2 added, 1 deleted", None, change_inputs),
        ("run 3: nothing changed", {"wait_for_change": False}, None),
    ):
        if mutate is not None:
            done = mutate(landing)
            print(f"\nchanged the landing directory: {json.dumps(done)}")
        before = LocalRunner.started
        state = run_pipeline(conf)
        if "success" not in state:
            print(f"{title}: the DAG run ended {state}; see the task logs under {root / 'airflow-home'}")
            return 1
        results[title] = report(root, title, LocalRunner.started - before)
    print(
        f"\nInspect: airflow-dataflow log file://{root}/prod/clean --json ; "
        f"the outputs are plain files under {root}/prod/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
