"""Bad input gets a clear error that names the path, and nothing on disk is lost or changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.exceptions import (
    ConcurrentCommitError,
    DataflowError,
    InvalidPathError,
    ManifestError,
    ScanError,
    StorageError,
)
from airflow_dataflow.storage.local import LocalStorage, scan_directory


def write_tree(root, files):
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def fingerprint(root) -> dict:
    """Every entry under root (bytes names), with its kind, link target or content hash."""
    out = {}
    for dirpath, dirs, names in os.walk(os.fsencode(str(root))):
        for name in dirs + names:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                out[full] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[full] = ("dir", st.st_mode)
            else:
                try:
                    with open(full, "rb") as fh:
                        out[full] = ("file", st.st_mode, hashlib.sha256(fh.read()).hexdigest())
                except PermissionError:
                    out[full] = ("file", st.st_mode, None)
    return out


D = "d" * 64


# -- manifests with unsafe paths ---------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../etc/passwd", "a/../../b", "/etc/passwd", "/abs/x"])
def test_unsafe_path_in_rows(bad):
    with pytest.raises(InvalidPathError) as err:
        Manifest.from_rows([{"path": "fine", "size": 1, "digest": D}, {"path": bad, "size": 1, "digest": D}],
                           where="rows-from-somewhere")
    assert repr(bad) in str(err.value)
    assert "rows-from-somewhere" in str(err.value)


def _manifest_parquet(path, paths, digest_meta=None):
    table = pa.table({"path": paths, "size": [1] * len(paths), "digest": [D] * len(paths)})
    table = table.replace_schema_metadata(
        {
            "dataflow.format": "airflow-dataflow-manifest",
            "dataflow.version": "1",
            "dataflow.digest_algorithm": "sha256",
            **({"dataflow.snapshot_digest": digest_meta} if digest_meta else {}),
        }
    )
    pq.write_table(table, str(path))


@pytest.mark.parametrize("bad", ["../outside", "x/../../outside", "/etc/shadow", "_dataflow/objects/x", "a/_dataflow"])
def test_unsafe_path_in_crafted_parquet(tmp_path, bad):
    path = tmp_path / "crafted.parquet"
    _manifest_parquet(path, ["ok", bad])
    before = path.read_bytes()
    with pytest.raises(InvalidPathError) as err:
        Manifest.read(str(path))
    assert str(path) in str(err.value)
    assert repr(bad) in str(err.value)
    assert path.read_bytes() == before


# -- corrupt manifests --------------------------------------------------------------------------
def _good_manifest_file(tmp_path):
    m = Manifest.from_rows([{"path": f"f{i}", "size": i, "digest": hashlib.sha256(b"%d" % i).hexdigest()} for i in range(50)])
    path = tmp_path / "manifest.parquet"
    m.write(str(path))
    return m, path


@pytest.mark.parametrize("keep", [0, 4, 100, -8, -1])
def test_truncated_manifest(tmp_path, keep):
    _, path = _good_manifest_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ManifestError) as err:
        Manifest.read(str(path))
    assert str(path) in str(err.value)


def test_garbage_file_as_manifest(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("just some text, not parquet\n")
    with pytest.raises(ManifestError) as err:
        Manifest.read(str(path))
    assert str(path) in str(err.value)
    assert path.read_text() == "just some text, not parquet\n"


def test_foreign_parquet_is_not_a_manifest(tmp_path):
    path = tmp_path / "sales.parquet"
    pq.write_table(pa.table({"path": ["a"], "size": [1], "digest": [D]}), str(path))  # right columns, no metadata
    with pytest.raises(ManifestError) as err:
        Manifest.read(str(path))
    assert str(path) in str(err.value) and "not a dataset manifest" in str(err.value)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"city": ["Oslo"], "sales": [3]}), str(other))
    with pytest.raises(ManifestError) as err:
        Manifest.read(str(other))
    assert str(other) in str(err.value)


def test_unsupported_version_and_algorithm(tmp_path):
    path = tmp_path / "v2.parquet"
    t = pa.table({"path": ["a"], "size": [1], "digest": [D]})
    pq.write_table(t.replace_schema_metadata({"dataflow.format": "airflow-dataflow-manifest", "dataflow.version": "2",
                                              "dataflow.digest_algorithm": "sha256"}), str(path))
    with pytest.raises(ManifestError, match="version") as err:
        Manifest.read(str(path))
    assert str(path) in str(err.value)
    pq.write_table(t.replace_schema_metadata({"dataflow.format": "airflow-dataflow-manifest", "dataflow.version": "1",
                                              "dataflow.digest_algorithm": "md5"}), str(path))
    with pytest.raises(ManifestError, match="md5"):
        Manifest.read(str(path))


def test_edited_rows_mismatch_recorded_digest(tmp_path):
    m, path = _good_manifest_file(tmp_path)
    table = pq.read_table(str(path))
    digests = table.column("digest").to_pylist()
    digests[3] = "e" * 64  # someone edits a row but keeps the metadata
    edited = table.set_column(table.schema.get_field_index("digest"), "digest", pa.array(digests))
    pq.write_table(edited, str(path))
    before = path.read_bytes()
    with pytest.raises(ManifestError) as err:
        Manifest.read(str(path))
    msg = str(err.value)
    assert str(path) in msg and m.digest in msg
    assert path.read_bytes() == before


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError) as err:
        Manifest.read(str(tmp_path / "nope.parquet"))
    assert str(tmp_path / "nope.parquet") in str(err.value)


def _committed_dataset(tmp_path):
    """A local dataset at ``tmp_path/ds`` with one commit holding ``a`` = ``1``: (storage, location, manifest)."""
    storage = LocalStorage()
    loc = DatasetLocation.parse(str(tmp_path / "ds"))
    src = tmp_path / "src"
    write_tree(src, {"a": b"1"})
    m, _ = scan_directory(str(src))
    storage.commit(loc, storage.ingest(loc, str(src), m), CommitInfo())
    return storage, loc, m


def test_corrupt_snapshot_manifest_in_store(tmp_path):
    storage, loc, m = _committed_dataset(tmp_path)
    mpath = os.path.join(loc.meta, "snapshots", m.digest, "manifest.parquet")
    data = open(mpath, "rb").read()
    os.chmod(mpath, 0o644)
    with open(mpath, "wb") as fh:
        fh.write(data[: len(data) // 2])
    with pytest.raises(ManifestError) as err:
        storage.head(loc)
    assert mpath in str(err.value)
    # the plain data is untouched and still readable without the manifest
    assert open(os.path.join(loc.path, "a"), "rb").read() == b"1"


def test_corrupt_log_entry_names_file(tmp_path):
    storage, loc, m = _committed_dataset(tmp_path)
    entry = os.path.join(loc.meta, "log", "0000000001.json")
    with open(entry, "w") as fh:
        fh.write('{"version": 1, "seq":')
    with pytest.raises(ManifestError) as err:
        storage.log(loc)
    assert entry in str(err.value)


# -- scanning bad directories --------------------------------------------------------------------
def test_missing_directory(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(ScanError) as err:
        scan_directory(str(missing))
    assert str(missing) in str(err.value)
    assert not os.path.exists(tmp_path / "no")  # nothing was created


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    with pytest.raises(ScanError) as err:
        scan_directory(str(f))
    assert str(f) in str(err.value) and "not a directory" in str(err.value)


def test_symlink_leaving_the_root_is_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_tree(root, {"in.txt": b"in"})
    write_tree(outside, {"secret.txt": b"secret"})
    os.symlink(outside / "secret.txt", root / "leak.txt")
    before = fingerprint(tmp_path)
    with pytest.raises(ScanError) as err:
        scan_directory(str(root))
    msg = str(err.value)
    assert str(root / "leak.txt") in msg and str(outside / "secret.txt") in msg and "outside" in msg
    assert fingerprint(tmp_path) == before


def test_relative_symlink_escaping_via_dotdot_is_rejected(tmp_path):
    root = tmp_path / "root"
    write_tree(root, {"sub/in.txt": b"in"})
    write_tree(tmp_path, {"sibling.txt": b"s"})
    os.symlink("../../sibling.txt", root / "sub" / "up")
    with pytest.raises(ScanError) as err:
        scan_directory(str(root))
    assert str(root / "sub" / "up") in str(err.value)


def test_symlinked_directory_leaving_the_root_is_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    write_tree(root, {"in.txt": b"in"})
    write_tree(outside, {"x": b"x"})
    os.symlink(outside, root / "elsewhere")
    with pytest.raises(ScanError) as err:
        scan_directory(str(root))
    assert str(root / "elsewhere") in str(err.value)


def test_symlinks_inside_the_root_are_followed(tmp_path):
    root = tmp_path / "root"
    write_tree(root, {"real/a.txt": b"A", "real/sub/b.txt": b"B"})
    os.symlink("real/a.txt", root / "alias.txt")
    os.symlink("real", root / "linkdir")
    os.symlink(".", root / "real" / "self")  # a loop must not hang the scan
    m, _ = scan_directory(str(root))
    got = dict(zip(m.paths(), m.table.column("digest").to_pylist(), strict=True))
    assert got["alias.txt"] == hashlib.sha256(b"A").hexdigest()
    assert got["linkdir/a.txt"] == hashlib.sha256(b"A").hexdigest()
    assert got["linkdir/sub/b.txt"] == hashlib.sha256(b"B").hexdigest()
    assert got["real/a.txt"] == hashlib.sha256(b"A").hexdigest()
    assert len(m) < 20  # the loop was cut


def test_symlink_root_is_followed(tmp_path):
    write_tree(tmp_path / "real", {"a": b"1"})
    os.symlink(tmp_path / "real", tmp_path / "view")
    assert scan_directory(str(tmp_path / "view"))[0].paths() == ["a"]


def test_dangling_symlink(tmp_path):
    root = tmp_path / "root"
    write_tree(root, {"ok": b"1"})
    os.symlink("gone.txt", root / "dangling")
    before = fingerprint(tmp_path)
    with pytest.raises(ScanError) as err:
        scan_directory(str(root))
    assert str(root / "dangling") in str(err.value) and "dangling" in str(err.value)
    assert fingerprint(tmp_path) == before


def test_non_utf8_file_name(tmp_path):
    root = tmp_path / "root"
    write_tree(root, {"sub/ok.txt": b"ok"})
    bad = os.path.join(os.fsencode(str(root)), b"sub", b"caf\xe9-\xff.bin")
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"latin-1 name")
    os.close(fd)
    before = fingerprint(tmp_path)
    with pytest.raises(InvalidPathError) as err:
        scan_directory(str(root))
    msg = str(err.value)
    assert str(root / "sub") in msg  # the directory holding it
    assert "caf\\xe9-\\xff.bin" in msg  # the name, shown with escapes
    assert "UTF-8" in msg
    assert fingerprint(tmp_path) == before
    with open(bad, "rb") as fh:
        assert fh.read() == b"latin-1 name"


def test_file_named_dataflow_is_rejected(tmp_path):
    root = tmp_path / "root"
    write_tree(root, {"ok": b"1", "sub/_dataflow": b"a file, not our folder"})
    with pytest.raises(InvalidPathError) as err:
        scan_directory(str(root))
    assert "sub/_dataflow" in str(err.value) and str(root) in str(err.value)
    assert (root / "sub" / "_dataflow").read_bytes() == b"a file, not our folder"


def test_fifo_is_rejected(tmp_path):
    root = tmp_path / "root"
    write_tree(root, {"ok": b"1"})
    os.mkfifo(root / "pipe")
    with pytest.raises(ScanError) as err:
        scan_directory(str(root))
    assert str(root / "pipe") in str(err.value) and "regular file" in str(err.value)


@pytest.mark.parametrize("uri", ["/data/_dataflow", "/data/_dataflow/objects", "file:///x/_dataflow/ds"])
def test_reserved_name_as_dataset(uri):
    with pytest.raises(DataflowError) as err:
        DatasetLocation.parse(uri)
    assert uri in str(err.value) and "_dataflow" in str(err.value)


# -- unreadable files: a child process without root's permission bypass ------------------------
UNPRIV_SCAN = textwrap.dedent(
    """
    import json, os, sys
    from airflow_dataflow.storage.local import scan_directory
    from airflow_dataflow.exceptions import DataflowError
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    assert os.geteuid() == 65534
    try:
        m, _ = scan_directory(sys.argv[1])
        print(json.dumps({"ok": m.paths()}))
    except DataflowError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}))
    """
)


@pytest.fixture
def world_dir():
    """A directory that uid 65534 can traverse (pytest's tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="dataflow-unpriv-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    for dirpath, dirs, files in os.walk(path):
        for n in dirs + files:
            try:
                os.chmod(os.path.join(dirpath, n), 0o755, follow_symlinks=False)
            except (NotImplementedError, OSError):
                pass
    shutil.rmtree(path, ignore_errors=True)


def _scan_as_nobody(root):
    """Scan ``root`` in a child that dropped to uid/gid 65534 (root bypasses file modes)."""
    proc = subprocess.run([sys.executable, "-c", UNPRIV_SCAN, root], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _need_privilege_drop():
    if os.geteuid() != 0:
        pytest.skip("the child drops privileges with setuid(65534), which needs root; as a normal user "
                    "these cases would need a second account")


def test_unreadable_file(world_dir):
    _need_privilege_drop()
    root = os.path.join(world_dir, "root")
    write_tree(root, {"ok.txt": b"ok", "sub/locked.bin": b"secret"})
    for d in (root, os.path.join(root, "sub")):
        os.chmod(d, 0o755)
    os.chmod(os.path.join(root, "ok.txt"), 0o644)
    locked = os.path.join(root, "sub", "locked.bin")
    os.chmod(locked, 0o000)
    before = fingerprint(root)
    # sanity: the readable tree scans fine as nobody
    os.chmod(locked, 0o644)
    assert sorted(_scan_as_nobody(root)["ok"]) == ["ok.txt", "sub/locked.bin"]
    os.chmod(locked, 0o000)
    result = _scan_as_nobody(root)
    assert result.get("error") == "ScanError", result
    assert locked in result["message"] and "permission denied" in result["message"]
    assert fingerprint(root) == before
    assert open(locked, "rb").read() == b"secret"  # (as root) nothing lost


def test_unreadable_directory(world_dir):
    _need_privilege_drop()
    root = os.path.join(world_dir, "root")
    write_tree(root, {"ok.txt": b"ok", "closed/x": b"x"})
    os.chmod(os.path.join(root, "ok.txt"), 0o644)
    os.chmod(root, 0o755)
    closed = os.path.join(root, "closed")
    os.chmod(closed, 0o000)
    result = _scan_as_nobody(root)
    assert result.get("error") == "ScanError", result
    assert closed in result["message"] and "permission denied" in result["message"]


# -- commits that must not happen -------------------------------------------------------------------
def test_lost_race_loses_nothing(tmp_path):
    storage = LocalStorage()
    loc = DatasetLocation.parse(str(tmp_path / "ds"))
    stagings = {}
    for name in ("one", "two", "three"):
        stagings[name] = tmp_path / name
        write_tree(stagings[name], {"f": name.encode(), "common": b"c"})
    m = {}
    for name, s in stagings.items():
        mm, _ = scan_directory(str(s))
        m[name] = storage.ingest(loc, str(s), mm)
    storage.commit(loc, m["one"], CommitInfo())
    storage.commit(loc, m["two"], CommitInfo(), parent=m["one"].digest)
    before = fingerprint(tmp_path)
    with pytest.raises(ConcurrentCommitError) as err:
        storage.commit(loc, m["three"], CommitInfo(), parent=m["one"].digest)
    msg = str(err.value)
    assert loc.uri in msg and "rerun" in msg
    after = fingerprint(tmp_path)
    # the only change: the loser's snapshot is stored (immutable, unreferenced); nothing else moved
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    snap3 = os.fsencode(os.path.join(loc.meta, "snapshots", m["three"].digest))
    assert all(k.startswith(snap3) or k == os.path.dirname(snap3) for k in changed), changed
    assert storage.read_head(loc) == m["two"].digest
    assert len(storage.log(loc)) == 2


def test_commit_over_a_plain_directory_is_refused(tmp_path):
    storage = LocalStorage()
    data = tmp_path / "ds"
    write_tree(data, {"precious.csv": b"do not lose me"})
    loc = DatasetLocation.parse(str(data))
    src = tmp_path / "src"
    write_tree(src, {"a": b"1"})
    m, _ = scan_directory(str(src))
    m = storage.ingest(loc, str(src), m)
    with pytest.raises(StorageError) as err:
        storage.commit(loc, m, CommitInfo())
    assert str(data) in str(err.value)
    assert (data / "precious.csv").read_bytes() == b"do not lose me"
    assert not os.path.islink(data)
    assert storage.log(loc) == []


def test_commit_with_missing_bytes_is_refused(tmp_path):
    storage, loc, m0 = _committed_dataset(tmp_path)
    ghost = Manifest.from_rows([{"path": "x", "size": 1, "digest": D, "location": "file:///nonexistent/object"}])
    with pytest.raises(StorageError) as err:
        storage.commit(loc, ghost, CommitInfo())
    assert "/nonexistent/object" in str(err.value) and "'x'" in str(err.value)
    assert storage.read_head(loc) == m0.digest
    assert open(os.path.join(loc.path, "a"), "rb").read() == b"1"
    unstored = Manifest.from_rows([{"path": "y", "size": 1, "digest": D}])
    with pytest.raises(StorageError) as err:
        storage.commit(loc, unstored, CommitInfo())
    assert "'y'" in str(err.value)
    assert storage.read_head(loc) == m0.digest
