"""The cache index, stored beside the data under ``_dataflow/cache/`` (no Airflow needed).

* whole mode: ``cache/whole/<key[:2]>/<key>.json`` names the output snapshot
  (metadata folder relative to the store root, and digest) that the key produced;
* per-file mode: ``cache/perfile/<code_key>/<segment>.parquet`` segments, one per
  commit that processed files, with a row per output file
  (``cache_key, source_path, source_digest, path, size, mtime_ns, digest,
  location``); an input that produced no output has one row with a null ``path``.

Everything here is plain JSON and Parquet, so the cache survives the loss of the
Airflow metadata DB and can be inspected with any Arrow tool.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.exceptions import ManifestError
from airflow_dataflow.storage.base import Storage

SEGMENT_SCHEMA = pa.schema(
    [
        ("cache_key", pa.string()),
        ("source_path", pa.string()),
        ("source_digest", pa.string()),
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("digest", pa.string()),
        ("location", pa.string()),
    ]
)


@dataclass(frozen=True)
class WholeEntry:
    """A whole-mode cache entry: the snapshot a key produced."""

    key: str
    digest: str
    meta_rel: str
    components: dict[str, Any]
    time: float


class CacheIndex:
    """Read and write the cache index of the store that holds ``loc``."""

    def __init__(self, storage: Storage, loc: DatasetLocation) -> None:
        self.storage = storage
        self.loc = loc

    # -- whole mode -------------------------------------------------------------------
    @staticmethod
    def _whole_rel(key: str) -> str:
        return f"cache/whole/{key[:2]}/{key}.json"

    def get_whole(self, key: str) -> WholeEntry | None:
        """Return the entry of ``key``, or None."""
        data = self.storage.get_meta(self.loc, self._whole_rel(key))
        if data is None:
            return None
        try:
            doc = json.loads(data)
            return WholeEntry(doc["key"], doc["digest"], doc["meta_rel"], doc.get("components", {}), doc["time"])
        except (ValueError, KeyError) as err:
            raise ManifestError(f"cache entry {self._whole_rel(key)} under {self.loc.store_root} is corrupt: {err}") from err

    def put_whole(self, key: str, digest: str, components: dict[str, Any]) -> None:
        """Record that ``key`` produced snapshot ``digest`` of this dataset."""
        doc = {"key": key, "digest": digest, "meta_rel": self.loc.meta_rel, "components": components, "time": time.time()}
        self.storage.put_meta(self.loc, self._whole_rel(key), json.dumps(doc, sort_keys=True).encode())

    def whole_manifest(self, entry: WholeEntry) -> Manifest | None:
        """Return the manifest the entry names, or None if it is gone."""
        rel = f"{entry.meta_rel}/snapshots/{entry.digest}/manifest.parquet"
        data = self.storage.get_meta(self.loc, rel)
        if data is None:
            return None
        return Manifest.from_parquet_bytes(data, f"{self.loc.store_root}/{rel}")

    # -- per-file mode ----------------------------------------------------------------
    @staticmethod
    def _seg_dir(code_key: str) -> str:
        return f"cache/perfile/{code_key}"

    def lookup_files(self, code_key: str, keys: pa.Array) -> pa.Table:
        """Return the segment rows whose ``cache_key`` is in ``keys`` (one source per key)."""
        names = [n for n in self.storage.list_meta(self.loc, self._seg_dir(code_key)) if n.endswith(".parquet")]
        tables = []
        for name in sorted(names, reverse=True):  # newest first: segment names start with a time
            data = self.storage.get_meta(self.loc, f"{self._seg_dir(code_key)}/{name}")
            if data is None:
                continue
            try:
                table = pq.read_table(pa.BufferReader(data)).select(SEGMENT_SCHEMA.names).cast(SEGMENT_SCHEMA)
            except (pa.ArrowException, KeyError):
                continue  # a damaged segment only costs a rerun of its files
            tables.append(table.filter(pc.is_in(table.column("cache_key"), value_set=keys)))
        if not tables:
            return SEGMENT_SCHEMA.empty_table()
        # keep, for each key, the rows of the newest segment that has it
        out = []
        covered = pa.array([], pa.string())
        for table in tables:
            fresh = table.filter(pc.invert(pc.is_in(table.column("cache_key"), value_set=covered)))
            if fresh.num_rows:
                out.append(fresh)
                covered = pa.concat_arrays([covered, pc.unique(fresh.column("cache_key"))])
        return pa.concat_tables(out) if out else SEGMENT_SCHEMA.empty_table()

    def put_files(self, code_key: str, rows: pa.Table) -> None:
        """Write one segment of processed files (rows in :data:`SEGMENT_SCHEMA`)."""
        if not rows.num_rows:
            return
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(rows.select(SEGMENT_SCHEMA.names).cast(SEGMENT_SCHEMA), sink, compression="zstd")
        self.storage.put_meta(self.loc, f"{self._seg_dir(code_key)}/{name}", sink.getvalue().to_pybytes())
