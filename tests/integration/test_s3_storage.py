"""S3Storage against a real S3 server (versitygw, see tests/s3server.py).

Covers scanning (digests, the scan cache, equality with local disk), commits
(HEAD, log, the plain view readable with plain boto3 and pyarrow), the
compare-and-swap of HEAD under concurrency, self-healing of interrupted
commits and view updates, and clear errors on bad input.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest

from airflow_dataflow.core.changeset import diff
from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.exceptions import (
    ConcurrentCommitError,
    InvalidPathError,
    ManifestError,
    SnapshotNotFoundError,
    StorageError,
)
from airflow_dataflow.storage import storage_for
from airflow_dataflow.storage.local import scan_directory
from airflow_dataflow.storage.s3 import S3Storage

pytestmark = pytest.mark.integration

INFO = CommitInfo(author="tester", env="test")


# -- helpers ---------------------------------------------------------------------------
def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(client, bucket: str, key: str, data: bytes, *, checksum: bool = False) -> None:
    kwargs = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
    client.put_object(Bucket=bucket, Key=key, Body=data, **kwargs)


def keys_under(client, bucket: str, prefix: str) -> list[str]:
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", ())]
    return out


def body(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


class CallCounter:
    """Count S3 operations on keys under a prefix, through boto3 event hooks."""

    def __init__(self, client, prefix: str = "") -> None:
        self.prefix = prefix
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        for op in ("GetObject", "HeadObject", "PutObject", "CopyObject"):
            client.meta.events.register(f"before-parameter-build.s3.{op}", self._make(op))

    def _make(self, op: str):
        def hook(params, **_kwargs):
            if params.get("Key", "").startswith(self.prefix):
                with self._lock:
                    self.calls[op] += 1

        return hook

    def reset(self) -> None:
        self.calls.clear()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def stage_and_commit(storage: S3Storage, loc: DatasetLocation, tmp: Path, files: dict[str, bytes], **kw):
    """Write ``files`` to a local staging dir, ingest them and commit; return (manifest, record)."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_tree(tmp, files)
    manifest, _ = scan_directory(str(tmp), location_of=False)
    manifest = storage.ingest(loc, str(tmp), manifest)
    return manifest, storage.commit(loc, manifest, INFO, **kw)


def assert_view_is(client, bucket: str, loc: DatasetLocation, files: dict[str, bytes]) -> None:
    """The plain prefix holds exactly ``files``, read with plain boto3."""
    prefix = loc.path + "/"
    listed = keys_under(client, bucket, prefix)
    assert sorted(k[len(prefix) :] for k in listed) == sorted(files)
    for rel, data in files.items():
        assert body(client, bucket, prefix + rel) == data, rel


@pytest.fixture
def s3(s3_bucket):
    client, bucket = s3_bucket
    return client, bucket, S3Storage(client=client)


# -- scanning --------------------------------------------------------------------------
FILES = {
    "a.csv": b"id,value\n1,2\n",
    "dir/b.bin": bytes(range(256)) * 100,
    "dir/sub/c.txt": b"hello world\n",
    "empty": b"",
    "ünïcödé name.txt": b"odd names are fine",
}


def test_scan_gives_hashlib_digests_and_rescan_reads_no_bodies(s3):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/raw/events")
    for i, (rel, data) in enumerate(FILES.items()):
        put(client, bucket, f"raw/events/{rel}", data, checksum=bool(i % 2))
    put(client, bucket, "raw/events/", b"")  # a directory marker: skipped
    put(client, bucket, "raw/events/x/_dataflow/meta", b"metadata")  # reserved: skipped
    put(client, bucket, "raw/eventsXYZ/other", b"not in the prefix")
    counter = CallCounter(client, "raw/events/")

    manifest = storage.scan(loc)
    rows = {r["path"]: r for r in manifest.rows()}
    assert sorted(rows) == sorted(FILES)
    for rel, data in FILES.items():
        assert rows[rel]["digest"] == sha(data), rel
        assert rows[rel]["size"] == len(data)
        assert rows[rel]["location"] == f"s3://{bucket}/raw/events/{rel}"
        assert rows[rel]["mtime_ns"] > 0
    # Objects stored with a SHA256 checksum are not read: their digest comes from HeadObject.
    with_checksum = sum(1 for i, d in enumerate(FILES.values()) if i % 2 and d)
    assert counter.calls["HeadObject"] == with_checksum
    assert counter.calls["GetObject"] == len(FILES) - with_checksum - 1  # the empty file needs no read

    counter.reset()
    again = storage.scan(loc)
    assert again.digest == manifest.digest
    assert counter.calls["GetObject"] == 0 and counter.calls["HeadObject"] == 0

    # a changed object is re-read, the others are not
    put(client, bucket, "raw/events/a.csv", b"id,value\n1,3\n")
    counter.reset()
    changed = storage.scan(loc)
    assert {r["path"]: r["digest"] for r in changed.rows()}["a.csv"] == sha(b"id,value\n1,3\n")
    assert counter.calls["GetObject"] == 1
    assert diff(manifest, changed).to_dict()["modified"] == ["a.csv"]


def test_scan_of_an_empty_prefix_is_an_empty_dataset(s3):
    _, bucket, storage = s3
    manifest = storage.scan(DatasetLocation.parse(f"s3://{bucket}/nothing/here"))
    assert len(manifest) == 0 and manifest.digest == Manifest.empty().digest


def test_same_tree_has_the_same_digest_on_local_disk_and_s3(s3, tmp_path):
    client, bucket, storage = s3
    write_tree(tmp_path / "tree", FILES)
    local, _ = scan_directory(str(tmp_path / "tree"))
    for path in sorted((tmp_path / "tree").rglob("*")):
        if path.is_file():
            put(client, bucket, f"copy/tree/{path.relative_to(tmp_path / 'tree').as_posix()}", path.read_bytes())
    remote = storage.scan(DatasetLocation.parse(f"s3://{bucket}/copy/tree"))
    assert remote.digest == local.digest
    assert remote.table.column("digest").to_pylist() == local.table.column("digest").to_pylist()


def test_storage_for_and_an_airflow_connection(s3_conn_env, s3_bucket):
    client, bucket = s3_bucket
    put(client, bucket, "ds/f.txt", b"via the connection")
    storage = storage_for(f"s3://{bucket}/ds", aws_conn_id="dataflow_s3")
    assert isinstance(storage, S3Storage)
    manifest = storage.scan(DatasetLocation.parse(f"s3://{bucket}/ds"))
    assert manifest.rows()[0]["digest"] == sha(b"via the connection")


# -- commits -----------------------------------------------------------------------------
def test_commit_then_plain_readers_see_head(s3, tmp_path):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/clean/events")
    manifest, record = stage_and_commit(storage, loc, tmp_path / "s1", FILES)

    assert record.seq == 1 and record.parent is None and record.digest == manifest.digest
    assert storage.read_head(loc) == manifest.digest
    assert [r.digest for r in storage.log(loc)] == [manifest.digest]
    # content store: one object per distinct digest, verified by the server
    stored = keys_under(client, bucket, "clean/_dataflow/objects/")
    assert sorted(stored) == sorted(loc.object_key(sha(d)) for d in set(FILES.values()))
    head = client.head_object(Bucket=bucket, Key=loc.object_key(sha(FILES["a.csv"])), ChecksumMode="ENABLED")
    assert base64.b64decode(head["ChecksumSHA256"]).hex() == sha(FILES["a.csv"])
    # the plain view, with plain boto3
    assert_view_is(client, bucket, loc, FILES)
    # the manifest, with plain pyarrow from bytes
    raw = body(client, bucket, f"clean/_dataflow/events/snapshots/{manifest.digest}/manifest.parquet")
    table = pq.read_table(io.BytesIO(raw))
    assert sorted(table.column("path").to_pylist()) == sorted(FILES)
    for row in table.to_pylist():
        b, k = row["location"][len("s3://") :].split("/", 1)
        assert body(client, b, k) == FILES[row["path"]]
    # HEAD and the log are plain JSON
    head_doc = json.loads(body(client, bucket, "clean/_dataflow/events/HEAD"))
    assert head_doc["digest"] == manifest.digest and head_doc["seq"] == 1
    log_doc = json.loads(body(client, bucket, "clean/_dataflow/events/log/0000000001.json"))
    assert log_doc["digest"] == manifest.digest and log_doc["info"]["author"] == "tester"
    # the committed view scans to the same snapshot
    assert storage.scan(loc).digest == manifest.digest


def test_second_commit_updates_the_view_and_the_change_set(s3, tmp_path):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/clean/events")
    first, _ = stage_and_commit(storage, loc, tmp_path / "s1", FILES)
    files2 = dict(FILES)
    files2["new/added.txt"] = b"added"
    files2["a.csv"] = b"id,value\n1,99\n"
    del files2["dir/sub/c.txt"]
    counter = CallCounter(client, "clean/events/")
    second, record = stage_and_commit(storage, loc, tmp_path / "s2", files2)

    assert record.seq == 2 and record.parent == first.digest
    assert_view_is(client, bucket, loc, files2)
    # only added and modified files were copied into the view
    assert counter.calls["CopyObject"] == 2
    change = diff(storage.snapshot(loc, first.digest), storage.snapshot(loc))
    assert change.to_dict() == {
        "from": first.digest,
        "to": second.digest,
        "added": ["new/added.txt"],
        "modified": ["a.csv"],
        "deleted": ["dir/sub/c.txt"],
        "unchanged": 3,
    }
    assert [r.seq for r in storage.log(loc)] == [1, 2]
    # the old snapshot stays readable through its manifest
    old = storage.snapshot(loc, first.digest[:10])
    for row in old.rows():
        assert storage.read_bytes(row["location"]) == FILES[row["path"]]


def test_committing_a_scan_of_the_prefix_adopts_the_bytes(s3, tmp_path):
    """Files put into the prefix by someone else: a commit copies them into the
    content store, so that later overwrites of the plain view cannot change the
    snapshot."""
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/landing/drop")
    for rel, data in FILES.items():
        put(client, bucket, f"landing/drop/{rel}", data)
    manifest = storage.scan(loc)
    storage.commit(loc, manifest, INFO)
    committed = storage.snapshot(loc)
    assert committed.digest == manifest.digest
    assert all("/_dataflow/objects/sha256/" in u for u in committed.table.column("location").to_pylist())
    put(client, bucket, "landing/drop/a.csv", b"overwritten by hand")
    row = next(r for r in committed.rows() if r["path"] == "a.csv")
    assert storage.read_bytes(row["location"]) == FILES["a.csv"]
    # the next sync restores the view to HEAD
    storage.sync_view(loc)
    assert_view_is(client, bucket, loc, FILES)


def test_local_file_locations_are_uploaded_on_commit(s3, tmp_path):
    client, bucket, storage = s3
    write_tree(tmp_path / "t", FILES)
    manifest, _ = scan_directory(str(tmp_path / "t"))  # file:// locations
    loc = DatasetLocation.parse(f"s3://{bucket}/up/ds")
    storage.commit(loc, manifest, INFO)
    assert_view_is(client, bucket, loc, FILES)


def test_commit_by_reference_copies_nothing_into_the_content_store(s3, tmp_path):
    """A manifest already in a content store (e.g. a reused production output)
    is committed by reference: no upload, only view copies."""
    client, bucket, storage = s3
    prod = DatasetLocation.parse(f"s3://{bucket}/prod/out")
    manifest, _ = stage_and_commit(storage, prod, tmp_path / "p", FILES)
    test_env = DatasetLocation.parse(f"s3://{bucket}/test-alice/out")
    storage.commit(test_env, storage.snapshot(prod), INFO)
    assert keys_under(client, bucket, "test-alice/_dataflow/objects/") == []
    assert_view_is(client, bucket, test_env, FILES)
    assert storage.snapshot(test_env).digest == manifest.digest


def test_download_checks_the_digest(s3, tmp_path):
    client, bucket, storage = s3
    put(client, bucket, "k/x", b"payload")
    storage.download(f"s3://{bucket}/k/x", str(tmp_path / "d" / "x"), digest=sha(b"payload"))
    assert (tmp_path / "d" / "x").read_bytes() == b"payload"
    with pytest.raises(StorageError, match="hashes to"):
        storage.download(f"s3://{bucket}/k/x", str(tmp_path / "y"), digest=sha(b"other"))
    assert not (tmp_path / "y").exists()
    with pytest.raises(StorageError, match="no such object"):
        storage.read_bytes(f"s3://{bucket}/k/missing")


def test_observed_source_keeps_metadata_elsewhere_and_copies_nothing(s3):
    client, bucket, storage = s3
    for rel, data in FILES.items():
        put(client, bucket, f"theirs/share/{rel}", data)
    before = {k: body(client, bucket, k) for k in keys_under(client, bucket, "theirs/")}
    loc = DatasetLocation.parse(f"s3://{bucket}/theirs/share", metadata_root=f"s3://{bucket}/ours/meta", owned=False)
    manifest = storage.scan(loc)
    storage.commit(loc, manifest, INFO)
    assert storage.read_head(loc) == manifest.digest
    assert {k: body(client, bucket, k) for k in keys_under(client, bucket, "theirs/")} == before
    ours = keys_under(client, bucket, "ours/")
    assert ours and all(k.startswith(f"ours/meta/_dataflow/share-") for k in ours)
    assert not any("/objects/" in k for k in ours)
    assert storage.snapshot(loc).table.column("location").to_pylist()[0].startswith(f"s3://{bucket}/theirs/share/")


# -- compare-and-swap ---------------------------------------------------------------------
def test_stale_parent_loses_and_the_winner_is_kept(s3, tmp_path):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/cas/ds")
    base, _ = stage_and_commit(storage, loc, tmp_path / "b", {"f": b"base"})
    winner, _ = stage_and_commit(storage, loc, tmp_path / "w", {"f": b"winner"}, parent=base.digest)
    with pytest.raises(ConcurrentCommitError, match="another writer committed first") as exc:
        stage_and_commit(storage, loc, tmp_path / "l", {"f": b"loser"}, parent=base.digest)
    assert winner.digest in str(exc.value) and loc.uri in str(exc.value)
    assert storage.read_head(loc) == winner.digest
    assert [r.digest for r in storage.log(loc)] == [base.digest, winner.digest]
    assert_view_is(client, bucket, loc, {"f": b"winner"})


def test_concurrent_committers_exactly_one_wins(s3_server, s3_bucket, tmp_path):
    _, bucket = s3_bucket
    loc = DatasetLocation.parse(f"s3://{bucket}/race/ds")
    writers, rounds = 6, 8
    storages = [S3Storage(client=s3_server.boto3_client()) for _ in range(writers)]
    manifests = []
    for i in range(writers):
        for r in range(rounds):
            (tmp_path / f"w{i}r{r}").mkdir()
            (tmp_path / f"w{i}r{r}" / "f").write_bytes(f"writer {i} round {r}".encode())
    barrier = threading.Barrier(writers)

    def attempt(i: int, r: int, parent: str | None) -> str:
        staging = str(tmp_path / f"w{i}r{r}")
        manifest, _ = scan_directory(staging, location_of=False)
        manifest = storages[i].ingest(loc, staging, manifest)
        barrier.wait(timeout=60)
        try:
            storages[i].commit(loc, manifest, INFO, parent=parent)
            return manifest.digest
        except ConcurrentCommitError:
            return "lost"

    storage = storages[0]
    with ThreadPoolExecutor(writers) as pool:
        for r in range(rounds):
            parent = storage.read_head(loc)
            outcomes = list(pool.map(lambda i: attempt(i, r, parent), range(writers)))
            won = [o for o in outcomes if o != "lost"]
            assert len(won) == 1, outcomes
            assert storage.read_head(loc) == won[0]
            manifests.append(won[0])
    log = storage.log(loc)
    assert [r.digest for r in log] == manifests
    assert [r.seq for r in log] == list(range(1, rounds + 1))
    assert [r.parent for r in log] == [None] + manifests[:-1]


# -- interrupted commits heal -------------------------------------------------------------
def test_commit_killed_after_head_moved_keeps_its_log_entry(s3, tmp_path, monkeypatch):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/crash/ds")
    first, _ = stage_and_commit(storage, loc, tmp_path / "a", {"f": b"one"})

    real = S3Storage._write_log

    def crash_on_own_entry(self, loc_, record):
        if record.seq == 2:
            raise KeyboardInterrupt("killed between HEAD and the log")
        return real(self, loc_, record)

    monkeypatch.setattr(S3Storage, "_write_log", crash_on_own_entry)
    with pytest.raises(KeyboardInterrupt):
        stage_and_commit(storage, loc, tmp_path / "b", {"f": b"two"})
    monkeypatch.setattr(S3Storage, "_write_log", real)
    second = storage.read_head(loc)
    assert second != first.digest
    assert keys_under(client, bucket, "crash/_dataflow/ds/log/") == ["crash/_dataflow/ds/log/0000000001.json"]
    assert [r.seq for r in storage.log(loc)] == [1, 2]  # from HEAD's embedded record
    third, record = stage_and_commit(storage, loc, tmp_path / "c", {"f": b"three"})
    assert record.seq == 3 and record.parent == second
    assert len(keys_under(client, bucket, "crash/_dataflow/ds/log/")) == 3
    assert_view_is(client, bucket, loc, {"f": b"three"})


def test_commit_killed_before_head_moved_changes_nothing(s3, tmp_path, monkeypatch):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/crash2/ds")
    first, _ = stage_and_commit(storage, loc, tmp_path / "a", {"f": b"one"})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before HEAD moved")

    monkeypatch.setattr(S3Storage, "swap_head", crash)
    with pytest.raises(KeyboardInterrupt):
        stage_and_commit(storage, loc, tmp_path / "b", {"f": b"two", "g": b"more"})
    monkeypatch.undo()
    assert storage.read_head(loc) == first.digest
    assert [r.digest for r in storage.log(loc)] == [first.digest]
    assert_view_is(client, bucket, loc, {"f": b"one"})


def test_an_interrupted_view_update_is_finished_by_the_next_sync(s3, tmp_path, monkeypatch):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/heal/ds")
    stage_and_commit(storage, loc, tmp_path / "a", {f"f{i}": f"v1 {i}".encode() for i in range(10)})
    files2 = {f"f{i}": f"v2 {i}".encode() for i in range(5, 15)}

    real = S3Storage._copy
    calls = Counter()

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise StorageError("network down")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(S3Storage, "_copy", flaky)
    with pytest.raises(StorageError, match="succeeded \\(HEAD moved\\).*sync_view"):
        stage_and_commit(storage, loc, tmp_path / "b", files2)
    monkeypatch.undo()
    assert storage.snapshot(loc).digest == Manifest.from_rows(
        [{"path": k, "size": len(v), "digest": sha(v)} for k, v in files2.items()]
    ).digest
    # a stray file and a hand-edited file in the view are fixed too
    put(client, bucket, "heal/ds/stray.txt", b"not in HEAD")
    put(client, bucket, "heal/ds/f14", b"edited by hand")
    storage.sync_view(loc)
    assert_view_is(client, bucket, loc, files2)
    counter = CallCounter(client, "heal/ds/")
    storage.sync_view(loc)  # nothing left to do: no copies, no object reads
    assert counter.calls == Counter()


# -- bad input ----------------------------------------------------------------------------
def test_a_key_with_dotdot_is_a_clear_error(s3):
    """versitygw normalises ``a/../b`` on upload, AWS S3 does not: inject such a key
    into the server's real listing to check what a scan of AWS would do."""
    client, bucket, storage = s3
    put(client, bucket, "bad/ds/ok.txt", b"ok")

    def inject(parsed, **_kwargs):
        for obj in parsed.get("Contents", ()):
            if obj["Key"] == "bad/ds/ok.txt":
                parsed["Contents"].append(dict(obj, Key="bad/ds/sub/../../escape.txt"))
                break

    client.meta.events.register("after-call.s3.ListObjectsV2", inject)
    with pytest.raises(InvalidPathError) as exc:
        storage.scan(DatasetLocation.parse(f"s3://{bucket}/bad/ds"))
    assert f"s3://{bucket}/bad/ds/sub/../../escape.txt" in str(exc.value)
    assert "'..'" in str(exc.value)


def test_missing_bucket_is_a_storage_error_naming_it(s3_server):
    storage = S3Storage(client=s3_server.boto3_client())
    loc = DatasetLocation.parse("s3://no-such-bucket-dataflow/ds")
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-dataflow' does not exist"):
        storage.scan(loc)
    with pytest.raises(StorageError, match="no-such-bucket-dataflow"):
        storage.read_head(loc)


def test_corrupt_manifest_head_and_log_are_clear_errors(s3, tmp_path):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/corrupt/ds")
    manifest, _ = stage_and_commit(storage, loc, tmp_path / "a", FILES)
    key = f"corrupt/_dataflow/ds/snapshots/{manifest.digest}/manifest.parquet"
    good = body(client, bucket, key)
    put(client, bucket, key, good[: len(good) // 2])
    with pytest.raises(ManifestError, match=f"s3://{bucket}/{key}"):
        storage.head(loc)
    put(client, bucket, key, Manifest.from_rows([{"path": "x", "size": 1, "digest": "0" * 64}]).to_parquet_bytes())
    with pytest.raises(ManifestError, match="hashes to"):
        storage.head(loc)
    with pytest.raises(SnapshotNotFoundError, match="no such snapshot"):
        storage.read_manifest(loc, "f" * 64)

    put(client, bucket, "corrupt/_dataflow/ds/log/0000000001.json", b"{not json")
    with pytest.raises(ManifestError, match="log/0000000001.json"):
        storage.read_log(loc)
    put(client, bucket, "corrupt/_dataflow/ds/HEAD", b"garbage")
    with pytest.raises(ManifestError, match="HEAD of .* is corrupt"):
        storage.read_head(loc)


def test_commit_without_stored_bytes_is_refused(s3):
    _, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/nobytes/ds")
    manifest = Manifest.from_rows([{"path": "f", "size": 1, "digest": sha(b"x")}])
    with pytest.raises(StorageError, match="'f'.*no stored bytes"):
        storage.commit(loc, manifest, INFO)
    assert storage.read_head(loc) is None


def test_the_conditional_head_write_decides_a_race(s3_server, s3_bucket, tmp_path):
    """Both writers pass the read check; the server's 412 on HEAD stops the second."""
    client, bucket = s3_bucket
    loc = DatasetLocation.parse(f"s3://{bucket}/cas2/ds")
    a, b = S3Storage(client=s3_server.boto3_client()), S3Storage(client=client)
    base, _ = stage_and_commit(b, loc, tmp_path / "base", {"f": b"base"})
    winner: dict[str, str] = {}

    def b_commits_first(params, **_kwargs):
        if params.get("Key", "").endswith("/HEAD") and not winner:
            manifest, _ = stage_and_commit(b, loc, tmp_path / "b", {"f": b"b wins"})
            winner["digest"] = manifest.digest

    a.client.meta.events.register("before-parameter-build.s3.PutObject", b_commits_first)
    with pytest.raises(ConcurrentCommitError) as exc:
        stage_and_commit(a, loc, tmp_path / "a", {"f": b"a loses"})
    assert winner["digest"] in str(exc.value)
    assert b.read_head(loc) == winner["digest"]
    assert [(r.seq, r.digest) for r in b.log(loc)] == [(1, base.digest), (2, winner["digest"])]
    assert_view_is(client, bucket, loc, {"f": b"b wins"})


def test_large_files_go_through_multipart_upload(s3, tmp_path, monkeypatch):
    import airflow_dataflow.storage.s3 as s3mod

    client, bucket, storage = s3
    monkeypatch.setattr(s3mod, "MULTIPART_THRESHOLD", 1024 * 1024)
    big = bytes(range(256)) * (3 * 4096)  # 3 MiB
    loc = DatasetLocation.parse(f"s3://{bucket}/big/ds")
    manifest, _ = stage_and_commit(storage, loc, tmp_path / "s", {"big.bin": big, "small": b"s"})
    stored = client.head_object(Bucket=bucket, Key=loc.object_key(sha(big)))
    assert stored["Metadata"]["dataflow-digest"] == sha(big)
    assert "-" in stored["ETag"]  # a multipart object
    assert_view_is(client, bucket, loc, {"big.bin": big, "small": b"s"})
    assert storage.scan(loc).digest == manifest.digest


def test_first_commit_refuses_to_replace_files_nobody_committed(s3, tmp_path):
    client, bucket, storage = s3
    put(client, bucket, "occupied/ds/precious.csv", b"someone's data")
    put(client, bucket, "occupied/ds/f", b"same name, other bytes")
    loc = DatasetLocation.parse(f"s3://{bucket}/occupied/ds")
    with pytest.raises(StorageError, match="2 object\\(s\\).*'f', 'precious.csv'.*Move them away"):
        stage_and_commit(storage, loc, tmp_path / "s", {"f": b"ours"})
    assert storage.read_head(loc) is None
    assert body(client, bucket, "occupied/ds/precious.csv") == b"someone's data"
    assert body(client, bucket, "occupied/ds/f") == b"same name, other bytes"


def test_meta_files_live_beside_the_content_store(s3):
    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/m/ds")
    assert storage.get_meta(loc, "cache/k1.json") is None
    storage.put_meta(loc, "cache/k1.json", b"{}")
    storage.put_meta(loc, "cache/k2.json", b"[]")
    assert storage.get_meta(loc, "cache/k1.json") == b"{}"
    assert storage.list_meta(loc, "cache") == ["k1.json", "k2.json"]
    assert keys_under(client, bucket, "m/_dataflow/cache/") == ["m/_dataflow/cache/k1.json", "m/_dataflow/cache/k2.json"]
    with pytest.raises(InvalidPathError):
        storage.put_meta(loc, "../escape", b"x")


def test_default_client_honours_the_aws_environment(s3_server, s3_bucket, monkeypatch):
    client, bucket = s3_bucket
    put(client, bucket, "env/ds/f", b"from env")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    storage = S3Storage()
    assert storage.scan(DatasetLocation.parse(f"s3://{bucket}/env/ds")).rows()[0]["digest"] == sha(b"from env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # the default session caches credentials
    with pytest.raises(StorageError, match=f"s3://{bucket}/env/ds.*credentials were rejected"):
        S3Storage().scan(DatasetLocation.parse(f"s3://{bucket}/env/ds"))


CHILD = r"""
import os, sys, time
import boto3
from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.storage.local import scan_directory
from airflow_dataflow.storage.s3 import S3Storage

client = boto3.client("s3", endpoint_url=os.environ["EP"], aws_access_key_id=os.environ["AK"],
                      aws_secret_access_key=os.environ["SK"], region_name="us-east-1")
storage = S3Storage(client=client)
loc = DatasetLocation.parse(os.environ["URI"])
stage, ready, where = os.environ["STAGE"], os.environ["READY"], os.environ["WHERE"]

def park(*_a, **_k):
    open(ready, "w").close()
    time.sleep(600)

if where == "before_head":
    def hook(params, **_k):
        if params.get("Key", "").endswith("/HEAD"):
            park()
    client.meta.events.register("before-parameter-build.s3.PutObject", hook)
else:
    real = S3Storage._write_log
    def write_log(self, loc_, record):
        if record.seq == 2:
            park()
        return real(self, loc_, record)
    S3Storage._write_log = write_log
manifest, _ = scan_directory(stage, location_of=False)
storage.commit(loc, storage.ingest(loc, stage, manifest), CommitInfo(author="child"))
"""


@pytest.mark.parametrize("where", ["before_head", "after_head"])
def test_sigkill_in_the_middle_of_a_commit(s3_server, s3, tmp_path, where):
    import os
    import signal
    import subprocess
    import sys
    import time

    client, bucket, storage = s3
    loc = DatasetLocation.parse(f"s3://{bucket}/kill/ds")
    first, _ = stage_and_commit(storage, loc, tmp_path / "a", {"f": b"one", "g": b"kept"})
    write_tree(tmp_path / "b", {"f": b"two", "h": b"new"})
    ready = tmp_path / "ready"
    env = dict(
        os.environ, EP=s3_server.endpoint_url, AK=s3_server.access_key, SK=s3_server.secret_key,
        URI=loc.uri, STAGE=str(tmp_path / "b"), READY=str(ready), WHERE=where,
    )
    child = subprocess.Popen([sys.executable, "-c", CHILD], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert child.poll() is None, "the child exited before reaching the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    if where == "before_head":  # nothing happened: HEAD, log and view are the previous snapshot
        assert storage.read_head(loc) == first.digest
        assert [r.digest for r in storage.log(loc)] == [first.digest]
        assert_view_is(client, bucket, loc, {"f": b"one", "g": b"kept"})
    else:  # HEAD moved: the commit happened, its record is in HEAD, the view is healed by sync_view
        second = storage.read_head(loc)
        assert second != first.digest
        assert [r.seq for r in storage.log(loc)] == [1, 2]
        assert {r["path"]: storage.read_bytes(r["location"]) for r in storage.snapshot(loc).rows()} == {
            "f": b"two", "h": b"new"
        }
        storage.sync_view(loc)
        assert_view_is(client, bucket, loc, {"f": b"two", "h": b"new"})
    # the next commit works and the log has no hole
    _, record = stage_and_commit(storage, loc, tmp_path / "c", {"z": b"three"})
    assert [r.seq for r in storage.log(loc)] == list(range(1, record.seq + 1))
    assert_view_is(client, bucket, loc, {"z": b"three"})


def test_first_commit_over_identical_unmanaged_files_is_allowed(s3, tmp_path):
    """Files already in the prefix with exactly the committed bytes are not 'lost'."""
    client, bucket, storage = s3
    put(client, bucket, "same/ds/f", b"ours")
    loc = DatasetLocation.parse(f"s3://{bucket}/same/ds")
    manifest, _ = stage_and_commit(storage, loc, tmp_path / "s", {"f": b"ours"})
    assert storage.read_head(loc) == manifest.digest
    assert_view_is(client, bucket, loc, {"f": b"ours"})
