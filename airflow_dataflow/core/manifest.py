"""Manifests: the table of files of one snapshot, stored as plain Parquet.

Schema version 1 (one row per file, sorted by ``path``):

=============== ========= ======== ==============================================
column          type      nullable meaning
=============== ========= ======== ==============================================
path            string    no       relative POSIX path in UTF-8 (``a/b.csv``)
size            int64     no       size in bytes
mtime_ns        int64     yes      modification time, ns since the epoch
digest          string    no       hex content digest (algorithm in the metadata)
location        string    yes      URI of the bytes (``file:///...``,
                                   ``s3://bucket/key``); null: not stored yet
source_path     string    yes      per-file lineage: the input file it came from
source_digest   string    yes      per-file lineage: that input file's digest
cache_key       string    yes      per-file mode: the cache key that produced it
=============== ========= ======== ==============================================

Parquet key-value metadata: ``dataflow.format`` = ``airflow-dataflow-manifest``,
``dataflow.version`` = ``1``, ``dataflow.digest_algorithm`` = ``sha256`` and
``dataflow.snapshot_digest``.

The snapshot digest is the SHA-256 of ``dataflow-snapshot-v1\\n`` followed by, for
each file in path order (bytewise UTF-8), ``path + "\\0" + digest`` (digests have a
fixed length, so the concatenation parses unambiguously). It depends
only on paths and contents: not on mtimes, listing order, locations or backend.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_dataflow.core.hashing import ALGORITHM
from airflow_dataflow.core.paths import RESERVED_DIR, validate_relpath
from airflow_dataflow.exceptions import InvalidPathError, ManifestError

FORMAT_NAME = "airflow-dataflow-manifest"
SCHEMA_VERSION = 1
SNAPSHOT_PREFIX = b"dataflow-snapshot-v1\n"

SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64()),
        pa.field("digest", pa.string(), nullable=False),
        pa.field("location", pa.string()),
        pa.field("source_path", pa.string()),
        pa.field("source_digest", pa.string()),
        pa.field("cache_key", pa.string()),
    ]
)
REQUIRED = ("path", "size", "digest")

# One regex finds every unsafe path in a column at once (see core.paths for the rules).
_BAD_PATH = (
    r"(^$)|(^/)|(//)|(/$)|(^\.\.?(/|$))|(/\.\.?(/|$))|(\x00)|"
    rf"((^|/){RESERVED_DIR}(/|$))"
)
_HEX = r"^[0-9a-f]+$"
DIGEST_LEN = 64


def use_returning_memory_pool() -> str:
    """Make Arrow allocate from jemalloc unless ``ARROW_DEFAULT_MEMORY_POOL`` says otherwise.

    Decoding large manifests leaves big freed buffers behind; Arrow's default
    mimalloc pool keeps them (a 1M-row diff peaks near 550 MB), jemalloc gives
    them back (about 440 MB). Called by this package's own programs (the CLI),
    never on import, since the pool is process-wide. Returns the pool in use.
    """
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pass
    return pa.default_memory_pool().backend_name


DIGEST_SLICE = 1 << 16  # rows joined at a time: bounds the memory of hashing a large manifest
ROW_GROUP = 1 << 16


def snapshot_digest_of(paths: pa.Array | pa.ChunkedArray, digests: pa.Array | pa.ChunkedArray) -> str:
    """Return the snapshot digest of (path, digest) columns already sorted by path."""
    h = hashlib.sha256(SNAPSHOT_PREFIX)
    for start in range(0, len(paths), DIGEST_SLICE):
        # digests have a fixed length, so "path NUL digest" elements concatenated
        # without a separator still parse unambiguously
        lines = pc.binary_join_element_wise(
            paths.slice(start, DIGEST_SLICE), digests.slice(start, DIGEST_SLICE), pa.scalar("\x00")
        )
        chunks = lines.chunks if isinstance(lines, pa.ChunkedArray) else [lines]
        for chunk in chunks:
            if not len(chunk):
                continue
            offsets, data = chunk.buffers()[1], chunk.buffers()[2]
            width = "q" if pa.types.is_large_string(chunk.type) else "i"
            off = memoryview(offsets).cast(width)
            begin, end = off[chunk.offset], off[chunk.offset + len(chunk)]
            h.update(memoryview(data)[begin:end])
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """An immutable, validated manifest: a pyarrow Table in :data:`SCHEMA`, sorted by path.

    Build one with :meth:`from_rows`, :meth:`from_table` or :meth:`read`; never
    mutate ``table``.
    """

    table: pa.Table
    digest: str

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_table(cls, table: pa.Table, where: str = "manifest", validate: bool = True) -> Manifest:
        """Validate, normalise and sort ``table``; compute the snapshot digest.

        :param table: columns of :data:`SCHEMA` (``path``, ``size`` and ``digest``
            required; missing optional columns are filled with nulls)
        :param where: names the source in error messages
        :param validate: check paths and digests; pass False only for rows taken
            from manifests that were validated already
        """
        missing = [c for c in REQUIRED if c not in table.column_names]
        if missing:
            raise ManifestError(f"{where}: missing column(s) {missing}; is this a dataset manifest?")
        cols = []
        for field in SCHEMA:
            if field.name in table.column_names:
                col = table.column(field.name)
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise ManifestError(
                        f"{where}: column {field.name!r} has type {col.type}, expected {field.type}"
                    ) from err
            else:
                col = _nulls(table.num_rows, field.type)
            cols.append(col)
        # no combine_chunks(): it would copy the whole table; every step here works on chunks
        table = pa.Table.from_arrays(cols, schema=SCHEMA.remove_metadata())
        if validate:
            _validate(table, where)
        if not _strictly_increasing(table.column("path")):
            table = table.sort_by([("path", "ascending")])
            _check_unique(table, where)
        digest = snapshot_digest_of(table.column("path"), table.column("digest"))
        return cls(table=table, digest=digest)

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]], where: str = "manifest") -> Manifest:
        """Build a manifest from dicts with the columns of :data:`SCHEMA`."""
        rows = list(rows)
        data = {f.name: [r.get(f.name) for r in rows] for f in SCHEMA}
        return cls.from_table(pa.table(data, schema=SCHEMA.remove_metadata()), where)

    @classmethod
    def empty(cls) -> Manifest:
        """Return the manifest of an empty directory."""
        return cls.from_table(SCHEMA.remove_metadata().empty_table())

    # -- I/O ------------------------------------------------------------------------
    def to_parquet_bytes(self) -> bytes:
        """Serialise to Parquet with the versioned schema metadata."""
        meta = {
            b"dataflow.format": FORMAT_NAME.encode(),
            b"dataflow.version": str(SCHEMA_VERSION).encode(),
            b"dataflow.digest_algorithm": ALGORITHM.encode(),
            b"dataflow.snapshot_digest": self.digest.encode(),
        }
        table = self.table.replace_schema_metadata(meta)
        sink = io.BytesIO()
        # row groups of 64k rows: readers decode (and hold) one group at a time
        pq.write_table(table, sink, compression="zstd", row_group_size=ROW_GROUP)
        return sink.getvalue()

    def write(self, path: str) -> None:
        """Write the manifest to a local file (not atomically; callers rename)."""
        with open(path, "wb") as fh:
            fh.write(self.to_parquet_bytes())

    @classmethod
    def from_parquet_bytes(cls, data: bytes, where: str) -> Manifest:
        """Read and validate a manifest from Parquet bytes."""
        return cls._read(pa.BufferReader(data), where)

    @classmethod
    def read(cls, path: str, columns: Sequence[str] | None = None) -> Manifest:
        """Read and validate a manifest file.

        :param columns: read only these columns (``path`` and ``digest`` always):
            a diff needs ``("path", "digest")``, a fraction of the memory
        :raises ManifestError: the file is missing, not Parquet, foreign, of an
            unsupported version, or its content does not match its recorded digest.
        """
        return cls._read(path, path, columns)

    @classmethod
    def _read(cls, source: Any, where: str, columns: Sequence[str] | None = None) -> Manifest:
        if columns is not None:
            columns = sorted(set(columns) | {"path", "digest", "size"})
        try:
            table = pq.read_table(source, columns=columns)
        except FileNotFoundError:
            raise ManifestError(f"manifest {where} does not exist") from None
        except (pa.ArrowInvalid, OSError) as err:
            raise ManifestError(
                f"manifest {where} is not a readable Parquet file ({err}); "
                "it may be truncated or corrupt: restore it or rescan the directory"
            ) from err
        meta = table.schema.metadata or {}
        fmt = meta.get(b"dataflow.format", b"").decode()
        if fmt != FORMAT_NAME:
            raise ManifestError(
                f"{where} is a Parquet file but not a dataset manifest "
                f"(dataflow.format={fmt!r}, expected {FORMAT_NAME!r})"
            )
        version = meta.get(b"dataflow.version", b"").decode()
        if version != str(SCHEMA_VERSION):
            raise ManifestError(
                f"manifest {where} has schema version {version!r}; this package reads "
                f"version {SCHEMA_VERSION}: upgrade airflow-dataflow"
            )
        algo = meta.get(b"dataflow.digest_algorithm", b"").decode()
        if algo != ALGORITHM:
            raise ManifestError(f"manifest {where} uses digest algorithm {algo!r}, expected {ALGORITHM!r}")
        manifest = cls.from_table(table.replace_schema_metadata(None), where)
        del table
        # Parquet decoding leaves large freed buffers in Arrow's allocator: give them back,
        # or reading two big manifests for a diff holds twice their size
        pa.default_memory_pool().release_unused()
        recorded = meta.get(b"dataflow.snapshot_digest", b"").decode()
        if recorded and recorded != manifest.digest:
            raise ManifestError(
                f"manifest {where} records snapshot digest {recorded} but its rows hash to "
                f"{manifest.digest}: the file is corrupt or was edited; restore it"
            )
        return manifest

    # -- access ---------------------------------------------------------------------
    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return int(pc.sum(self.table.column("size")).as_py() or 0) if len(self) else 0

    def paths(self) -> list[str]:
        """Return the file paths in order (materialises a Python list)."""
        return self.table.column("path").to_pylist()

    def rows(self) -> list[dict[str, Any]]:
        """Return the rows as dicts (for small manifests and display)."""
        return self.table.to_pylist()

    def select(self, paths: Iterable[str] | pa.Array) -> Manifest:
        """Return the sub-manifest of the given paths (those present)."""
        wanted = paths if isinstance(paths, (pa.Array, pa.ChunkedArray)) else pa.array(list(paths), pa.string())
        mask = pc.is_in(self.table.column("path"), value_set=wanted)
        return Manifest.from_table(self.table.filter(mask), validate=False)

    def with_columns(self, **columns: Any) -> Manifest:
        """Return a copy with whole columns replaced (scalars are broadcast)."""
        table = self.table
        for name, value in columns.items():
            idx = table.schema.get_field_index(name)
            if idx < 0:
                raise KeyError(name)
            if not isinstance(value, (pa.Array, pa.ChunkedArray)):
                value = pa.array([value] * table.num_rows, SCHEMA.field(name).type)
            table = table.set_column(idx, SCHEMA.field(name), value)
        return Manifest.from_table(table, validate=name_checks(columns))


def _validate(table: pa.Table, where: str) -> None:
    for name in REQUIRED:
        if table.column(name).null_count:
            raise ManifestError(f"{where}: column {name!r} has null values")
    paths = table.column("path")
    bad = pc.match_substring_regex(paths, _BAD_PATH)
    if pc.any(bad).as_py():
        first = paths.filter(bad)[0].as_py()
        try:
            validate_relpath(first, where)
        except InvalidPathError as err:
            raise InvalidPathError(f"{err}; the manifest is rejected") from None
        raise InvalidPathError(f"file path {first!r} in {where} is not a safe relative path")
    digests = table.column("digest")
    ok = pc.and_(pc.equal(pc.binary_length(digests), DIGEST_LEN), pc.match_substring_regex(digests, _HEX))
    if len(digests) and not pc.all(ok).as_py():
        first = digests.filter(pc.invert(ok))[0].as_py()
        raise ManifestError(f"{where}: digest {first!r} is not a hex {ALGORITHM} digest")
    if len(paths) and pc.min(table.column("size")).as_py() < 0:
        raise ManifestError(f"{where}: negative file size")


def _nulls(n: int, type_: pa.DataType) -> pa.ChunkedArray:
    """Return ``n`` nulls as chunks that share one buffer (a missing column costs no memory)."""
    block = pa.nulls(min(n, DIGEST_SLICE), type_)
    full, rest = divmod(n, DIGEST_SLICE) if n else (0, 0)
    chunks = [block] * full + ([block.slice(0, rest)] if rest else [])
    return pa.chunked_array(chunks, type_)


def name_checks(columns: Mapping[str, Any]) -> bool:
    """Tell whether replacing ``columns`` needs the path and digest checks again."""
    return "path" in columns or "digest" in columns


def _strictly_increasing(paths: pa.ChunkedArray | pa.Array) -> bool:
    if len(paths) < 2:
        return True
    return bool(pc.all(pc.greater(paths.slice(1), paths.slice(0, len(paths) - 1))).as_py())


def _check_unique(table: pa.Table, where: str) -> None:
    paths = table.column("path")
    if len(paths) < 2:
        return
    same = pc.equal(paths.slice(1), paths.slice(0, len(paths) - 1))
    if pc.any(same).as_py():
        dup = paths.slice(1).filter(same)[0].as_py()
        raise ManifestError(f"{where}: path {dup!r} appears more than once")
