"""Settings and helpers for running dataflow tasks as pods on the test cluster."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
OWNER = "tester"
UIDS = {"prod": 1000, "test-alice": 2001}
KUBECTL = REPO_ROOT / ".k8s" / "bin" / "kubectl"


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(kubeconfig), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def cluster_env(k8s_namespace: str, kubeconfig_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """Settings that make the example run its tasks as pods in the test namespace."""
    data = tmp_path_factory.mktemp("k8s-data")
    os.chmod(data, 0o755)
    idmap = data.parent / "identity-map.json"
    idmap.write_text(json.dumps({"identities": [
        {"owner": OWNER, "env": env, "runAsUser": uid, "runAsGroup": uid} for env, uid in UIDS.items()
    ]}))  # fmt: skip
    settings = {
        "DATAFLOW_RUNNER": "kubernetes",
        "DATAFLOW_OWNER": OWNER,
        "DATAFLOW_IDENTITY_MAP": str(idmap),
        "DATAFLOW_NAMESPACE": k8s_namespace,
        "DATAFLOW_K8S_DATA_VOLUME": json.dumps({"name": "data", "hostPath": {"path": str(data), "type": "Directory"}}),
        "DATAFLOW_K8S_DATA_PATH": str(data),
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig_path), "namespace": k8s_namespace}}
        ),
    }
    old = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    yield data
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
