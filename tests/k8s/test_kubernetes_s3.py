"""The S3 data path of the kubernetes runner, against a real versitygw server.

The server listens on the cluster bridge (10.244.0.1), which pods reach and this
process too. The helper containers stage the needed input files in and upload
the outputs with the pod's own credentials (a Secret); the worker writes and
reads only metadata.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pytest
from dagrun import install_dag_file, run_dag
from kubernetes import client

from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.hooks.manifest import DatasetManifestHook
from airflow_dataflow.identity.config import task_identity
from airflow_dataflow.identity.rbac import service_account_manifest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from s3server import VersityGW  # noqa: E402

BRIDGE = os.environ.get("DATAFLOW_K8S_NODE_IP", "10.244.0.1")
CONN = "dataflow_s3_k8s"
OWNER = "tester"

DAG = '''
from datetime import datetime
from airflow.sdk import DAG
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.operators.kubernetes import KubernetesDataflowOperator

src = DirectoryDataset("s3src_{tag}", "s3://{bucket}/landing", owned=False,
                       metadata_root="s3://{bucket}/meta/{{env}}", aws_conn_id="{conn}")
out = DirectoryDataset("s3out_{tag}", "s3://{bucket}/{{env}}/upper", aws_conn_id="{conn}")
with DAG(dag_id="s3_pods", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    KubernetesDataflowOperator(
        task_id="upper", image="localhost/dataflow-task:dev", mode="per_file",
        inputs={{"src": src}}, output=out,
        command=["sh", "-c", 'set -e; while IFS= read -r f; do mkdir -p "$DATAFLOW_OUTPUT_DIR/$(dirname "$f")"; '
                 'tr a-z A-Z < "$DATAFLOW_INPUT_DIR/$f" > "$DATAFLOW_OUTPUT_DIR/$f"; done < "$DATAFLOW_FILES"'],
    )
'''


@pytest.fixture(scope="module")
def s3_on_bridge():
    server = VersityGW(host=BRIDGE)
    try:
        server.start()
    except Exception as err:  # noqa: BLE001
        pytest.fail(f"versitygw could not start on the cluster bridge {BRIDGE}: {err}; is the cluster up?", pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def s3_pipeline(s3_on_bridge, cluster_env, k8s_namespace, core_v1, kubeconfig_path):
    """A bucket with landed files, the connection, the Secret and the identity; yields (s3 client, bucket, dag file)."""
    s3 = s3_on_bridge.boto3_client()
    bucket = f"k8s-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for i in range(4):
        s3.put_object(Bucket=bucket, Key=f"landing/part-{i % 2}/f{i}.txt", Body=f"file {i}\n".encode())
    conn = s3_on_bridge.airflow_connection()
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = json.dumps(conn)
    secret = "dataflow-s3-credentials"
    try:
        core_v1.delete_namespaced_secret(secret, k8s_namespace)
    except client.ApiException:
        pass
    core_v1.create_namespaced_secret(k8s_namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=secret),
        string_data={"AWS_ACCESS_KEY_ID": conn["login"], "AWS_SECRET_ACCESS_KEY": conn["password"]},
    ))  # fmt: skip
    os.environ["DATAFLOW_K8S_S3_SECRET"] = secret
    ident = task_identity(OWNER, "prod", "s3_pods", "upper", with_pod=False, namespace=k8s_namespace)
    from test_kubernetes_runner import kubectl
    from airflow_dataflow.identity.rbac import dump_manifests

    applied = kubectl(kubeconfig_path, "apply", "-f", "-", stdin=dump_manifests([service_account_manifest(ident)]))
    assert applied.returncode == 0, applied.stderr
    tag = bucket.replace("-", "_")
    path = install_dag_file(None, name="s3_pods.py", text=DAG.format(tag=tag, bucket=bucket, conn=CONN))
    yield s3, bucket, path, tag
    os.environ.pop("DATAFLOW_K8S_S3_SECRET", None)


def land(bucket: str, tag: str) -> None:
    src = DirectoryDataset(
        f"s3src_{tag}", f"s3://{bucket}/landing", owned=False, metadata_root=f"s3://{bucket}/meta/{{env}}",
        aws_conn_id=CONN,
    )
    hook = DatasetManifestHook(aws_conn_id=CONN)
    hook.commit(src, hook.scan(src), CommitInfo(task_id="land"))


def test_per_file_task_in_pods_on_s3(s3_pipeline, airflow_db):
    s3, bucket, path, tag = s3_pipeline
    land(bucket, tag)
    assert run_dag(path, "s3_pods") == "success"
    hook = DatasetManifestHook(aws_conn_id=CONN)
    log = hook.log_records(f"s3://{bucket}/prod/upper")
    assert log[-1].info.stats["processed"] == 4
    assert log[-1].info.stats["identity"]["uid"] == 1000
    # plain boto3, no package: the prefix shows HEAD's files
    body = s3.get_object(Bucket=bucket, Key="prod/upper/part-1/f3.txt")["Body"].read()
    assert body == b"FILE 3\n"
    # the bytes were uploaded by the pod into the content store, checksummed
    row = next(r for r in hook.snapshot(f"s3://{bucket}/prod/upper").rows() if r["path"] == "part-1/f3.txt")
    assert row["location"].startswith(f"s3://{bucket}/prod/_dataflow/objects/sha256/")

    # one changed file: only it is staged in and processed
    s3.put_object(Bucket=bucket, Key="landing/part-0/f2.txt", Body=b"changed\n")
    land(bucket, tag)
    assert run_dag(path, "s3_pods") == "success"
    stats = hook.log_records(f"s3://{bucket}/prod/upper")[-1].info.stats
    assert (stats["processed"], stats["reused"]) == (1, 3)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="prod/_dataflow/staging/")["Contents"]]
    newest = max((k for k in listed if k.endswith("in-src.jsonl")), key=lambda k: s3.head_object(Bucket=bucket, Key=k)["LastModified"])
    staged = s3.get_object(Bucket=bucket, Key=newest)["Body"].read().decode().splitlines()
    assert [json.loads(line)["path"] for line in staged] == ["part-0/f2.txt"]
    assert s3.get_object(Bucket=bucket, Key="prod/upper/part-0/f2.txt")["Body"].read() == b"CHANGED\n"
