"""The stat cache: a rescan of unchanged files reads no file content.

A local file is trusted unchanged when its size, mtime, ctime and inode equal
the cached ones, and its mtime is older than the scan that cached it (a file
written during that scan could change again within the same timestamp tick: the
"racily clean" case that git handles the same way). The cache is plain Parquet,
and its lookup is one vectorised Arrow join.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

RACY_MARGIN_NS = 100_000_000  # coarse filesystem clocks tick every few ms
FORMAT = b"airflow-dataflow-statcache"

SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("inode", pa.uint64()),
        ("digest", pa.string()),
    ],
    metadata={b"dataflow.format": FORMAT, b"dataflow.version": b"1"},
)
KEYS = ("size", "mtime_ns", "ctime_ns", "inode")


@dataclass
class StatCache:
    """A table of (path, size, mtime_ns, ctime_ns, inode, digest) from one scan.

    :param table: rows in :data:`SCHEMA`
    :param scan_start_ns: when the scan that produced the rows started
    :param hashed: how many files that scan read (0 for a cache loaded from disk)
    """

    table: pa.Table = field(default_factory=lambda: SCHEMA.empty_table())
    scan_start_ns: int = 0
    hashed: int = 0

    def __len__(self) -> int:
        return self.table.num_rows

    def lookup_many(self, current: pa.Table) -> pa.Array:
        """Return, for each row of ``current`` (path and the :data:`KEYS` columns), the
        cached digest if every key matches and the entry is not racy, else null."""
        n = current.num_rows
        if not self.table.num_rows or not n:
            return pa.nulls(n, pa.string())
        idx = pc.index_in(current.column("path"), value_set=self.table.column("path"))
        ok = pc.is_valid(idx)
        for key in KEYS:
            cached = self.table.column(key).take(idx)
            ok = pc.and_(ok, pc.fill_null(pc.equal(current.column(key).cast(cached.type), cached), False))
        not_racy = pc.less(
            pc.add(current.column("mtime_ns"), pa.scalar(RACY_MARGIN_NS, pa.int64())),
            pa.scalar(self.scan_start_ns, pa.int64()),
        )
        ok = pc.and_(ok, not_racy)
        digests = self.table.column("digest").take(idx)
        return pc.if_else(ok, digests, pa.scalar(None, pa.string()))

    @classmethod
    def load(cls, path: str) -> StatCache:
        """Load a cache file; a missing or unreadable one is an empty cache."""
        try:
            table = pq.read_table(path)
            meta = table.schema.metadata or {}
            if meta.get(b"dataflow.format") != FORMAT:
                return cls()
            start = int(meta.get(b"dataflow.scan_start_ns", b"0"))
            table = table.select(SCHEMA.names).cast(SCHEMA.remove_metadata())
        except (OSError, pa.ArrowException, ValueError, KeyError):
            return cls()
        return cls(table=table, scan_start_ns=start)

    def save(self, path: str) -> None:
        """Write the cache atomically (temp file and rename)."""
        meta = dict(SCHEMA.metadata)
        meta[b"dataflow.scan_start_ns"] = str(self.scan_start_ns).encode()
        table = self.table.replace_schema_metadata(meta)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
