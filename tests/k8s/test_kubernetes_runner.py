"""The ``kubernetes`` runner on the real cluster: the example pipeline in pods, identities, failures.

The DAGs run with ``dag.test()`` against the session's SQLite metadata DB; task
pods run on the cluster with a hostPath data volume mounted at the same path as
in this process, so the worker and the pods see the same files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagrun import install_dag_file, run_dag
from kubernetes import client

from airflow_dataflow.hooks.manifest import DatasetManifestHook
from k8s_env import OWNER, UIDS, kubectl
from dags_examples import demo

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "dags_examples" / "sales_pipeline.py"
DATASETS = {"clean": "clean", "enrich": "enriched", "aggregate": "summary"}


class PodWatcher:
    """Records every pod of the namespace while it exists (they are deleted when done)."""

    def __init__(self, core: client.CoreV1Api, namespace: str) -> None:
        self.core, self.namespace = core, namespace
        self.seen: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for pod in self.core.list_namespaced_pod(self.namespace, _request_timeout=5).items:
                    self.seen.setdefault(pod.metadata.name, pod)
            except Exception:  # noqa: BLE001 - keep watching through API hiccups
                pass
            time.sleep(0.2)

    def __enter__(self) -> PodWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def identities(cluster_env: Path, k8s_namespace: str, kubeconfig_path: Path) -> None:
    """Apply the example DAG's ServiceAccounts with the project's own manifests command."""
    for env in UIDS:
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "airflow-dataflow"), "k8s", "manifests", "sales_pipeline",
             "--env", env, "--owner", OWNER, "--dags-folder", str(REPO_ROOT / "dags_examples"),
             "--namespace", k8s_namespace],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        applied = kubectl(kubeconfig_path, "apply", "-f", "-", stdin=proc.stdout)
        assert applied.returncode == 0, applied.stderr


def last(root: Path, task: str, env: str = "prod"):
    return DatasetManifestHook().log_records(f"file://{root}/{env}/{DATASETS[task]}")[-1]


def run_example(root: Path, runner: str, conf: dict | None = None, env: str | None = None) -> str:
    """Run the example DAG; the local reference run uses environment ``ref`` so that its
    assets (named ``<dataset>@<env>``) never clash with the pods' run in ``prod``."""
    os.environ["DATAFLOW_DEMO_ROOT"] = str(root)
    os.environ["DATAFLOW_RUNNER"] = runner
    os.environ["DATAFLOW_ENV"] = env or ("prod" if runner == "kubernetes" else "ref")
    try:
        path = install_dag_file(EXAMPLE)
        return run_dag(path, "sales_pipeline", conf)
    finally:
        os.environ["DATAFLOW_RUNNER"] = "kubernetes"
        os.environ["DATAFLOW_ENV"] = "prod"


def test_example_pipeline_in_pods_matches_the_local_runner(cluster_env, identities, core_v1, k8s_namespace, airflow_db):
    local_root, pod_root = cluster_env / "local", cluster_env / "pods"
    for root in (local_root, pod_root):
        root.mkdir()
        demo.land_initial(root / "landing", n=12)
    assert run_example(local_root, "local") == "success"
    with PodWatcher(core_v1, k8s_namespace) as watcher:
        assert run_example(pod_root, "kubernetes") == "success"
    for task in DATASETS:
        assert last(pod_root, task).digest == last(local_root, task, "ref").digest, task
        assert last(pod_root, task).info.stats["runner"] == "kubernetes"

    # every pod ran under its task's ServiceAccount and the identity map's uid
    pods = [p for p in watcher.seen.values() if (p.metadata.labels or {}).get("dataflow.io/dag") == "sales_pipeline"]
    assert {p.metadata.labels["dataflow.io/task"] for p in pods} == set(DATASETS)
    for pod in pods:
        task = pod.metadata.labels["dataflow.io/task"]
        assert pod.spec.service_account_name == last(pod_root, task).info.stats["identity"]["service_account"]
        assert pod.spec.security_context.run_as_user == UIDS["prod"]
        assert pod.spec.security_context.run_as_non_root is True
        assert [c.name for c in pod.spec.init_containers] == ["task"]
    # the files really were written by that uid (not just declared)
    row = DatasetManifestHook().snapshot(f"file://{pod_root}/prod/clean").rows()[0]
    assert os.stat(row["location"][len("file://"):]).st_uid == UIDS["prod"]
    assert last(pod_root, "clean").info.stats["identity"]["uid"] == UIDS["prod"]

    # incremental in pods too: only the changed files run, and a no-change run launches no pod
    done = demo.change_inputs(pod_root / "landing")
    demo.change_inputs(local_root / "landing")
    assert run_example(pod_root, "kubernetes") == "success"
    assert last(pod_root, "clean").info.stats["processed"] == len(done["modified"]) + 1 + len(done["added"])
    assert run_example(local_root, "local") == "success"
    for task in DATASETS:
        assert last(pod_root, task).digest == last(local_root, task, "ref").digest, task
    with PodWatcher(core_v1, k8s_namespace) as watcher:
        assert run_example(pod_root, "kubernetes", {"wait_for_change": False}) == "success"
    assert not watcher.seen, "cache hits must launch no pod"


SINGLE_TASK_DAG = '''
from datetime import datetime, timedelta
from airflow.sdk import DAG
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.operators.kubernetes import KubernetesDataflowOperator

src = DirectoryDataset("src_{tag}", "file://{root}/src", owned=False)
out = DirectoryDataset("out_{tag}", "file://{root}/{{env}}/out")
with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    KubernetesDataflowOperator(
        task_id="work", image="localhost/dataflow-task:dev", command=["sh", "-c", {script!r}],
        inputs={{"src": src}}, output=out, mode="whole", retries={retries}, retry_delay=timedelta(seconds=1),
        {extra}
    )
'''


def single_task_dag(root: Path, dag_id: str, script: str, retries: int = 0, extra: str = "") -> Path:
    text = SINGLE_TASK_DAG.format(
        tag=root.name.replace("-", "_"), root=root, dag_id=dag_id, script=script, retries=retries, extra=extra
    )
    return install_dag_file(None, name=f"{dag_id}.py", text=text)


@pytest.fixture
def source(cluster_env: Path, request: pytest.FixtureRequest) -> Path:
    from airflow_dataflow.core.commit import CommitInfo
    from airflow_dataflow.dataset import DirectoryDataset

    root = cluster_env / request.node.name.replace("[", "-").replace("]", "")[:40]
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.txt").write_text("hello\n")
    ds = DirectoryDataset(f"src_{root.name.replace('-', '_')}", f"file://{root}/src", owned=False)
    hook = DatasetManifestHook()
    hook.commit(ds, hook.scan(ds), CommitInfo(task_id="setup"))
    return root


def apply_identity(kubeconfig: Path, namespace: str, dag_id: str, task_id: str = "work", env: str = "prod") -> None:
    from airflow_dataflow.identity.config import task_identity
    from airflow_dataflow.identity.rbac import dump_manifests, service_account_manifest

    ident = task_identity(OWNER, env, dag_id, task_id, with_pod=False, namespace=namespace)
    out = kubectl(kubeconfig, "apply", "-f", "-", stdin=dump_manifests([service_account_manifest(ident)]))
    assert out.returncode == 0, out.stderr


@pytest.fixture
def victim(cluster_env: Path) -> Path:
    """A committed dataset whose files belong to root (not to any task uid); returns its path."""
    from airflow_dataflow.core.commit import CommitInfo
    from airflow_dataflow.storage.local import scan_directory

    staging = cluster_env / "victim-staging"
    staging.mkdir(exist_ok=True)
    (staging / "precious.csv").write_text("id,value\n1,42\n")
    uri = f"file://{cluster_env}/victim/prod/data"
    hook = DatasetManifestHook()
    manifest, _ = scan_directory(str(staging))
    hook.commit(uri, hook.ingest(uri, str(staging), manifest), CommitInfo(task_id="setup"))
    return cluster_env / "victim" / "prod" / "data"


def test_a_task_cannot_write_a_dataset_it_does_not_own(
    source, victim, kubeconfig_path, k8s_namespace, airflow_db
):
    head = DatasetManifestHook().snapshot(f"file://{victim}")
    target = victim / "precious.csv"
    before = target.read_bytes()
    script = f'set -e; echo overwritten > {target}; echo ok > "$DATAFLOW_OUTPUT_DIR/x"'
    apply_identity(kubeconfig_path, k8s_namespace, "intruder")
    path = single_task_dag(source, "intruder", script)
    assert run_dag(path, "intruder") == "failed"
    assert target.read_bytes() == before
    assert DatasetManifestHook().snapshot(f"file://{victim}").digest == head.digest
    assert not DatasetManifestHook().log_records(f"file://{source}/prod/out")


def test_a_uid_without_rights_gets_permission_denied(cluster_env, victim, run_pod, task_image):
    """Beyond the read-only mount: with the data volume writable, the identity's uid still cannot write."""
    target = victim / "precious.csv"
    before = target.read_bytes()
    spec = (
        client.V1PodSpec(
            restart_policy="Never",
            security_context=client.V1PodSecurityContext(run_as_user=UIDS["test-alice"], run_as_group=UIDS["test-alice"]),
            containers=[client.V1Container(
                name="c", image=task_image, image_pull_policy="Never",
                command=["sh", "-c", f"echo x > {target} 2>&1; echo rc=$?"],
                volume_mounts=[client.V1VolumeMount(name="data", mount_path=str(cluster_env))],
            )],
            volumes=[client.V1Volume(name="data", host_path=client.V1HostPathVolumeSource(path=str(cluster_env)))],
        )
    )  # fmt: skip
    _, logs = run_pod(spec, name="uid-check")
    assert "Permission denied" in logs and "rc=1" in logs
    assert target.read_bytes() == before


def test_a_pod_deleted_mid_run_leaves_head_intact_and_the_retry_succeeds(
    source, core_v1, kubeconfig_path, k8s_namespace, airflow_db
):
    script = 'sleep 6; cp "$DATAFLOW_INPUT_DIR/a.txt" "$DATAFLOW_OUTPUT_DIR/copy.txt"'
    apply_identity(kubeconfig_path, k8s_namespace, "deleted_pod")
    path = single_task_dag(source, "deleted_pod", script, retries=1)
    deleted: list[str] = []

    def delete_first_running_pod() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not deleted:
            for pod in core_v1.list_namespaced_pod(k8s_namespace, label_selector="dataflow.io/dag=deleted_pod").items:
                statuses = pod.status.init_container_statuses or []
                if any(s.name == "task" and s.state.running for s in statuses):
                    core_v1.delete_namespaced_pod(pod.metadata.name, k8s_namespace, grace_period_seconds=0)
                    deleted.append(pod.metadata.name)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=delete_first_running_pod, daemon=True)
    killer.start()
    assert run_dag(path, "deleted_pod") == "success"
    killer.join(timeout=5)
    assert deleted, "the test never saw the task container running"
    records = DatasetManifestHook().log_records(f"file://{source}/prod/out")
    assert len(records) == 1 and records[0].info.try_number == 2
    assert (source / "prod" / "out" / "copy.txt").read_text() == "hello\n"


def test_manifests_yaml_is_valid(identities, kubeconfig_path, k8s_namespace):
    out = kubectl(kubeconfig_path, "get", "serviceaccounts", "-n", k8s_namespace, "-o", "yaml")
    names = {d["metadata"]["name"] for d in yaml.safe_load(out.stdout)["items"]}
    from airflow_dataflow.identity.naming import service_account_name

    for env in UIDS:
        for task in DATASETS:
            assert service_account_name(OWNER, env, "sales_pipeline", task) in names


def test_mapped_batches_become_mapped_pods_in_a_test_environment(
    cluster_env, identities, core_v1, k8s_namespace, kubeconfig_path, airflow_db, monkeypatch
):
    """Fan-out in pods, deployed in environment test-alice: one pod per batch, that
    environment's uid, and the same snapshots as anywhere else."""
    root = cluster_env / "fanout"
    root.mkdir()
    demo.land_initial(root / "landing", n=12)
    for task in ("clean.batch", "enrich.batch"):
        apply_identity(kubeconfig_path, k8s_namespace, "sales_pipeline", task, env="test-alice")
    monkeypatch.setenv("DATAFLOW_EXAMPLE_FAN_OUT", "1")
    monkeypatch.setenv("DATAFLOW_EXAMPLE_BATCH_SIZE", "5")
    with PodWatcher(core_v1, k8s_namespace) as watcher:
        assert run_example(root, "kubernetes", env="test-alice") == "success"
    pods = [p for p in watcher.seen.values() if (p.metadata.labels or {}).get("dataflow.io/env") == "test-alice"]
    by_task: dict[str, int] = {}
    for pod in pods:
        by_task[pod.metadata.labels["dataflow.io/task"]] = by_task.get(pod.metadata.labels["dataflow.io/task"], 0) + 1
        assert pod.spec.security_context.run_as_user == UIDS["test-alice"]
    assert by_task == {"clean.batch": 3, "enrich.batch": 3, "aggregate": 1}  # 12 files in batches of 5
    hook = DatasetManifestHook()
    for task, name in DATASETS.items():
        mine = hook.log_records(f"file://{root}/test-alice/{name}")[-1]
        ref = hook.log_records(f"file://{cluster_env}/local/ref/{name}")
        assert mine.info.env == "test-alice"
        assert mine.digest in {r.digest for r in ref}, task
    assert not (root / "prod").exists(), "a test environment writes only under its own {env}"


def test_a_task_may_run_longer_than_the_pod_start_timeouts(source, kubeconfig_path, k8s_namespace, airflow_db):
    """The command runs in an init container (the pod is Pending meanwhile): the
    schedule timeout (here 5 s) bounds only scheduling, and the start timeout
    defaults to a day, so a command longer than either does not fail."""
    apply_identity(kubeconfig_path, k8s_namespace, "long_task")
    path = single_task_dag(
        source, "long_task", 'sleep 8; cp "$DATAFLOW_INPUT_DIR/a.txt" "$DATAFLOW_OUTPUT_DIR/"',
        extra="schedule_timeout_seconds=5,",
    )
    assert run_dag(path, "long_task") == "success"
    assert (source / "prod" / "out" / "a.txt").read_text() == "hello\n"

