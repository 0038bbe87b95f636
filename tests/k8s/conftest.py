"""Fixtures of the Kubernetes test suite.

The suite runs against the cluster of ``$KUBECONFIG`` when that is set, else
against the project's local cluster, whose kubeconfig ``make k8s-up`` writes
to ``.k8s/kubeconfig`` in the checkout (see tools/k8s/README.md). It never
skips: an unreachable cluster fails every test with a message that says so.

Fixtures for later test files:

- ``kubeconfig_path``: the kubeconfig in use (session).
- ``k8s_client``: a ``kubernetes.client.ApiClient`` for it (session).
- ``core_v1``, ``rbac_v1``: ``CoreV1Api``, ``RbacAuthorizationV1Api`` on it (session).
- ``k8s_namespace``: a fresh namespace per test module, deleted afterwards.
- ``task_image``: the local task image (``localhost/dataflow-task:dev``, or
  ``$DATAFLOW_K8S_TASK_IMAGE``); pods use it with ``imagePullPolicy: Never``.
- ``run_pod``: create a pod in the module's namespace, wait for it to finish
  and return ``(pod, logs)``; ``wait_for_pod`` and ``pod_logs`` are the
  plain functions behind it.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

# A plain import: a missing client is an error, never a skip.
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KUBECONFIG = REPO_ROOT / ".k8s" / "kubeconfig"
DEFAULT_TASK_IMAGE = "localhost/dataflow-task:dev"
POD_TIMEOUT = float(os.environ.get("DATAFLOW_K8S_POD_TIMEOUT", "120"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s: needs a Kubernetes cluster (tests/k8s)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.k8s)


@pytest.fixture(scope="session")
def kubeconfig_path() -> Path:
    env = os.environ.get("KUBECONFIG")
    path = Path(env.split(os.pathsep)[0]) if env else DEFAULT_KUBECONFIG
    if not path.is_file():
        pytest.fail(
            f"no kubeconfig at {path}: bring the local cluster up with `make k8s-up` "
            "(or run `make test-k8s`), or set KUBECONFIG to another cluster's kubeconfig",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def k8s_client(kubeconfig_path: Path) -> client.ApiClient:
    api = config.new_client_from_config(config_file=str(kubeconfig_path))
    try:
        version = client.VersionApi(api).get_code(_request_timeout=10)
        nodes = client.CoreV1Api(api).list_node(_request_timeout=10).items
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        pytest.fail(
            f"the Kubernetes cluster of {kubeconfig_path} is unreachable ({type(exc).__name__}: {exc}); "
            "start the local one with `make k8s-up`",
            pytrace=False,
        )
    ready = [n.metadata.name for n in nodes if _node_ready(n)]
    if not ready:
        pytest.fail(
            f"the cluster of {kubeconfig_path} ({version.git_version}) has no Ready node "
            f"(nodes: {[n.metadata.name for n in nodes]})",
            pytrace=False,
        )
    return api


def _node_ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


@pytest.fixture(scope="session")
def core_v1(k8s_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(k8s_client)


@pytest.fixture(scope="session")
def rbac_v1(k8s_client: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(k8s_client)


@pytest.fixture(scope="session")
def task_image() -> str:
    return os.environ.get("DATAFLOW_K8S_TASK_IMAGE", DEFAULT_TASK_IMAGE)


@pytest.fixture(scope="module")
def k8s_namespace(core_v1: client.CoreV1Api, request: pytest.FixtureRequest) -> Any:
    """A fresh namespace for one test module, deleted after it."""
    stem = re.sub(r"[^a-z0-9-]+", "-", request.module.__name__.rsplit(".", 1)[-1].lower()).strip("-")
    name = f"dft-{stem[:40]}-{uuid.uuid4().hex[:8]}".replace("--", "-")
    core_v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"airflow-dataflow/test": "true"})))
    # Pods need the namespace's default ServiceAccount, made by the controller-manager.
    deadline = time.monotonic() + 60
    while True:
        try:
            core_v1.read_namespaced_service_account("default", name)
            break
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                pytest.fail(f"namespace {name}: no default ServiceAccount after 60s ({exc.status})", pytrace=False)
            time.sleep(0.5)
    yield name
    try:
        core_v1.delete_namespace(name, body=client.V1DeleteOptions(grace_period_seconds=0))
    except ApiException as exc:
        if exc.status != 404:
            raise


def wait_for_pod(core_v1: client.CoreV1Api, namespace: str, name: str, timeout: float = POD_TIMEOUT) -> Any:
    """Wait until the pod has Succeeded or Failed; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        pod = core_v1.read_namespaced_pod(name, namespace)
        if pod.status.phase in ("Succeeded", "Failed"):
            return pod
        if time.monotonic() > deadline:
            events = core_v1.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
            pytest.fail(
                f"pod {namespace}/{name} still {pod.status.phase} after {timeout:.0f}s; "
                f"container statuses: {pod.status.container_statuses}; "
                f"events: {[(e.reason, e.message) for e in events]}",
                pytrace=False,
            )
        time.sleep(0.5)


def pod_logs(core_v1: client.CoreV1Api, namespace: str, name: str, container: str | None = None) -> str:
    """The pod's log as text (the raw response: some client versions return
    the repr of the bytes when asked to decode it themselves)."""
    kwargs = {"container": container} if container else {}
    resp = core_v1.read_namespaced_pod_log(name, namespace, _preload_content=False, **kwargs)
    return resp.data.decode("utf-8", errors="replace")


@pytest.fixture
def run_pod(core_v1: client.CoreV1Api, k8s_namespace: str) -> Callable[..., tuple[Any, str]]:
    """run_pod(spec: V1PodSpec | dict, name=None, timeout=...) -> (pod, logs).

    restartPolicy defaults to Never. The pod is left in place (its namespace
    goes with the module) so that a failure can be inspected.
    """

    def _run(spec: Any, name: str | None = None, timeout: float = POD_TIMEOUT) -> tuple[Any, str]:
        name = name or f"pod-{uuid.uuid4().hex[:8]}"
        if isinstance(spec, dict):
            spec.setdefault("restartPolicy", "Never")
        elif spec.restart_policy is None:
            spec.restart_policy = "Never"
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        core_v1.create_namespaced_pod(k8s_namespace, body)
        pod = wait_for_pod(core_v1, k8s_namespace, name, timeout)
        return pod, pod_logs(core_v1, k8s_namespace, name)

    return _run


# the dataflow runner's settings for this cluster (a fixture shared by the runner tests)
from k8s_env import cluster_env  # noqa: E402,F401
