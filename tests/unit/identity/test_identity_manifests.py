"""``airflow-dataflow k8s manifests``: which tasks get identities, and the documents printed."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk import DAG, BaseOperator

from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.exceptions import DataflowError
from airflow_dataflow.identity.cli import load_dag
from airflow_dataflow.identity.config import IdentityConfig
from airflow_dataflow.identity.naming import LABEL_VALUE_RE, is_dns1123_label, service_account_name
from airflow_dataflow.identity.rbac import LAUNCHER_ROLE, dag_manifests, dump_manifests, identity_task_ids, runs_pod
from airflow_dataflow.operators.dataflow import dataflow_task
from airflow_dataflow.sensors.change import DirectoryChangeSensor

CHECKOUT = Path(__file__).resolve().parents[3]
EXAMPLES = CHECKOUT / "dags_examples"
CLI = [os.path.join(os.path.dirname(sys.executable), "airflow-dataflow")]
if not os.path.exists(CLI[0]):
    CLI = [sys.executable, "-m", "airflow_dataflow.cli"]
PATTERN = "arn:aws:iam::123456789012:role/dataflow/{service_account}"


class PodTask(BaseOperator):
    dataflow_identity = True

    def execute(self, context: Any) -> None:  # pragma: no cover - never run
        pass


class OptedOut(PodTask):
    dataflow_identity = False


class Plain(BaseOperator):
    def execute(self, context: Any) -> None:  # pragma: no cover - never run
        pass


@pytest.fixture(scope="module")
def dag() -> DAG:
    src = DirectoryDataset("u_src", "file:///tmp/u/src", env="prod", owned=False)
    a = DirectoryDataset("u_a", "file:///tmp/u/{env}/a", env="prod")
    b = DirectoryDataset("u_b", "file:///tmp/u/{env}/b", env="prod")
    with DAG("unit_dag", schedule=None, start_date=datetime(2026, 1, 1)) as d:
        DirectoryChangeSensor(task_id="wait", dataset=src)
        dataflow_task("single", command=["true"], inputs=src, output=a, mode="whole")
        dataflow_task("fan", fan_out=True, command=["true"], inputs=a, output=b, mode="per_file")
        PodTask(task_id="custom_pod")
        OptedOut(task_id="opted_out")
        Plain(task_id="plain")
    return d


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_tasks_that_run_pods(dag: DAG) -> None:
    # the fan-out's plan and commit steps, the sensor and plain operators run no pod
    assert identity_task_ids(dag) == ["custom_pod", "fan.batch", "single"]
    assert not runs_pod(dag.task_dict["fan.plan"]) and runs_pod(dag.task_dict["fan.batch"])


def test_documents(dag: DAG) -> None:
    docs = dag_manifests(dag, owner="alice", env="test-alice", config=IdentityConfig(), with_namespace=True)
    assert [d["kind"] for d in docs] == ["Namespace"] + ["ServiceAccount"] * 3 + ["Role", "RoleBinding"]
    sas = by_kind(docs, "ServiceAccount")
    assert [s["metadata"]["name"] for s in sas] == sorted(
        service_account_name("alice", "test-alice", "unit_dag", t) for t in ("custom_pod", "fan.batch", "single")
    )
    for sa in sas:
        meta = sa["metadata"]
        assert is_dns1123_label(meta["name"]) and meta["namespace"] == "airflow"
        assert sa["automountServiceAccountToken"] is False
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "airflow-dataflow"
        assert meta["labels"]["dataflow.io/owner"] == "alice" and meta["labels"]["dataflow.io/env"] == "test-alice"
        assert meta["labels"]["dataflow.io/dag"] == "unit_dag"
        assert all(LABEL_VALUE_RE.match(v) and len(v) <= 63 for v in meta["labels"].values())
        assert "eks.amazonaws.com/role-arn" not in meta["annotations"]
    assert {s["metadata"]["labels"]["dataflow.io/task"] for s in sas} == {"custom_pod", "fan.batch", "single"}


def test_least_privilege(dag: DAG) -> None:
    docs = dag_manifests(dag, owner="alice", env="prod", config=IdentityConfig(), launcher_namespace="airflow-sys")
    sa_names = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    (role,) = by_kind(docs, "Role")
    (binding,) = by_kind(docs, "RoleBinding")
    # task ServiceAccounts are bound to nothing; only the launcher is
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow-sys"}]
    assert not sa_names & {s["name"] for s in binding["subjects"]}
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == LAUNCHER_ROLE
    rules = {tuple(r["resources"]): r["verbs"] for r in role["rules"]}
    assert rules == {
        ("pods",): ["create", "delete", "get", "list", "patch", "watch"],
        ("pods/log",): ["get"],
        ("events",): ["list", "watch"],
    }
    assert all(r["apiGroups"] == [""] for r in role["rules"])
    exec_docs = dag_manifests(dag, owner="alice", env="prod", config=IdentityConfig(), allow_exec=True)
    (role,) = by_kind(exec_docs, "Role")
    assert {"resources": ["pods/exec"], "verbs": ["create", "get"], "apiGroups": [""]} in role["rules"]


def test_iam_annotation_and_namespace_policy(dag: DAG) -> None:
    config = IdentityConfig(iam_role_pattern=PATTERN, namespace="dataflow-{env}", launcher_service_account="launcher")
    docs = dag_manifests(dag, owner="alice", env="test-alice", config=config)
    for sa in by_kind(docs, "ServiceAccount"):
        assert sa["metadata"]["namespace"] == "dataflow-test-alice"
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
            f"arn:aws:iam::123456789012:role/dataflow/{sa['metadata']['name']}"
        )
    assert by_kind(docs, "RoleBinding")[0]["subjects"][0]["name"] == "launcher"


def test_output_is_deterministic_yaml(dag: DAG) -> None:
    def render() -> str:
        return dump_manifests(dag_manifests(dag, owner="o", env="prod", config=IdentityConfig()), ["head"])

    text = render()
    assert text == render() and text.startswith("# head\n---\n")
    assert "needs no Kubernetes API access" in text
    assert [d["kind"] for d in yaml.safe_load_all(text)][-2:] == ["Role", "RoleBinding"]


def test_load_dag_uses_the_environment() -> None:
    dag = load_dag("sales_pipeline", str(EXAMPLES), "test-alice")
    assert identity_task_ids(dag) == ["aggregate", "clean", "enrich"]
    assert dag.task_dict["clean"].output_dataset.env == "test-alice"
    assert os.environ["DATAFLOW_ENV"] == "prod"  # restored


def test_load_dag_without_env_keeps_the_current_one() -> None:
    dag = load_dag("sales_pipeline", str(EXAMPLES))
    assert dag.task_dict["clean"].output_dataset.env == os.environ["DATAFLOW_ENV"] == "prod"
    with pytest.raises(DataflowError, match="no DAG 'nope'"):
        load_dag("nope", str(EXAMPLES))


def test_cli_prints_manifests_for_the_example() -> None:
    env = {**os.environ, "DATAFLOW_IAM_ROLE_PATTERN": PATTERN, "DATAFLOW_OWNER": "alice"}
    args = ["k8s", "manifests", "sales_pipeline", "--env", "test-alice", "--dags-folder", str(EXAMPLES), "--namespace", "ns1"]
    proc = subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["ServiceAccount"] * 3 + ["Role", "RoleBinding"]
    names = [d["metadata"]["name"] for d in docs[:3]]
    assert names == sorted(service_account_name("alice", "test-alice", "sales_pipeline", t) for t in ("aggregate", "clean", "enrich"))
    assert all(d["metadata"]["namespace"] == "ns1" for d in docs)
    assert all(d["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(d["metadata"]["name"]) for d in docs[:3])

    missing = subprocess.run(CLI + ["k8s", "manifests", "nope", "--dags-folder", str(EXAMPLES)], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2
    assert "no DAG 'nope'" in missing.stderr and "sales_pipeline" in missing.stderr and "--dags-folder" in missing.stderr
