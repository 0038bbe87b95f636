"""The pod helper against a real S3 server (versitygw): stage-in downloads and
verifies, stage-out uploads to the content store with server-checked SHA-256.

The helper runs as a subprocess, as in the pod: credentials from the
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), the endpoint from the spec.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_dataflow import podhelper
from airflow_dataflow.storage.s3 import DIGEST_META, _content_digest

pytestmark = pytest.mark.integration

HELPER = Path(podhelper.__file__)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_helper(command: str, spec: dict, server, *, env: dict | None = None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DATAFLOW_"))}
    full_env.update(
        {
            "AWS_ACCESS_KEY_ID": server.access_key,
            "AWS_SECRET_ACCESS_KEY": server.secret_key,
            "DATAFLOW_POD_SPEC": json.dumps(spec),
            "DATAFLOW_HELPER_PROGRESS_S": "0.2",
        }
    )
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-B", str(HELPER), command], env=full_env, capture_output=True, text=True, timeout=300
    )


def base_spec(server, tmp_path: Path) -> dict:
    return {
        "version": 1,
        "s3": {"endpoint_url": server.endpoint_url, "region": server.region},
        "inputs": [],
        "files_list": None,
        "output": {
            "dir": str(tmp_path / "out"),
            "store_uri": None,
            "result_uri": None,
            "result_path": None,
            "lineage_path": str(tmp_path / "lineage.tsv"),
        },
    }


def put_listed(client, bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    """Store files in a content store and write their JSON-lines list; return the list's URI."""
    lines = []
    for rel, data in files.items():
        d = sha(data)
        key = f"{prefix}/_dataflow/objects/sha256/{d[:2]}/{d[2:]}"
        client.put_object(Bucket=bucket, Key=key, Body=data)
        lines.append(json.dumps({"path": rel, "digest": d, "location": f"s3://{bucket}/{key}"}))
    list_key = f"{prefix}/_dataflow/runs/run-1/{len(files)}-{sha(repr(sorted(files)).encode())[:8]}.jsonl"
    client.put_object(Bucket=bucket, Key=list_key, Body=("\n".join(lines) + "\n").encode())
    return f"s3://{bucket}/{list_key}"


# ---------------------------------------------------------------------------------
# stage-in
# ---------------------------------------------------------------------------------
def test_stage_in_downloads_verifies_and_seals(s3_server, s3_bucket, tmp_path):
    client, bucket = s3_bucket
    raw = {f"region-{i % 3}/sales-{i:03d}.csv": f"id,v\n{i},{i * i}\n".encode() * (i + 1) for i in range(40)}
    raw["big/blob.bin"] = os.urandom(5 * 1024 * 1024 + 3)
    raw["ü/名前.txt"] = "unicode".encode()
    ref = {"lookup.csv": b"k,v\n"}
    spec = base_spec(s3_server, tmp_path)
    spec["inputs"] = [
        {"name": "raw", "dir": str(tmp_path / "in" / "raw"), "list_uri": put_listed(client, bucket, "p/raw", raw), "primary": True},
        {"name": "ref", "dir": str(tmp_path / "in" / "ref"), "list_uri": put_listed(client, bucket, "p/ref", ref), "primary": False},
        {"name": "none", "dir": str(tmp_path / "in" / "none"), "list_uri": None},
    ]
    spec["files_list"] = str(tmp_path / "files.txt")

    proc = run_helper("stage-in", spec, s3_server)
    assert proc.returncode == 0, proc.stderr
    assert f"stage-in done: {len(raw) + len(ref)} files" in proc.stdout

    for root, files in ((tmp_path / "in" / "raw", raw), (tmp_path / "in" / "ref", ref)):
        got = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        assert got == files
        for p in root.rglob("*"):
            assert p.stat().st_mode & 0o777 == (0o555 if p.is_dir() else 0o444), p
        assert root.stat().st_mode & 0o777 == 0o555
    assert (tmp_path / "in" / "none").is_dir()
    assert (tmp_path / "files.txt").read_text(encoding="utf-8").splitlines() == list(raw)
    assert (tmp_path / "out").is_dir() and not os.listdir(tmp_path / "out")

    # a second attempt in the same pod (init container restarted) replaces the sealed files
    proc = run_helper("stage-in", spec, s3_server)
    assert proc.returncode == 0, proc.stderr


def test_stage_in_refuses_a_corrupted_object(s3_server, s3_bucket, tmp_path):
    client, bucket = s3_bucket
    files = {"good.txt": b"good", "bad.txt": b"original"}
    list_uri = put_listed(client, bucket, "c/raw", files)
    d = sha(b"original")
    bad_key = f"c/raw/_dataflow/objects/sha256/{d[:2]}/{d[2:]}"
    client.put_object(Bucket=bucket, Key=bad_key, Body=b"tampered")  # bytes no longer match the digest
    spec = base_spec(s3_server, tmp_path)
    spec["inputs"] = [{"name": "raw", "dir": str(tmp_path / "in"), "list_uri": list_uri, "primary": True}]
    spec["files_list"] = str(tmp_path / "files.txt")

    proc = run_helper("stage-in", spec, s3_server)
    assert proc.returncode == 1
    assert f"s3://{bucket}/{bad_key} hashes to {sha(b'tampered')}, not {d}" in proc.stderr
    assert not (tmp_path / "in" / "bad.txt").exists()
    assert not (tmp_path / "files.txt").exists()
    assert not [p for p in (tmp_path / "in").iterdir() if ".part-" in p.name]


def test_stage_in_missing_object_and_list(s3_server, s3_bucket, tmp_path):
    client, bucket = s3_bucket
    spec = base_spec(s3_server, tmp_path)
    spec["inputs"] = [{"name": "raw", "dir": str(tmp_path / "in"), "list_uri": f"s3://{bucket}/nope.jsonl", "primary": True}]
    proc = run_helper("stage-in", spec, s3_server)
    assert proc.returncode == 1
    assert f"file list of input 'raw' at s3://{bucket}/nope.jsonl: no such object" in proc.stderr

    row = {"path": "a", "digest": sha(b"a"), "location": f"s3://{bucket}/gone"}
    client.put_object(Bucket=bucket, Key="l.jsonl", Body=json.dumps(row).encode())
    spec["inputs"][0]["list_uri"] = f"s3://{bucket}/l.jsonl"
    proc = run_helper("stage-in", spec, s3_server)
    assert proc.returncode == 1
    assert f"cannot download s3://{bucket}/gone: no such object" in proc.stderr


def test_bad_credentials_and_bucket(s3_server, s3_bucket, tmp_path):
    _client, bucket = s3_bucket
    spec = base_spec(s3_server, tmp_path)
    spec["inputs"] = [{"name": "raw", "dir": str(tmp_path / "in"), "list_uri": f"s3://{bucket}/x.jsonl", "primary": True}]
    proc = run_helper("stage-in", spec, s3_server, env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert proc.returncode == 1
    assert "credentials were rejected" in proc.stderr
    spec["inputs"][0]["list_uri"] = "s3://no-such-bucket-dataflow/x.jsonl"
    proc = run_helper("stage-in", spec, s3_server)
    assert proc.returncode == 1
    assert "bucket does not exist" in proc.stderr


# ---------------------------------------------------------------------------------
# stage-out
# ---------------------------------------------------------------------------------
def _write_outputs(out: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)


def test_stage_out_uploads_to_the_content_store(s3_server, s3_bucket, tmp_path):
    client, bucket = s3_bucket
    out = tmp_path / "out"
    files = {
        "a.csv": b"a,b\n1,2\n",
        "copy-of-a.csv": b"a,b\n1,2\n",  # same bytes: one object
        "sub/big.bin": os.urandom(6 * 1024 * 1024),
        "empty": b"",
    }
    _write_outputs(out, files)
    (tmp_path / "lineage.tsv").write_text("a.csv\traw/a.csv\n")
    spec = base_spec(s3_server, tmp_path)
    store = f"s3://{bucket}/env/_dataflow/objects"
    spec["output"].update(
        store_uri=store,
        result_uri=f"s3://{bucket}/env/_dataflow/runs/r1/result.json",
        result_path=str(tmp_path / "result.json"),
    )

    proc = run_helper("stage-out", spec, s3_server)
    assert proc.returncode == 0, proc.stderr
    assert "3 uploaded, 0 already stored" in proc.stdout

    local = json.loads((tmp_path / "result.json").read_text())
    remote = json.loads(client.get_object(Bucket=bucket, Key="env/_dataflow/runs/r1/result.json")["Body"].read())
    assert local == remote
    assert local["lineage"] == "a.csv\traw/a.csv\n"
    assert [f["path"] for f in local["files"]] == sorted(files)
    for entry in local["files"]:
        data = files[entry["path"]]
        d = sha(data)
        key = f"env/_dataflow/objects/sha256/{d[:2]}/{d[2:]}"
        assert entry["digest"] == d and entry["size"] == len(data)
        assert entry["location"] == f"s3://{bucket}/{key}"
        assert _content_digest(entry["location"]) == d  # the storage layer reads these locations
        head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(d)).decode()
        assert head["Metadata"][DIGEST_META] == d
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data

    # again: every object is there, nothing is sent, the stored objects are untouched
    before = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=bucket, Prefix="env/_dataflow/objects/")["Contents"]}
    proc = run_helper("stage-out", spec, s3_server)
    assert proc.returncode == 0, proc.stderr
    assert "0 uploaded, 3 already stored" in proc.stdout
    after = {o["Key"]: o["LastModified"] for o in client.list_objects_v2(Bucket=bucket, Prefix="env/_dataflow/objects/")["Contents"]}
    assert after == before


def test_conditional_put_412_is_not_an_error(s3_server, s3_bucket, tmp_path, monkeypatch):
    """A concurrent writer stored the object between our HEAD and PUT: If-None-Match gives 412, which is fine."""
    from botocore.exceptions import ClientError

    client, bucket = s3_bucket
    src = tmp_path / "f"
    src.write_bytes(b"same bytes")
    d = sha(b"same bytes")
    key = f"s/_dataflow/objects/sha256/{d[:2]}/{d[2:]}"
    client.put_object(Bucket=bucket, Key=key, Body=b"same bytes")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    helper_client = podhelper.make_client(base_spec(s3_server, tmp_path), 4)

    class HeadSaysAbsent:
        def __getattr__(self, name):
            return getattr(helper_client, name)

        def head_object(self, **kw):
            raise ClientError({"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")

    prog = podhelper.Progress("t", 1)
    assert podhelper.upload(HeadSaysAbsent(), str(src), 10, bucket, key, d, prog) is False

    # and the server checks the bytes: a digest that does not match is refused, nothing is stored
    wrong = sha(b"other bytes")
    wrong_key = f"s/_dataflow/objects/sha256/{wrong[:2]}/{wrong[2:]}"
    with pytest.raises(podhelper.HelperError, match="no longer hash to"):
        podhelper.upload(helper_client, str(src), 10, bucket, wrong_key, wrong, prog)
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=wrong_key)


def test_stage_out_multipart(s3_server, s3_bucket, tmp_path):
    """Files above the multipart threshold go in parts, with per-part SHA-256 and the digest in metadata."""
    client, bucket = s3_bucket
    data = os.urandom(7 * 1024 * 1024)
    _write_outputs(tmp_path / "out", {"huge.bin": data})
    spec = base_spec(s3_server, tmp_path)
    spec["output"].update(store_uri=f"s3://{bucket}/m/_dataflow/objects", result_path=str(tmp_path / "r.json"))
    proc = run_helper("stage-out", spec, s3_server, env={"DATAFLOW_HELPER_MULTIPART_THRESHOLD": str(5 * 1024 * 1024)})
    assert proc.returncode == 0, proc.stderr
    d = sha(data)
    key = f"m/_dataflow/objects/sha256/{d[:2]}/{d[2:]}"
    assert client.head_object(Bucket=bucket, Key=key)["Metadata"][DIGEST_META] == d
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_stage_in_then_stage_out_roundtrip(s3_server, s3_bucket, tmp_path):
    """What stage-out stores, a later stage-in can stage from the result's locations."""
    client, bucket = s3_bucket
    files = {"x/1.txt": b"one", "x/2.txt": b"two"}
    _write_outputs(tmp_path / "out", files)
    spec = base_spec(s3_server, tmp_path)
    spec["output"].update(store_uri=f"s3://{bucket}/r/_dataflow/objects", result_uri=f"s3://{bucket}/r/result.json")
    assert run_helper("stage-out", spec, s3_server).returncode == 0
    doc = json.loads(client.get_object(Bucket=bucket, Key="r/result.json")["Body"].read())
    lines = "".join(json.dumps({k: f[k] for k in ("path", "digest", "location")}) + "\n" for f in doc["files"])
    client.put_object(Bucket=bucket, Key="r/next.jsonl", Body=lines.encode())
    spec2 = base_spec(s3_server, tmp_path / "next")
    spec2["inputs"] = [{"name": "prev", "dir": str(tmp_path / "next" / "in"), "list_uri": f"s3://{bucket}/r/next.jsonl", "primary": True}]
    spec2["files_list"] = str(tmp_path / "next" / "files.txt")
    proc = run_helper("stage-in", spec2, s3_server)
    assert proc.returncode == 0, proc.stderr
    assert {k: (tmp_path / "next" / "in" / k).read_bytes() for k in files} == files
