"""The pod helper image on the real cluster: uid 1000, read-only root
filesystem, all capabilities dropped, an emptyDir at /dataflow.

- stage-out alone (no S3): files an init container wrote are hashed into the
  result document at result_path;
- the S3 path: a versitygw on the node address the pods reach (10.244.0.1,
  the cluster bridge; ``DATAFLOW_K8S_S3_HOST`` for another cluster), the
  helper stages inputs in (init container), the task reads them read-only and
  writes outputs, the helper stages them out to the content store and writes
  the result document to S3; credentials come from a Secret.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/s3server.py
from s3server import VersityGW, VersityGWError  # noqa: E402

HELPER_IMAGE = os.environ.get("DATAFLOW_K8S_HELPER_IMAGE", "localhost/dataflow-helper:dev")
S3_HOST = os.environ.get("DATAFLOW_K8S_S3_HOST", "10.244.0.1")
UID = 1000

SECURITY = {
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY = {"runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "runAsNonRoot": True}
WORK = {"name": "work", "mountPath": "/dataflow"}


def pod_logs(core_v1: Any, ns: str, name: str, container: str) -> str:
    """One container's log, raw (as conftest.pod_logs; not imported: conftest is no module to import)."""
    resp = core_v1.read_namespaced_pod_log(name, ns, container=container, _preload_content=False)
    return resp.data.decode("utf-8", errors="replace")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def helper(name: str, command: str, spec: dict, **extra: Any) -> dict:
    return {
        "name": name,
        "image": HELPER_IMAGE,
        "imagePullPolicy": "Never",
        "args": [command],
        "env": [{"name": "DATAFLOW_POD_SPEC", "value": json.dumps(spec)}],
        "volumeMounts": [WORK],
        "securityContext": SECURITY,
        **extra,
    }


def task(name: str, image: str, script: str, env: list | None = None) -> dict:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "env": env or [],
        "volumeMounts": [WORK],
        "securityContext": SECURITY,
    }


def pod_spec(init: list[dict], main: dict) -> dict:
    return {
        "securityContext": POD_SECURITY,
        "volumes": [{"name": "work", "emptyDir": {}}],
        "initContainers": init,
        "containers": [main],
        "automountServiceAccountToken": False,
    }


def all_logs(core_v1, ns: str, pod: Any) -> str:
    names = [c.name for c in (pod.spec.init_containers or [])] + [c.name for c in pod.spec.containers]
    parts = []
    for n in names:
        try:
            parts.append(f"--- {n}\n{pod_logs(core_v1, ns, pod.metadata.name, n)}")
        except client.ApiException as exc:
            parts.append(f"--- {n}: no log ({exc.status})")
    return "\n".join(parts)


def out_spec(**output: Any) -> dict:
    return {
        "version": 1,
        "s3": {"endpoint_url": None, "region": "us-east-1"},
        "inputs": [],
        "files_list": None,
        "output": {
            "dir": "/dataflow/out",
            "store_uri": None,
            "result_uri": None,
            "result_path": None,
            "lineage_path": "/dataflow/lineage.tsv",
            **output,
        },
    }


def test_stage_out_in_a_locked_down_pod(run_pod, core_v1, k8s_namespace, task_image):
    write = (
        "set -e; mkdir -p /dataflow/out/sub; printf 'hello\\n' > /dataflow/out/a.txt; "
        "printf 'world\\n' > /dataflow/out/sub/b.txt; printf 'a.txt\\tin.txt\\n' > /dataflow/lineage.tsv"
    )
    spec = pod_spec(
        [
            task("task", task_image, write),
            helper("stage-out", "stage-out", out_spec(result_path="/dataflow/result.json")),
        ],
        task("show", task_image, "cat /dataflow/result.json"),
    )
    pod, _ = run_pod(spec)
    logs = all_logs(core_v1, k8s_namespace, pod)
    assert pod.status.phase == "Succeeded", logs
    doc = json.loads(pod_logs(core_v1, k8s_namespace, pod.metadata.name, "show"))
    assert doc["version"] == 1 and doc["lineage"] == "a.txt\tin.txt\n"
    assert [(f["path"], f["digest"], f["size"], f["location"]) for f in doc["files"]] == [
        ("a.txt", sha(b"hello\n"), 6, None),
        ("sub/b.txt", sha(b"world\n"), 6, None),
    ]
    assert "stage-out done: 2 files" in logs


@pytest.fixture(scope="module")
def pod_s3():
    """A versitygw on the node address the pods reach."""
    server = VersityGW(host=S3_HOST)
    try:
        server.start()
    except (VersityGWError, OSError) as exc:
        pytest.fail(
            f"could not start versitygw on {S3_HOST} ({exc}); the cluster bridge must be up "
            "(`make k8s-up`), or set DATAFLOW_K8S_S3_HOST to an address of this machine the pods reach",
            pytrace=False,
        )
    yield server
    server.stop()


@pytest.fixture
def s3_secret(core_v1, k8s_namespace, pod_s3):
    name = f"s3-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespaced_secret(
        k8s_namespace,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": pod_s3.access_key, "AWS_SECRET_ACCESS_KEY": pod_s3.secret_key},
        },
    )
    return name


def test_stage_in_task_stage_out_against_s3(run_pod, core_v1, k8s_namespace, task_image, pod_s3, s3_secret):
    s3 = pod_s3.boto3_client()
    bucket = f"podhelper-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    inputs = {f"part-{i}/f{i}.txt": f"line {i}\n".encode() * (i + 1) for i in range(12)}
    inputs["ü.txt"] = b"unicode name\n"
    lines = []
    for rel, data in inputs.items():
        d = sha(data)
        key = f"test/_dataflow/objects/sha256/{d[:2]}/{d[2:]}"
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        lines.append(json.dumps({"path": rel, "digest": d, "location": f"s3://{bucket}/{key}"}))
    s3.put_object(Bucket=bucket, Key="runs/r1/raw.jsonl", Body=("\n".join(lines) + "\n").encode())

    spec = out_spec(
        store_uri=f"s3://{bucket}/test/_dataflow/objects",
        result_uri=f"s3://{bucket}/runs/r1/result.json",
    )
    spec["s3"]["endpoint_url"] = pod_s3.endpoint_url
    spec["inputs"] = [
        {"name": "raw", "dir": "/dataflow/in/raw", "list_uri": f"s3://{bucket}/runs/r1/raw.jsonl", "primary": True}
    ]
    spec["files_list"] = "/dataflow/files.txt"
    creds = {"envFrom": [{"secretRef": {"name": s3_secret}}]}
    # the task: the I/O contract's variables; uppercases each listed file; cannot write its input
    work = (
        "set -e; id -u; "
        'if touch "$DATAFLOW_INPUT_DIR/x" 2>/dev/null; then echo INPUT-WRITABLE; exit 3; fi; '
        'while IFS= read -r p; do mkdir -p "$DATAFLOW_OUTPUT_DIR/$(dirname "$p")"; '
        'tr a-z A-Z < "$DATAFLOW_INPUT_DIR/$p" > "$DATAFLOW_OUTPUT_DIR/$p"; '
        'printf "%s\\t%s\\n" "$p" "$p" >> "$DATAFLOW_LINEAGE"; done < "$DATAFLOW_FILES"; '
        'echo "processed $(wc -l < "$DATAFLOW_FILES")"'
    )
    env = [
        {"name": "DATAFLOW_INPUT_DIR", "value": "/dataflow/in/raw"},
        {"name": "DATAFLOW_OUTPUT_DIR", "value": "/dataflow/out"},
        {"name": "DATAFLOW_FILES", "value": "/dataflow/files.txt"},
        {"name": "DATAFLOW_LINEAGE", "value": "/dataflow/lineage.tsv"},
    ]
    pod_body = pod_spec(
        [helper("stage-in", "stage-in", spec, **creds), task("task", task_image, work, env)],
        helper("stage-out", "stage-out", spec, **creds),
    )
    pod, _ = run_pod(pod_body)
    logs = all_logs(core_v1, k8s_namespace, pod)
    assert pod.status.phase == "Succeeded", logs
    assert f"stage-in done: {len(inputs)} files" in logs
    task_log = pod_logs(core_v1, k8s_namespace, pod.metadata.name, "task")
    assert task_log.splitlines()[0] == str(UID)
    assert f"processed {len(inputs)}" in task_log

    doc = json.loads(s3.get_object(Bucket=bucket, Key="runs/r1/result.json")["Body"].read())
    expected = {rel: data.upper() for rel, data in inputs.items()}
    assert [f["path"] for f in doc["files"]] == sorted(expected)
    assert doc["lineage"].splitlines() == [f"{p}\t{p}" for p in inputs]
    for entry in doc["files"]:
        data = expected[entry["path"]]
        d = sha(data)
        key = f"test/_dataflow/objects/sha256/{d[:2]}/{d[2:]}"
        assert entry["digest"] == d and entry["location"] == f"s3://{bucket}/{key}"
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(d)).decode()
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data


def test_corrupted_input_fails_the_pod(core_v1, k8s_namespace, task_image, pod_s3, s3_secret):
    s3 = pod_s3.boto3_client()
    bucket = f"podhelper-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    d = sha(b"original")
    s3.put_object(Bucket=bucket, Key="obj", Body=b"tampered")
    s3.put_object(
        Bucket=bucket, Key="list.jsonl", Body=json.dumps({"path": "a", "digest": d, "location": f"s3://{bucket}/obj"}).encode()
    )
    spec = out_spec()
    spec["s3"]["endpoint_url"] = pod_s3.endpoint_url
    spec["inputs"] = [{"name": "raw", "dir": "/dataflow/in", "list_uri": f"s3://{bucket}/list.jsonl", "primary": True}]
    body = pod_spec(
        [helper("stage-in", "stage-in", spec, envFrom=[{"secretRef": {"name": s3_secret}}])],
        task("task", task_image, "echo SHOULD-NOT-RUN"),
    )
    # not run_pod: it reads the main container's log, and that container never starts
    body["restartPolicy"] = "Never"
    name = f"corrupt-{uuid.uuid4().hex[:6]}"
    core_v1.create_namespaced_pod(k8s_namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body})
    deadline = time.monotonic() + 120
    while (pod := core_v1.read_namespaced_pod(name, k8s_namespace)).status.phase not in ("Succeeded", "Failed"):
        assert time.monotonic() < deadline, f"pod {name} still {pod.status.phase} after 120s"
        time.sleep(0.5)
    assert pod.status.phase == "Failed"
    assert pod.status.init_container_statuses[0].state.terminated.exit_code == 1
    log = pod_logs(core_v1, k8s_namespace, pod.metadata.name, "stage-in")
    assert f"s3://{bucket}/obj hashes to {sha(b'tampered')}, not {d}" in log
