"""``DirectoryChangeTrigger``: wait in the triggerer until a directory differs from a snapshot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class DirectoryChangeTrigger(BaseTrigger):
    """Fire when the scan of a dataset's directory has another digest than ``known_digest``.

    Scans run in a worker thread of the triggerer and use the stat cache, so an
    unchanged directory costs one ``stat`` per file and no reads.

    :param dataset: the dataset's asset ``extra["dataflow"]`` spec (plain values)
    :param partition: partition key or None
    :param known_digest: the digest of the last committed snapshot (None: any content fires)
    :param poke_interval: seconds between scans
    :param timeout: seconds before giving up with a timeout event (None: never)
    """

    def __init__(
        self,
        dataset: dict[str, Any],
        partition: str | None,
        known_digest: str | None,
        poke_interval: float = 60.0,
        timeout: float | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.partition = partition
        self.known_digest = known_digest
        self.poke_interval = poke_interval
        self.timeout = timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "airflow_dataflow.triggers.change.DirectoryChangeTrigger",
            {
                "dataset": self.dataset,
                "partition": self.partition,
                "known_digest": self.known_digest,
                "poke_interval": self.poke_interval,
                "timeout": self.timeout,
            },
        )

    def _scan_digest(self) -> str:
        from airflow_dataflow.dataset import DirectoryDataset
        from airflow_dataflow.hooks.manifest import DatasetManifestHook

        ds = DirectoryDataset.from_spec(self.dataset)
        hook = DatasetManifestHook(aws_conn_id=ds.aws_conn_id, progress=self.log.info)
        return hook.scan(ds, self.partition).digest

    async def run(self) -> AsyncIterator[TriggerEvent]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            while True:
                digest = await asyncio.to_thread(self._scan_digest)
                if digest != self.known_digest:
                    yield TriggerEvent({"status": "changed", "digest": digest, "known": self.known_digest})
                    return
                if self.timeout is not None and loop.time() - start > self.timeout:
                    yield TriggerEvent({"status": "timeout", "known": self.known_digest})
                    return
                await asyncio.sleep(self.poke_interval)
        except Exception as err:  # noqa: BLE001 - every failure becomes one error event
            yield TriggerEvent({"status": "error", "message": f"{type(err).__name__}: {err}"})
