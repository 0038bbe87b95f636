"""The storage backend interface: everything that touches bytes or metadata files."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

import pyarrow as pa

from airflow_dataflow.core.commit import CommitInfo, CommitRecord, valid_prefix
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.exceptions import ConcurrentCommitError, SnapshotNotFoundError

log = logging.getLogger(__name__)

ProgressFn = Callable[[str], None]


class Progress:
    """Rate-limited progress lines for long scans and transfers."""

    def __init__(self, what: str, emit: ProgressFn | None = None, every: float = 5.0) -> None:
        self.what = what
        self.emit = emit or log.info
        self.every = every
        self.start = time.monotonic()
        self._last = self.start

    def tick(self, done: int, total: int | None = None, nbytes: int = 0) -> None:
        """Report ``done`` of ``total`` items if enough time passed since the last line."""
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        rate = done / max(now - self.start, 1e-9)
        of = f"/{total}" if total is not None else ""
        mb = f", {nbytes / 1e6:.1f} MB" if nbytes else ""
        self.emit(f"{self.what}: {done}{of} files{mb} ({rate:.0f} files/s)")


class Storage(ABC):
    """A place where datasets live: local POSIX directories or an S3 bucket.

    Backends implement the primitives; snapshot, HEAD and log semantics that do
    not depend on the backend live here.
    """

    scheme: str = ""

    # -- primitives ---------------------------------------------------------------
    @abstractmethod
    def scan(self, loc: DatasetLocation, *, progress: ProgressFn | None = None) -> Manifest:
        """Scan the plain files at ``loc`` into a manifest (cheap rescans)."""

    @abstractmethod
    def read_head(self, loc: DatasetLocation) -> str | None:
        """Return HEAD's snapshot digest, or None before the first commit."""

    @abstractmethod
    def read_manifest(self, loc: DatasetLocation, digest: str) -> Manifest:
        """Return the manifest of a committed snapshot."""

    @abstractmethod
    def read_log(self, loc: DatasetLocation) -> list[CommitRecord]:
        """Return every log entry present in storage (including aborted ones)."""

    @abstractmethod
    def store_snapshot(self, loc: DatasetLocation, manifest: Manifest) -> None:
        """Make ``manifest`` a stored, immutable snapshot (idempotent)."""

    @abstractmethod
    def swap_head(
        self, loc: DatasetLocation, manifest: Manifest, expected: str | None, record: CommitRecord
    ) -> None:
        """Append ``record`` and move HEAD from ``expected`` to ``manifest``, atomically.

        :raises ConcurrentCommitError: HEAD is not ``expected`` any more
        """

    @abstractmethod
    def ingest(
        self, loc: DatasetLocation, staging: str, manifest: Manifest, *, progress: ProgressFn | None = None
    ) -> Manifest:
        """Move the files of a local staging directory into the content store.

        :param staging: local directory whose files ``manifest`` describes
        :returns: the manifest with ``location`` filled with content-store URIs
        """

    # -- small metadata files under the store root (caches) --------------------------
    def put_meta(self, loc: DatasetLocation, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` under ``loc.store_root``, atomically."""
        raise NotImplementedError(f"{type(self).__name__} does not store cache metadata yet")

    def get_meta(self, loc: DatasetLocation, rel: str) -> bytes | None:
        """Return the bytes at ``rel`` under ``loc.store_root``, or None if absent."""
        raise NotImplementedError(f"{type(self).__name__} does not store cache metadata yet")

    def list_meta(self, loc: DatasetLocation, prefix: str) -> list[str]:
        """Return the names (relative to ``prefix``) of the files under ``prefix``."""
        raise NotImplementedError(f"{type(self).__name__} does not store cache metadata yet")

    def drop_meta(self, loc: DatasetLocation, prefix: str) -> None:
        """Remove the scratch metadata under ``prefix`` (staging of a finished run).

        The default keeps it: a backend that cannot delete leaves it to garbage collection.
        """

    # -- checks and repairs (backends that cannot do them keep these defaults) -------
    def damaged(self, loc: DatasetLocation, rows: pa.Table) -> pa.Table:
        """Return the rows (``location``, ``size``, ``mtime_ns``) whose stored bytes are
        missing or changed; the default trusts content-addressed storage."""
        return rows.slice(0, 0)

    def quarantine(self, loc: DatasetLocation, location: str) -> str | None:
        """Move a damaged stored object aside; return where it went (None: not moved)."""
        return None

    def rebuild_tree(self, loc: DatasetLocation, manifest: Manifest) -> None:
        """Relink a stored snapshot's plain view after damaged objects were replaced."""

    def check_unchanged(self, loc: DatasetLocation, rows: pa.Table) -> None:
        """Raise if files of an observed source changed since their snapshot."""

    # -- semantics shared by every backend -----------------------------------------
    def head(self, loc: DatasetLocation) -> Manifest | None:
        """Return HEAD's manifest, or None before the first commit."""
        digest = self.read_head(loc)
        return None if digest is None else self.read_manifest(loc, digest)

    def snapshot(self, loc: DatasetLocation, digest: str | None = None) -> Manifest:
        """Return the manifest of snapshot ``digest`` (a unique prefix works), or of HEAD."""
        if digest is None:
            manifest = self.head(loc)
            if manifest is None:
                raise SnapshotNotFoundError(f"{loc.uri} has no committed snapshot yet; commit one first")
            return manifest
        if len(digest) < 64:
            matches = {r.digest for r in self.log(loc) if r.digest.startswith(digest)}
            if len(matches) != 1:
                raise SnapshotNotFoundError(
                    f"{loc.uri}@{digest}: {'no' if not matches else 'more than one'} committed snapshot "
                    "has a digest starting so; see `airflow-dataflow log`"
                )
            digest = matches.pop()
        return self.read_manifest(loc, digest)

    def log_tail(self, loc: DatasetLocation, head: str | None) -> tuple[int, list[int]]:
        """Return the sequence number of the last real commit (0: none) and those of the
        aborted entries after it. Backends may answer without reading the whole log."""
        records = sorted(self.read_log(loc), key=lambda r: r.seq)
        valid = valid_prefix(records, head)
        last = valid[-1].seq if valid else 0
        return last, [r.seq for r in records if r.seq > last]

    def log(self, loc: DatasetLocation) -> list[CommitRecord]:
        """Return the commits of ``loc`` that really happened, oldest first."""
        return valid_prefix(self.read_log(loc), self.read_head(loc))

    def commit(
        self,
        loc: DatasetLocation,
        manifest: Manifest,
        info: CommitInfo,
        *,
        parent: str | None | object = ...,
    ) -> CommitRecord:
        """Commit ``manifest`` as the new HEAD of ``loc``.

        :param parent: the HEAD digest the caller based its work on; HEAD moves only
            if it still is that (compare-and-swap). By default the current HEAD.
        :raises ConcurrentCommitError: another writer moved HEAD since ``parent``
        """
        if parent is ...:
            parent = self.read_head(loc)
        self.store_snapshot(loc, manifest)
        # numbered after the caller's parent: if HEAD moved meanwhile, swap_head refuses anyway
        seq = self.log_tail(loc, parent)[0] + 1  # type: ignore[arg-type]
        record = CommitRecord(
            seq=seq,
            digest=manifest.digest,
            parent=parent,  # type: ignore[arg-type]
            time=time.time(),
            files=len(manifest),
            bytes=manifest.total_bytes,
            info=info,
        )
        self.swap_head(loc, manifest, parent, record)  # type: ignore[arg-type]
        return record

    @staticmethod
    def race(loc: DatasetLocation, expected: str | None, actual: str | None) -> ConcurrentCommitError:
        """Return the error for a lost compare-and-swap race."""
        return ConcurrentCommitError(
            f"HEAD of {loc.uri} moved to {actual} while this writer expected {expected}: "
            "another writer committed first. Nothing was lost; rerun the task to build on the new HEAD."
        )
