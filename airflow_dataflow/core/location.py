"""Where a dataset's data and metadata live: the reserved ``_dataflow/`` layout.

For a dataset at ``<parent>/<name>`` (a local directory or an S3 prefix):

* ``<parent>/<name>`` is the plain view of HEAD: on local disk a symlink to HEAD's
  snapshot tree, on S3 a prefix holding copies of HEAD's files;
* ``<parent>/_dataflow/<name>/`` holds the dataset's metadata: ``HEAD`` (S3),
  ``snapshots/<digest>/manifest.parquet`` (and ``tree/`` locally), ``log/<seq>.json``;
* ``<parent>/_dataflow/objects/sha256/<2 hex>/<62 hex>`` is the content store that
  the datasets under ``<parent>`` share, so equal files are stored once.

Sources that the pipeline does not own (read-only shares, other teams' buckets)
keep their metadata under a configured ``metadata_root`` instead; their snapshots
reference the files where they are and copy nothing.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from airflow_dataflow.core.paths import RESERVED_DIR
from airflow_dataflow.exceptions import DataflowError


def split_uri(uri: str) -> tuple[str, str, str]:
    """Split ``uri`` into (scheme, bucket-or-empty, path without trailing slash).

    Plain paths are ``file`` URIs.
    """
    if "://" not in uri:
        if not uri.startswith("/"):
            raise DataflowError(f"{uri!r} is a relative path; give an absolute path or a file:// or s3:// URI")
        return "file", "", posixpath.normpath(uri)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost"):
            raise DataflowError(f"{uri!r}: file URIs must be local (file:///path)")
        return "file", "", posixpath.normpath(path) if path else "/"
    if scheme in ("s3", "s3a"):
        if not parts.netloc:
            raise DataflowError(f"{uri!r}: an S3 URI needs a bucket (s3://bucket/prefix)")
        return "s3", parts.netloc, unquote(parts.path).strip("/")
    raise DataflowError(f"{uri!r}: unsupported URI scheme {scheme!r}; use file:// or s3://")


def file_uri(path: str) -> str:
    """Return the ``file://`` URI of an absolute local path."""
    return "file://" + quote(path)


@dataclass(frozen=True)
class DatasetLocation:
    """The resolved places of one dataset (one partition of a dataset template).

    :param uri: canonical URI of the plain data view (no trailing slash)
    :param scheme: ``file`` or ``s3``
    :param bucket: the S3 bucket, empty for local
    :param path: local path, or S3 key prefix (no trailing slash)
    :param meta: local path or S3 key prefix of the metadata folder
    :param objects: local path or S3 key prefix of the shared content store
    :param owned: False for sources the pipeline only observes
    """

    uri: str
    scheme: str
    bucket: str
    path: str
    meta: str
    objects: str
    owned: bool = True

    @classmethod
    def parse(cls, uri: str, metadata_root: str | None = None, owned: bool = True) -> DatasetLocation:
        """Resolve a dataset URI (local path, ``file://`` or ``s3://``).

        :param metadata_root: for sources the pipeline does not own: a writable
            URI under which this dataset's metadata is kept instead of beside it
        :param owned: False when the pipeline only observes the directory
        """
        scheme, bucket, path = split_uri(uri)
        name = posixpath.basename(path)
        parent = posixpath.dirname(path)
        if not name or name == RESERVED_DIR or RESERVED_DIR in path.split("/"):
            raise DataflowError(f"{uri!r} cannot be a dataset: it is a root or lies in a {RESERVED_DIR!r} folder")
        canonical = file_uri(path) if scheme == "file" else f"s3://{bucket}/{path}"
        if metadata_root is not None:
            m_scheme, m_bucket, m_path = split_uri(metadata_root)
            if m_scheme != scheme or m_bucket != bucket:
                raise DataflowError(
                    f"metadata_root {metadata_root!r} must be on the same storage as {uri!r} "
                    "(same scheme and bucket)"
                )
            key = f"{name}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"
            meta = posixpath.join(m_path, RESERVED_DIR, key)
            objects = posixpath.join(m_path, RESERVED_DIR, "objects")
        else:
            meta = posixpath.join(parent, RESERVED_DIR, name)
            objects = posixpath.join(parent, RESERVED_DIR, "objects")
        return cls(
            uri=canonical, scheme=scheme, bucket=bucket, path=path, meta=meta, objects=objects, owned=owned
        )

    @property
    def store_root(self) -> str:
        """Local path or S3 key prefix of the ``_dataflow`` folder holding objects and caches."""
        return posixpath.dirname(self.objects)

    @property
    def meta_rel(self) -> str:
        """The metadata folder relative to :attr:`store_root`."""
        return posixpath.relpath(self.meta, self.store_root)

    def object_key(self, digest: str) -> str:
        """Return the content-store path or key of the bytes with ``digest``."""
        return posixpath.join(self.objects, "sha256", digest[:2], digest[2:])

    def object_uri(self, digest: str) -> str:
        """Return the URI of the content-store object with ``digest``."""
        key = self.object_key(digest)
        return file_uri(key) if self.scheme == "file" else f"s3://{self.bucket}/{key}"

    def data_uri(self, relpath: str) -> str:
        """Return the URI of ``relpath`` in the plain data view."""
        key = posixpath.join(self.path, relpath)
        return file_uri(key) if self.scheme == "file" else f"s3://{self.bucket}/{key}"
