"""S3 storage: content-addressed objects, Parquet manifests, HEAD moved by conditional writes.

Layout (see :mod:`airflow_dataflow.core.location`), for a dataset at
``s3://bucket/<parent>/<name>``:

* ``<parent>/_dataflow/objects/sha256/<2 hex>/<62 hex>``: the content store. Each
  file's bytes are uploaded once, with ``ChecksumSHA256`` so that the server
  verifies them, and never overwritten (``If-None-Match: *``) or deleted while a
  snapshot references them (garbage collection is an explicit command);
* ``<parent>/_dataflow/<name>/snapshots/<digest>/manifest.parquet``: the manifests;
* ``<parent>/_dataflow/<name>/HEAD``: a JSON object ``{"digest", "seq", "record"}``;
* ``<parent>/_dataflow/<name>/log/<seq:010d>.json``: the commit log, one object per
  commit, never rewritten;
* ``<parent>/_dataflow/<name>/statcache.parquet``: the scan cache (path, size,
  ETag, digest), so that a rescan of unchanged objects reads no object body;
* ``<parent>/<name>/``: the *plain view* of an owned dataset: server-side copies
  of HEAD's files, for readers without this package. S3 cannot swap a prefix
  atomically, so the view is updated after HEAD moved (copies first, deletions
  last) and a plain reader may briefly see a mix. **Readers that need a
  consistent snapshot read through the manifest** (its ``location`` column
  points at immutable content-store objects). The prefix is managed: a first
  commit refuses to replace or delete objects that are not in its snapshot, and
  after that every sync makes the prefix equal to HEAD again (objects written
  there by hand are replaced or deleted; write through a commit instead).

Commits (:meth:`S3Storage.swap_head`) move HEAD with a conditional PUT:
``If-Match: <ETag of the HEAD read>`` (or ``If-None-Match: *`` for the first
commit). Of two concurrent writers the server lets exactly one through; the
other gets HTTP 412 and a :class:`~airflow_dataflow.exceptions.ConcurrentCommitError`.
HEAD's body always carries a new ``seq``, so its ETag (the MD5 of the body) never
repeats and the compare-and-swap has no ABA problem. The versitygw test server
honours ``If-Match``/``If-None-Match`` on PutObject atomically under concurrency
(``tests/integration/test_s3server.py``), as AWS S3 does since 2024.

HEAD moves *before* the log entry is written, and HEAD embeds the full commit
record: the conditional PUT of HEAD is the one commit point, and a writer killed
between the two leaves HEAD's record to be written to the log by the next
committer (:meth:`S3Storage.read_log` returns it meanwhile). The opposite
order (log first, drop "aborted" trailing entries) cannot be made safe on S3: a
writer that drops another's trailing entry cannot know that the other is not
about to win the HEAD swap, and the winner's log entry would be lost.

Observed sources (``loc.owned`` False) get no content store and no view: their
manifests reference the objects where they are, and commits write only the
manifest, HEAD and log under the configured metadata location. Their
``location`` URIs point at live keys that their owner may overwrite.

Versioned sources (``?versionId=``) are not supported: locations are plain
``s3://bucket/key`` URIs.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import io
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from airflow_dataflow.core.commit import CommitRecord, valid_prefix
from airflow_dataflow.core.hashing import CHUNK, digest_bytes, new_hasher
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.core.paths import RESERVED_DIR, validate_relpath
from airflow_dataflow.exceptions import (
    ConcurrentCommitError,
    DataflowError,
    InvalidPathError,
    ManifestError,
    ScanError,
    SnapshotNotFoundError,
    StorageError,
)
from airflow_dataflow.storage.base import Progress, ProgressFn, Storage

log = logging.getLogger(__name__)

T = TypeVar("T")

HEAD_VERSION = 1
EMPTY_DIGEST = digest_bytes(b"")
DIGEST_META = "dataflow-digest"  # x-amz-meta-dataflow-digest on stored objects
CACHE_FORMAT = b"airflow-dataflow-s3-statcache"
CACHE_SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("etag", pa.string()), ("digest", pa.string())],
    metadata={b"dataflow.format": CACHE_FORMAT, b"dataflow.version": b"1"},
)
#: Objects larger than this are uploaded and copied in parts (single PUT/COPY limit: 5 GiB).
MULTIPART_THRESHOLD = 4 * 1024**3
_CONTENT_KEY = re.compile(r"(?:^|/)" + re.escape(RESERVED_DIR) + r"/objects/sha256/([0-9a-f]{2})/([0-9a-f]{62})$")

# error codes that mean "the conditional write lost"
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


def _workers() -> int:
    return max(4, min(32, (os.cpu_count() or 2) * 4))


# ---------------------------------------------------------------------------------
# URIs and small helpers
# ---------------------------------------------------------------------------------
def s3_uri(bucket: str, key: str) -> str:
    """Return the ``s3://bucket/key`` URI of an object."""
    return f"s3://{bucket}/{key}"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key).

    :raises StorageError: ``uri`` is not an object URI
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("s3", "s3a") or not parts.netloc or not parts.path.strip("/"):
        raise StorageError(f"{uri!r} is not an S3 object URI (s3://bucket/key)")
    if parts.query:
        raise StorageError(f"{uri!r}: query strings such as ?versionId= are not supported")
    return parts.netloc, unquote(parts.path).lstrip("/")


def b64_of_hex(digest: str) -> str:
    """Return the base64 form S3 uses for ``ChecksumSHA256`` of a hex digest."""
    return base64.b64encode(bytes.fromhex(digest)).decode()


def hex_of_b64(value: str) -> str | None:
    """Return the hex digest of a base64 ``ChecksumSHA256`` (None if it is no full SHA-256)."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _mtime_ns(when: _dt.datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    delta = when - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def _code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _status(err: Exception) -> int:
    response = getattr(err, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _is_client_error(err: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(err, ClientError)


def _precondition_failed(err: BaseException) -> bool:
    return _is_client_error(err) and (_code(err) in _PRECONDITION or _status(err) == 412)  # type: ignore[arg-type]


def _not_found(err: BaseException) -> bool:
    return _is_client_error(err) and (  # type: ignore[arg-type]
        _code(err) in _NOT_FOUND or (_status(err) == 404 and _code(err) != "NoSuchBucket")  # type: ignore[arg-type]
    )


def storage_error(err: BaseException, action: str, uri: str) -> StorageError:
    """Translate a botocore error into a :class:`StorageError` naming ``uri`` and what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(err, ClientError):
        code = _code(err)
        bucket = err.response.get("Error", {}).get("BucketName") or urlsplit(uri).netloc
        if code == "NoSuchBucket":
            hint = f"bucket {bucket!r} does not exist: create it or fix the URI"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            hint = f"the credentials were rejected ({code}): fix the AWS connection or renew the token"
        elif code in ("AccessDenied", "AllAccessDisabled", "403") or _status(err) == 403:
            hint = "access denied: check the credentials (connection / IAM role) and the bucket policy"
        elif code in _NOT_FOUND:
            hint = "no such object"
        elif code in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
            hint = "the server rejected the bytes' checksum: the file changed while it was uploaded; retry"
        else:
            msg = err.response.get("Error", {}).get("Message", "")
            hint = f"S3 error {code or _status(err)}: {msg}".rstrip(": ")
        return StorageError(f"cannot {action} {uri}: {hint}")
    if isinstance(err, NoCredentialsError):
        return StorageError(
            f"cannot {action} {uri}: no AWS credentials found; configure an Airflow AWS connection "
            "(aws_conn_id) or the standard AWS environment variables"
        )
    if isinstance(err, BotoCoreError):
        return StorageError(f"cannot {action} {uri}: {err}; check the endpoint and the network")
    return StorageError(f"cannot {action} {uri}: {err}")


# ---------------------------------------------------------------------------------
# the S3 stat cache: (path, size, ETag) -> digest
# ---------------------------------------------------------------------------------
@dataclass
class S3StatCache:
    """Digests of objects keyed by relative path, size and ETag.

    An object whose size and ETag equal the cached ones is trusted unchanged: S3
    gives every new write of different bytes a different ETag (the MD5 of a
    single-part object; a hash of the part MD5s for multipart ones). No
    timestamp race exists, unlike the local stat cache.
    """

    entries: dict[str, tuple[int, str, str]]

    @classmethod
    def from_bytes(cls, data: bytes | None) -> S3StatCache:
        """Load a cache from Parquet bytes; anything unreadable is an empty cache."""
        if not data:
            return cls({})
        try:
            table = pq.read_table(pa.BufferReader(data))
            if (table.schema.metadata or {}).get(b"dataflow.format") != CACHE_FORMAT:
                return cls({})
            cols = [table.column(n).to_pylist() for n in CACHE_SCHEMA.names]
        except (OSError, pa.ArrowException, KeyError):
            return cls({})
        return cls({p: (s, e, d) for p, s, e, d in zip(*cols, strict=True)})

    def to_bytes(self) -> bytes:
        """Serialise to Parquet."""
        paths = sorted(self.entries)
        table = pa.table(
            {
                "path": paths,
                "size": [self.entries[p][0] for p in paths],
                "etag": [self.entries[p][1] for p in paths],
                "digest": [self.entries[p][2] for p in paths],
            },
            schema=CACHE_SCHEMA,
        )
        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue()

    def lookup(self, path: str, size: int, etag: str) -> str | None:
        """Return the cached digest of ``path`` if its size and ETag are unchanged."""
        hit = self.entries.get(path)
        if hit is None or hit[0] != size or hit[1] != etag:
            return None
        return hit[2]


@dataclass(frozen=True)
class _ViewPlan:
    want: dict[str, tuple[str, int, str | None]]  # path -> (digest, size, location) of HEAD
    listed: dict[str, _Listed]  # path -> object in the view now
    keep: dict[str, tuple[int, str, str]]  # path -> (size, ETag, digest) of view objects already right
    to_copy: list[str]
    to_delete: list[str]
    cache_changed: bool


@dataclass(frozen=True)
class _Listed:
    rel: str
    key: str
    size: int
    etag: str
    mtime_ns: int | None
    sha256_listed: bool  # the listing says the object has a full-object SHA256 checksum


# ---------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------
class S3Storage(Storage):
    """Datasets in S3 (or an S3-compatible store such as versitygw).

    :param client: a boto3 S3 client to use (it is thread-safe and shared by the
        worker threads)
    :param aws_conn_id: else, an Airflow AWS connection, through the amazon
        provider's ``S3Hook``
    :param workers: parallel requests for hashing, uploads and copies

    Without either, ``boto3.client("s3")`` is used, which honours the standard AWS
    environment (``AWS_ENDPOINT_URL``, ``AWS_PROFILE``, ...).
    """

    scheme = "s3"

    def __init__(self, client: Any = None, aws_conn_id: str | None = None, workers: int | None = None) -> None:
        self._given_client = client
        self.aws_conn_id = aws_conn_id
        self.workers = workers or _workers()
        self._log_cache: dict[tuple[str, str, str], CommitRecord] = {}

    @cached_property
    def client(self) -> Any:
        """Return the boto3 S3 client, created on first use."""
        if self._given_client is not None:
            return self._given_client
        if self.aws_conn_id:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            return S3Hook(aws_conn_id=self.aws_conn_id).get_conn()
        import boto3
        from botocore.config import Config

        options: dict[str, Any] = {"max_pool_connections": max(10, self.workers)}
        try:  # botocore >= 1.36: send and check checksums only when an operation requires it
            Config(request_checksum_calculation="when_required")
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        except TypeError:
            pass
        return boto3.client("s3", config=Config(**options))

    # -- keys ------------------------------------------------------------------------
    @staticmethod
    def _head_key(loc: DatasetLocation) -> str:
        return f"{loc.meta}/HEAD"

    @staticmethod
    def _manifest_key(loc: DatasetLocation, digest: str) -> str:
        return f"{loc.meta}/snapshots/{digest}/manifest.parquet"

    @staticmethod
    def _log_key(loc: DatasetLocation, seq: int) -> str:
        return f"{loc.meta}/log/{seq:010d}.json"

    @staticmethod
    def _cache_key(loc: DatasetLocation) -> str:
        return f"{loc.meta}/statcache.parquet"

    # -- request helpers -----------------------------------------------------------------
    def _call(self, action: str, uri: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """Call a client method, translating errors into :class:`StorageError`."""
        try:
            return fn(**kwargs)
        except Exception as err:  # botocore raises ClientError, BotoCoreError and friends
            if _is_client_error(err) or type(err).__module__.startswith(("botocore", "urllib3")):
                raise storage_error(err, action, uri) from err
            raise

    def _get_bytes(self, bucket: str, key: str) -> tuple[bytes, str] | None:
        """Return (body, ETag) of an object, or None if it does not exist."""
        try:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            return resp["Body"].read(), resp["ETag"]
        except Exception as err:
            if _not_found(err):
                return None
            if _is_client_error(err) or type(err).__module__.startswith(("botocore", "urllib3")):
                raise storage_error(err, "read", s3_uri(bucket, key)) from err
            raise

    def _put_if_absent(self, bucket: str, key: str, body: bytes, **kwargs: Any) -> bool:
        """Create an object unless the key exists; return whether this call created it."""
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*", **kwargs)
            return True
        except Exception as err:
            if _precondition_failed(err):
                return False
            if _is_client_error(err) or type(err).__module__.startswith(("botocore", "urllib3")):
                raise storage_error(err, "write", s3_uri(bucket, key)) from err
            raise

    def _pool_map(self, fn: Callable[[Any], T], items: list[Any]) -> Iterator[T]:
        if len(items) <= 1:
            yield from map(fn, items)
            return
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            yield from pool.map(fn, items)

    # -- listing and scanning ------------------------------------------------------------
    def _list(self, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
        """Yield the ListObjectsV2 entries under ``prefix``."""
        token: str | None = None
        uri = s3_uri(bucket, prefix)
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list", uri, self.client.list_objects_v2, **kwargs)
            yield from page.get("Contents", ())
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token:
                raise StorageError(f"cannot list {uri}: the server truncated the listing without a token")

    def _list_view(self, loc: DatasetLocation) -> Iterator[_Listed]:
        """Yield the plain files under ``loc``'s prefix, validated."""
        prefix = loc.path + "/"
        for obj in self._list(loc.bucket, prefix):
            key = obj["Key"]
            rel = key[len(prefix) :]
            if key.endswith("/"):
                continue  # a "directory marker" made by consoles and some tools
            if RESERVED_DIR in rel.split("/"):
                continue  # metadata, never data
            try:
                validate_relpath(rel)
            except InvalidPathError as err:
                raise InvalidPathError(
                    f"cannot scan {loc.uri}: object {s3_uri(loc.bucket, key)!r} does not map to a safe "
                    f"relative path ({err}); rename or remove that object"
                ) from None
            algos = obj.get("ChecksumAlgorithm") or []
            yield _Listed(
                rel=rel,
                key=key,
                size=int(obj["Size"]),
                etag=obj.get("ETag", ""),
                mtime_ns=_mtime_ns(obj.get("LastModified")),
                sha256_listed="SHA256" in algos and obj.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT",
            )

    def _local_cache(self, loc: DatasetLocation, has_head: bool | None = None) -> str | None:
        """Return a local cache file for a prefix that is no dataset (nothing is written in its
        bucket), or None when the cache belongs beside the dataset's metadata.

        :param has_head: whether ``loc`` has a HEAD, when the caller knows (else HEAD is read)
        """
        if has_head is None:
            try:
                has_head = self.read_head(loc) is not None
            except (StorageError, ManifestError):
                has_head = False
        if has_head:
            return None
        from airflow_dataflow.storage.localscan import user_cache_file

        return user_cache_file(loc.uri)

    def _load_cache(self, loc: DatasetLocation, local: str | None) -> S3StatCache:
        """Load the scan cache (from ``local``, else beside the metadata); one that cannot be read
        is empty (it only saves time)."""
        try:
            if local is not None:
                with open(local, "rb") as fh:
                    return S3StatCache.from_bytes(fh.read())
            got = self._get_bytes(loc.bucket, self._cache_key(loc))
        except FileNotFoundError:
            return S3StatCache({})
        except (StorageError, OSError) as err:
            log.debug("scan cache of %s not readable, scanning without it: %s", loc.uri, err)
            return S3StatCache({})
        return S3StatCache.from_bytes(got[0] if got else None)

    def _save_cache(self, loc: DatasetLocation, cache: S3StatCache, local: str | None) -> None:
        try:
            if local is not None:
                os.makedirs(os.path.dirname(local), exist_ok=True)
                tmp = f"{local}.tmp-{os.getpid()}"
                with open(tmp, "wb") as fh:
                    fh.write(cache.to_bytes())
                os.replace(tmp, local)
                return
            self.client.put_object(Bucket=loc.bucket, Key=self._cache_key(loc), Body=cache.to_bytes())
        except Exception as err:  # a cache that cannot be written only costs time on the next scan
            log.debug("cannot write the scan cache of %s: %s", loc.uri, err)

    def _stored_sha256(self, bucket: str, key: str, etag: str) -> str | None:
        """Return the server's full-object SHA-256 of an object without reading it, if it has one."""
        uri = s3_uri(bucket, key)
        try:
            head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED", IfMatch=etag)
        except Exception as err:
            if _precondition_failed(err) or _not_found(err):
                raise ScanError(f"{uri} changed or disappeared during the scan; rescan once writers are done") from err
            raise storage_error(err, "inspect", uri) from err
        value = head.get("ChecksumSHA256")
        if not value or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
            return None
        return hex_of_b64(value)

    def _hash_object(self, bucket: str, key: str, etag: str) -> str:
        """Stream an object and return its SHA-256 hex digest."""
        uri = s3_uri(bucket, key)
        try:
            body = self.client.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"]
            hasher = new_hasher()
            for chunk in iter(lambda: body.read(CHUNK), b""):
                hasher.update(chunk)
            return hasher.hexdigest()
        except Exception as err:
            if _precondition_failed(err) or _not_found(err):
                raise ScanError(f"{uri} changed or disappeared during the scan; rescan once writers are done") from err
            if _is_client_error(err) or type(err).__module__.startswith(("botocore", "urllib3")):
                raise storage_error(err, "read", uri) from err
            raise

    def _digest_of(self, bucket: str, item: _Listed) -> str:
        if item.size == 0:
            return EMPTY_DIGEST
        if item.sha256_listed:
            stored = self._stored_sha256(bucket, item.key, item.etag)
            if stored:
                return stored
        return self._hash_object(bucket, item.key, item.etag)

    def scan(self, loc: DatasetLocation, *, progress: ProgressFn | None = None) -> Manifest:
        """Scan the objects under ``loc``'s prefix into a manifest.

        Digests come from the scan cache when size and ETag are unchanged, else
        from the object's stored full-object SHA-256 checksum, else from reading
        the object (in parallel). An empty or missing prefix is an empty dataset.

        :raises InvalidPathError: a key does not map to a safe relative path
        :raises StorageError: the bucket is missing or not readable
        """
        local = self._local_cache(loc)
        cache = self._load_cache(loc, local)
        prog = Progress(f"scan {loc.uri}", progress)
        items: list[_Listed] = []
        digests: list[str | None] = []
        todo: list[int] = []
        for item in self._list_view(loc):
            cached = cache.lookup(item.rel, item.size, item.etag)
            if cached is None:
                todo.append(len(items))
            items.append(item)
            digests.append(cached)
            prog.tick(len(items))
        if todo:
            hprog = Progress(f"hash {loc.uri}", progress)
            nbytes = 0
            for n, (i, digest) in enumerate(
                zip(todo, self._pool_map(lambda i: self._digest_of(loc.bucket, items[i]), todo), strict=True), 1
            ):
                digests[i] = digest
                nbytes += items[i].size
                hprog.tick(n, len(todo), nbytes)
        if not items:
            log.info("%s holds no objects: scanned as an empty dataset", loc.uri)
        table = pa.table(
            {
                "path": [it.rel for it in items],
                "size": pa.array([it.size for it in items], pa.int64()),
                "mtime_ns": pa.array([it.mtime_ns for it in items], pa.int64()),
                "digest": pa.array(digests, pa.string()),
                "location": [s3_uri(loc.bucket, it.key) for it in items],
            }
        )
        manifest = Manifest.from_table(table, where=loc.uri)
        if todo or len(cache.entries) != len(items):
            fresh = S3StatCache({it.rel: (it.size, it.etag, d) for it, d in zip(items, digests, strict=True)})  # type: ignore[misc]
            self._save_cache(loc, fresh, local)
        return manifest

    # -- reading metadata ----------------------------------------------------------------
    def _read_head_doc(self, loc: DatasetLocation) -> tuple[dict[str, Any] | None, str | None]:
        """Return (HEAD document, its ETag), or (None, None) before the first commit."""
        key = self._head_key(loc)
        got = self._get_bytes(loc.bucket, key)
        if got is None:
            return None, None
        data, etag = got
        where = s3_uri(loc.bucket, key)
        try:
            doc = json.loads(data)
            digest = doc["digest"]
            if doc.get("version") != HEAD_VERSION or not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"unexpected content {data[:120]!r}")
            int(doc["seq"])
        except (ValueError, KeyError, TypeError) as err:
            raise ManifestError(
                f"HEAD of {loc.uri} at {where} is corrupt ({err}); restore it from the commit log "
                "(its newest entry names the snapshot digest)"
            ) from err
        return doc, etag

    def read_head(self, loc: DatasetLocation) -> str | None:
        """Return HEAD's digest, read from the ``HEAD`` object (None before the first commit)."""
        doc, _ = self._read_head_doc(loc)
        return None if doc is None else str(doc["digest"])

    def read_manifest(self, loc: DatasetLocation, digest: str) -> Manifest:
        """Read and check the manifest of snapshot ``digest``."""
        key = self._manifest_key(loc, digest)
        uri = s3_uri(loc.bucket, key)
        got = self._get_bytes(loc.bucket, key)
        if got is None:
            raise SnapshotNotFoundError(
                f"{loc.uri}@{digest}: no such snapshot (no {uri}); see `airflow-dataflow log {loc.uri}`"
            )
        manifest = Manifest.from_parquet_bytes(got[0], uri)
        if manifest.digest != digest:
            raise ManifestError(f"manifest {uri} hashes to {manifest.digest}, not {digest}: it is corrupt; restore it")
        return manifest

    def read_log(self, loc: DatasetLocation) -> list[CommitRecord]:
        """Return every commit log entry, including HEAD's own record if its entry is not written yet."""
        return self._read_log(loc)[0]

    def log(self, loc: DatasetLocation) -> list[CommitRecord]:
        """Return the commits of ``loc`` that really happened, oldest first (HEAD read once)."""
        records, head = self._read_log(loc)
        return valid_prefix(records, head)

    def _read_log(self, loc: DatasetLocation) -> tuple[list[CommitRecord], str | None]:
        """Return (:meth:`read_log`, HEAD's digest), from one read of HEAD."""
        prefix = f"{loc.meta}/log/"
        listed = [o for o in self._list(loc.bucket, prefix) if o["Key"].endswith(".json")]

        def fetch(obj: dict[str, Any]) -> CommitRecord:
            ident = (loc.bucket, obj["Key"], obj.get("ETag", ""))
            hit = self._log_cache.get(ident)
            if hit is not None:
                return hit
            got = self._get_bytes(loc.bucket, obj["Key"])
            if got is None:
                raise StorageError(f"log entry {s3_uri(loc.bucket, obj['Key'])} vanished while reading; retry")
            record = CommitRecord.from_json(got[0], s3_uri(loc.bucket, obj["Key"]))
            self._log_cache[ident] = record  # entries are written once and never rewritten
            return record

        records = list(self._pool_map(fetch, listed))
        doc, _ = self._read_head_doc(loc)
        if doc is not None and doc.get("record") and not any(r.seq == int(doc["seq"]) for r in records):
            records.append(self._head_record(loc, doc))
        return sorted(records, key=lambda r: r.seq), None if doc is None else str(doc["digest"])

    def _head_record(self, loc: DatasetLocation, doc: dict[str, Any]) -> CommitRecord:
        return CommitRecord.from_json(json.dumps(doc["record"]).encode(), s3_uri(loc.bucket, self._head_key(loc)))

    # -- writing: bytes ---------------------------------------------------------------------
    def _upload_file(self, loc: DatasetLocation, src: str, digest: str) -> None:
        """Store a local file under its digest in the content store (server-verified)."""
        key = loc.object_key(digest)
        uri = s3_uri(loc.bucket, key)
        try:
            self.client.head_object(Bucket=loc.bucket, Key=key)
            return  # stored already: content-addressed keys never change
        except Exception as err:
            if not _not_found(err):
                raise storage_error(err, "inspect", uri) from err
        try:
            size = os.path.getsize(src)
        except OSError as err:
            raise StorageError(f"cannot read staged file {src!r}: {err.strerror}") from err
        if size > MULTIPART_THRESHOLD:
            self._upload_large(loc, src, key, digest)
            return
        try:
            with open(src, "rb") as fh:
                self.client.put_object(
                    Bucket=loc.bucket,
                    Key=key,
                    Body=fh,
                    ChecksumSHA256=b64_of_hex(digest),
                    Metadata={DIGEST_META: digest},
                    IfNoneMatch="*",
                )
        except OSError as err:
            if not type(err).__module__.startswith(("botocore", "urllib3")):
                raise StorageError(f"cannot read staged file {src!r}: {err.strerror}") from err
            raise storage_error(err, "upload", uri) from err
        except Exception as err:
            if _precondition_failed(err):
                return  # a concurrent writer stored the same bytes
            if _code(err) in ("BadDigest", "XAmzContentSHA256Mismatch"):
                raise StorageError(
                    f"cannot upload {src!r} to {uri}: its bytes no longer hash to {digest} "
                    "(the file changed after it was hashed); rerun the task"
                ) from err
            raise storage_error(err, "upload", uri) from err

    def _upload_large(self, loc: DatasetLocation, src: str, key: str, digest: str) -> None:
        """Upload a file above the single-PUT limit in parts.

        The server verifies each part's SHA-256 (a composite checksum: S3 keeps no
        full-object SHA-256 of multipart objects); the full digest is kept in the
        object's ``x-amz-meta-dataflow-digest`` metadata.
        """
        from boto3.s3.transfer import TransferConfig

        uri = s3_uri(loc.bucket, key)
        try:
            self.client.upload_file(
                src,
                loc.bucket,
                key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {DIGEST_META: digest}},
                Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=256 * 1024**2),
            )
        except Exception as err:
            raise storage_error(err, "upload", uri) from err

    def ingest(
        self, loc: DatasetLocation, staging: str, manifest: Manifest, *, progress: ProgressFn | None = None
    ) -> Manifest:
        """Upload the staged files of ``manifest`` into the content store (in parallel).

        A digest already stored is not uploaded again; uploads use
        ``If-None-Match: *`` so concurrent writers of equal bytes never clash, and
        ``ChecksumSHA256`` so the server rejects bytes that do not match.

        :returns: the manifest with ``location`` = the content-store ``s3://`` URIs
        """
        paths = manifest.table.column("path").to_pylist()
        digests = manifest.table.column("digest").to_pylist()
        first: dict[str, str] = {}
        for rel, digest in zip(paths, digests, strict=True):
            first.setdefault(digest, rel)
        prog = Progress(f"upload to {loc.uri}", progress)
        jobs = list(first.items())
        for n, _ in enumerate(
            self._pool_map(lambda job: self._upload_file(loc, os.path.join(staging, job[1]), job[0]), jobs), 1
        ):
            prog.tick(n, len(jobs))
        return manifest.with_columns(location=pa.array([loc.object_uri(d) for d in digests], pa.string()))

    def _adopt(self, loc: DatasetLocation, manifest: Manifest, progress: ProgressFn | None = None) -> Manifest:
        """Make every row of an owned dataset's manifest point at immutable content-store bytes.

        Rows already in a content store (this one or another's, e.g. production
        outputs reused by a test environment) are kept by reference. Rows at a
        plain ``s3://`` key are copied server-side into the content store (the
        copy's SHA-256 is checked against the row's digest); ``file://`` rows are
        uploaded.
        """
        locations = manifest.table.column("location").to_pylist()
        digests = manifest.table.column("digest").to_pylist()
        paths = manifest.table.column("path").to_pylist()
        jobs: dict[str, tuple[str, str]] = {}
        for rel, location, digest in zip(paths, locations, digests, strict=True):
            if location is None:
                raise StorageError(
                    f"file {rel!r} of the snapshot for {loc.uri} has no stored bytes (empty location); "
                    "ingest it before committing"
                )
            if _content_digest(location) == digest:
                continue
            jobs.setdefault(digest, (rel, location))
        if not jobs:
            return manifest
        prog = Progress(f"store into {loc.uri}", progress)
        items = list(jobs.items())
        for n, _ in enumerate(self._pool_map(lambda job: self._adopt_one(loc, job[0], *job[1]), items), 1):
            prog.tick(n, len(items))
        new_locations = [
            loc_ if _content_digest(loc_) == d else loc.object_uri(d)  # type: ignore[arg-type]
            for loc_, d in zip(locations, digests, strict=True)
        ]
        return manifest.with_columns(location=pa.array(new_locations, pa.string()))

    def _adopt_one(self, loc: DatasetLocation, digest: str, rel: str, location: str) -> None:
        if location.startswith("file://") or location.startswith("/"):
            from airflow_dataflow.storage.local import _local_path

            self._upload_file(loc, _local_path(location), digest)
            return
        if location.startswith(("s3://", "s3a://")):
            src_bucket, src_key = parse_s3_uri(location)
            self._copy_verified(src_bucket, src_key, loc.bucket, loc.object_key(digest), digest, rel)
            return
        raise StorageError(f"file {rel!r}: cannot store bytes from {location!r} into {loc.uri}: unsupported location")

    def _copy_verified(self, src_bucket: str, src_key: str, bucket: str, key: str, digest: str, rel: str) -> None:
        """Copy an object server-side to a content-store key, checking that its SHA-256 is ``digest``."""
        uri = s3_uri(bucket, key)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return
        except Exception as err:
            if not _not_found(err):
                raise storage_error(err, "inspect", uri) from err
        src = s3_uri(src_bucket, src_key)
        tmp = f"{key}.tmp-{uuid.uuid4().hex}"
        result = self._copy(src_bucket, src_key, bucket, tmp, digest)
        got = hex_of_b64(result.get("ChecksumSHA256", "")) if result.get("ChecksumSHA256") else None
        if got is None:
            got = self._hash_object(bucket, tmp, result.get("ETag", "*") or "*")
        if got != digest:
            self._call("delete", s3_uri(bucket, tmp), self.client.delete_object, Bucket=bucket, Key=tmp)
            raise StorageError(
                f"file {rel!r}: {src} hashes to {got}, not {digest} as the manifest says: it changed "
                "since it was scanned; rescan and retry"
            )
        try:
            self._copy(bucket, tmp, bucket, key, digest)
        finally:
            try:
                self.client.delete_object(Bucket=bucket, Key=tmp)
            except Exception as err:  # a leftover temp object costs space only; gc removes it
                log.warning("cannot delete temporary object %s: %s", s3_uri(bucket, tmp), err)

    def _copy(self, src_bucket: str, src_key: str, bucket: str, key: str, digest: str) -> dict[str, Any]:
        """Copy an object server-side, tagging it with its digest; return CopyObjectResult."""
        uri = s3_uri(bucket, key)
        source = {"Bucket": src_bucket, "Key": src_key}
        try:
            return self.client.copy_object(
                Bucket=bucket,
                Key=key,
                CopySource=source,
                MetadataDirective="REPLACE",
                Metadata={DIGEST_META: digest},
                ChecksumAlgorithm="SHA256",
            )["CopyObjectResult"]
        except Exception as err:
            if _code(err) in ("InvalidRequest", "EntityTooLarge") and "size" in str(err).lower():
                return self._copy_large(source, bucket, key, digest)
            if _not_found(err):
                raise StorageError(
                    f"cannot copy {s3_uri(src_bucket, src_key)} to {uri}: the source is gone; "
                    "rerun the task that produced it"
                ) from err
            raise storage_error(err, "copy to", uri) from err

    def _copy_large(self, source: dict[str, str], bucket: str, key: str, digest: str) -> dict[str, Any]:
        uri = s3_uri(bucket, key)
        try:
            self.client.copy(
                source, bucket, key, ExtraArgs={"MetadataDirective": "REPLACE", "Metadata": {DIGEST_META: digest}}
            )
            head = self.client.head_object(Bucket=bucket, Key=key)
        except Exception as err:
            raise storage_error(err, "copy to", uri) from err
        return {"ETag": head["ETag"], "LastModified": head.get("LastModified")}

    # -- writing: snapshots, HEAD, log --------------------------------------------------------
    def store_snapshot(self, loc: DatasetLocation, manifest: Manifest) -> None:
        """Store the manifest (and, for owned datasets, its bytes in the content store).

        Idempotent: a snapshot digest names its content, so an existing manifest
        object is left as it is.
        """
        key = self._manifest_key(loc, manifest.digest)
        try:
            self.client.head_object(Bucket=loc.bucket, Key=key)
            return
        except Exception as err:
            if not _not_found(err):
                raise storage_error(err, "inspect", s3_uri(loc.bucket, key)) from err
        if loc.owned:
            manifest = self._adopt(loc, manifest)
        self._put_if_absent(loc.bucket, key, manifest.to_parquet_bytes())

    def swap_head(
        self, loc: DatasetLocation, manifest: Manifest, expected: str | None, record: CommitRecord
    ) -> None:
        """Move HEAD from ``expected`` to ``manifest`` with a conditional PUT, then log and sync the view.

        :raises ConcurrentCommitError: HEAD is not ``expected``, or another writer
            moved it between our read and our write (HTTP 412)
        """
        doc, etag = self._read_head_doc(loc)
        actual = None if doc is None else str(doc["digest"])
        if actual != expected:
            raise self.race(loc, expected, actual)
        head_seq = 0 if doc is None else int(doc["seq"])
        if record.seq != head_seq + 1:
            raise ConcurrentCommitError(
                f"HEAD of {loc.uri} moved to commit #{head_seq} while this writer prepared commit "
                f"#{record.seq}: another writer committed first. Nothing was lost; rerun the task."
            )
        if doc is not None and doc.get("record"):
            self._write_log(loc, self._head_record(loc, doc))  # finish a commit killed before its log write
        if doc is None and loc.owned:
            self._check_first_commit(loc, manifest)
        body = json.dumps(
            {"version": HEAD_VERSION, "digest": manifest.digest, "seq": record.seq, "record": record.to_dict()},
            sort_keys=True,
            indent=1,
        ).encode()
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        head_uri = s3_uri(loc.bucket, self._head_key(loc))
        try:
            self.client.put_object(
                Bucket=loc.bucket, Key=self._head_key(loc), Body=body, ContentType="application/json", **condition
            )
        except Exception as err:
            if _precondition_failed(err) or (etag and _not_found(err)):
                raise self.race(loc, expected, self.read_head(loc)) from None
            raise storage_error(err, "write HEAD", head_uri) from err
        # HEAD moved: the commit happened. The rest is bookkeeping that a later reader repairs.
        self._write_log(loc, record)
        if loc.owned:
            try:
                self._sync_view_from(loc, manifest.digest)  # the HEAD written above
            except DataflowError as err:
                raise StorageError(
                    f"commit {manifest.digest[:12]} of {loc.uri} succeeded (HEAD moved) but the plain view "
                    f"could not be updated: {err}. Readers through the manifest are unaffected; the next "
                    "commit or S3Storage.sync_view() finishes the update"
                ) from err

    def _write_log(self, loc: DatasetLocation, record: CommitRecord) -> None:
        """Write a log entry unless it exists (entries are written once, never changed)."""
        self._put_if_absent(
            loc.bucket, self._log_key(loc, record.seq), record.to_json(), ContentType="application/json"
        )

    # -- the plain view ---------------------------------------------------------------------
    def sync_view(self, loc: DatasetLocation, *, progress: ProgressFn | None = None, rounds: int = 5) -> None:
        """Make ``loc``'s prefix show exactly HEAD's files (owned datasets).

        The work is derived from a listing of the prefix compared with HEAD's
        manifest (size and ETag against the scan cache, else the object's stored
        SHA-256), so an interrupted sync is finished by the next call. Files are
        copied server-side from the content store before anything is deleted. If
        HEAD moves during the sync, the sync runs again for the new HEAD.
        """
        if loc.owned:
            self._sync_view_from(loc, self.read_head(loc), progress, rounds)

    def _sync_view_from(
        self, loc: DatasetLocation, digest: str | None, progress: ProgressFn | None = None, rounds: int = 5
    ) -> None:
        """:meth:`sync_view` from HEAD ``digest``, read by the caller."""
        for _ in range(rounds):
            if digest is None:
                return
            self._sync_to(loc, self.read_manifest(loc, digest), progress)
            now = self.read_head(loc)
            if now == digest:
                return
            digest = now
        raise StorageError(f"HEAD of {loc.uri} kept moving while its plain view was being updated; retry sync_view")

    def _plan_view(self, loc: DatasetLocation, manifest: Manifest, local_cache: str | None) -> _ViewPlan:
        """Compare a listing of the plain view with ``manifest``: what to copy and delete."""
        cache = self._load_cache(loc, local_cache)
        listed = {it.rel: it for it in self._list_view(loc)}
        want = dict(
            zip(
                manifest.table.column("path").to_pylist(),
                zip(
                    manifest.table.column("digest").to_pylist(),
                    manifest.table.column("size").to_pylist(),
                    manifest.table.column("location").to_pylist(),
                    strict=True,
                ),
                strict=True,
            )
        )
        keep: dict[str, tuple[int, str, str]] = {}
        unknown: list[_Listed] = []
        for rel, it in listed.items():
            target = want.get(rel)
            if target is None or target[1] != it.size:
                continue
            cached = cache.lookup(rel, it.size, it.etag)
            if cached == target[0]:
                keep[rel] = (it.size, it.etag, cached)
            elif cached is None and it.sha256_listed:
                unknown.append(it)
        for it, stored in zip(
            unknown, self._pool_map(lambda it: self._stored_sha256(loc.bucket, it.key, it.etag), unknown), strict=True
        ):
            if stored == want[it.rel][0]:
                keep[it.rel] = (it.size, it.etag, stored)
        return _ViewPlan(
            want=want,
            listed=listed,
            keep=keep,
            to_copy=[rel for rel in want if rel not in keep],
            to_delete=[rel for rel in listed if rel not in want],
            cache_changed=keep != cache.entries,
        )

    def _check_first_commit(self, loc: DatasetLocation, manifest: Manifest) -> None:
        """Refuse a first commit that would overwrite or delete objects nobody committed."""
        plan = self._plan_view(loc, manifest, self._local_cache(loc, has_head=False))
        # objects the plan cannot vouch for (no cache entry, no stored SHA-256) are hashed here
        doubtful = [plan.listed[rel] for rel in plan.to_copy if rel in plan.listed]
        same = {
            it.rel
            for it, digest in zip(doubtful, self._pool_map(lambda it: self._digest_of(loc.bucket, it), doubtful), strict=True)
            if digest == plan.want[it.rel][0]
        }
        lost = sorted(plan.to_delete + [it.rel for it in doubtful if it.rel not in same])
        if lost:
            shown = ", ".join(repr(r) for r in lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
            raise StorageError(
                f"{loc.uri} holds {len(lost)} object(s) that are not in the snapshot being committed "
                f"({shown}); the first commit would replace or delete them. Move them away, commit a scan "
                "of the prefix itself, or declare the dataset an observed source (owned=False)"
            )

    def _sync_to(self, loc: DatasetLocation, manifest: Manifest, progress: ProgressFn | None) -> None:
        plan = self._plan_view(loc, manifest, None)  # HEAD exists: the cache lives beside it
        want, listed, new_entries, to_copy = plan.want, plan.listed, dict(plan.keep), plan.to_copy
        to_delete = [listed[rel].key for rel in plan.to_delete]
        prog = Progress(f"update view {loc.uri}", progress)

        def copy(rel: str) -> tuple[str, int, str, str]:
            digest, size, location = want[rel]
            if location is None:
                raise StorageError(f"file {rel!r} of HEAD of {loc.uri} has no stored bytes (empty location)")
            src_bucket, src_key = parse_s3_uri(location)
            result = self._copy(src_bucket, src_key, loc.bucket, f"{loc.path}/{rel}", digest)
            return rel, size, result["ETag"], digest

        try:
            for n, (rel, size, etag, digest) in enumerate(self._pool_map(copy, to_copy), 1):
                new_entries[rel] = (size, etag, digest)
                prog.tick(n, len(to_copy))
        finally:
            if to_copy or plan.cache_changed:
                self._save_cache(loc, S3StatCache(new_entries), None)
        for start in range(0, len(to_delete), 1000):
            batch = to_delete[start : start + 1000]
            resp = self._call(
                "delete objects under",
                loc.uri,
                self.client.delete_objects,
                Bucket=loc.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"cannot delete {s3_uri(loc.bucket, first.get('Key', '?'))} from the view of {loc.uri}: "
                    f"{first.get('Code')} {first.get('Message', '')}".rstrip()
                )
        if to_copy or to_delete:
            log.info("view %s: %d file(s) copied, %d deleted", loc.uri, len(to_copy), len(to_delete))

    # -- small metadata files under the store root (caches) ----------------------------------------
    def _meta_key(self, loc: DatasetLocation, rel: str) -> str:
        if rel.startswith("/") or any(part in ("", ".", "..") for part in rel.rstrip("/").split("/")):
            raise InvalidPathError(f"metadata path {rel!r} of {loc.uri} must be relative and normalised (no '..')")
        root = loc.store_root
        return f"{root}/{rel}" if root else rel

    def put_meta(self, loc: DatasetLocation, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` under the ``_dataflow`` folder holding the content store."""
        key = self._meta_key(loc, rel)
        self._call("write", s3_uri(loc.bucket, key), self.client.put_object, Bucket=loc.bucket, Key=key, Body=data)

    def get_meta(self, loc: DatasetLocation, rel: str) -> bytes | None:
        """Return the bytes at ``rel`` under the ``_dataflow`` folder, or None if absent."""
        got = self._get_bytes(loc.bucket, self._meta_key(loc, rel))
        return None if got is None else got[0]

    def list_meta(self, loc: DatasetLocation, prefix: str) -> list[str]:
        """Return the names (relative to ``prefix``) of the objects under ``prefix``."""
        base = self._meta_key(loc, prefix).rstrip("/") + "/"
        return sorted(o["Key"][len(base) :] for o in self._list(loc.bucket, base))

    # -- helpers for operators ------------------------------------------------------------------
    def read_bytes(self, location_uri: str) -> bytes:
        """Return the bytes of the object at ``location_uri`` (``s3://bucket/key``)."""
        bucket, key = parse_s3_uri(location_uri)
        got = self._get_bytes(bucket, key)
        if got is None:
            raise StorageError(f"cannot read {location_uri}: no such object; rerun the task that produced it")
        return got[0]

    def download(self, location_uri: str, local_path: str, digest: str | None = None) -> None:
        """Download an object to a local file atomically (temp file, then rename).

        :param digest: if given, the SHA-256 hex the bytes must have
        :raises StorageError: the object is missing or its bytes do not match ``digest``
        """
        bucket, key = parse_s3_uri(location_uri)
        parent = os.path.dirname(os.path.abspath(local_path))
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=".download-")
        try:
            hasher = new_hasher()
            with os.fdopen(fd, "wb") as fh:
                body = self._call("download", location_uri, self.client.get_object, Bucket=bucket, Key=key)["Body"]
                for chunk in iter(lambda: body.read(CHUNK), b""):
                    fh.write(chunk)
                    hasher.update(chunk)
            if digest is not None and hasher.hexdigest() != digest:
                raise StorageError(
                    f"{location_uri} hashes to {hasher.hexdigest()}, not {digest}: the object was changed "
                    "or corrupted; restore it or rerun the task that produced it"
                )
            os.replace(tmp, local_path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def download_rows(self, rows: Any, dest: str, *, progress: ProgressFn | None = None) -> None:
        """Download the files of manifest rows (``path``, ``digest``, ``location``) under ``dest``.

        Each file is checked against its digest; work runs in parallel threads.
        """
        items = list(
            zip(
                rows.column("path").to_pylist(),
                rows.column("digest").to_pylist(),
                rows.column("location").to_pylist(),
                strict=True,
            )
        )
        prog = Progress(f"download to {dest}", progress)

        def one(item: tuple[str, str, str | None]) -> None:
            rel, digest, location = item
            if location is None:
                raise StorageError(f"file {rel!r} has no stored bytes (empty location); it cannot be staged")
            self.download(location, os.path.join(dest, rel), digest=digest)

        os.makedirs(dest, exist_ok=True)
        for n, _ in enumerate(self._pool_map(one, items), 1):
            prog.tick(n, len(items))


def _content_digest(location: str | None) -> str | None:
    """Return the digest of a content-store ``s3://`` URI, or None for any other location."""
    if not location or not location.startswith(("s3://", "s3a://")):
        return None
    m = _CONTENT_KEY.search(location)
    return m.group(1) + m.group(2) if m else None


__all__ = ["S3Storage", "S3StatCache", "parse_s3_uri", "s3_uri", "storage_error"]
