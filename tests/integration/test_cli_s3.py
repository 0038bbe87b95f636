"""The CLI against a real S3 server: scan and diff of prefixes, and the same digest as on local disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TREE = {
    "a.txt": b"alpha\n",
    "dir/b.bin": bytes(range(256)) * 64,
    "dir/sub/c.csv": b"x,y\n1,2\n",
    "ünïcode name.txt": "utf-8 name".encode(),
    "empty": b"",
}


def cli(env: dict[str, str], *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "airflow_dataflow.cli", *args, "--json"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def cli_env(s3_server, tmp_path) -> dict[str, str]:
    return {
        **os.environ,
        "AWS_ENDPOINT_URL": s3_server.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_DEFAULT_REGION": s3_server.region,
        "DATAFLOW_CACHE_DIR": str(tmp_path / "cache"),
    }


def put_tree(client, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)


def test_scan_and_diff_of_prefixes_report_exactly_the_changes(s3_bucket, cli_env, tmp_path):
    client, bucket = s3_bucket
    local = tmp_path / "tree"
    for rel, data in TREE.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    put_tree(client, bucket, "a", TREE)
    changed = {**TREE, "dir/b.bin": b"new bytes", "added/d.txt": b"d"}
    del changed["a.txt"]
    put_tree(client, bucket, "b", changed)

    s3_scan = cli(cli_env, "scan", f"s3://{bucket}/a")
    local_scan = cli(cli_env, "scan", str(local))
    assert s3_scan["digest"] == local_scan["digest"], "the same tree must have the same digest on S3 and on disk"
    assert (s3_scan["files"], s3_scan["bytes"]) == (len(TREE), sum(map(len, TREE.values())))

    diff = cli(cli_env, "diff", f"s3://{bucket}/a", f"s3://{bucket}/b")
    assert diff["added"] == ["added/d.txt"]
    assert diff["modified"] == ["dir/b.bin"]
    assert diff["deleted"] == ["a.txt"]
    assert diff["unchanged"] == len(TREE) - 2
    same = cli(cli_env, "diff", str(local), f"s3://{bucket}/a")
    assert (same["added"], same["modified"], same["deleted"]) == ([], [], [])

    # scanning someone's prefix writes nothing into their bucket
    cli(cli_env, "scan", f"s3://{bucket}/a")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not [k for k in keys if "_dataflow" in k]


def test_bad_s3_input_is_a_clear_error(cli_env):
    out = subprocess.run(
        [sys.executable, "-m", "airflow_dataflow.cli", "scan", "s3://no-such-bucket-dataflow/x"],
        env=cli_env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 2
    assert "no-such-bucket-dataflow" in out.stderr
