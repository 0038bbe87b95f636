"""Pure helpers of the S3 backend: URIs, checksums, the scan cache, error mapping."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from airflow_dataflow.exceptions import StorageError
from airflow_dataflow.storage.s3 import (
    S3StatCache,
    _content_digest,
    _mtime_ns,
    b64_of_hex,
    hex_of_b64,
    parse_s3_uri,
    storage_error,
)

DIGEST = hashlib.sha256(b"x").hexdigest()


def test_checksum_round_trip():
    b64 = b64_of_hex(DIGEST)
    assert b64 == base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    assert hex_of_b64(b64) == DIGEST
    assert hex_of_b64("AAAA") is None  # not 32 bytes
    assert hex_of_b64("not base64!") is None


def test_parse_s3_uri():
    assert parse_s3_uri("s3://b/a/b%20c.txt") == ("b", "a/b c.txt")
    for bad in ("file:///x", "s3://b", "s3://b/", "s3://b/k?versionId=1"):
        with pytest.raises(StorageError):
            parse_s3_uri(bad)


def test_content_digest_recognises_content_store_uris_only():
    uri = f"s3://b/p/_dataflow/objects/sha256/{DIGEST[:2]}/{DIGEST[2:]}"
    assert _content_digest(uri) == DIGEST
    assert _content_digest(f"s3://b/p/data/{DIGEST}") is None
    assert _content_digest(f"file:///p/_dataflow/objects/sha256/{DIGEST[:2]}/{DIGEST[2:]}") is None
    assert _content_digest(None) is None


def test_mtime_ns_is_exact():
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    assert _mtime_ns(when) == 1714979289_123456000
    assert _mtime_ns(when.replace(tzinfo=None)) == 1714979289_123456000


def test_stat_cache_round_trip_and_lookup():
    cache = S3StatCache({"a": (3, '"etag"', DIGEST)})
    back = S3StatCache.from_bytes(cache.to_bytes())
    assert back.entries == cache.entries
    assert back.lookup("a", 3, '"etag"') == DIGEST
    assert back.lookup("a", 4, '"etag"') is None
    assert back.lookup("a", 3, '"other"') is None
    assert S3StatCache.from_bytes(b"garbage").entries == {}
    assert S3StatCache.from_bytes(None).entries == {}


def _client_error(code: str, status: int, **extra) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "msg", **extra}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (_client_error("NoSuchBucket", 404, BucketName="bkt"), "bucket 'bkt' does not exist"),
        (_client_error("AccessDenied", 403), "access denied"),
        (_client_error("InvalidAccessKeyId", 403), "credentials were rejected"),
        (_client_error("SlowDown", 503), "S3 error SlowDown: msg"),
        (NoCredentialsError(), "no AWS credentials"),
    ],
)
def test_storage_error_names_the_uri_and_what_to_do(err, expected):
    out = storage_error(err, "read", "s3://bkt/key")
    assert isinstance(out, StorageError)
    assert "s3://bkt/key" in str(out) and expected in str(out)
