"""The S3 test server (versitygw v1.8.0, posix backend) works, and what it does.

Besides checking the fixtures, these tests pin down the S3 behaviour that the
storage backend relies on: conditional writes (compare-and-swap), checksums,
server-side copy, versioning and key encoding. Each test asserts what
versitygw was observed to do; where that differs from AWS S3 the test says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _error(exc_info: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = exc_info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def _body(client, bucket: str, key: str, **kwargs) -> bytes:
    return client.get_object(Bucket=bucket, Key=key, **kwargs)["Body"].read()


def _new_bucket(client) -> str:
    name = f"dataflow-test-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    return name


# -- the fixtures -------------------------------------------------------------


def test_server_answers_on_loopback(s3_server):
    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")
    assert s3_server.region == "us-east-1"
    assert s3_server.proc is not None and s3_server.proc.poll() is None


def test_put_get_list_objects(s3_bucket):
    client, bucket = s3_bucket
    for key in ["a/1.txt", "a/2.txt", "b/3.txt"]:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert _body(client, bucket, "a/2.txt") == b"a/2.txt"
    listed = client.list_objects_v2(Bucket=bucket, Prefix="a/")
    assert [o["Key"] for o in listed["Contents"]] == ["a/1.txt", "a/2.txt"]
    top = client.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "b/"]
    client.delete_object(Bucket=bucket, Key="a/1.txt")
    with pytest.raises(ClientError) as exc:
        client.head_object(Bucket=bucket, Key="a/1.txt")
    assert _error(exc)[1] == 404


def test_s3_bucket_is_fresh_each_time(s3_server, s3_bucket):
    client, bucket = s3_bucket
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert bucket.startswith("dataflow-test-")


@pytest.mark.parametrize("mode", ["when_supported", "when_required"])
def test_boto3_default_crc32_checksums_are_accepted(s3_server, mode):
    """boto3 >= 1.36 sends a CRC32 on every upload by default (when_supported);
    versitygw accepts it, stores it and returns it. boto3_client() uses
    when_required, in which case the server computes a CRC64NVME itself, like
    AWS S3 does."""
    client = s3_server.boto3_client(
        request_checksum_calculation=mode, response_checksum_validation=mode
    )
    bucket = _new_bucket(client)
    put = client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    expected = "ChecksumCRC32" if mode == "when_supported" else "ChecksumCRC64NVME"
    assert expected in put
    got = client.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"hello"
    assert got[expected] == put[expected]


def test_airflow_s3hook_uses_the_connection(s3_conn_env):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id="dataflow_s3")
    assert hook.get_conn().meta.endpoint_url == s3_conn_env.endpoint_url
    bucket = f"dataflow-test-{uuid.uuid4().hex[:20]}"
    hook.create_bucket(bucket_name=bucket)
    hook.load_bytes(b"via airflow", key="dir/file.txt", bucket_name=bucket)
    assert hook.list_keys(bucket_name=bucket) == ["dir/file.txt"]
    assert hook.read_key("dir/file.txt", bucket_name=bucket) == "via airflow"


def test_s3_conn_env_is_json(s3_conn_env):
    conn = json.loads(os.environ["AIRFLOW_CONN_DATAFLOW_S3"])
    assert conn["conn_type"] == "aws"
    assert conn["login"] == s3_conn_env.access_key
    assert conn["extra"] == {
        "endpoint_url": s3_conn_env.endpoint_url,
        "region_name": "us-east-1",
    }


def test_server_restarts_cleanly_on_a_new_port():
    """A second server gets its own port and temp dir; stop() removes it all."""
    from s3server import VersityGW

    with VersityGW() as server:
        workdir, pid = server.workdir, server.proc.pid
        server.boto3_client().create_bucket(Bucket="restart-check")
    assert not workdir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_binary_gives_a_clear_error(monkeypatch, tmp_path):
    from s3server import VersityGW, VersityGWError

    monkeypatch.setenv("DATAFLOW_VERSITYGW", str(tmp_path / "nope"))
    with pytest.raises(VersityGWError, match="make versitygw"):
        VersityGW().start()


# -- 1. conditional writes ----------------------------------------------------


def test_if_none_match_star_creates_only_new_keys(s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert _error(exc) == ("PreconditionFailed", 412)
    assert _body(client, bucket, "k") == b"first"


def test_if_none_match_with_an_etag_is_not_implemented(s3_bucket):
    """Only If-None-Match: * is supported (as on AWS); an ETag value gets 501."""
    client, bucket = s3_bucket
    put = client.put_object(Bucket=bucket, Key="k", Body=b"x")
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="k", Body=b"y", IfNoneMatch=put["ETag"])
    assert _error(exc) == ("NotImplemented", 501)


def test_if_match_is_compare_and_swap(s3_bucket):
    client, bucket = s3_bucket
    v1 = client.put_object(Bucket=bucket, Key="k", Body=b"v1")["ETag"]
    v2 = client.put_object(Bucket=bucket, Key="k", Body=b"v2", IfMatch=v1)["ETag"]
    assert _body(client, bucket, "k") == b"v2"
    with pytest.raises(ClientError) as exc:  # stale ETag
        client.put_object(Bucket=bucket, Key="k", Body=b"v3", IfMatch=v1)
    assert _error(exc) == ("PreconditionFailed", 412)
    assert _body(client, bucket, "k") == b"v2"
    # The ETag may be given without its quotes.
    client.put_object(Bucket=bucket, Key="k", Body=b"v4", IfMatch=v2.strip('"'))
    assert _body(client, bucket, "k") == b"v4"


def test_if_match_on_a_missing_key_is_no_such_key(s3_bucket):
    """As on AWS S3: If-Match on a key that does not exist answers 404
    NoSuchKey (not 412) and creates nothing. If-Match: * on an existing key
    answers 412 (versitygw compares '*' as an ETag)."""
    client, bucket = s3_bucket
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="missing", Body=b"x", IfMatch='"0123"')
    assert _error(exc) == ("NoSuchKey", 404)
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="missing", Body=b"x", IfMatch="*")
    assert _error(exc) == ("NoSuchKey", 404)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    client.put_object(Bucket=bucket, Key="present", Body=b"x")
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="present", Body=b"y", IfMatch="*")
    assert _error(exc) == ("PreconditionFailed", 412)


def test_conditional_delete(s3_bucket):
    client, bucket = s3_bucket
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"x")["ETag"]
    with pytest.raises(ClientError) as exc:
        client.delete_object(Bucket=bucket, Key="k", IfMatch='"0123"')
    assert _error(exc) == ("PreconditionFailed", 412)
    client.delete_object(Bucket=bucket, Key="k", IfMatch=etag)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_complete_multipart_upload_honours_if_none_match(s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="exists", Body=b"old")
    for key, ok in [("exists", False), ("new", True)]:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        part = client.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"a" * 10
        )
        complete = lambda: client.complete_multipart_upload(  # noqa: E731
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
            IfNoneMatch="*",
        )
        if ok:
            assert complete()["ETag"].endswith('-1"')
        else:
            with pytest.raises(ClientError) as exc:
                complete()
            assert _error(exc) == ("PreconditionFailed", 412)
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    assert _body(client, bucket, "exists") == b"old"
    assert _body(client, bucket, "new") == b"a" * 10


def _race(s3_server, rounds, writers, attempt, before_round=lambda r: None):
    """Per round, release `writers` threads together; count the winners.

    attempt(client, round_state, writer_index) does one conditional write;
    round_state is what before_round(round) returned.
    """
    clients = [s3_server.boto3_client() for _ in range(writers)]
    barrier = threading.Barrier(writers)

    def one(i, state):
        barrier.wait(timeout=30)
        try:
            attempt(clients[i], state, i)
            return "ok"
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    winners = Counter()
    with ThreadPoolExecutor(writers) as pool:
        for r in range(rounds):
            state = before_round(r)
            outcomes = list(pool.map(lambda i: one(i, state), range(writers)))
            assert set(outcomes) <= {"ok", "PreconditionFailed"}, outcomes
            winners[outcomes.count("ok")] += 1
    return winners


def test_if_none_match_is_atomic_under_concurrency(s3_server, s3_bucket):
    """Concurrent create-if-absent on one key: exactly one writer wins."""
    client, bucket = s3_bucket
    winners = _race(
        s3_server,
        rounds=15,
        writers=6,
        before_round=lambda r: f"k{r}",
        attempt=lambda c, key, i: c.put_object(
            Bucket=bucket, Key=key, Body=f"{key}-{i}".encode(), IfNoneMatch="*"
        ),
    )
    assert winners == Counter({1: 15})


def test_if_match_is_atomic_under_concurrency(s3_server, s3_bucket):
    """Concurrent CAS from the same ETag with distinct bodies: one winner.

    The ETag is the MD5 of the content, so the bodies must differ: see
    test_etag_aba_same_content_keeps_the_etag.
    """
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="cas", Body=b"start")

    def before_round(r):
        return r, client.head_object(Bucket=bucket, Key="cas")["ETag"]

    def attempt(c, state, i):
        r, etag = state
        c.put_object(Bucket=bucket, Key="cas", Body=f"{r}-{i}".encode(), IfMatch=etag)

    winners = _race(s3_server, rounds=15, writers=6, attempt=attempt, before_round=before_round)
    assert winners == Counter({1: 15})


def test_etag_aba_same_content_keeps_the_etag(s3_bucket):
    """ABA: rewriting the same bytes keeps the ETag, so a CAS on the ETag alone
    cannot tell "unchanged" from "rewritten with equal content". A CAS record
    must carry something unique (a generation or token) in its body."""
    client, bucket = s3_bucket
    etag = client.put_object(Bucket=bucket, Key="k", Body=b"same")["ETag"]
    again = client.put_object(Bucket=bucket, Key="k", Body=b"same", IfMatch=etag)["ETag"]
    assert again == etag
    # ...so a second writer holding the old ETag still succeeds.
    client.put_object(Bucket=bucket, Key="k", Body=b"other", IfMatch=etag)


# -- 2. checksums and ETag ----------------------------------------------------


def test_etag_of_single_part_upload_is_md5_hex(s3_bucket):
    client, bucket = s3_bucket
    body = b"some bytes \x00\xff"
    put = client.put_object(Bucket=bucket, Key="k", Body=body)
    md5 = hashlib.md5(body).hexdigest()
    assert put["ETag"] == f'"{md5}"'
    assert client.head_object(Bucket=bucket, Key="k")["ETag"] == f'"{md5}"'
    listed = client.list_objects_v2(Bucket=bucket)["Contents"][0]
    assert listed["ETag"] == f'"{md5}"'


@pytest.mark.parametrize("explicit", [False, True], ids=["algorithm", "explicit-value"])
def test_sha256_checksum_is_stored_and_returned(s3_bucket, explicit):
    client, bucket = s3_bucket
    body = b"checksum me" * 100
    sha = _sha256_b64(body)
    kwargs = {"ChecksumSHA256": sha} if explicit else {"ChecksumAlgorithm": "SHA256"}
    put = client.put_object(Bucket=bucket, Key="k", Body=body, **kwargs)
    assert put["ChecksumSHA256"] == sha

    head = client.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == sha
    assert head["ChecksumType"] == "FULL_OBJECT"
    # Without ChecksumMode the checksum is not returned (as on AWS).
    assert "ChecksumSHA256" not in client.head_object(Bucket=bucket, Key="k")

    got = client.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == sha and got["Body"].read() == body

    attrs = client.get_object_attributes(
        Bucket=bucket, Key="k", ObjectAttributes=["Checksum", "ETag", "ObjectSize"]
    )
    assert attrs["Checksum"]["ChecksumSHA256"] == sha
    assert attrs["ObjectSize"] == len(body)
    # GetObjectAttributes gives the ETag without quotes (as AWS does).
    assert attrs["ETag"] == hashlib.md5(body).hexdigest()

    listed = client.list_objects_v2(Bucket=bucket)["Contents"][0]
    assert listed["ChecksumAlgorithm"] == ["SHA256"]
    assert listed["ChecksumType"] == "FULL_OBJECT"


def test_wrong_sha256_is_rejected(s3_bucket):
    client, bucket = s3_bucket
    with pytest.raises(ClientError) as exc:
        client.put_object(Bucket=bucket, Key="k", Body=b"data", ChecksumSHA256=_sha256_b64(b"x"))
    assert _error(exc) == ("BadDigest", 400)
    assert client.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_without_checksum_the_server_stores_crc64nvme(s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="k", Body=b"data")
    listed = client.list_objects_v2(Bucket=bucket)["Contents"][0]
    assert listed["ChecksumAlgorithm"] == ["CRC64NVME"]


# -- 3. server-side copy ------------------------------------------------------


def test_copy_object_same_and_across_buckets(s3_server, s3_bucket):
    client, bucket = s3_bucket
    other = _new_bucket(client)
    body = b"copy me " * 1000
    sha = _sha256_b64(body)
    client.put_object(Bucket=bucket, Key="src", Body=body, ChecksumAlgorithm="SHA256")
    for dst_bucket in (bucket, other):
        result = client.copy_object(
            Bucket=dst_bucket, Key="dir/dst", CopySource={"Bucket": bucket, "Key": "src"}
        )["CopyObjectResult"]
        # The source's SHA256 checksum and ETag come along.
        assert result["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        assert result["ChecksumSHA256"] == sha
        assert _body(client, dst_bucket, "dir/dst") == body
        head = client.head_object(Bucket=dst_bucket, Key="dir/dst", ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == sha


def test_copy_object_can_add_a_sha256_checksum(s3_bucket):
    client, bucket = s3_bucket
    body = b"no sha yet"
    client.put_object(Bucket=bucket, Key="src", Body=body)  # CRC64NVME only
    result = client.copy_object(
        Bucket=bucket,
        Key="dst",
        CopySource={"Bucket": bucket, "Key": "src"},
        ChecksumAlgorithm="SHA256",
    )["CopyObjectResult"]
    assert result["ChecksumSHA256"] == _sha256_b64(body)
    head = client.head_object(Bucket=bucket, Key="dst", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == _sha256_b64(body)


def test_copy_source_if_match_is_honoured(s3_bucket):
    client, bucket = s3_bucket
    etag = client.put_object(Bucket=bucket, Key="src", Body=b"src")["ETag"]
    with pytest.raises(ClientError) as exc:
        client.copy_object(
            Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
            CopySourceIfMatch='"0123"',
        )
    assert _error(exc) == ("PreconditionFailed", 412)
    client.copy_object(
        Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
        CopySourceIfMatch=etag,
    )
    assert _body(client, bucket, "dst") == b"src"


def test_copy_object_ignores_destination_conditions(s3_bucket):
    """DIFFERS FROM AWS: IfNoneMatch / IfMatch on CopyObject (conditions on
    the destination) are accepted and IGNORED: the copy overwrites. Do not
    use a conditional copy as a compare-and-swap; use a conditional PUT."""
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="src", Body=b"src")
    for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0123"'}):
        client.put_object(Bucket=bucket, Key="dst", Body=b"dst")
        client.copy_object(
            Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"}, **condition
        )
        assert _body(client, bucket, "dst") == b"src", condition


# -- 4. versioning ------------------------------------------------------------


def test_bucket_versioning(s3_bucket):
    """Works because the fixture starts posix with --versioning-dir."""
    client, bucket = s3_bucket
    assert "Status" not in client.get_bucket_versioning(Bucket=bucket)
    client.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    assert client.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    v1 = client.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    v2 = client.put_object(Bucket=bucket, Key="k", Body=b"two")["VersionId"]
    assert v1 and v2 and v1 != v2
    assert _body(client, bucket, "k") == b"two"
    assert _body(client, bucket, "k", VersionId=v1) == b"one"
    versions = client.list_object_versions(Bucket=bucket, Prefix="k")["Versions"]
    assert [(v["VersionId"], v["IsLatest"]) for v in versions] == [(v2, True), (v1, False)]
    # A delete leaves a marker; the old versions stay readable.
    client.delete_object(Bucket=bucket, Key="k")
    with pytest.raises(ClientError):
        client.head_object(Bucket=bucket, Key="k")
    assert _body(client, bucket, "k", VersionId=v2) == b"two"


def test_unversioned_bucket_has_no_version_ids(s3_bucket):
    client, bucket = s3_bucket
    put = client.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert put.get("VersionId") in (None, "null")


# -- 5. key encoding ----------------------------------------------------------

ODD_KEYS = [
    "dir with space/file name.txt",
    "ünïcödé/日本語/ключ.txt",
    "emoji 🎉.bin",
    "a+b=c&d?.txt",
    "percent%20literal.txt",
    "trailing space ",
]


@pytest.mark.parametrize(
    "key", ODD_KEYS, ids=["space", "utf8", "emoji", "reserved-chars", "percent", "trailing-space"]
)
def test_odd_keys_round_trip(s3_bucket, key):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert _body(client, bucket, key) == key.encode()
    assert [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    copied = client.copy_object(
        Bucket=bucket, Key=key + ".copy", CopySource={"Bucket": bucket, "Key": key}
    )
    assert copied["CopyObjectResult"]["ETag"]
    assert _body(client, bucket, key + ".copy") == key.encode()


def test_listing_is_in_utf8_byte_order(s3_bucket):
    client, bucket = s3_bucket
    for key in ODD_KEYS:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    listed = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(ODD_KEYS, key=lambda k: k.encode())
