"""The example sales pipeline, run with ``dag.test()`` against a real SQLite metadata DB.

Assertions read what was processed from the commit log, the manifests and the
asset events in the metadata DB, and count the task commands really started.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dagrun import install_dag_file, run_dag

from airflow_dataflow.core.changeset import diff
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.hooks.manifest import DatasetManifestHook
from airflow_dataflow.runners.local import LocalRunner
from dags_examples import demo

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2]
EXAMPLE = CHECKOUT / "dags_examples" / "sales_pipeline.py"
DATASETS = {"clean": "clean", "enrich": "enriched", "aggregate": "summary"}


def last_commit(root: Path, task: str):
    return DatasetManifestHook().log_records(f"file://{root}/prod/{DATASETS[task]}")[-1]


def changed_paths(root: Path, task: str) -> dict[str, list[str]]:
    hook = DatasetManifestHook()
    uri = f"file://{root}/prod/{DATASETS[task]}"
    rec = last_commit(root, task)
    before = hook.snapshot(uri, rec.parent) if rec.parent else Manifest.empty()
    return diff(before, hook.snapshot(uri, rec.digest)).to_dict()


def asset_event_extras(asset_name: str) -> list[dict]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == asset_name)
            .order_by(AssetEvent.id)
        ).all()
    return [r[0] for r in rows]


@pytest.fixture
def pipeline(airflow_db, tmp_path, monkeypatch):
    """The example DAG installed with its data under a fresh root; yields (dag file, root)."""
    root = tmp_path / "demo"
    root.mkdir()
    monkeypatch.setenv("DATAFLOW_DEMO_ROOT", str(root))
    monkeypatch.setenv("DATAFLOW_EXAMPLE_BATCH_SIZE", "7")
    demo.land_initial(root / "landing")
    path = install_dag_file(EXAMPLE)
    yield path, root
    path.unlink(missing_ok=True)


def test_runs_cold_then_only_the_changes_then_nothing(pipeline):
    dag_file, root = pipeline
    landing = root / "landing"

    started = LocalRunner.started
    assert run_dag(dag_file, "sales_pipeline") == "success"
    # 40 files in batches of 7: 6 batches for each per-file stage, 1 for the aggregate
    assert LocalRunner.started - started == 6 + 6 + 1
    for task in ("clean", "enrich"):
        stats = last_commit(root, task).info.stats
        assert (stats["processed"], stats["reused"], stats["deleted"]) == (40, 0, 0)
        assert len(changed_paths(root, task)["added"]) == 40
    # plain files, readable without the package
    enriched = (root / "prod" / "enriched" / "region-1" / "sales-001.csv").read_text().splitlines()
    assert enriched[0] == "id,category,qty,price,total"
    assert all(line == line.lower() and " " not in line for line in enriched)

    done = demo.change_inputs(landing)
    assert run_dag(dag_file, "sales_pipeline") == "success"
    clean = changed_paths(root, "clean")
    assert clean["added"] == sorted(done["added"])
    assert clean["modified"] == sorted(done["modified"])  # the comment-only file cleans to the same bytes
    assert clean["deleted"] == done["deleted"]
    stats = last_commit(root, "clean").info.stats
    assert stats["processed"] == len(done["modified"]) + len(done["comment_only"]) + len(done["added"])
    assert stats["deleted"] == 1 and stats["reused"] == 41 - stats["processed"]
    # early cutoff: enrich sees only files whose cleaned bytes changed
    enrich = last_commit(root, "enrich").info.stats
    assert enrich["processed"] == len(done["modified"]) + len(done["added"])
    assert changed_paths(root, "enrich") == {**clean, "from": changed_paths(root, "enrich")["from"],
                                             "to": changed_paths(root, "enrich")["to"]}
    assert not (root / "prod" / "enriched" / "region-0" / "sales-004.csv").exists()
    assert last_commit(root, "aggregate").info.stats["cache"] == "miss"

    started = LocalRunner.started
    assert run_dag(dag_file, "sales_pipeline", conf={"wait_for_change": False}) == "success"
    assert LocalRunner.started == started, "an unchanged pipeline must run no task command"
    for task in DATASETS:
        stats = last_commit(root, task).info.stats
        assert stats["cache"] == "hit" and stats["processed"] == 0

    extras = asset_event_extras("sales_clean@prod")
    assert [e["processed"] for e in extras[-3:]] == [40, 5, 0]
    assert [e["cache"] for e in extras[-3:]] == ["miss", "partial", "hit"]
    assert all(len(e["digest"]) == 64 for e in extras)


def test_fan_out_gives_the_same_snapshots(pipeline, monkeypatch, tmp_path):
    dag_file, root = pipeline
    assert run_dag(dag_file, "sales_pipeline") == "success"
    plain = {t: last_commit(root, t).digest for t in DATASETS}

    other = tmp_path / "fanout"
    other.mkdir()
    demo.land_initial(other / "landing")
    monkeypatch.setenv("DATAFLOW_DEMO_ROOT", str(other))
    monkeypatch.setenv("DATAFLOW_EXAMPLE_FAN_OUT", "1")
    started = LocalRunner.started
    assert run_dag(dag_file, "sales_pipeline") == "success"
    assert LocalRunner.started - started == 6 + 6 + 1  # one command per mapped batch
    assert {t: last_commit(other, t).digest for t in DATASETS} == plain
    assert last_commit(other, "clean").info.task_id == "clean.commit"


def test_the_demo_command_runs(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "DATAFLOW_DEMO_ROOT": str(tmp_path / "demo")}
    out = subprocess.run(
        [sys.executable, "-m", "dags_examples.demo"],
        cwd=CHECKOUT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "run 3: nothing changed: 0 task command(s) ran" in out.stdout
