"""Change sets: the difference of two manifests, computed with one Arrow join."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_dataflow.core.manifest import Manifest


@dataclass(frozen=True)
class ChangeSet:
    """Files added, modified, deleted and unchanged between ``old`` and ``new``.

    ``added``, ``modified`` and ``unchanged`` hold rows of the new manifest;
    ``deleted`` holds rows of the old one. All four are sorted by path.
    """

    old_digest: str
    new_digest: str
    added: pa.Table
    modified: pa.Table
    deleted: pa.Table
    unchanged: pa.Table

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
            "unchanged": self.unchanged.num_rows,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the change set as plain values: sorted path lists and a count."""
        return {
            "from": self.old_digest,
            "to": self.new_digest,
            "added": self.added.column("path").to_pylist(),
            "modified": self.modified.column("path").to_pylist(),
            "deleted": self.deleted.column("path").to_pylist(),
            "unchanged": self.unchanged.num_rows,
        }


def diff(old: Manifest, new: Manifest) -> ChangeSet:
    """Compare two manifests by path and content digest.

    A file whose digest is equal is unchanged, whatever its mtime or location. One
    hash lookup of the new paths in the old ones does all the matching; every
    other step is a vectorised filter.
    """
    old_t, new_t = old.table, new.table
    idx = pc.index_in(new_t.column("path"), value_set=old_t.column("path").combine_chunks())
    in_old = pc.is_valid(idx)
    old_digest_aligned = old_t.column("digest").take(idx)
    same = pc.fill_null(pc.equal(new_t.column("digest"), old_digest_aligned), False)

    # old rows no new path points at were deleted (an integer lookup, cheap)
    old_rows = pc.indices_nonzero(pa.repeat(pa.scalar(True), old_t.num_rows)).cast(pa.int32())
    matched = pc.is_in(old_rows, value_set=idx.filter(in_old).combine_chunks())

    return ChangeSet(
        old_digest=old.digest,
        new_digest=new.digest,
        added=new_t.filter(pc.invert(in_old)),
        modified=new_t.filter(pc.and_(in_old, pc.invert(same))),
        deleted=old_t.filter(pc.invert(matched)),
        unchanged=new_t.filter(same),
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
