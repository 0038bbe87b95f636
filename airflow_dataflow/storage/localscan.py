"""Scanning a local directory into a manifest: walk, stat cache, parallel hashing.

* The walk collects columns (path, size, mtime, ctime, inode) with ``os.scandir``.
* The stat cache is checked with one Arrow join; only files it cannot vouch for
  are read.
* Small files (<= 1 MiB) are hashed in batches in worker processes when there
  are many of them (Python's per-file overhead would otherwise hold the GIL),
  large files in threads (``hashlib`` releases the GIL while hashing them).

Symlinks are followed when they resolve inside the scanned root and rejected
when they leave it or dangle; ``_dataflow`` folders (metadata) are skipped;
anything but a regular file or a directory is an error naming it.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc

from airflow_dataflow.core.hashing import SMALL_FILE, digest_small_files, new_hasher
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.core.paths import RESERVED_DIR, decode_name, inside
from airflow_dataflow.core.statcache import StatCache
from airflow_dataflow.exceptions import ScanError
from airflow_dataflow.storage.base import Progress, ProgressFn

BATCH = 512  # small files per hashing task
PROCESS_THRESHOLD = 4096  # fewer small files than this are hashed in threads
_SAFE_PATH = r"^[A-Za-z0-9/._~-]*$"

_pool_lock = threading.Lock()
_process_pool: ProcessPoolExecutor | None = None


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _processes() -> Executor | None:
    """Return the shared process pool for hashing (started on first use), or None."""
    global _process_pool
    with _pool_lock:
        if _process_pool is None:
            try:
                ctx = multiprocessing.get_context("forkserver")
                _process_pool = ProcessPoolExecutor(max_workers=_cpus(), mp_context=ctx)
            except (OSError, ValueError):
                return None
        return _process_pool


def _reset_processes() -> None:
    global _process_pool
    with _pool_lock:
        if _process_pool is not None:
            _process_pool.shutdown(wait=False, cancel_futures=True)
        _process_pool = None


@dataclass
class Listing:
    """Columns of the files found by a walk."""

    rel: list[str] = field(default_factory=list)
    full: list[str] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    mtime_ns: list[int] = field(default_factory=list)
    ctime_ns: list[int] = field(default_factory=list)
    inode: list[int] = field(default_factory=list)

    def add(self, rel: str, full: str, st: os.stat_result) -> None:
        """Append one file."""
        self.rel.append(rel)
        self.full.append(full)
        self.size.append(st.st_size)
        self.mtime_ns.append(st.st_mtime_ns)
        self.ctime_ns.append(st.st_ctime_ns)
        self.inode.append(st.st_ino)


def _symlink(full: str, name: str, rel: str, real_root: str, root: str) -> tuple[str, os.stat_result]:
    target = os.path.realpath(full)
    if not inside(real_root, target):
        raise ScanError(
            f"symlink {full!r} points to {target!r}, outside the scanned root {root!r}; symlinks "
            "leaving a dataset are rejected: copy the file in or remove the link"
        )
    try:
        return target, os.stat(target)
    except FileNotFoundError:
        raise ScanError(f"symlink {full!r} is dangling (target {target!r} does not exist); remove or fix it") from None


def walk(root: str, progress: Progress | None = None) -> Listing:
    """List every regular file under ``root`` (see the module docstring for the rules)."""
    real_root = os.path.realpath(root)
    seen_dirs = {real_root}
    out = Listing()
    stack: list[tuple[str, str]] = [(real_root, "")]
    is_reg, is_dir = stat.S_ISREG, stat.S_ISDIR
    while stack:
        directory, rel_dir = stack.pop()
        prefix = rel_dir + "/" if rel_dir else ""
        try:
            it = os.scandir(directory)
        except PermissionError as err:
            raise ScanError(f"cannot list directory {directory!r}: permission denied; grant read access") from err
        except OSError as err:
            raise ScanError(f"cannot list directory {directory!r}: {err.strerror}") from err
        with it:
            for entry in it:
                name = entry.name
                if not name.isascii():
                    name = decode_name(os.fsencode(name), directory)
                full = entry.path
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if name != RESERVED_DIR:
                            stack.append((full, prefix + name))
                        continue
                    if entry.is_symlink():
                        full, st = _symlink(full, name, prefix + name, real_root, root)
                        if is_dir(st.st_mode):
                            if name != RESERVED_DIR and full not in seen_dirs:
                                seen_dirs.add(full)
                                stack.append((full, prefix + name))
                            continue
                    else:
                        st = entry.stat(follow_symlinks=False)
                except PermissionError as err:
                    raise ScanError(f"cannot stat {full!r}: permission denied") from err
                if not is_reg(st.st_mode):
                    raise ScanError(
                        f"{full!r} is not a regular file (a socket, FIFO or device); datasets hold "
                        "regular files only: move it out of the directory"
                    )
                out.add(prefix + name, full, st)
        if progress is not None:
            progress.tick(len(out.rel))
    return out


def _scan_error(err: OSError) -> ScanError:
    path = err.filename
    if isinstance(err, PermissionError):
        return ScanError(f"cannot read {path!r}: permission denied; grant read access or remove the file")
    if isinstance(err, FileNotFoundError):
        return ScanError(f"{path!r} disappeared during the scan; rescan once writers are done")
    return ScanError(f"cannot read {path!r}: {err.strerror}")


def _digest_large(path: str) -> str:
    h = new_hasher()
    buf = bytearray(4 << 20)
    view = memoryview(buf)
    try:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(view[:n])
    except OSError as err:
        raise _scan_error(OSError(err.errno, err.strerror, path)) from None
    return h.hexdigest()


def hash_files(paths: list[str], sizes: list[int], progress: Progress | None = None) -> list[str]:
    """Return the content digest of each file, using every core."""
    digests: list[str] = [""] * len(paths)
    small = [i for i, s in enumerate(sizes) if s <= SMALL_FILE]
    large = [i for i, s in enumerate(sizes) if s > SMALL_FILE]
    batches = [small[k : k + BATCH] for k in range(0, len(small), BATCH)]
    done = 0
    nbytes = 0
    cpus = _cpus()
    with ThreadPoolExecutor(max_workers=cpus) as threads:
        large_futures = [(i, threads.submit(_digest_large, paths[i])) for i in large]
        pool: Executor | None = _processes() if len(small) >= PROCESS_THRESHOLD and cpus > 1 else None
        try:
            results = (pool or threads).map(digest_small_files, [[paths[i] for i in b] for b in batches])
            for batch, result in zip(batches, results, strict=True):
                for i, digest in zip(batch, result, strict=True):
                    digests[i] = digest
                done += len(batch)
                nbytes += sum(sizes[i] for i in batch)
                if progress is not None:
                    progress.tick(done, len(paths), nbytes)
        except BrokenProcessPool:
            _reset_processes()
            for batch in batches:
                for i, digest in zip(batch, digest_small_files([paths[i] for i in batch]), strict=True):
                    digests[i] = digest
        except OSError as err:
            raise _scan_error(err) from None
        for i, future in large_futures:
            digests[i] = future.result()
    return digests


def _file_uris(paths: pa.Array) -> pa.Array:
    safe = pc.match_substring_regex(paths, _SAFE_PATH)
    if pc.all(safe).as_py():
        return pc.binary_join_element_wise(pa.scalar("file://"), paths, pa.scalar(""))
    return pa.array(["file://" + quote(p) for p in paths.to_pylist()], pa.string())


def scan_directory(
    root: str,
    *,
    cache: StatCache | None = None,
    progress: ProgressFn | None = None,
    location_of: bool = True,
) -> tuple[Manifest, StatCache]:
    """Scan a local directory into a manifest, hashing only files the cache cannot vouch for.

    :param root: directory to scan (a symlink to a directory is followed)
    :param cache: stat cache of an earlier scan of the same directory
    :param progress: receives a progress line every few seconds on long scans
    :param location_of: fill ``location`` with each file's ``file://`` URI
    :returns: the manifest and the stat cache to keep for the next scan (its
        ``hashed`` attribute tells how many files were read)
    :raises ScanError: the directory is missing or a file cannot be read
    """
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.lexists(root) else "is not a directory"
        raise ScanError(f"cannot scan {root!r}: it {what}; check the path or URI")
    start_ns = time.time_ns()
    listing = walk(root, Progress(f"scan {root}", progress))
    table = pa.table(
        {
            "path": pa.array(listing.rel, pa.string()),
            "size": pa.array(listing.size, pa.int64()),
            "mtime_ns": pa.array(listing.mtime_ns, pa.int64()),
            "ctime_ns": pa.array(listing.ctime_ns, pa.int64()),
            "inode": pa.array(listing.inode, pa.uint64()),
        }
    )
    digests = (cache or StatCache()).lookup_many(table)
    missing = pc.is_null(digests)
    todo = pc.indices_nonzero(missing).to_pylist() if digests.null_count else []
    if todo:
        found = hash_files(
            [listing.full[i] for i in todo],
            [listing.size[i] for i in todo],
            Progress(f"hash {root}", progress),
        )
        filled = digests.to_pylist()
        for i, digest in zip(todo, found, strict=True):
            filled[i] = digest
        digests = pa.array(filled, pa.string())
    locations = (
        _file_uris(pa.array(listing.full, pa.string())) if location_of else pa.nulls(len(listing.rel), pa.string())
    )
    manifest = Manifest.from_table(
        pa.table(
            {
                "path": table.column("path"),
                "size": table.column("size"),
                "mtime_ns": table.column("mtime_ns"),
                "digest": digests,
                "location": locations,
            }
        ),
        where=root,
    )
    new_cache = StatCache(
        table=table.append_column("digest", digests).select(["path", "size", "mtime_ns", "ctime_ns", "inode", "digest"]),
        scan_start_ns=start_ns,
        hashed=len(todo),
    )
    return manifest, new_cache


def cached_scan(root: str, cache_file: str | None, progress: ProgressFn | None = None) -> Manifest:
    """Scan ``root`` with a stat cache kept in ``cache_file`` (None: no cache)."""
    cache = StatCache.load(cache_file) if cache_file else None
    manifest, new_cache = scan_directory(root, cache=cache, progress=progress)
    if cache_file:
        try:
            new_cache.save(cache_file)
        except OSError:
            pass  # a cache that cannot be written only costs time on the next scan
    return manifest


def user_cache_file(root: str) -> str:
    """Return the stat cache file for scans of ``root`` (a local path or a URI) outside any dataset.

    The cache lives in ``$DATAFLOW_CACHE_DIR`` (default ``~/.cache/airflow-dataflow``),
    so that scanning a directory or prefix never writes beside it.
    """
    base = os.environ.get("DATAFLOW_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "airflow-dataflow"
    )
    name = root if "://" in root else os.path.realpath(root)
    key = hashlib.sha256(name.encode()).hexdigest()[:24]
    return os.path.join(base, "statcache", f"{key}.parquet")
