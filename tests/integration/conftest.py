"""Fixtures for integration tests that need a real S3-compatible server.

- ``s3_server`` (session): a running versitygw (see tests/s3server.py);
  has ``endpoint_url``, ``access_key``, ``secret_key``, ``region``,
  ``boto3_client()`` and ``airflow_connection()``.
- ``s3_bucket`` (function): ``(client, bucket_name)`` for a fresh, uniquely
  named bucket.
- ``s3_conn_env`` (function): sets ``AIRFLOW_CONN_DATAFLOW_S3`` so that
  ``S3Hook(aws_conn_id="dataflow_s3")`` talks to the server; returns the
  server.

If the server cannot start (binary not built, crash) the fixtures fail with
the reason; they never skip.
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

# tests/ has no __init__.py (rootdir-based discovery), so make tests/s3server.py
# importable from here.
_TESTS_DIR = str(Path(__file__).resolve().parent.parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from s3server import VersityGW, VersityGWError  # noqa: E402

S3_CONN_ID = "dataflow_s3"


@pytest.fixture(scope="session")
def s3_server():
    server = VersityGW()
    error = None
    try:
        server.start()
    except VersityGWError as exc:
        error = str(exc)
    if error is not None:
        pytest.fail(f"could not start the S3 test server (versitygw): {error}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    client = s3_server.boto3_client()
    # S3 bucket names: 3-63 chars, lowercase letters, digits, hyphens.
    name = f"dataflow-test-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=name)
    yield client, name


@pytest.fixture
def s3_conn_env(s3_server, monkeypatch):
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{S3_CONN_ID.upper()}", json.dumps(s3_server.airflow_connection())
    )
    return s3_server
