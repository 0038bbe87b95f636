"""Content-hash skipping and early cutoff, with real DAG runs (``dag.test()``, SQLite DB).

Each task command appends its task's name to ``$DATAFLOW_TEST_RAN``, so the tests
count the commands that really ran, not log lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dagrun import install_dag_file, run_dag

from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.hooks.manifest import DatasetManifestHook

pytestmark = pytest.mark.integration

DAG_TEMPLATE = '''
import os
from datetime import datetime
from airflow.sdk import DAG
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.operators.dataflow import DataflowOperator

ROOT = {root!r}
TAG = {tag!r}  # asset names are unique in Airflow: one set per test
src = DirectoryDataset("src" + TAG, "file://" + ROOT + "/src", owned=False, metadata_root="file://" + ROOT + "/meta/{{env}}")
a_out = DirectoryDataset("a_out" + TAG, "file://" + ROOT + "/{{env}}/a")
b_out = DirectoryDataset("b_out" + TAG, "file://" + ROOT + "/{{env}}/b")
c_out = DirectoryDataset("c_out" + TAG, "file://" + ROOT + "/{{env}}/c")

with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    tasks = {{}}
    if "a" in {tasks!r}:
        tasks["a"] = DataflowOperator(
            task_id="a", command=["sh", "-c", {cmd_a!r}], image={image!r}, inputs={{"src": src}}, output=a_out,
            mode="per_file", dataflow_params={params!r}, version={version!r},
        )
    if "b" in {tasks!r}:
        tasks["b"] = DataflowOperator(
            task_id="b", command=["sh", "-c", {cmd_b!r}], inputs={{"a": a_out}}, output=b_out, mode="per_file",
        )
    if "c" in {tasks!r}:
        tasks["c"] = DataflowOperator(
            task_id="c", command=["sh", "-c", {cmd_c!r}], inputs={{"b": b_out}}, output=c_out, mode="whole",
        )
    names = [n for n in "abc" if n in tasks]
    for up, down in zip(names, names[1:]):
        tasks[up] >> tasks[down]
'''

# a: upper-case every line (the param "suffix" is appended to each line)
CMD_A = (
    'echo a >> "$DATAFLOW_TEST_RAN"; suffix=$(echo "$DATAFLOW_PARAMS" | sed -n \'s/.*"suffix": *"\\([^"]*\\)".*/\\1/p\'); '
    'while IFS= read -r f; do mkdir -p "$DATAFLOW_OUTPUT_DIR/$(dirname "$f")"; '
    'awk -v s="$suffix" \'{ print toupper($0) s }\' "$DATAFLOW_INPUT_DIR/$f" > "$DATAFLOW_OUTPUT_DIR/$f"; '
    'done < "$DATAFLOW_FILES"'
)
CMD_B = (
    'echo b >> "$DATAFLOW_TEST_RAN"; while IFS= read -r f; do mkdir -p "$DATAFLOW_OUTPUT_DIR/$(dirname "$f")"; '
    'rev "$DATAFLOW_INPUT_DIR/$f" > "$DATAFLOW_OUTPUT_DIR/$f"; done < "$DATAFLOW_FILES"'
)
CMD_C = 'echo c >> "$DATAFLOW_TEST_RAN"; find "$DATAFLOW_INPUT_DIR" -type f | sort | xargs cat | wc -l > "$DATAFLOW_OUTPUT_DIR/lines.txt"'


class World:
    """A source directory, its committed snapshot, and DAG files to run against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ran_file = root / "ran.txt"
        self.tag = "_" + "".join(c for c in root.name if c.isalnum())[-24:]
        src = root / "src"
        for i in range(6):
            (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i % 2}" / f"f{i}.txt").write_text(f"line {i}\nmore {i}\n")
        self.snapshot_source()

    def snapshot_source(self) -> None:
        ds = DirectoryDataset(
            "src" + self.tag, f"file://{self.root}/src", owned=False, metadata_root=f"file://{self.root}/meta/{{env}}"
        )
        hook = DatasetManifestHook()
        hook.commit(ds, hook.scan(ds), CommitInfo(task_id="test-setup"))

    def run(self, dag_id: str = "cache_dag", tasks: str = "abc", **kw: str) -> list[str]:
        """Write and run a DAG; return the tasks whose command ran, in order."""
        values = {
            "root": str(self.root),
            "tag": self.tag,
            "dag_id": dag_id,
            "tasks": tasks,
            "cmd_a": CMD_A,
            "cmd_b": CMD_B,
            "cmd_c": CMD_C,
            "image": "example/a:1",
            "params": {"suffix": ""},
            "version": "",
        }
        values.update(kw)
        path = install_dag_file(None, name=f"{dag_id}.py", text=textwrap.dedent(DAG_TEMPLATE.format(**values)))
        self.ran_file.write_text("")
        try:
            assert run_dag(path, dag_id) == "success"
        finally:
            path.unlink()
        return self.ran_file.read_text().split()

    def last(self, task: str):
        uri = f"file://{self.root}/prod/{task}"
        return DatasetManifestHook().log_records(uri)[-1]


@pytest.fixture
def world(airflow_db, tmp_path, monkeypatch) -> World:
    monkeypatch.setenv("DATAFLOW_TEST_RAN", str(tmp_path / "ran.txt"))
    return World(tmp_path)


def test_unchanged_rerun_runs_nothing_and_hits(world):
    assert world.run() == ["a", "b", "c"]
    assert world.run() == []
    for task in "abc":
        stats = world.last(task).info.stats
        assert stats["cache"] == "hit" and stats["processed"] == 0


def test_changing_a_param_runs_the_task(world):
    world.run()
    assert world.run(params={"suffix": "!"}) == ["a", "b", "c"]
    assert world.last("a").info.stats["processed"] == 6
    assert (world.root / "prod" / "a" / "d0" / "f0.txt").read_text() == "LINE 0!\nMORE 0!\n"


@pytest.mark.parametrize(
    "change",
    [
        {"image": "example/a:2"},
        {"version": "2"},
        {"cmd_a": CMD_A.replace("toupper($0) s", "toupper($0) \"\" s")},  # same output, other command
    ],
    ids=["image", "version", "equivalent-command"],
)
def test_code_change_with_identical_output_runs_only_that_task(world, change):
    world.run()
    before = {t: world.last(t).digest for t in "abc"}
    assert world.run(**change) == ["a"], "downstream tasks must hit: their inputs did not change"
    assert world.last("a").info.stats["cache"] == "miss"
    assert world.last("a").info.stats["processed"] == 6
    assert {t: world.last(t).digest for t in "abc"} == before
    assert world.last("b").info.stats["cache"] == "hit"
    assert world.last("c").info.stats["cache"] == "hit"


def test_renaming_the_dag_hits(world):
    world.run(dag_id="cache_dag")
    assert world.run(dag_id="cache_dag_renamed") == []
    assert world.last("a").info.dag_id == "cache_dag_renamed"
    assert world.last("a").info.stats["cache"] == "hit"


def test_moving_a_task_to_another_dag_hits(world):
    world.run(dag_id="first_dag", tasks="ab")
    assert world.run(dag_id="second_dag", tasks="a") == []
    assert world.last("a").info.dag_id == "second_dag"


def test_losing_the_metadata_db_still_hits_from_the_store(world):
    world.run()
    env = dict(os.environ)
    subprocess.run([sys.executable, "-m", "airflow", "db", "reset", "--yes"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert world.run() == []
    assert world.last("c").info.stats["cache"] == "hit"


def test_a_corrupted_cached_file_is_detected_and_the_task_runs(world):
    world.run()
    row = DatasetManifestHook().snapshot(f"file://{world.root}/prod/a").rows()[0]
    obj = row["location"][len("file://"):]
    os.chmod(obj, 0o644)
    Path(obj).write_text("tampered\n")
    ran = world.run()
    assert "a" in ran, "a damaged cached output must not be trusted"
    assert world.last("a").info.stats["processed"] == 1
    # the output is whole again, and the damaged bytes were moved aside, not deleted
    out = world.root / "prod" / "a" / row["path"]
    assert out.read_text() == (world.root / "src" / row["path"]).read_text().upper()
    assert any((world.root / "prod" / "_dataflow" / "quarantine").iterdir())


def test_explain_names_the_component_that_changed(world):
    world.run()
    world.run(image="example/a:2")
    from airflow_dataflow.explain import explain_records

    records = DatasetManifestHook().log_records(f"file://{world.root}/prod/a")
    exp = explain_records(records, "cache_dag", "a", None, "a")
    assert exp.cache == "miss" and exp.changed == ["image"]
    out = subprocess.run(
        [sys.executable, "-m", "airflow_dataflow.cli", "explain", "cache_dag", "c", "--json",
         "--dags-folder", str(world.root / "dags")],
        capture_output=True, text=True,
    )
    # the DAG file was removed after the run: explain says so and exits 2
    assert out.returncode == 2 and "cache_dag" in out.stderr
