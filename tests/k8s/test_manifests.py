"""``airflow-dataflow k8s manifests`` on the real cluster.

The manifests of the example DAG ``sales_pipeline`` (environments ``prod`` and
``test-alice``) pass ``kubectl apply --dry-run=server``, apply into a fresh
namespace, and give what they promise: a ServiceAccount per task with no API
rights (checked by impersonating it with ``kubectl auth can-i``), and a
launcher ServiceAccount that may create, follow and delete pods and nothing more.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from airflow_dataflow.identity.naming import service_account_name

REPO_ROOT = Path(__file__).resolve().parents[2]
KUBECTL = REPO_ROOT / ".k8s" / "bin" / "kubectl"
CLI = [os.path.join(os.path.dirname(sys.executable), "airflow-dataflow")]
if not os.path.exists(CLI[0]):
    CLI = [sys.executable, "-m", "airflow_dataflow.cli"]
IDENTITIES = {"prod": "ops", "test-alice": "alice"}  # env -> owner
TASKS = ("aggregate", "clean", "enrich")
LAUNCHER = "airflow-worker"
PATTERN = "arn:aws:iam::123456789012:role/dataflow/{service_account}"


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = str(KUBECTL) if KUBECTL.exists() else "kubectl"
    return subprocess.run(
        [binary, "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def manifests(k8s_namespace: str) -> dict[str, str]:
    """env -> YAML printed by the CLI for the example DAG, into the test namespace."""
    out = {}
    for env, owner in IDENTITIES.items():
        args = [
            "k8s", "manifests", "sales_pipeline", "--env", env, "--owner", owner,
            "--dags-folder", str(REPO_ROOT / "dags_examples"), "--namespace", k8s_namespace,
        ]  # fmt: skip
        proc = subprocess.run(
            CLI + args,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DATAFLOW_IAM_ROLE_PATTERN": PATTERN},
        )
        assert proc.returncode == 0, f"k8s manifests --env {env} failed: {proc.stderr}"
        out[env] = proc.stdout
    return out


@pytest.fixture(scope="module")
def applied(manifests: dict[str, str], kubeconfig_path: Path, k8s_namespace: str, core_v1: client.CoreV1Api) -> str:
    """Apply both environments' manifests for real, plus the launcher SA the Helm chart would create."""
    core_v1.create_namespaced_service_account(
        k8s_namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=LAUNCHER))
    )
    for env, text in manifests.items():
        proc = kubectl(kubeconfig_path, "apply", "-f", "-", stdin=text)
        assert proc.returncode == 0, f"kubectl apply ({env}) failed: {proc.stderr}"
    return k8s_namespace


def can_i(kubeconfig: Path, namespace: str, sa: str, verb: str, resource: str) -> bool:
    """Ask the API server (SelfSubjectAccessReview, impersonating the SA); ``pods/log`` is a subresource
    (``kubectl auth can-i get pods/log`` alone would ask about a pod named ``log``)."""
    kind, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    proc = kubectl(
        kubeconfig, "auth", "can-i", verb, kind, *extra, "-n", namespace, f"--as=system:serviceaccount:{namespace}:{sa}"
    )
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {verb} {resource} as {sa}: {proc.stdout} {proc.stderr}"
    return answer == "yes"


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("env", sorted(IDENTITIES))
def test_server_side_dry_run_accepts_the_manifests(manifests: dict[str, str], kubeconfig_path: Path, env: str) -> None:
    proc = kubectl(kubeconfig_path, "apply", "--dry-run=server", "-f", "-", stdin=manifests[env])
    assert proc.returncode == 0, proc.stderr
    kinds = [d["kind"] for d in docs_of(manifests[env])]
    assert kinds == ["ServiceAccount"] * 3 + ["Role", "RoleBinding"]
    for kind in kinds:
        assert kind.lower() in proc.stdout


def test_service_accounts_exist_per_environment(applied: str, core_v1: client.CoreV1Api) -> None:
    found = {
        sa.metadata.name: sa
        for sa in core_v1.list_namespaced_service_account(
            applied, label_selector="app.kubernetes.io/managed-by=airflow-dataflow"
        ).items
    }
    expected = {service_account_name(owner, env, "sales_pipeline", t) for env, owner in IDENTITIES.items() for t in TASKS}
    assert set(found) == expected
    for name in expected:
        sa = found[name]
        assert sa.automount_service_account_token is False
        assert sa.metadata.annotations["eks.amazonaws.com/role-arn"].endswith(f"/dataflow/{name}")
        assert sa.metadata.labels["dataflow.io/dag"] == "sales_pipeline"
    prod = core_v1.list_namespaced_service_account(applied, label_selector="dataflow.io/env=prod").items
    assert {sa.metadata.labels["dataflow.io/task"] for sa in prod} == set(TASKS)


def test_task_service_accounts_have_no_api_rights(applied: str, kubeconfig_path: Path) -> None:
    for env, owner in IDENTITIES.items():
        for task in TASKS:
            sa = service_account_name(owner, env, "sales_pipeline", task)
            for verb, resource in [
                ("create", "pods"),
                ("get", "pods"),
                ("list", "secrets"),
                ("get", "serviceaccounts"),
                ("create", "serviceaccounts/token"),
            ]:
                assert not can_i(kubeconfig_path, applied, sa, verb, resource), f"{sa} may {verb} {resource}"


def test_launcher_may_launch_and_follow_pods_only(applied: str, kubeconfig_path: Path) -> None:
    allowed = [
        ("create", "pods"),
        ("get", "pods"),
        ("list", "pods"),
        ("watch", "pods"),
        ("patch", "pods"),
        ("delete", "pods"),
        ("get", "pods/log"),
        ("list", "events"),
        ("watch", "events"),
    ]
    denied = [
        ("create", "pods/exec"),
        ("get", "secrets"),
        ("create", "serviceaccounts/token"),
        ("create", "roles"),
        ("create", "deployments"),
        ("update", "pods"),
    ]
    for verb, resource in allowed:
        assert can_i(kubeconfig_path, applied, LAUNCHER, verb, resource), f"launcher may not {verb} {resource}"
    for verb, resource in denied:
        assert not can_i(kubeconfig_path, applied, LAUNCHER, verb, resource), f"launcher may {verb} {resource}"


def test_applying_again_changes_nothing(applied: str, manifests: dict[str, str], kubeconfig_path: Path) -> None:
    for text in manifests.values():
        proc = kubectl(kubeconfig_path, "apply", "-f", "-", stdin=text)
        assert proc.returncode == 0, proc.stderr
        assert all(line.endswith("unchanged") for line in proc.stdout.strip().splitlines()), proc.stdout


def test_task_pod_runs_restricted_as_its_identity(
    applied: str, core_v1: client.CoreV1Api, k8s_client: client.ApiClient, run_pod: Any, task_image: str
) -> None:
    """A pod with the identity's ServiceAccount and security contexts passes the `restricted`
    Pod Security Standard, runs with the uid/gids of the identity map, has no API token and
    cannot write its root filesystem."""
    from airflow_dataflow.identity.config import PodIdentity
    from airflow_dataflow.identity.security import container_security_context, pod_security_context

    core_v1.patch_namespace(applied, {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    sa = service_account_name("alice", "test-alice", "sales_pipeline", "clean")
    script = (
        "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); "
        "test -e /var/run/secrets/kubernetes.io/serviceaccount/token && echo token || echo no-token; "
        "touch /rootfs-probe 2>/dev/null && echo rootfs-writable || echo rootfs-read-only"
    )
    spec = client.V1PodSpec(
        service_account_name=sa,
        security_context=pod_security_context(PodIdentity(20001, 20002, supplemental_groups=(10100,))),
        containers=[
            client.V1Container(
                name="task",
                image=task_image,
                image_pull_policy="Never",
                command=["sh", "-c", script],
                security_context=container_security_context(),
            )
        ],
    )
    pod, logs = run_pod(k8s_client.sanitize_for_serialization(spec))
    assert pod.status.phase == "Succeeded", logs
    assert pod.spec.service_account_name == sa
    assert "uid=20001 gid=20002" in logs and "10100" in logs.split("groups=")[1], logs
    assert "no-token" in logs and "rootfs-read-only" in logs, logs
