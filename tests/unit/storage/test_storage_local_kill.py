"""A commit killed with SIGKILL leaves the previous snapshot current, intact, and nothing lost.

The victim is a real child process running the real commit code; nothing in the
product has a test hook. The one case that cannot be hit reliably by timing a
kill (between writing the log entry and moving HEAD) is covered twice: by
leaving the state such a writer leaves by hand, and by a child that kills itself
at that point (instrumentation inside the child process only).
"""

from __future__ import annotations

import glob
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from airflow_dataflow.core.commit import CommitInfo, CommitRecord
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.storage.local import LocalStorage, scan_directory

from treeutil import read_plain, write_tree  # this folder, on sys.path under pytest (no __init__.py)

N_FILES = 20_000

BASE_FILES = {"keep.txt": b"kept\n", "dir/data.bin": os.urandom(5000), "dir/sub/x.csv": b"a,b\n1,2\n"}

CHILD_COMMIT = textwrap.dedent(
    """
    import sys
    from airflow_dataflow.core.commit import CommitInfo
    from airflow_dataflow.core.location import DatasetLocation
    from airflow_dataflow.core.manifest import Manifest
    from airflow_dataflow.storage.local import LocalStorage
    manifest = Manifest.read(sys.argv[1])
    loc = DatasetLocation.parse(sys.argv[2])
    LocalStorage().commit(loc, manifest, CommitInfo(author="victim"), parent=sys.argv[3])
    print("committed", flush=True)
    """
)

# the child kills itself after the log entry is written, right before HEAD moves,
# while it holds the commit lock (instrumentation of the child only)
CHILD_DIES_BEFORE_HEAD_MOVE = textwrap.dedent(
    """
    import os, signal, sys
    from airflow_dataflow.core.commit import CommitInfo
    from airflow_dataflow.core.location import DatasetLocation
    from airflow_dataflow.core.manifest import Manifest
    from airflow_dataflow.storage.local import LocalStorage

    def die(self, loc, digest):
        os.kill(os.getpid(), signal.SIGKILL)

    LocalStorage._point_view = die
    manifest = Manifest.read(sys.argv[1])
    loc = DatasetLocation.parse(sys.argv[2])
    LocalStorage().commit(loc, manifest, CommitInfo(author="victim"), parent=sys.argv[3])
    """
)


def stage(storage, loc, staging) -> Manifest:
    manifest, _ = scan_directory(str(staging))
    return storage.ingest(loc, str(staging), manifest)


def big_manifest_of(storage, loc, tmp_path, n: int) -> tuple[Manifest, dict[str, bytes]]:
    """A manifest of ``n`` files whose bytes are 100 distinct stored objects.

    Only the 100 contents are written and stored; the commit still has to build a
    tree of ``n`` hardlinks, which is what the kill has to interrupt.
    """
    src = tmp_path / "contents"
    write_tree(src, {f"c{j:03d}": b"payload %d\n" % j for j in range(100)})
    stored = stage(storage, loc, src)
    by_name = dict(zip(stored.paths(), stored.rows(), strict=True))
    paths, sizes, digests, locations, files = [], [], [], [], {}
    for i in range(n):
        row = by_name[f"c{i % 100:03d}"]
        rel = f"d{i % 100:02d}/f{i:05d}.txt"
        paths.append(rel)
        sizes.append(row["size"])
        digests.append(row["digest"])
        locations.append(row["location"])
        files[rel] = b"payload %d\n" % (i % 100)
    table = pa.table({"path": paths, "size": pa.array(sizes, pa.int64()), "digest": digests, "location": locations})
    return Manifest.from_table(table), files


@pytest.fixture
def committed(tmp_path):
    """A dataset with one committed snapshot of BASE_FILES."""
    storage = LocalStorage()
    loc = DatasetLocation.parse(str(tmp_path / "data" / "ds"))
    os.makedirs(tmp_path / "data")
    base = tmp_path / "base"
    write_tree(base, BASE_FILES)
    m = stage(storage, loc, base)
    storage.commit(loc, m, CommitInfo(author="setup"))
    return storage, loc, m


def assert_previous_intact(storage, loc, m0, log_before):
    """HEAD is m0, its tree is complete and every byte is right, the log is unchanged."""
    assert storage.read_head(loc) == m0.digest
    assert storage.log(loc) == log_before
    files = read_plain(loc.path)
    assert files == BASE_FILES
    head = storage.head(loc)
    for row in head.rows():
        path = os.path.join(loc.path, row["path"])
        with open(path, "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == row["digest"], path
        # and the content store object is intact too
        with open(loc.object_key(row["digest"]), "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == row["digest"]


def assert_next_commit_works(storage, loc, tmp_path, parent):
    """The lock was released by the kernel: a new commit goes through at once."""
    nxt = tmp_path / "next"
    write_tree(nxt, {"next.txt": b"after the crash"})
    m = stage(storage, loc, nxt)
    t0 = time.monotonic()
    rec = storage.commit(loc, m, CommitInfo(author="survivor"), parent=parent)
    assert time.monotonic() - t0 < 10  # did not wait out the lock timeout
    assert storage.read_head(loc) == m.digest
    assert read_plain(loc.path) == {"next.txt": b"after the crash"}
    log = storage.log(loc)
    assert log[-1] == rec and rec.parent == parent
    assert [r.seq for r in log] == list(range(1, len(log) + 1))
    return rec


def test_sigkill_while_building_the_snapshot_tree(committed, tmp_path):
    storage, loc, m0 = committed
    log_before = storage.log(loc)

    big_manifest, big_files = big_manifest_of(storage, loc, tmp_path, N_FILES)
    mpath = str(tmp_path / "big.parquet")
    big_manifest.write(mpath)

    snapshots = os.path.join(loc.meta, "snapshots")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD_COMMIT, mpath, loc.path, m0.digest],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        # a tree of the new snapshot being built, wherever the writer builds it
        seen = [p for p in glob.glob(os.path.join(snapshots, "*", "tree", "d*"), include_hidden=True)
                if m0.digest not in p]
        if len(seen) >= 3:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (
        f"the child was not killed mid-commit (exit {proc.returncode}, saw {len(seen)} dirs): "
        f"{out.decode()} {err.decode()}"
    )
    assert seen, "never saw the snapshot tree being built"
    # the dead writer's half tree is left in a temp dir nobody reads, never as a snapshot
    assert not os.path.exists(os.path.join(snapshots, big_manifest.digest))
    assert glob.glob(os.path.join(snapshots, ".tmp-*"))

    assert_previous_intact(storage, loc, m0, log_before)
    assert_next_commit_works(storage, loc, tmp_path, m0.digest)

    # and the big snapshot can still be committed in full afterwards
    rec = storage.commit(loc, big_manifest, CommitInfo(author="retry"))
    assert rec.digest == big_manifest.digest
    assert read_plain(loc.path) == big_files


@pytest.mark.parametrize("delay", [0.5, 1.2])
def test_sigkill_at_any_time_shows_old_or_complete_new(committed, tmp_path, delay):
    """Kill a commit after various delays: HEAD is the old snapshot, or the complete new one."""
    storage, loc, m0 = committed
    log_before = storage.log(loc)
    manifest, files = big_manifest_of(storage, loc, tmp_path, 5000)
    mpath = str(tmp_path / "m.parquet")
    manifest.write(mpath)
    proc = subprocess.Popen([sys.executable, "-c", CHILD_COMMIT, mpath, loc.path, m0.digest],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()
    head = storage.read_head(loc)
    if head == m0.digest:
        assert_previous_intact(storage, loc, m0, log_before)
        parent = m0.digest
    else:
        assert head == manifest.digest
        assert read_plain(loc.path) == files
        log = storage.log(loc)
        assert log[:-1] == log_before and log[-1].digest == manifest.digest
        parent = manifest.digest
    assert_next_commit_works(storage, loc, tmp_path, parent)


def test_writer_dead_between_log_entry_and_head_move_by_hand(committed, tmp_path):
    """The state a writer killed after writing its log entry leaves: an entry HEAD never got."""
    storage, loc, m0 = committed
    log_before = storage.log(loc)
    other = tmp_path / "other"
    write_tree(other, {"ghost.txt": b"never committed"})
    ghost = stage(storage, loc, other)
    storage.store_snapshot(loc, ghost)  # the dead writer got this far ...
    leftover = CommitRecord(seq=2, digest=ghost.digest, parent=m0.digest, time=time.time(), files=1, bytes=15,
                            info=CommitInfo(author="dead-writer"))
    log_dir = os.path.join(loc.meta, "log")
    with open(os.path.join(log_dir, "0000000002.json"), "wb") as fh:  # ... and wrote its log entry
        fh.write(leftover.to_json())

    assert storage.log(loc) == log_before  # the entry is ignored: that commit never happened
    assert_previous_intact(storage, loc, m0, log_before)

    rec = assert_next_commit_works(storage, loc, tmp_path, m0.digest)
    assert rec.seq == 2
    names = sorted(os.listdir(log_dir))
    aborted = [n for n in names if n.startswith("0000000002.aborted-")]
    assert len(aborted) == 1, names
    with open(os.path.join(log_dir, aborted[0]), "rb") as fh:
        assert CommitRecord.from_json(fh.read(), aborted[0]).info.author == "dead-writer"  # kept for forensics
    with open(os.path.join(log_dir, "0000000002.json"), "rb") as fh:
        assert CommitRecord.from_json(fh.read(), "x").info.author == "survivor"


def test_writer_killed_holding_the_lock_before_head_move(committed, tmp_path):
    """A real child dies by SIGKILL after writing its log entry, holding the commit lock."""
    storage, loc, m0 = committed
    log_before = storage.log(loc)
    other = tmp_path / "other"
    write_tree(other, {"ghost.txt": b"never committed"})
    ghost = stage(storage, loc, other)
    mpath = str(tmp_path / "ghost.parquet")
    ghost.write(mpath)
    proc = subprocess.run([sys.executable, "-c", CHILD_DIES_BEFORE_HEAD_MOVE, mpath, loc.path, m0.digest],
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    log_dir = os.path.join(loc.meta, "log")
    assert "0000000002.json" in os.listdir(log_dir)  # it did die after writing the entry

    assert_previous_intact(storage, loc, m0, log_before)
    rec = assert_next_commit_works(storage, loc, tmp_path, m0.digest)
    assert rec.seq == 2
    assert any(n.startswith("0000000002.aborted-") for n in os.listdir(log_dir))
