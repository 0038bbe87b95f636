"""``DatasetManifestHook``: scan, commit, HEAD, diff and log of directory datasets."""

from __future__ import annotations

import os
import re
from functools import cached_property
from typing import Any

from airflow.sdk import BaseHook

from airflow_dataflow.core.changeset import ChangeSet, diff
from airflow_dataflow.core.commit import CommitInfo, CommitRecord
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.exceptions import SnapshotNotFoundError
from airflow_dataflow.storage import Storage, storage_for
from airflow_dataflow.storage.base import ProgressFn

_AT_DIGEST = re.compile(r"^(?P<uri>.+)@(?P<digest>[0-9a-f]{4,64})$")

Target = DirectoryDataset | DatasetLocation | str


class DatasetManifestHook(BaseHook):
    """All I/O on directory datasets: local directories and S3 prefixes.

    :param aws_conn_id: Airflow connection used for ``s3://`` datasets (through
        the amazon provider's ``S3Hook``); None uses boto3's default credentials
    :param progress: receives progress lines of long scans (default: the hook's log)
    """

    conn_name_attr = "aws_conn_id"
    default_conn_name = "aws_default"
    conn_type = "aws"
    hook_name = "Dataflow dataset manifests"

    def __init__(self, aws_conn_id: str | None = None, progress: ProgressFn | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self._progress = progress
        self._s3: Storage | None = None

    @cached_property
    def _local(self) -> Storage:
        return storage_for("file:///")

    def storage(self, loc: DatasetLocation) -> Storage:
        """Return the backend of ``loc``."""
        if loc.scheme == "file":
            return self._local
        if self._s3 is None:
            self._s3 = storage_for("s3://x/y", aws_conn_id=self.aws_conn_id)
        return self._s3

    def progress(self, line: str) -> None:
        """Write a progress line to the task log."""
        (self._progress or self.log.info)(line)

    @staticmethod
    def location(target: Target, partition: str | None = None) -> DatasetLocation:
        """Resolve a dataset, a location or a URI to a :class:`DatasetLocation`."""
        if isinstance(target, DatasetLocation):
            return target
        if isinstance(target, DirectoryDataset):
            return target.location(partition)
        return DatasetLocation.parse(target)

    # -- operations ---------------------------------------------------------------------
    def scan(self, target: Target, partition: str | None = None) -> Manifest:
        """Scan the plain files of a dataset or directory now."""
        loc = self.location(target, partition)
        return self.storage(loc).scan(loc, progress=self.progress)

    def head(self, target: Target, partition: str | None = None) -> Manifest | None:
        """Return HEAD's manifest, or None before the first commit."""
        loc = self.location(target, partition)
        return self.storage(loc).head(loc)

    def snapshot(self, target: Target, digest: str | None = None, partition: str | None = None) -> Manifest:
        """Return a committed snapshot (HEAD if ``digest`` is None)."""
        loc = self.location(target, partition)
        return self.storage(loc).snapshot(loc, digest)

    def commit(
        self,
        target: Target,
        manifest: Manifest,
        info: CommitInfo,
        *,
        partition: str | None = None,
        parent: str | None | object = ...,
    ) -> CommitRecord:
        """Commit ``manifest`` as HEAD (compare-and-swap against ``parent``)."""
        loc = self.location(target, partition)
        return self.storage(loc).commit(loc, manifest, info, parent=parent)

    def ingest(self, target: Target, staging: str, manifest: Manifest, partition: str | None = None) -> Manifest:
        """Store the files of a local staging directory; return the manifest with locations."""
        loc = self.location(target, partition)
        return self.storage(loc).ingest(loc, staging, manifest, progress=self.progress)

    def log_records(self, target: Target, partition: str | None = None) -> list[CommitRecord]:
        """Return the commit log, oldest first."""
        loc = self.location(target, partition)
        return self.storage(loc).log(loc)

    def diff(self, old: Manifest, new: Manifest) -> ChangeSet:
        """Return the change set from ``old`` to ``new``."""
        return diff(old, new)

    # -- the CLI's notion of "a snapshot, however named" ------------------------------------
    def resolve(self, spec: str) -> Manifest:
        """Return the manifest named by ``spec``.

        ``spec`` is a manifest file (``*.parquet``), a committed snapshot
        (``URI@DIGEST``, a unique digest prefix works), a dataset with a HEAD (its
        HEAD), or any other directory or URI (scanned now).
        """
        match = _AT_DIGEST.match(spec)
        if match and not os.path.exists(spec):
            loc = self.location(match["uri"])
            return self.storage(loc).snapshot(loc, match["digest"])
        if spec.endswith(".parquet") and os.path.isfile(spec):
            return Manifest.read(spec, columns=("path", "digest"))
        loc = self.location(os.path.abspath(spec) if "://" not in spec else spec)
        backend = self.storage(loc)
        try:
            head = backend.head(loc)
        except SnapshotNotFoundError:
            head = None
        return head if head is not None else backend.scan(loc, progress=self.progress)
