"""The stat cache: a rescan of unchanged files reads no file content.

A local file is trusted unchanged when its size, mtime, ctime and inode equal
the cached ones, and its mtime is older than the scan that cached it (a file
written during that scan could change again within the same timestamp tick: the
"racily clean" case that git handles the same way). The cache is plain Parquet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

RACY_MARGIN_NS = 100_000_000  # coarse filesystem clocks tick every few ms

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("inode", pa.uint64()),
        ("digest", pa.string()),
    ],
    metadata={b"dataflow.format": b"airflow-dataflow-statcache", b"dataflow.version": b"1"},
)

Key = tuple[int, int, int, int]


@dataclass
class StatCache:
    """Map of relative path to ((size, mtime_ns, ctime_ns, inode), digest)."""

    entries: dict[str, tuple[Key, str]] = field(default_factory=dict)
    scan_start_ns: int = 0

    def lookup(self, path: str, key: Key) -> str | None:
        """Return the cached digest if ``key`` matches and is not racy, else None."""
        hit = self.entries.get(path)
        if hit is None or hit[0] != key:
            return None
        if key[1] + RACY_MARGIN_NS >= self.scan_start_ns:
            return None
        return hit[1]

    @classmethod
    def load(cls, path: str) -> StatCache:
        """Load a cache file; a missing or unreadable one is an empty cache."""
        try:
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            if meta.get(b"dataflow.format") != b"airflow-dataflow-statcache":
                return cls()
            start = int(meta.get(b"dataflow.scan_start_ns", b"0"))
            cols = [table.column(n).to_pylist() for n in SCHEMA.names]
        except (OSError, pa.ArrowException, ValueError, KeyError):
            return cls()
        entries = {
            p: ((s, m, c, i), d) for p, s, m, c, i, d in zip(*cols, strict=True)
        }
        return cls(entries=entries, scan_start_ns=start)

    def save(self, path: str) -> None:
        """Write the cache atomically (temp file and rename)."""
        paths = list(self.entries)
        keys = [self.entries[p][0] for p in paths]
        table = pa.table(
            {
                "path": paths,
                "size": [k[0] for k in keys],
                "mtime_ns": [k[1] for k in keys],
                "ctime_ns": [k[2] for k in keys],
                "inode": [k[3] for k in keys],
                "digest": [self.entries[p][1] for p in paths],
            },
            schema=SCHEMA,
        )
        meta = dict(SCHEMA.metadata)
        meta[b"dataflow.scan_start_ns"] = str(self.scan_start_ns).encode()
        table = table.replace_schema_metadata(meta)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
