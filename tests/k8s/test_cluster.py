"""Tests of the cluster itself: what the Kubernetes runner will rely on.

Each pod uses the local task image with ``imagePullPolicy: Never`` (there is no
registry) and runs to completion (``restartPolicy: Never``).
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from kubernetes import client


def _container(image: str, script: str, **kwargs) -> client.V1Container:
    return client.V1Container(
        name="task", image=image, image_pull_policy="Never", command=["/bin/sh", "-c", script], **kwargs
    )


def test_pod_runs_to_completion_with_logs(run_pod, task_image):
    spec = client.V1PodSpec(containers=[_container(task_image, "echo dataflow-hello; echo second line; echo to-stderr >&2")])

    pod, logs = run_pod(spec)

    assert pod.status.phase == "Succeeded", pod.status
    (status,) = pod.status.container_statuses
    assert status.state.terminated.exit_code == 0
    assert status.image.endswith(task_image) or task_image in status.image
    lines = logs.splitlines()
    assert "dataflow-hello" in lines
    assert "second line" in lines
    assert "to-stderr" in lines  # the API returns both streams


def test_failing_pod_reports_its_exit_code(run_pod, task_image):
    spec = client.V1PodSpec(containers=[_container(task_image, "echo about to fail; exit 3")])

    pod, logs = run_pod(spec)

    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert "about to fail" in logs


def test_pod_runs_as_named_service_account_and_uid(run_pod, core_v1, k8s_namespace, task_image):
    sa = "dataflow-task-identity"
    core_v1.create_namespaced_service_account(k8s_namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=sa)))
    uid, gid = 4321, 4322
    token_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    script = (
        "echo uid=$(id -u); echo gid=$(id -g); "
        f"echo ns=$(cat {token_dir}/namespace); "
        # The JWT's payload only (no signature): enough to read the subject.
        f"echo claims=$(cut -d. -f2 {token_dir}/token)"
    )
    spec = client.V1PodSpec(
        service_account_name=sa,
        security_context=client.V1PodSecurityContext(run_as_user=uid, run_as_group=gid, run_as_non_root=True),
        containers=[_container(task_image, script)],
    )

    pod, logs = run_pod(spec)

    assert pod.status.phase == "Succeeded", logs
    assert pod.spec.service_account_name == sa
    values = dict(line.split("=", 1) for line in logs.splitlines() if "=" in line)
    assert values["uid"] == str(uid)
    assert values["gid"] == str(gid)
    assert values["ns"] == k8s_namespace
    payload = values["claims"]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == f"system:serviceaccount:{k8s_namespace}:{sa}"


def test_read_only_host_path_cannot_be_written(run_pod, task_image):
    host_dir = f"/tmp/dataflow-k8s-test-{uuid.uuid4().hex[:12]}"
    volume = client.V1Volume(name="shared", host_path=client.V1HostPathVolumeSource(path=host_dir, type="DirectoryOrCreate"))
    script = (
        "echo payload > /rw/input.txt && echo wrote-rw; "
        "echo read=$(cat /ro/input.txt); "
        "if { echo evil > /ro/evil.txt; } 2>/dev/null; then echo ro-write=allowed; else echo ro-write=denied; fi; "
        "if rm /ro/input.txt 2>/dev/null; then echo ro-delete=allowed; else echo ro-delete=denied; fi; "
        "if mkdir /ro/sub 2>/dev/null; then echo ro-mkdir=allowed; else echo ro-mkdir=denied; fi"
    )
    spec = client.V1PodSpec(
        volumes=[volume],
        containers=[
            _container(
                task_image,
                script,
                volume_mounts=[
                    client.V1VolumeMount(name="shared", mount_path="/rw"),
                    client.V1VolumeMount(name="shared", mount_path="/ro", read_only=True),
                ],
            )
        ],
    )

    try:
        pod, logs = run_pod(spec)

        assert pod.status.phase == "Succeeded", logs
        lines = logs.splitlines()
        assert "wrote-rw" in lines
        assert "read=payload" in lines  # the read-only mount is the same directory
        assert "ro-write=denied" in lines
        assert "ro-delete=denied" in lines
        assert "ro-mkdir=denied" in lines
        local = Path(host_dir)
        if local.is_dir():  # the node is this machine (the local cluster)
            assert sorted(p.name for p in local.iterdir()) == ["input.txt"]
    finally:
        local = Path(host_dir)
        if local.is_dir():
            for p in local.iterdir():
                p.unlink()
            local.rmdir()
