"""Local POSIX storage: content store of read-only files, hardlinked snapshot trees.

Layout (see :mod:`airflow_dataflow.core.location`):

* each file's bytes are stored once, read-only, in ``_dataflow/objects/sha256/``;
* each snapshot is ``_dataflow/<name>/snapshots/<digest>/`` with ``manifest.parquet``
  and ``tree/``, a plain directory tree of hardlinks into the content store;
* the dataset path ``<parent>/<name>`` is a relative symlink to HEAD's ``tree/``,
  replaced atomically (a new symlink renamed over the old one): readers see the
  old tree or the new one, never a mix, and old trees stay readable. The symlink
  *is* HEAD: one rename moves it, so no second pointer can disagree;
* an observed source (not owned) keeps HEAD in ``_dataflow/<name>/HEAD``;
* HEAD moves under an exclusive ``flock`` on ``_dataflow/<name>/lock``, which the
  kernel releases if the writer dies, so a killed commit never blocks the next.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote

import pyarrow as pa

from airflow_dataflow.core.commit import CommitRecord
from airflow_dataflow.core.location import DatasetLocation, file_uri
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.core.paths import inside
from airflow_dataflow.exceptions import (
    ConcurrentCommitError,
    ManifestError,
    ScanError,
    SnapshotNotFoundError,
    StorageError,
)
from airflow_dataflow.storage.base import Progress, ProgressFn, Storage
from airflow_dataflow.storage.localscan import cached_scan, scan_directory, user_cache_file

__all__ = ["LocalStorage", "cached_scan", "scan_directory", "user_cache_file"]

LOCK_TIMEOUT_S = 60.0


# ---------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------
def _local_path(uri: str) -> str:
    return unquote(uri[len("file://") :]) if uri.startswith("file://") else uri


class LocalStorage(Storage):
    """Datasets in local (or shared POSIX) directories."""

    scheme = "file"

    # -- paths ----------------------------------------------------------------------
    @staticmethod
    def _snap_dir(loc: DatasetLocation, digest: str) -> str:
        return os.path.join(loc.meta, "snapshots", digest)

    @staticmethod
    def _head_file(loc: DatasetLocation) -> str:
        return os.path.join(loc.meta, "HEAD")

    # -- reading ----------------------------------------------------------------------
    def scan(self, loc: DatasetLocation, *, progress: ProgressFn | None = None) -> Manifest:
        """Scan the plain directory of ``loc``; the stat cache lives in its metadata folder."""
        # a dataset keeps its stat cache beside its metadata; any other directory
        # gets one in the user's cache folder (nothing is written beside it)
        cache_file = os.path.join(loc.meta, "statcache.parquet")
        if not (os.path.isdir(loc.meta) and os.access(loc.meta, os.W_OK)):
            cache_file = user_cache_file(loc.path)
        return cached_scan(loc.path, cache_file, progress)

    def read_head(self, loc: DatasetLocation) -> str | None:
        """Return HEAD: the target of the dataset's symlink, or the HEAD file of a source."""
        where = loc.path if loc.owned else self._head_file(loc)
        try:
            if loc.owned and not (os.path.isdir(loc.path) and not os.path.islink(loc.path)):
                digest = os.path.basename(os.path.dirname(os.readlink(loc.path)))
            else:
                # an observed source, or a plain directory: HEAD is a file (if any)
                where = self._head_file(loc)
                with open(where, encoding="utf-8") as fh:
                    digest = fh.read().strip()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StorageError(f"cannot read HEAD of {loc.uri} at {where}: {err.strerror}") from err
        if len(digest) != 64:
            raise ManifestError(f"HEAD of {loc.uri} at {where} is corrupt ({digest[:80]!r})")
        return digest

    def read_manifest(self, loc: DatasetLocation, digest: str) -> Manifest:
        path = os.path.join(self._snap_dir(loc, digest), "manifest.parquet")
        if not os.path.exists(path):
            raise SnapshotNotFoundError(f"{loc.uri}@{digest}: no such snapshot (no {path})")
        manifest = Manifest.read(path)
        if manifest.digest != digest:
            raise ManifestError(f"manifest {path} hashes to {manifest.digest}, not {digest}: it is corrupt")
        return manifest

    def read_log(self, loc: DatasetLocation) -> list[CommitRecord]:
        log_dir = os.path.join(loc.meta, "log")
        try:
            names = sorted(n for n in os.listdir(log_dir) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path = os.path.join(log_dir, name)
            with open(path, "rb") as fh:
                out.append(CommitRecord.from_json(fh.read(), path))
        return out

    def log_tail(self, loc: DatasetLocation, head: str | None) -> tuple[int, list[int]]:
        """Read log entries from the newest back to the one HEAD names: a commit costs
        a directory listing and, usually, one entry, however long the log is."""
        log_dir = os.path.join(loc.meta, "log")
        try:
            names = sorted((n for n in os.listdir(log_dir) if n.endswith(".json")), reverse=True)
        except FileNotFoundError:
            return 0, []
        aborted = []
        for name in names:
            path = os.path.join(log_dir, name)
            with open(path, "rb") as fh:
                record = CommitRecord.from_json(fh.read(), path)
            if head is not None and record.digest == head:
                return record.seq, aborted
            aborted.append(record.seq)
        return 0, aborted

    def snapshot_dir(self, loc: DatasetLocation, digest: str) -> str:
        """Return the plain directory of a committed snapshot (owned) or the source (observed)."""
        if not loc.owned:
            return loc.path
        return os.path.join(self._snap_dir(loc, digest), "tree")

    def damaged(self, loc: DatasetLocation, rows: pa.Table) -> pa.Table:
        """Return the rows whose object is missing or has another size or mtime than recorded.

        Content-store objects are read-only, so rewriting their bytes changes their mtime.
        """
        bad = []
        for i, (location, size, mtime) in enumerate(
            zip(
                rows.column("location").to_pylist(),
                rows.column("size").to_pylist(),
                rows.column("mtime_ns").to_pylist(),
                strict=True,
            )
        ):
            if location is None:
                bad.append(i)
                continue
            try:
                st = os.stat(_local_path(location))
            except OSError:
                bad.append(i)
                continue
            if st.st_size != size or (mtime is not None and st.st_mtime_ns != mtime):
                bad.append(i)
        return rows.take(pa.array(bad, pa.int64()))

    def check_unchanged(self, loc: DatasetLocation, rows: pa.Table) -> None:
        """Raise if a file of an observed source changed since its snapshot (size or mtime)."""
        if loc.owned:
            return  # committed trees are immutable
        for rel, size, mtime in zip(
            rows.column("path").to_pylist(), rows.column("size").to_pylist(), rows.column("mtime_ns").to_pylist(),
            strict=True,
        ):  # fmt: skip
            path = os.path.join(loc.path, rel)
            try:
                st = os.stat(path)
            except OSError:
                st = None
            if st is None or st.st_size != size or (mtime is not None and st.st_mtime_ns != mtime):
                raise ScanError(
                    f"source file {path!r} changed or vanished after its snapshot was committed; the change "
                    "sensor will commit the new state and a new run will process it"
                )

    def quarantine(self, loc: DatasetLocation, location: str) -> str | None:
        """Move a damaged content-store object to ``_dataflow/quarantine/``; return where it went.

        Only objects of ``loc``'s own store are moved; anything else is left alone.
        """
        path = _local_path(location)
        if not inside(loc.objects, path) or not os.path.exists(path):
            return None
        dest_dir = os.path.join(loc.store_root, "quarantine")
        os.makedirs(dest_dir, exist_ok=True)
        dest = os.path.join(dest_dir, f"{os.path.basename(os.path.dirname(path))}{os.path.basename(path)}-{time.time_ns()}")
        os.replace(path, dest)
        return dest

    def put_meta(self, loc: DatasetLocation, rel: str, data: bytes) -> None:
        path = os.path.join(loc.store_root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._atomic_write(path, data)

    def get_meta(self, loc: DatasetLocation, rel: str) -> bytes | None:
        try:
            with open(os.path.join(loc.store_root, rel), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def drop_meta(self, loc: DatasetLocation, prefix: str) -> None:
        shutil.rmtree(os.path.join(loc.store_root, prefix), ignore_errors=True)

    def list_meta(self, loc: DatasetLocation, prefix: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(os.path.join(loc.store_root, prefix)) if ".tmp-" not in n)
        except FileNotFoundError:
            return []

    # -- writing ----------------------------------------------------------------------
    def ingest(
        self, loc: DatasetLocation, staging: str, manifest: Manifest, *, progress: ProgressFn | None = None
    ) -> Manifest:
        """Hardlink (or copy across filesystems) staged files into the content store.

        A file whose digest is already stored is not stored again. The returned
        manifest records each stored object's own mtime, so that later checks of
        the object (cache hits) compare against what is really on disk.
        """
        prog = Progress(f"store {loc.uri}", progress)
        locations = []
        mtimes = []
        for n, (rel, digest) in enumerate(
            zip(manifest.table.column("path").to_pylist(), manifest.table.column("digest").to_pylist(), strict=True),
            1,
        ):
            mtimes.append(self._store_object(loc, os.path.join(staging, rel), digest))
            locations.append(file_uri(loc.object_key(digest)))
            prog.tick(n, len(manifest))
        return manifest.with_columns(
            location=pa.array(locations, pa.string()), mtime_ns=pa.array(mtimes, pa.int64())
        )

    def _store_object(self, loc: DatasetLocation, src: str, digest: str) -> int:
        """Store ``src`` as object ``digest`` unless present; return the object's mtime."""
        dst = loc.object_key(digest)
        try:
            return os.stat(dst).st_mtime_ns
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        tmp = f"{dst}.tmp-{uuid.uuid4().hex}"
        try:
            os.link(src, tmp)
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise StorageError(f"cannot store {src!r} into {dst!r}: {err.strerror}") from err
            shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dst)
        return os.stat(dst).st_mtime_ns

    def store_snapshot(self, loc: DatasetLocation, manifest: Manifest) -> None:
        """Write the manifest and, for owned datasets, the hardlinked tree."""
        final = self._snap_dir(loc, manifest.digest)
        if os.path.exists(os.path.join(final, "manifest.parquet")):
            return
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(final), f".tmp-{uuid.uuid4().hex}")
        os.makedirs(tmp)
        try:
            if loc.owned:
                self._build_tree(os.path.join(tmp, "tree"), manifest)
            manifest.write(os.path.join(tmp, "manifest.parquet"))
            try:
                os.rename(tmp, final)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # same content stored by another writer
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def rebuild_tree(self, loc: DatasetLocation, manifest: Manifest) -> None:
        """Relink an existing snapshot's tree to the current content-store objects.

        Used after damaged objects were moved aside and stored again: the old tree's
        hardlinks still point at the damaged inodes.
        """
        snap = self._snap_dir(loc, manifest.digest)
        if not loc.owned or not os.path.isdir(os.path.join(snap, "tree")):
            return
        fresh = os.path.join(snap, f".tree-{uuid.uuid4().hex[:8]}")
        self._build_tree(fresh, manifest)
        old = os.path.join(snap, f".old-{uuid.uuid4().hex[:8]}")
        os.rename(os.path.join(snap, "tree"), old)
        os.rename(fresh, os.path.join(snap, "tree"))
        for dirpath, _, _ in os.walk(old):
            os.chmod(dirpath, 0o755)
        shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def _build_tree(tree: str, manifest: Manifest) -> None:
        os.makedirs(tree)
        made = {tree}
        for rel, location in zip(
            manifest.table.column("path").to_pylist(), manifest.table.column("location").to_pylist(), strict=True
        ):
            if location is None:
                raise StorageError(f"file {rel!r} has no stored bytes (empty location); ingest it before committing")
            dst = os.path.join(tree, rel)
            parent = os.path.dirname(dst)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            src = _local_path(location)
            try:
                os.link(src, dst)
            except FileNotFoundError as err:
                raise StorageError(
                    f"cannot link {rel!r}: its bytes at {src!r} are gone; rerun the task that produced them"
                ) from err
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise StorageError(f"cannot link {src!r} to {dst!r}: {err.strerror}") from err
                shutil.copyfile(src, dst)  # another filesystem: the only case that copies
        os.chmod(tree, 0o555)

    @contextmanager
    def _locked(self, loc: DatasetLocation) -> Iterator[None]:
        os.makedirs(loc.meta, exist_ok=True)
        fd = os.open(os.path.join(loc.meta, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConcurrentCommitError(
                            f"another writer holds the commit lock of {loc.uri} for over {LOCK_TIMEOUT_S:.0f}s "
                            f"({os.path.join(loc.meta, 'lock')}); retry later"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def swap_head(
        self, loc: DatasetLocation, manifest: Manifest, expected: str | None, record: CommitRecord
    ) -> None:
        with self._locked(loc):
            actual = self.read_head(loc)
            if actual != expected:
                raise self.race(loc, expected, actual)
            last, aborted = self.log_tail(loc, actual)
            if record.seq != last + 1:
                # HEAD moved away and back (A-B-A) since the caller read it: its
                # sequence number is taken, and writing it would overwrite a commit
                raise ConcurrentCommitError(
                    f"HEAD of {loc.uri} is {actual} again, but commit #{record.seq} and later were made "
                    "by another writer meanwhile. Nothing was lost; rerun the task to build on the new HEAD."
                )
            log_dir = os.path.join(loc.meta, "log")
            os.makedirs(log_dir, exist_ok=True)
            for seq in aborted:  # entries of writers killed before moving HEAD: set aside, not deleted
                os.replace(
                    os.path.join(log_dir, f"{seq:010d}.json"),
                    os.path.join(log_dir, f"{seq:010d}.aborted-{uuid.uuid4().hex[:8]}"),
                )
            entry = os.path.join(log_dir, f"{record.seq:010d}.json")
            self._atomic_write(entry, record.to_json())
            # one rename moves HEAD: the symlink of an owned dataset, the HEAD file of a source
            if loc.owned:
                self._point_view(loc, manifest.digest)
            else:
                self._atomic_write(self._head_file(loc), (manifest.digest + "\n").encode())

    def _point_view(self, loc: DatasetLocation, digest: str) -> None:
        view = loc.path
        if os.path.lexists(view) and not os.path.islink(view):
            raise StorageError(
                f"{view!r} exists and is not a symlink managed by airflow-dataflow; move it away "
                "(or declare the dataset as an observed source) before committing"
            )
        target = os.path.relpath(os.path.join(self._snap_dir(loc, digest), "tree"), os.path.dirname(view))
        tmp = f"{view}.tmp-{uuid.uuid4().hex[:12]}"
        os.symlink(target, tmp)
        os.replace(tmp, view)

    @staticmethod
    def _atomic_write(path: str, data: bytes) -> None:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
