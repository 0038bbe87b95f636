"""Commit records: one entry of a dataset's append-only commit log.

Each record is a small JSON document stored beside the data
(``_dataflow/<name>/log/<seq>.json``); this module defines its fields and its
(de)serialisation and knows nothing of where it is stored.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_dataflow.exceptions import ManifestError

LOG_VERSION = 1


def default_author() -> str:
    """Return who commits: ``$DATAFLOW_OWNER``, else the OS user."""
    try:
        return os.environ.get("DATAFLOW_OWNER") or getpass.getuser()
    except (KeyError, OSError):
        return f"uid-{os.getuid()}"


@dataclass(frozen=True)
class CommitInfo:
    """What the committer says about a commit: who, from which Airflow task, and facts.

    :param author: installing owner or user that committed
    :param env: environment the commit belongs to (``prod``, ``test-alice``)
    :param dag_id: DAG of the committing task, if any
    :param task_id: task that committed, if any
    :param run_id: DAG run, if any
    :param map_index: mapped task index, -1 when not mapped
    :param try_number: task try number, if any
    :param partition: partition key the snapshot belongs to, if any
    :param stats: counts and facts (processed, reused, deleted, bytes, cache...)
    """

    author: str = field(default_factory=default_author)
    env: str | None = None
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int = -1
    try_number: int | None = None
    partition: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitRecord:
    """One committed move of HEAD: from ``parent`` to ``digest``."""

    seq: int
    digest: str
    parent: str | None
    time: float
    files: int
    bytes: int
    info: CommitInfo

    def to_dict(self) -> dict[str, Any]:
        """Return the record as plain JSON-able values (the log file's content)."""
        doc = asdict(self)
        doc["version"] = LOG_VERSION
        doc["time_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time))
        return doc

    def to_json(self) -> bytes:
        """Serialise to UTF-8 JSON."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> CommitRecord:
        """Parse a log entry; raise :class:`ManifestError` naming ``where`` if it is corrupt."""
        try:
            doc = json.loads(data)
            if doc.get("version") != LOG_VERSION:
                raise ValueError(f"unsupported log version {doc.get('version')!r}")
            info = CommitInfo(**doc["info"])
            return cls(
                seq=int(doc["seq"]),
                digest=str(doc["digest"]),
                parent=doc["parent"],
                time=float(doc["time"]),
                files=int(doc["files"]),
                bytes=int(doc["bytes"]),
                info=info,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ManifestError(f"commit log entry {where} is corrupt: {err}") from err


def valid_prefix(records: list[CommitRecord], head: str | None) -> list[CommitRecord]:
    """Return the records that were really committed, oldest first.

    A commit writes its log entry first and moves HEAD second; a writer killed
    between the two leaves a trailing entry whose digest is not HEAD. Such trailing
    entries never happened and are dropped here.
    """
    records = sorted(records, key=lambda r: r.seq)
    if head is None:
        return []
    for end in range(len(records), 0, -1):
        if records[end - 1].digest == head:
            return records[:end]
    return []
