"""Storage backends behind one small interface, chosen by URI scheme."""

from __future__ import annotations

from typing import Any

from airflow_dataflow.core.location import split_uri
from airflow_dataflow.storage.base import Storage


def storage_for(uri: str, **kwargs: Any) -> Storage:
    """Return the backend for ``uri``'s scheme.

    :param kwargs: backend options (``aws_conn_id`` or ``client`` for S3)
    """
    scheme, _, _ = split_uri(uri)
    if scheme == "file":
        from airflow_dataflow.storage.local import LocalStorage

        return LocalStorage()
    from airflow_dataflow.storage.s3 import S3Storage

    return S3Storage(**kwargs)


__all__ = ["Storage", "storage_for"]
