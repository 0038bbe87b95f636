"""The engine with the local runner on real directories (no Airflow DB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.engine import Engine, TaskSpec
from airflow_dataflow.exceptions import EnvironmentViolationError, TaskCommandError
from airflow_dataflow.hooks.manifest import DatasetManifestHook
from airflow_dataflow.runners.local import LocalRunner

COPY = 'while IFS= read -r f; do mkdir -p "$DATAFLOW_OUTPUT_DIR/$(dirname "$f")"; cp "$DATAFLOW_INPUT_DIR/$f" "$DATAFLOW_OUTPUT_DIR/$f"; done < "$DATAFLOW_FILES"'


@pytest.fixture
def world(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"f{i}.txt").write_text(f"{i}\n")
    source = DirectoryDataset("src", f"file://{src}", owned=False, env="prod")
    hook = DatasetManifestHook()
    hook.commit(source, hook.scan(source), CommitInfo(task_id="setup"))
    out = DirectoryDataset("out", f"file://{tmp_path}/{{env}}/out", env="prod")
    return hook, source, out


def spec(source, out, command=COPY, **kw) -> TaskSpec:
    return TaskSpec(task_id="t", dag_id="d", command=("sh", "-c", command), image="img", inputs={"src": source},
                    output=out, mode=kw.pop("mode", "per_file"), **kw)  # fmt: skip


def test_batches_grow_to_stay_under_the_cap(world):
    hook, source, out = world
    engine = Engine(spec(source, out, batch_size=2, max_batches=3), hook, LocalRunner(), print, "prod")
    plan = engine.plan()
    assert (plan.n_batches, plan.batch_size) == (3, 4)
    started = LocalRunner.started
    result = engine.execute(CommitInfo())
    assert LocalRunner.started - started == 3
    assert result.stats["processed"] == 10 and result.record.files == 10
    # the same plan again: everything is cached, no batch, no command
    again = Engine(spec(source, out, batch_size=2, max_batches=3), hook, LocalRunner(), print, "prod")
    assert again.plan().n_batches == 0


def test_an_output_that_matches_no_input_fails_and_commits_nothing(world):
    hook, source, out = world
    bad = 'echo x > "$DATAFLOW_OUTPUT_DIR/stray.bin"'
    engine = Engine(spec(source, out, command=bad), hook, LocalRunner(), print, "prod")
    with pytest.raises(TaskCommandError, match="stray.bin"):
        engine.execute(CommitInfo())
    assert hook.head(out) is None


def test_a_failing_command_commits_nothing(world):
    hook, source, out = world
    engine = Engine(spec(source, out, command="exit 3"), hook, LocalRunner(), print, "prod")
    with pytest.raises(TaskCommandError, match="status 3"):
        engine.execute(CommitInfo())
    assert hook.head(out) is None


def test_the_output_must_belong_to_the_current_environment(world):
    hook, source, out = world
    with pytest.raises(EnvironmentViolationError, match="environments never cross"):
        Engine(spec(source, out), hook, LocalRunner(), print, "test-alice")


def test_whole_mode_hits_after_a_first_run(world):
    hook, source, out = world
    whole = 'cat "$DATAFLOW_INPUT_DIR"/*.txt | wc -l > "$DATAFLOW_OUTPUT_DIR/count"'
    first = Engine(spec(source, out, command=whole, mode="whole"), hook, LocalRunner(), print, "prod").execute(CommitInfo())
    assert first.stats["cache"] == "miss"
    started = LocalRunner.started
    second = Engine(spec(source, out, command=whole, mode="whole"), hook, LocalRunner(), print, "prod").execute(CommitInfo())
    assert second.stats["cache"] == "hit" and LocalRunner.started == started
    assert second.record.digest == first.record.digest


def test_mapped_steps_reuse_the_saved_plan(world, tmp_path):
    import shutil

    hook, source, out = world
    first = Engine(spec(source, out, batch_size=3), hook, LocalRunner(), print, "prod")
    first.execute(CommitInfo())
    (tmp_path / "src" / "f0.txt").write_text("changed\n")
    hook.commit(source, hook.scan(source), CommitInfo(task_id="setup"))

    planner = Engine(spec(source, out, batch_size=3), hook, LocalRunner(), print, "prod")
    plan = planner.plan()
    assert plan.todo.num_rows == 1 and plan.reused_inputs == 9
    planner.save_plan(plan)
    # without the cache index a fresh decision would run every file; a batch step
    # given the pins must follow the saved plan instead
    shutil.rmtree(tmp_path / "prod" / "_dataflow" / "cache")
    batch = Engine(spec(source, out, batch_size=3), hook, LocalRunner(), print, "prod").plan(plan.pins)
    assert batch.plan_id == plan.plan_id
    assert batch.todo.column("path").to_pylist() == ["f0.txt"] and batch.reused_inputs == 9
