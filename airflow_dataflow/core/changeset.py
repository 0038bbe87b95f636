"""Change sets: the difference of two manifests, computed with one Arrow join."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_dataflow.core.manifest import Manifest

SLICE = 1 << 16  # new rows matched at a time


@dataclass(frozen=True)
class ChangeSet:
    """Files added, modified, deleted and unchanged between ``old`` and ``new``.

    ``added``, ``modified`` and ``unchanged`` hold rows of the new manifest;
    ``deleted`` holds rows of the old one. All four are sorted by path. The
    unchanged rows, usually nearly all of them, are only copied out of the new
    manifest when :attr:`unchanged` is read.
    """

    old_digest: str
    new_digest: str
    added: pa.Table
    modified: pa.Table
    deleted: pa.Table
    unchanged_count: int
    _new: pa.Table = field(repr=False)
    _same: Any = field(repr=False)

    @property
    def unchanged(self) -> pa.Table:
        """Rows of the new manifest whose content did not change."""
        return self._new.filter(self._same)

    @property
    def changed(self) -> pa.Table:
        """Added and modified rows (of the new manifest), sorted by path."""
        return pa.concat_tables([self.added, self.modified]).sort_by("path")

    @property
    def is_empty(self) -> bool:
        """True when nothing was added, modified or deleted."""
        return not (self.added.num_rows or self.modified.num_rows or self.deleted.num_rows)

    def counts(self) -> dict[str, int]:
        """Return the number of files in each class."""
        return {
            "added": self.added.num_rows,
            "modified": self.modified.num_rows,
            "deleted": self.deleted.num_rows,
            "unchanged": self.unchanged_count,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the change set as plain values: sorted path lists and a count."""
        return {
            "from": self.old_digest,
            "to": self.new_digest,
            "added": self.added.column("path").to_pylist(),
            "modified": self.modified.column("path").to_pylist(),
            "deleted": self.deleted.column("path").to_pylist(),
            "unchanged": self.unchanged_count,
        }


def _upper_bound(paths: pa.ChunkedArray, value: str, lo: int) -> int:
    """Return the first index >= ``lo`` whose path is greater than ``value`` (paths sorted)."""
    hi = len(paths)
    while lo < hi:
        mid = (lo + hi) // 2
        if paths[mid].as_py() <= value:
            lo = mid + 1
        else:
            hi = mid
    return lo


def diff(old: Manifest, new: Manifest) -> ChangeSet:
    """Compare two manifests by path and content digest.

    A file whose digest is equal is unchanged, whatever its mtime or location.
    Both manifests are sorted by path, so the comparison walks them side by side
    in slices: each slice of new paths is matched against the matching range of
    old paths with one vectorised hash lookup. Memory stays bounded by the slice
    size, whatever the number of rows, and nothing loops over rows in Python.
    """
    old_t, new_t = old.table, new.table
    old_paths = old_t.column("path")
    added, modified, deleted, same_parts = [], [], [], []
    o = 0
    for start in range(0, new_t.num_rows, SLICE):
        n_slice = new_t.slice(start, SLICE)
        last = n_slice.column("path")[-1].as_py()
        o_end = _upper_bound(old_paths, last, o)
        o_slice = old_t.slice(o, o_end - o)
        idx = pc.index_in(n_slice.column("path"), value_set=o_slice.column("path"))
        in_old = pc.is_valid(idx)
        aligned = o_slice.column("digest").take(idx)
        same = pc.fill_null(pc.equal(n_slice.column("digest"), aligned), False)
        added.append(n_slice.filter(pc.invert(in_old)))
        modified.append(n_slice.filter(pc.and_(in_old, pc.invert(same))))
        if o_slice.num_rows:
            rows = pc.indices_nonzero(pa.repeat(pa.scalar(True), o_slice.num_rows)).cast(pa.int32())
            matched = pc.is_in(rows, value_set=idx.filter(in_old))
            deleted.append(o_slice.filter(pc.invert(matched)))
        same_parts.append(same)
        o = o_end
    deleted.append(old_t.slice(o))  # old paths after the last new path
    same_all = pa.chunked_array(
        [c for part in same_parts for c in (part.chunks if isinstance(part, pa.ChunkedArray) else [part])],
        pa.bool_(),
    )
    empty_new = new_t.schema.empty_table()
    return ChangeSet(
        old_digest=old.digest,
        new_digest=new.digest,
        added=pa.concat_tables(added) if added else empty_new,
        modified=pa.concat_tables(modified) if modified else empty_new,
        deleted=pa.concat_tables(deleted),
        unchanged_count=int(pc.sum(same_all).as_py() or 0),
        _new=new_t,
        _same=same_all,
    )


def apply(old: Manifest, change: ChangeSet) -> Manifest:
    """Apply ``change`` to ``old``: the inverse of :func:`diff` (``apply(a, diff(a, b)) == b``)."""
    drop = pa.concat_arrays(
        [
            change.deleted.column("path").combine_chunks(),
            change.modified.column("path").combine_chunks(),
            change.unchanged.column("path").combine_chunks(),
        ]
    )
    kept = old.table.filter(pc.invert(pc.is_in(old.table.column("path"), value_set=drop)))
    # unchanged rows come from the change set too (the new side): same content, but
    # mtime, location and lineage are the new manifest's
    tables = [kept, change.added, change.modified, change.unchanged]
    return Manifest.from_table(pa.concat_tables(tables), validate=False)
