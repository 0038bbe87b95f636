"""Unit tests of airflow_dataflow.storage.local: scanning, the stat cache, commits, CAS."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import stat
import subprocess
import time

import pytest

import airflow_dataflow.storage.localscan as localscan
from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.core.statcache import StatCache
from airflow_dataflow.exceptions import ConcurrentCommitError, SnapshotNotFoundError
from airflow_dataflow.storage.local import LocalStorage, cached_scan, scan_directory

import treeutil  # this folder, on sys.path under pytest (the tests have no __init__.py)
from treeutil import read_plain

OLD = 1_600_000_000  # an mtime far from "now": never racily clean


# -- helpers ------------------------------------------------------------------------------
def write_tree(root, files: dict[str, bytes], mtime: float | None = OLD) -> None:
    """``treeutil.write_tree``, with old mtimes unless told otherwise."""
    treeutil.write_tree(root, files, mtime)


def commit_dir(storage: LocalStorage, loc: DatasetLocation, staging, **kw):
    manifest, _ = scan_directory(str(staging))
    manifest = storage.ingest(loc, str(staging), manifest)
    return manifest, storage.commit(loc, manifest, CommitInfo(author="tester", dag_id="dag", task_id="task"), **kw)


class HashCounter:
    """Counts the files the scanner really reads (wraps, does not replace, hash_files)."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        real = localscan.hash_files

        def counting(paths, sizes, progress=None):
            self.paths.extend(paths)
            return real(paths, sizes, progress)

        monkeypatch.setattr(localscan, "hash_files", counting)


FILES = {
    "a.txt": b"alpha\n",
    "sub/b.bin": bytes(range(256)) * 40,
    "sub/deeper/c.csv": b"x,y\n1,2\n",
    "empty": b"",
    "é ü/名前.txt": "unicode name".encode(),
}


# -- scanning --------------------------------------------------------------------------------
def test_scan_digests_are_sha256_of_bytes(tmp_path):
    write_tree(tmp_path, FILES)
    m, _ = scan_directory(str(tmp_path))
    assert sorted(m.paths()) == sorted(FILES)
    for row in m.rows():
        data = FILES[row["path"]]
        assert row["digest"] == hashlib.sha256(data).hexdigest()
        assert row["size"] == len(data)
        assert row["mtime_ns"] == OLD * 10**9
        assert row["location"].startswith("file://")
    assert m.total_bytes == sum(len(v) for v in FILES.values())


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="sha256sum not installed")
def test_scan_agrees_with_sha256sum(tmp_path):
    write_tree(tmp_path, {k: v for k, v in FILES.items() if " " not in k})
    m, _ = scan_directory(str(tmp_path))
    for row in m.rows():
        out = subprocess.run(["sha256sum", row["path"]], cwd=tmp_path, capture_output=True, check=True, text=True)
        assert out.stdout.split()[0] == row["digest"]


def test_scan_digest_independent_of_mtime_and_place(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_tree(a, FILES, mtime=OLD)
    write_tree(b, dict(reversed(list(FILES.items()))), mtime=OLD + 12345)
    assert scan_directory(str(a))[0].digest == scan_directory(str(b))[0].digest


def test_scan_skips_reserved_metadata_folder(tmp_path):
    write_tree(tmp_path, {"x": b"1", "_dataflow/meta/y": b"2", "sub/_dataflow/z": b"3"})
    m, _ = scan_directory(str(tmp_path))
    assert m.paths() == ["x"]


def test_scan_empty_directory(tmp_path):
    m, _ = scan_directory(str(tmp_path))
    assert len(m) == 0 and m.digest == Manifest.empty().digest


def test_scan_many_files_in_parallel(tmp_path):
    files = {f"d{i % 7}/f{i}": os.urandom(i % 50) for i in range(600)}
    write_tree(tmp_path, files)
    m, _ = scan_directory(str(tmp_path))
    got = dict(zip(m.paths(), m.table.column("digest").to_pylist(), strict=True))
    assert got == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}


# -- the stat cache ---------------------------------------------------------------------------
def test_rescan_of_unchanged_files_reads_no_content(tmp_path, monkeypatch):
    root = tmp_path / "d"
    write_tree(root, FILES)
    counter = HashCounter(monkeypatch)
    first, cache = scan_directory(str(root))
    assert len(counter.paths) == len(FILES)
    counter.paths.clear()
    second, cache2 = scan_directory(str(root), cache=cache)
    assert counter.paths == []
    assert second.digest == first.digest
    assert second.table.equals(first.table)
    # the cache survives a round trip through its Parquet file
    cache_file = str(tmp_path / "cache.parquet")
    cache2.save(cache_file)
    third, _ = scan_directory(str(root), cache=StatCache.load(cache_file))
    assert counter.paths == []
    assert third.digest == first.digest


def test_cached_scan_persists_cache(tmp_path, monkeypatch):
    root = tmp_path / "d"
    write_tree(root, FILES)
    cache_file = str(tmp_path / "c" / "statcache.parquet")
    counter = HashCounter(monkeypatch)
    d1 = cached_scan(str(root), cache_file).digest
    assert os.path.exists(cache_file)
    n = len(counter.paths)
    d2 = cached_scan(str(root), cache_file).digest
    assert d1 == d2 and len(counter.paths) == n  # nothing read the second time


def test_modified_file_same_size_is_detected(tmp_path, monkeypatch):
    root = tmp_path / "d"
    write_tree(root, {"a": b"aaaa", "b": b"bbbb"})
    _, cache = scan_directory(str(root))
    counter = HashCounter(monkeypatch)
    write_tree(root, {"a": b"AAAA"}, mtime=OLD + 1)  # same size, new mtime
    m, _ = scan_directory(str(root), cache=cache)
    assert [os.path.basename(p) for p in counter.paths] == ["a"]
    assert dict(zip(m.paths(), m.table.column("digest").to_pylist(), strict=True))["a"] == hashlib.sha256(b"AAAA").hexdigest()


def test_modified_file_same_size_same_mtime_is_detected(tmp_path):
    """Content rewritten and the mtime put back (like `touch -r`): the ctime still betrays it."""
    root = tmp_path / "d"
    write_tree(root, {"a": b"aaaa"})
    _, cache = scan_directory(str(root))
    time.sleep(0.01)
    write_tree(root, {"a": b"zzzz"}, mtime=OLD)
    m, _ = scan_directory(str(root), cache=cache)
    assert m.rows()[0]["digest"] == hashlib.sha256(b"zzzz").hexdigest()


def test_replaced_file_is_detected(tmp_path):
    root = tmp_path / "d"
    write_tree(root, {"a": b"aaaa"})
    _, cache = scan_directory(str(root))
    write_tree(tmp_path, {"new": b"bbbb"})
    os.replace(tmp_path / "new", root / "a")  # new inode, same size and mtime
    m, _ = scan_directory(str(root), cache=cache)
    assert m.rows()[0]["digest"] == hashlib.sha256(b"bbbb").hexdigest()


def test_racily_clean_files_are_rehashed(tmp_path, monkeypatch):
    root = tmp_path / "d"
    write_tree(root, {"fresh": b"1111", "old": b"2222"}, mtime=None)  # mtime: now
    os.utime(root / "old", (OLD, OLD))
    _, cache = scan_directory(str(root))
    counter = HashCounter(monkeypatch)
    scan_directory(str(root), cache=cache)
    # "fresh" was written within the cache's scan tick: it could change again unseen
    assert [os.path.basename(p) for p in counter.paths] == ["fresh"]


def test_racy_file_changed_within_tick_is_seen(tmp_path):
    root = tmp_path / "d"
    write_tree(root, {"f": b"1111"}, mtime=None)
    st1 = os.stat(root / "f")
    _, cache = scan_directory(str(root))
    # rewrite in place and force identical size/mtime; inode is the same
    with open(root / "f", "r+b") as fh:
        fh.write(b"2222")
    os.utime(root / "f", ns=(st1.st_atime_ns, st1.st_mtime_ns))
    m, _ = scan_directory(str(root), cache=cache)
    assert m.rows()[0]["digest"] == hashlib.sha256(b"2222").hexdigest()


def test_new_and_deleted_files_with_cache(tmp_path):
    root = tmp_path / "d"
    write_tree(root, {"a": b"1", "b": b"2"})
    _, cache = scan_directory(str(root))
    os.unlink(root / "a")
    write_tree(root, {"c": b"3"})
    m, _ = scan_directory(str(root), cache=cache)
    assert m.paths() == ["b", "c"]


def test_corrupt_cache_file_is_an_empty_cache(tmp_path):
    bad = tmp_path / "statcache.parquet"
    bad.write_bytes(b"PAR1 garbage")
    assert len(StatCache.load(str(bad))) == 0
    assert len(StatCache.load(str(tmp_path / "missing.parquet"))) == 0


def test_storage_scan_keeps_cache_in_user_cache_then_under_dataflow(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAFLOW_CACHE_DIR", str(tmp_path / "usercache"))
    data = tmp_path / "ds"
    write_tree(data, FILES)
    storage = LocalStorage()
    loc = DatasetLocation.parse(str(data))
    counter = HashCounter(monkeypatch)
    d1 = storage.scan(loc).digest
    # a plain directory: nothing is written beside it, the cache goes to the user's cache folder
    assert not (tmp_path / "_dataflow").exists()
    assert list((tmp_path / "usercache" / "statcache").iterdir())
    n = len(counter.paths)
    assert storage.scan(loc).digest == d1
    assert len(counter.paths) == n
    # once the directory has dataset metadata, its cache lives there
    os.makedirs(loc.meta)
    storage.scan(loc)
    assert os.path.exists(os.path.join(loc.meta, "statcache.parquet"))


# -- commits --------------------------------------------------------------------------------
@pytest.fixture
def ds(tmp_path):
    storage = LocalStorage()
    loc = DatasetLocation.parse(str(tmp_path / "data" / "ds"))
    os.makedirs(tmp_path / "data")
    return storage, loc


def test_no_head_before_first_commit(ds):
    storage, loc = ds
    assert storage.read_head(loc) is None
    assert storage.head(loc) is None
    assert storage.log(loc) == []
    with pytest.raises(SnapshotNotFoundError) as err:
        storage.snapshot(loc)
    assert loc.uri in str(err.value)


def test_commit_gives_plain_directory(ds, tmp_path):
    storage, loc = ds
    staging = tmp_path / "staging"
    write_tree(staging, FILES)
    manifest, rec = commit_dir(storage, loc, staging)
    assert rec.seq == 1 and rec.parent is None and rec.digest == manifest.digest
    assert rec.files == len(FILES) and rec.bytes == sum(map(len, FILES.values()))
    assert os.path.islink(loc.path)
    # plain open()/os.walk, no package code, sees exactly the files
    assert read_plain(loc.path) == FILES
    assert storage.read_head(loc) == manifest.digest
    assert storage.head(loc).digest == manifest.digest
    assert storage.snapshot(loc, manifest.digest[:10]).digest == manifest.digest
    # the manifest beside the data is plain Parquet
    import pyarrow.parquet as pq

    t = pq.read_table(os.path.join(loc.meta, "snapshots", manifest.digest, "manifest.parquet"))
    assert t.schema.metadata[b"dataflow.snapshot_digest"].decode() == manifest.digest
    # the content store holds read-only objects
    for row in storage.head(loc).rows():
        obj = loc.object_key(row["digest"])
        assert stat.S_IMODE(os.stat(obj).st_mode) == 0o444
        assert row["location"] == loc.object_uri(row["digest"])


def test_second_commit_log_parents_and_shared_inodes(ds, tmp_path):
    storage, loc = ds
    s1 = tmp_path / "s1"
    write_tree(s1, FILES)
    m1, r1 = commit_dir(storage, loc, s1)
    tree1 = os.path.join(loc.meta, "snapshots", m1.digest, "tree")

    files2 = dict(FILES)
    files2["a.txt"] = b"alpha, changed\n"
    del files2["empty"]
    files2["new/file"] = b"new"
    s2 = tmp_path / "s2"
    write_tree(s2, files2)
    m2, r2 = commit_dir(storage, loc, s2)
    tree2 = os.path.join(loc.meta, "snapshots", m2.digest, "tree")

    log = storage.log(loc)
    assert [r.seq for r in log] == [1, 2]  # oldest first
    assert log[0].digest == m1.digest and log[-1].digest == m2.digest  # newest last
    assert r2.parent == r1.digest == m1.digest and r1.parent is None
    assert log[-1].info.dag_id == "dag" and log[-1].info.author == "tester"

    assert storage.read_head(loc) == m2.digest
    assert read_plain(loc.path) == files2
    assert read_plain(tree1) == FILES  # the old snapshot is still readable
    assert os.path.realpath(loc.path) == os.path.realpath(tree2)

    for rel in ("sub/b.bin", "sub/deeper/c.csv", "é ü/名前.txt"):
        ino1 = os.stat(os.path.join(tree1, rel)).st_ino
        ino2 = os.stat(os.path.join(tree2, rel)).st_ino
        obj = os.stat(loc.object_key(hashlib.sha256(FILES[rel]).hexdigest())).st_ino
        assert ino1 == ino2 == obj, rel  # the bytes exist once
    assert os.stat(os.path.join(tree1, "a.txt")).st_ino != os.stat(os.path.join(tree2, "a.txt")).st_ino


def test_equal_files_are_stored_once(ds, tmp_path):
    storage, loc = ds
    s = tmp_path / "s"
    write_tree(s, {"x/1": b"same", "y/2": b"same", "z": b"other"})
    commit_dir(storage, loc, s)
    assert os.stat(os.path.join(loc.path, "x/1")).st_ino == os.stat(os.path.join(loc.path, "y/2")).st_ino
    objects = [f for _, _, fs in os.walk(loc.objects) for f in fs]
    assert len(objects) == 2


def test_recommitting_an_old_snapshot(ds, tmp_path):
    storage, loc = ds
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    write_tree(s1, {"a": b"1"})
    write_tree(s2, {"a": b"2"})
    m1, _ = commit_dir(storage, loc, s1)
    commit_dir(storage, loc, s2)
    _, r3 = commit_dir(storage, loc, s1)  # a revert
    assert r3.seq == 3 and storage.read_head(loc) == m1.digest
    assert [r.seq for r in storage.log(loc)] == [1, 2, 3]
    assert read_plain(loc.path) == {"a": b"1"}


def test_stale_parent_raises_and_changes_nothing(ds, tmp_path):
    storage, loc = ds
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "s3"
    write_tree(s1, {"a": b"1"})
    write_tree(s2, {"a": b"2"})
    write_tree(s3, {"a": b"3"})
    m1, _ = commit_dir(storage, loc, s1)
    m2, _ = commit_dir(storage, loc, s2, parent=m1.digest)
    log_before = storage.log(loc)
    log_files = sorted(os.listdir(os.path.join(loc.meta, "log")))
    with pytest.raises(ConcurrentCommitError) as err:
        commit_dir(storage, loc, s3, parent=m1.digest)
    assert loc.uri in str(err.value) and m1.digest in str(err.value) and m2.digest in str(err.value)
    assert storage.read_head(loc) == m2.digest
    assert storage.log(loc) == log_before
    assert sorted(os.listdir(os.path.join(loc.meta, "log"))) == log_files
    assert read_plain(loc.path) == {"a": b"2"}
    # a first commit that expects no HEAD also loses
    with pytest.raises(ConcurrentCommitError):
        commit_dir(storage, loc, s3, parent=None)
    assert storage.read_head(loc) == m2.digest


def test_head_moving_away_and_back_loses_no_log_entry(ds, tmp_path):
    """ABA: while writer B works from X, others commit Y and then X again.

    B's compare-and-swap sees HEAD == X, but the log moved on; B must not overwrite
    their entries (it may win with a fresh sequence number, or lose with a clear error).
    """
    storage, loc = ds
    dirs = {}
    for name, data in {"x": b"x", "y": b"y", "b": b"b"}.items():
        dirs[name] = tmp_path / f"s-{name}"
        write_tree(dirs[name], {"f": data})
    mx, _ = commit_dir(storage, loc, dirs["x"])
    my, _ = scan_directory(str(dirs["y"]))
    my = storage.ingest(loc, str(dirs["y"]), my)
    mb, _ = scan_directory(str(dirs["b"]))
    mb = storage.ingest(loc, str(dirs["b"]), mb)

    class SlowWriter(LocalStorage):
        def swap_head(self, loc_, manifest, expected, record):
            other = LocalStorage()
            other.commit(loc_, my, CommitInfo(author="A"))  # X -> Y
            other.commit(loc_, mx, CommitInfo(author="C"))  # Y -> X
            return super().swap_head(loc_, manifest, expected, record)

    try:
        SlowWriter().commit(loc, mb, CommitInfo(author="B"), parent=mx.digest)
        b_won = True
    except ConcurrentCommitError:
        b_won = False
    log = storage.log(loc)
    authors = [r.info.author for r in log]
    assert authors[:3] == [log[0].info.author, "A", "C"], authors
    assert [r.seq for r in log] == list(range(1, len(log) + 1))
    if b_won:
        assert authors[3:] == ["B"] and storage.read_head(loc) == mb.digest
    else:
        assert len(log) == 3 and storage.read_head(loc) == mx.digest


# -- two processes race ------------------------------------------------------------------------
def _race_child(path: str, staging: str, parent: str, barrier, results) -> None:
    storage = LocalStorage()
    loc = DatasetLocation.parse(path)
    m, _ = scan_directory(staging)
    m = storage.ingest(loc, staging, m)
    barrier.wait(timeout=30)
    try:
        rec = storage.commit(loc, m, CommitInfo(author=os.path.basename(staging)), parent=parent)
        results.put(("won", rec.seq, m.digest))
    except ConcurrentCommitError as err:
        results.put(("lost", str(err), m.digest))


def test_two_processes_race_from_same_parent(ds, tmp_path):
    storage, loc = ds
    base = tmp_path / "base"
    write_tree(base, {"f": b"base"})
    m0, _ = commit_dir(storage, loc, base)
    stagings = []
    for who in ("w1", "w2"):
        s = tmp_path / who
        write_tree(s, {"f": who.encode(), **{f"many/{i}": f"{who}{i}".encode() for i in range(200)}})
        stagings.append(str(s))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race_child, args=(loc.path, s, m0.digest, barrier, results)) for s in stagings]
    for p in procs:
        p.start()
    outcome = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    won = [o for o in outcome if o[0] == "won"]
    lost = [o for o in outcome if o[0] == "lost"]
    assert len(won) == 1 and len(lost) == 1, outcome
    assert won[0][1] == 2
    assert loc.uri in lost[0][1]
    assert storage.read_head(loc) == won[0][2]
    log = storage.log(loc)
    assert [r.seq for r in log] == [1, 2]
    assert log[1].digest == won[0][2] and log[1].parent == m0.digest
    entries = [n for n in os.listdir(os.path.join(loc.meta, "log")) if n.endswith(".json")]
    assert sorted(entries) == ["0000000001.json", "0000000002.json"]
    # the winner's tree is what readers see
    winner = next(s for s in stagings if scan_directory(s)[0].digest == won[0][2])
    assert read_plain(loc.path) == read_plain(winner)
