"""DirectoryChangeSensor and DirectoryChangeTrigger on real directories (no Airflow DB needed)."""

from __future__ import annotations

import asyncio
import importlib
import os
import time
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred

from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.exceptions import DataflowError
from airflow_dataflow.hooks.manifest import DatasetManifestHook
from airflow_dataflow.sensors.change import DirectoryChangeSensor
from airflow_dataflow.triggers.change import DirectoryChangeTrigger


@pytest.fixture
def landing(tmp_path: Path) -> DirectoryDataset:
    src = tmp_path / "landing"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.csv").write_text("1\n")
    (src / "b.csv").write_text("2\n")
    old = time.time() - 60
    for f in (src / "d" / "a.csv", src / "b.csv"):
        os.utime(f, (old, old))
    return DirectoryDataset("landing", f"file://{src}", owned=False, env="prod")


def test_trigger_serialize_round_trip(landing):
    trigger = DirectoryChangeTrigger(dict(landing.extra["dataflow"]), None, "ab" * 32, poke_interval=2.5, timeout=30)
    path, kwargs = trigger.serialize()
    module, name = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert isinstance(kwargs["dataset"], dict) and kwargs["poke_interval"] == 2.5


async def _first_event(trigger: DirectoryChangeTrigger, timeout: float = 20) -> dict:
    agen = trigger.run()
    try:
        event = await asyncio.wait_for(agen.__anext__(), timeout)
    finally:
        await agen.aclose()
    return event.payload


def test_trigger_fires_on_change_only(landing, tmp_path):
    digest = DatasetManifestHook().scan(landing).digest
    trigger = DirectoryChangeTrigger(dict(landing.extra["dataflow"]), None, digest, poke_interval=0.1, timeout=0.5)
    assert asyncio.run(_first_event(trigger))["status"] == "timeout"

    async def change_then_wait() -> dict:
        async def change() -> None:
            await asyncio.sleep(0.3)
            (tmp_path / "landing" / "new.csv").write_text("3\n")

        task = asyncio.create_task(change())
        event = await _first_event(
            DirectoryChangeTrigger(dict(landing.extra["dataflow"]), None, digest, poke_interval=0.1, timeout=10)
        )
        await task
        return event

    event = asyncio.run(change_then_wait())
    assert event["status"] == "changed" and event["digest"] != digest


def test_trigger_turns_errors_into_an_error_event(tmp_path):
    gone = DirectoryDataset("gone", f"file://{tmp_path}/missing", owned=False, env="prod")
    event = asyncio.run(_first_event(DirectoryChangeTrigger(dict(gone.extra["dataflow"]), None, None, 0.1)))
    assert event["status"] == "error" and "missing" in event["message"]


def test_deferrable_sensor_defers_when_unchanged_and_commits_on_complete(landing, tmp_path):
    sensor = DirectoryChangeSensor(task_id="wait", dataset=landing, deferrable=True, poke_interval=1, timeout=60)
    first = sensor.execute({"run_id": "r1"})  # nothing committed yet: commits at once
    assert first["added"] == 2 and first["from"] is None
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({"run_id": "r2"})
    trigger = deferred.value.trigger
    assert isinstance(trigger, DirectoryChangeTrigger) and trigger.known_digest == first["to"]

    (tmp_path / "landing" / "b.csv").write_text("changed\n")
    ref = sensor.execute_complete({"run_id": "r2"}, {"status": "changed", "digest": "x"})
    assert (ref["modified"], ref["added"], ref["deleted"], ref["unchanged"]) == (1, 0, 0, 1)
    log = DatasetManifestHook().log_records(landing)
    assert [r.info.run_id for r in log] == ["r1", "r2"] and log[-1].digest == ref["to"]
    # the reference is small: counts and digests, never a file list
    assert all(not isinstance(v, list) for v in ref.values())


def test_poke_mode_and_wait_false(landing, tmp_path):
    sensor = DirectoryChangeSensor(task_id="wait", dataset=landing, poke_interval=1, timeout=60)
    assert sensor.poke({"run_id": "a"}).is_done
    assert not sensor.poke({"run_id": "b"}).is_done
    no_wait = DirectoryChangeSensor(task_id="snap", dataset=landing, wait="False")
    ref = no_wait.execute({"run_id": "c"})
    assert ref["from"] == ref["to"] and ref["unchanged"] == 2


def test_sensor_refuses_owned_datasets_and_other_environments(tmp_path):
    owned = DirectoryDataset("mine", f"file://{tmp_path}/{{env}}/mine", env="prod")
    with pytest.raises(DataflowError, match="owned=False"):
        DirectoryChangeSensor(task_id="w", dataset=owned)
    other = DirectoryDataset("src", f"file://{tmp_path}/src", owned=False, env="test-bob")
    (tmp_path / "src").mkdir()
    with pytest.raises(DataflowError, match="environments never cross"):
        DirectoryChangeSensor(task_id="w", dataset=other).poke({})
