"""Scanning a local directory into a manifest: walk, stat cache, parallel hashing.

* The walk collects columns (path, size, mtime, ctime, inode) with ``os.scandir``.
* The stat cache is checked with one Arrow join; only files it cannot vouch for
  are read.
* Small files (<= 1 MiB) are hashed by one worker process per core when there
  are many of them (Python's per-file overhead would otherwise hold the GIL),
  large files in threads (``hashlib`` releases the GIL while hashing them).
  Workers are plain subprocesses (``python -m airflow_dataflow.core.hashworker``),
  not ``multiprocessing``, which would re-import the caller's main module.

Symlinks are followed when they resolve inside the scanned root and rejected
when they leave it or dangle; ``_dataflow`` folders (metadata) are skipped;
anything but a regular file or a directory is an error naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from airflow_dataflow.core.hashing import SMALL_FILE, digest_small_files, new_hasher
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.core.paths import RESERVED_DIR, decode_name, inside
from airflow_dataflow.core.statcache import StatCache
from airflow_dataflow.exceptions import ScanError
from airflow_dataflow.storage.base import Progress, ProgressFn

BATCH = 512  # small files per hashing task
PROCESS_THRESHOLD = 4096  # fewer files than this are hashed in threads of this process
_SAFE_PATH = r"^[A-Za-z0-9/._~-]*$"

def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


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

    def to_table(self) -> pa.Table:
        """Return the columns as an Arrow table (:data:`WALK_SCHEMA`)."""
        return pa.table(
            [self.rel, self.full, self.size, self.mtime_ns, self.ctime_ns, self.inode], schema=WALK_SCHEMA
        )


WALK_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("full", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("inode", pa.uint64()),
    ]
)


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


def _stamp_ns(stamps: pa.Array) -> pa.Array:
    """Turn find's ``%T@`` strings (``seconds.fraction``) into exact integer nanoseconds."""
    parts = pc.split_pattern(stamps, ".", max_splits=1)
    sec = pc.cast(pc.list_element(parts, 0), pa.int64())
    frac = pc.utf8_slice_codeunits(pc.utf8_rpad(pc.list_element(parts, 1), 9, "0"), 0, 9)
    return pc.add(pc.multiply(sec, 1_000_000_000), pc.cast(frac, pa.int64()))


def _walk_find(root: str, progress: Progress | None) -> pa.Table | None:
    """List files with GNU ``find`` and parse its output with Arrow, or None without ``find``.

    ``find`` writes the numbers and the names to two files (names may hold any
    byte but NUL and ``/``). Symlinks, which need checks, take the Python path;
    anything else that is neither a file nor a directory is an error.
    """
    find = shutil.which("find")
    if find is None:
        return None
    real_root = os.path.realpath(root)
    with tempfile.TemporaryDirectory(prefix="dataflow-find-") as tmp:
        numbers, names = os.path.join(tmp, "numbers"), os.path.join(tmp, "names")
        proc = subprocess.run(
            [find, real_root, "-mindepth", "1", "-type", "d", "-name", RESERVED_DIR, "-prune", "-o",
             "-fprintf", numbers, "%y %s %T@ %C@ %i\\n", "-fprintf", names, "%P\\0"],
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
        )  # fmt: skip
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["find failed"]
            match = re.match(r"^.*?: '(.*)': (.*)$", lines[0])
            if match is None:
                raise ScanError(f"cannot list {root!r}: {lines[0]}")
            path, why = match.groups()
            raise ScanError(f"cannot list {path!r}: {why.lower()}; grant read access or remove it")
        with open(names, "rb") as fh:
            raw_names = fh.read().split(b"\0")[:-1]
        if not raw_names:
            return WALK_SCHEMA.empty_table()
        table = pa_csv.read_csv(
            numbers,
            read_options=pa_csv.ReadOptions(column_names=["kind", "size", "mtime", "ctime", "inode"]),
            parse_options=pa_csv.ParseOptions(delimiter=" ", quote_char=False),
            convert_options=pa_csv.ConvertOptions(
                column_types={"kind": pa.string(), "size": pa.int64(), "mtime": pa.string(),
                              "ctime": pa.string(), "inode": pa.uint64()}
            ),
        )  # fmt: skip
    kinds = table.column("kind").combine_chunks()
    files = pc.equal(kinds, "f")
    try:
        rel = pa.array(raw_names, pa.binary()).cast(pa.string())
    except pa.ArrowInvalid:
        for raw in raw_names:  # find the name to report
            where, name = os.path.split(raw)
            decode_name(name, os.path.join(real_root, os.fsdecode(where)))
        raise
    paths = rel.filter(files)
    regular = pa.table(
        [
            paths,
            pc.binary_join_element_wise(pa.scalar(real_root), paths, pa.scalar("/")),
            table.column("size").filter(files),
            _stamp_ns(table.column("mtime").combine_chunks().filter(files)),
            _stamp_ns(table.column("ctime").combine_chunks().filter(files)),
            table.column("inode").filter(files),
        ],
        schema=WALK_SCHEMA,
    )
    out = Listing()
    others = pc.and_(pc.invert(files), pc.not_equal(kinds, "d"))
    for k in pc.indices_nonzero(others).to_pylist():
        kind, name = kinds[k].as_py(), rel[k].as_py()
        full = f"{real_root}/{name}"
        if kind != "l":
            raise ScanError(
                f"{full!r} is not a regular file (a socket, FIFO or device); datasets hold regular "
                "files only: move it out of the directory"
            )
        target, st = _symlink(full, os.path.basename(name), name, real_root, root)
        if stat.S_ISDIR(st.st_mode):
            if os.path.basename(name) != RESERVED_DIR:
                sub = _walk_python(target, real_root, name, root)
                for k2 in range(len(sub.rel)):
                    out.rel.append(sub.rel[k2])
                    out.full.append(sub.full[k2])
                    out.size.append(sub.size[k2])
                    out.mtime_ns.append(sub.mtime_ns[k2])
                    out.ctime_ns.append(sub.ctime_ns[k2])
                    out.inode.append(sub.inode[k2])
        elif stat.S_ISREG(st.st_mode):
            out.add(name, target, st)
        else:
            raise ScanError(f"{full!r} links to something that is not a regular file; remove it")
    result = pa.concat_tables([regular, out.to_table()]) if out.rel else regular
    if progress is not None:
        progress.tick(result.num_rows)
    return result


def walk(root: str, progress: Progress | None = None) -> pa.Table:
    """List every regular file under ``root`` (see the module docstring for the rules).

    :returns: a table of :data:`WALK_SCHEMA` (relative path, absolute path, stat fields)
    """
    found = _walk_find(root, progress)
    if found is not None:
        return found
    real_root = os.path.realpath(root)
    return _walk_python(real_root, real_root, "", root, progress).to_table()


def _walk_python(start: str, real_root: str, rel_start: str, root: str, progress: Progress | None = None) -> Listing:
    """List files under ``start`` with ``os.scandir`` (paths relative to the root as ``rel_start/...``)."""
    seen_dirs = {start}
    out = Listing()
    stack: list[tuple[str, str]] = [(start, rel_start)]
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


def _hash_in_workers(paths: list[str], sizes: list[int], workers: int) -> list[str]:
    """Hash files in ``workers`` worker processes (see :mod:`airflow_dataflow.core.hashworker`),
    giving each about the same number of bytes."""
    parts: list[list[int]] = [[] for _ in range(workers)]
    load = [0] * workers
    for i in sorted(range(len(paths)), key=lambda k: -sizes[k]):
        k = load.index(min(load))
        parts[k].append(i)
        load[k] += sizes[i] + 16_384  # per-file cost, in bytes of hashing
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "airflow_dataflow.core.hashworker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in parts
    ]
    results: list[list[str]] = [[] for _ in parts]

    def talk(k: int) -> None:
        out, err = procs[k].communicate(b"\0".join(os.fsencode(paths[i]) for i in parts[k]))
        if procs[k].returncode != 0:
            raise ScanError(f"a hashing worker failed ({procs[k].returncode}): {err.decode(errors='replace')[-500:]}")
        results[k] = out.decode().splitlines()

    with ThreadPoolExecutor(max_workers=workers) as threads:
        list(threads.map(talk, range(workers)))
    digests = [""] * len(paths)
    for k, lines in enumerate(results):
        if len(lines) != len(parts[k]):
            raise ScanError(f"a hashing worker answered {len(lines)} of {len(parts[k])} files; rescan")
        for i, line in zip(parts[k], lines, strict=True):
            if line.startswith("!"):
                errno_s, _, message = line[1:].partition("\t")
                raise _scan_error(OSError(int(errno_s), message, paths[i]))
            digests[i] = line
    return digests


def hash_files(paths: list[str], sizes: list[int], progress: Progress | None = None) -> list[str]:
    """Return the content digest of each file, using every core.

    Many files: one worker process per core, balanced by bytes. Few files: small
    ones in batches and large ones one by one, in threads of this process.
    """
    cpus = _cpus()
    if len(paths) >= PROCESS_THRESHOLD and cpus > 1:
        digests = _hash_in_workers(paths, sizes, cpus)
        if progress is not None:
            progress.tick(len(paths), len(paths), sum(sizes))
        return digests
    digests: list[str] = [""] * len(paths)
    small = [i for i, s in enumerate(sizes) if s <= SMALL_FILE]
    large = [i for i, s in enumerate(sizes) if s > SMALL_FILE]
    with ThreadPoolExecutor(max_workers=cpus) as threads:
        large_futures = [(i, threads.submit(_digest_large, paths[i])) for i in large]
        batches = [small[k : k + BATCH] for k in range(0, len(small), BATCH)]
        try:
            results = threads.map(digest_small_files, [[paths[i] for i in b] for b in batches])
            done = nbytes = 0
            for batch, result in zip(batches, results, strict=True):
                for i, digest in zip(batch, result, strict=True):
                    digests[i] = digest
                done += len(batch)
                nbytes += sum(sizes[i] for i in batch)
                if progress is not None:
                    progress.tick(done, len(paths), nbytes)
        except OSError as err:
            raise _scan_error(err) from None
        for i, future in large_futures:
            digests[i] = future.result()
    return digests


def _file_uris(paths: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
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
    table = walk(root, Progress(f"scan {root}", progress))
    digests = (cache or StatCache()).lookup_many(table)
    if isinstance(digests, pa.ChunkedArray):
        digests = digests.combine_chunks()
    missing = pc.is_null(digests)
    todo = pc.indices_nonzero(missing) if digests.null_count else pa.array([], pa.uint64())
    if len(todo):
        found = hash_files(
            table.column("full").take(todo).to_pylist(),
            table.column("size").take(todo).to_pylist(),
            Progress(f"hash {root}", progress),
        )
        digests = pc.replace_with_mask(digests, missing, pa.array(found, pa.string()))
    locations = _file_uris(table.column("full")) if location_of else pa.nulls(table.num_rows, pa.string())
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
