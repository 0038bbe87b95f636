"""``DirectoryChangeSensor``: wait until a directory differs from its last snapshot, then commit it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_dataflow.config import DataflowConfig
from airflow_dataflow.core.changeset import diff
from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.exceptions import DataflowError
from airflow_dataflow.hooks.manifest import DatasetManifestHook
from airflow_dataflow.triggers.change import DirectoryChangeTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class DirectoryChangeSensor(BaseSensorOperator):
    """Wait until ``dataset``'s directory differs from its HEAD, then commit the new snapshot.

    Downstream gets a small reference to the change set through XCom (dataset,
    partition, ``from`` and ``to`` digests and the counts), never a list of files:
    the files are re-derived from the two manifests.

    :param dataset: the directory to watch, declared ``owned=False`` (a landing
        directory the pipeline only reads); its snapshots reference the files in
        place, and tasks check that a file did not change since before reading it
    :param partition: partition key (templated); default: the DAG run's
    :param deferrable: wait in the triggerer instead of a worker slot
    :param wait: True: wait for a change; False: commit the directory's current
        state if it changed and succeed either way, so downstream tasks run (and
        hit their caches when nothing changed). Templated; a string
        ``"false"``/``"0"`` counts as False.
    """

    template_fields: Sequence[str] = ("partition", "wait")
    ui_color = "#e8f4e8"

    def __init__(
        self,
        *,
        dataset: DirectoryDataset,
        partition: str | None = None,
        deferrable: bool = False,
        wait: bool | str = True,
        **kwargs: Any,
    ) -> None:
        if dataset.owned:
            raise DataflowError(
                f"sensor {kwargs.get('task_id')!r}: {dataset.name!r} is a dataset the pipeline writes; "
                "watch sources declared with owned=False (downstream DAGs of a produced dataset "
                "are scheduled on its asset instead)"
            )
        kwargs.setdefault("outlets", [dataset])
        super().__init__(**kwargs)
        self.dataset = dataset
        self.partition = partition
        self.deferrable = deferrable
        self.wait = wait

    def _waits(self) -> bool:
        if isinstance(self.wait, str):
            return self.wait.strip().lower() not in ("false", "0", "no", "off", "")
        return bool(self.wait)

    @cached_property
    def hook(self) -> DatasetManifestHook:
        """All storage I/O."""
        return DatasetManifestHook(aws_conn_id=self.dataset.aws_conn_id, progress=self.log.info)

    def _partition(self, context: Context) -> str | None:
        if not self.dataset.partitioned:
            return None
        return self.partition or context.get("partition_key") or None

    def _check_env(self) -> None:
        env = DataflowConfig.load().env
        if self.dataset.env != env:
            raise DataflowError(
                f"sensor {self.task_id!r} watches {self.dataset.name!r} of environment {self.dataset.env!r} "
                f"but runs in {env!r}; environments never cross"
            )

    def execute(self, context: Context) -> Any:
        if not self._waits():
            self._check_env()
            partition = self._partition(context)
            return self._commit_if_changed(context, partition, ref_if_unchanged=True)
        if not self.deferrable:
            return super().execute(context)
        self._check_env()
        partition = self._partition(context)
        changed = self._commit_if_changed(context, partition)
        if changed is not None:
            return changed
        head = self.hook.head(self.dataset, partition)
        self.defer(
            trigger=DirectoryChangeTrigger(
                dataset=dict(self.dataset.extra["dataflow"]),
                partition=partition,
                known_digest=head.digest if head is not None else None,
                poke_interval=float(self.poke_interval),
                timeout=float(self.timeout) if self.timeout is not None else None,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout) if self.timeout is not None else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Commit the change the trigger saw (rescanning, cheaply, with the stat cache)."""
        status = event.get("status")
        if status == "error":
            raise DataflowError(f"sensor {self.task_id!r}: the trigger failed: {event.get('message')}")
        if status == "timeout":
            from airflow.sdk.exceptions import AirflowSensorTimeout

            raise AirflowSensorTimeout(f"{self.dataset.name}: no change within {self.timeout}s")
        result = self._commit_if_changed(context, self._partition(context))
        if result is None:  # changed and changed back between the trigger and now
            raise DataflowError(f"{self.dataset.name}: the change the trigger saw is gone; the sensor will rerun")
        return result

    def _ref(
        self, partition: str | None, old: str | None, new: str, files: int, nbytes: int, counts: dict[str, int]
    ) -> dict[str, Any]:
        """The small change reference handed downstream: digests and counts, never file lists."""
        return {
            "dataset": self.dataset.dataset_name,
            "env": self.dataset.env,
            "partition": partition,
            "from": old,
            "to": new,
            "files": files,
            "bytes": nbytes,
            **counts,
        }

    def poke(self, context: Context) -> PokeReturnValue:
        self._check_env()
        result = self._commit_if_changed(context, self._partition(context))
        return PokeReturnValue(is_done=result is not None, xcom_value=result)

    def _commit_if_changed(
        self, context: Context, partition: str | None, ref_if_unchanged: bool = False
    ) -> dict[str, Any] | None:
        """Commit the directory's state if it differs from HEAD; return the change reference.

        :param ref_if_unchanged: return a reference to HEAD (no change) instead of None
        """
        loc = self.dataset.location(partition)
        storage = self.hook.storage(loc)
        head = storage.head(loc)
        current = storage.scan(loc, progress=self.log.info)
        if head is not None and current.digest == head.digest:
            self.log.info("%s: unchanged (%s, %d files)", loc.uri, head.digest[:12], len(head))
            if not ref_if_unchanged:
                return None
            counts = {"added": 0, "modified": 0, "deleted": 0, "unchanged": len(head)}
            return self._ref(partition, head.digest, head.digest, len(head), head.total_bytes, counts)
        change = diff(head or Manifest.empty(), current)
        counts = change.counts()
        ti = context.get("ti")
        info = CommitInfo(
            author=DataflowConfig.load().owner,
            env=self.dataset.env,
            dag_id=self.dag_id,
            task_id=self.task_id,
            run_id=context.get("run_id"),
            try_number=getattr(ti, "try_number", None),
            partition=partition,
            stats={"mode": "scan", **counts, "processed": counts["added"] + counts["modified"], "reused": counts["unchanged"]},
        )
        record = storage.commit(loc, current, info, parent=head.digest if head is not None else None)
        ref = self._ref(partition, head.digest if head is not None else None, record.digest, record.files,
                        record.bytes, counts)  # fmt: skip
        events = context.get("outlet_events")
        if events is not None:
            events[self.dataset].extra = ref
            if partition:
                events[self.dataset].add_partitions(partition)
        self.log.info(
            "%s: committed %s: %d added, %d modified, %d deleted, %d unchanged",
            loc.uri,
            record.digest[:12],
            counts["added"],
            counts["modified"],
            counts["deleted"],
            counts["unchanged"],
        )
        return ref
