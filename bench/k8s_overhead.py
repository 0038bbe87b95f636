#!/usr/bin/env python3
"""Benchmark of the ``kubernetes`` runner against a plain KubernetesPodOperator (``make bench-k8s``).

Two DAGs of ``--tasks`` (default 5) independent tasks each, written by this
script into a temporary DAGS_FOLDER and run with ``dag.test()`` against a SQLite
metadata DB in a temporary AIRFLOW_HOME, all in this process, on the cluster of
``--kubeconfig`` (default: the project's local cluster, ``.k8s/kubeconfig``):

* ``bench_k8s_dataflow``: ``KubernetesDataflowOperator`` tasks (no input, whole
  mode), each writing its output dataset on a hostPath data volume; the pod is
  the init container ``task`` + the ``stage-out`` helper, under the task's own
  ServiceAccount and the identity map's uid;
* ``bench_k8s_plain``: ``KubernetesPodOperator`` tasks with the same image
  (``localhost/dataflow-task:dev``), the same ``sh -c`` command (writes five
  small CSV files into ``$DATAFLOW_OUTPUT_DIR``) and the same data volume,
  writing into a plain folder of it; default operator settings otherwise.

Every run gets ``conf={"run": "<variant>-<round>"}``; the dataflow tasks take it
as ``dataflow_params``, so every timed run of them is a cache MISS that launches
one pod per task (checked: each task's last commit says ``cache: miss``, and a
watcher on the namespace sees one pod per task). Order: a warm-up run of each
DAG (the first ``dag.test()`` of a process starts the in-process API server),
then ``--repeat`` rounds (default 3), each running both DAGs in turn; the
medians count. Last, the dataflow DAG runs once more with the previous conf: a
cache HIT, which must launch no pod, timed separately.

An informational pair of the same DAGs (``--no-info`` skips it) passes
``startup_check_interval_seconds=1`` to both operators: by default the
KubernetesPodOperator polls a pending pod every 5 s, and the pod stays pending
while its init containers run, so most of a short task's time is that poll;
with a 1 s poll the pods' own cost shows.

The target is the ratio of the median time per task (wall time of
``dag.test()`` / tasks): dataflow / plain <= 1.2. Besides, a breakdown of where
each task's time goes, from the task instances' start/end dates and the times
at which the watcher saw each pod change (created, each container running and
terminated, deletion asked): before the pod (planning, pod request), pod
created to first container running (scheduling, sandbox, volume mounts), the
task container, the stage-out helper (dataflow only), and after the last
container ended (the operator's polling, log reads, pod deletion, commit).
A missed target prints MISS (exit status 0); a broken invariant exits 1.

The script creates its namespace (deleted at the end), the DAG's
ServiceAccounts (with the project's ``dag_manifests``), an identity map file and
a temporary data directory. It leaves the cluster running.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import drop_workdir, log, make_workdir, print_closing  # noqa: E402

TARGET_RATIO = 1.2  # median time per task, dataflow (cache miss) / plain KubernetesPodOperator
DAG_MODULE = "bench_k8s_overhead_dags"
OWNER = "bencher"
UID = 1000
DEFAULT_IMAGE = "localhost/dataflow-task:dev"

DAG_FILE = r'''
"""DAGs of bench/k8s_overhead.py (generated; do not edit)."""
import json
import os
from datetime import datetime

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import DAG
from kubernetes.client import models as k8s

from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.operators.kubernetes import KubernetesDataflowOperator

ROOT = os.environ["DATAFLOW_BENCH_ROOT"]  # on the data volume
DATA = os.environ["DATAFLOW_K8S_DATA_PATH"]
VOLUME = json.loads(os.environ["DATAFLOW_K8S_DATA_VOLUME"])
NAMESPACE = os.environ["DATAFLOW_NAMESPACE"]
IMAGE = os.environ["DATAFLOW_BENCH_IMAGE"]
N = int(os.environ["DATAFLOW_BENCH_TASKS"])
START = datetime(2026, 1, 1)
SCRIPT = 'for i in 1 2 3 4 5; do printf "%s,row,%s\n" "$i" "$i" > "$DATAFLOW_OUTPUT_DIR/part-$i.csv"; done; ls "$DATAFLOW_OUTPUT_DIR"'
if float(os.environ.get("DATAFLOW_BENCH_SLEEP", "0")) > 0:  # --work-seconds: a longer task
    SCRIPT = f"sleep {os.environ['DATAFLOW_BENCH_SLEEP']}; " + SCRIPT

def dataflow_tasks(prefix, **kwargs):
    for i in range(N):
        KubernetesDataflowOperator(
            task_id=f"t{i}", image=IMAGE, command=["sh", "-c", SCRIPT],
            output=DirectoryDataset(f"bench_k8s_{prefix}t{i}", f"file://{ROOT}/{{env}}/{prefix}t{i}"), mode="whole",
            # the task in the key too: same command, same (no) input would share one cache entry
            dataflow_params={"run": "{{ dag_run.conf.get('run', 0) }}", "task": i}, **kwargs,
        )


def plain_tasks(prefix, **kwargs):
    for i in range(N):
        KubernetesPodOperator(
            task_id=f"t{i}", name=f"plain-{prefix}t{i}", namespace=NAMESPACE, image=IMAGE, cmds=["sh", "-c", SCRIPT],
            env_vars={"DATAFLOW_OUTPUT_DIR": f"{ROOT}/plain/t{i}"},
            volumes=[k8s.V1Volume(name="data", host_path=k8s.V1HostPathVolumeSource(
                path=VOLUME["hostPath"]["path"], type="Directory"))],
            volume_mounts=[k8s.V1VolumeMount(name="data", mount_path=DATA)],
            get_logs=True, on_finish_action="delete_pod", **kwargs,
        )


# the measured pair: default operator settings
with DAG(dag_id="bench_k8s_dataflow", schedule=None, start_date=START, catchup=False) as dataflow_dag:
    dataflow_tasks("")

with DAG(dag_id="bench_k8s_plain", schedule=None, start_date=START, catchup=False) as plain_dag:
    plain_tasks("")

# informational pair: both poll the pod's start every second instead of every 5 s
with DAG(dag_id="bench_k8s_dataflow_fast", schedule=None, start_date=START, catchup=False) as dataflow_fast_dag:
    dataflow_tasks("fast_", startup_check_interval_seconds=1)

with DAG(dag_id="bench_k8s_plain_fast", schedule=None, start_date=START, catchup=False) as plain_fast_dag:
    plain_tasks("fast_", startup_check_interval_seconds=1)
'''





class PodWatcher:
    """Watch the namespace's pods; record when each change was first seen (local clock, epoch s)."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes import client

        self.core = client.CoreV1Api(api)
        self.namespace = namespace
        self.pods: dict[str, dict[str, Any]] = {}  # name -> {"labels", "events": {key: t}, "status": last pod}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _note(self, pod: Any, etype: str) -> None:
        now = time.time()
        name = pod.metadata.name
        with self._lock:
            rec = self.pods.setdefault(name, {"labels": dict(pod.metadata.labels or {}), "events": {}, "pod": None})
            ev = rec["events"]
            ev.setdefault("seen", now)
            if pod.metadata.deletion_timestamp is not None:
                ev.setdefault("delete_asked", now)
            if etype == "DELETED":
                ev.setdefault("deleted", now)
            for kind, statuses in (("init", pod.status.init_container_statuses), ("ctr", pod.status.container_statuses)):
                for cs in statuses or []:
                    st = cs.state
                    if st is None:
                        continue
                    if st.running is not None or st.terminated is not None:
                        ev.setdefault(f"{cs.name}:running", now)
                    if st.terminated is not None:
                        ev.setdefault(f"{cs.name}:terminated", now)
                        rec.setdefault("k8s", {})[cs.name] = (st.terminated.started_at, st.terminated.finished_at)
            if etype != "DELETED":
                rec["pod"] = pod
            rec.setdefault("created", pod.metadata.creation_timestamp)

    def _run(self) -> None:
        from kubernetes import watch

        rv = None
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                kwargs = {"timeout_seconds": 2, "_request_timeout": 10}
                if rv:
                    kwargs["resource_version"] = rv
                for event in w.stream(self.core.list_namespaced_pod, self.namespace, **kwargs):
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        rv = None
                        break
                    rv = obj.metadata.resource_version
                    self._note(obj, event["type"])
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - keep watching through API hiccups and 410 Gone
                rv = None
                time.sleep(0.2)

    def names(self) -> set[str]:
        with self._lock:
            return set(self.pods)


def kubectl(kubectl_bin: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([str(kubectl_bin), "--kubeconfig", str(kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        raise SystemExit(f"[bench] kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def epoch(dt: datetime | None) -> float | None:
    return dt.timestamp() if dt is not None else None


def task_instances(dag_id: str, run_id: str) -> dict[str, tuple[float, float]]:
    """Start and end (epoch s) of each task instance of a run, from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id).all()
        return {ti.task_id: (epoch(ti.start_date), epoch(ti.end_date)) for ti in rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=5, help="tasks per DAG (default 5)")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds (default 3; the median counts)")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG", str(REPO / ".k8s" / "kubeconfig")))
    p.add_argument("--kubectl", default=str(REPO / ".k8s" / "bin" / "kubectl"))
    p.add_argument("--image", default=os.environ.get("DATAFLOW_K8S_TASK_IMAGE", DEFAULT_IMAGE))
    p.add_argument("--root", help="work directory (default: a new temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work directory and the namespace")
    p.add_argument("--json", action="store_true", help="also print every figure as one JSON line")
    p.add_argument("--work-seconds", type=float, default=0,
                   help="make the task container sleep this long before writing (default 0: a few ms of work)")
    p.add_argument("--no-info", action="store_true", help="skip the informational pair polling the pod start every 1 s")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.tasks < 1:
        p.error("--repeat and --tasks must be at least 1")
    kubeconfig, kubectl_bin = Path(args.kubeconfig).resolve(), Path(args.kubectl)
    if not kubeconfig.is_file():
        raise SystemExit(f"[bench] no kubeconfig at {kubeconfig}: start the local cluster with `make k8s-up`")

    root, dags = make_workdir(args.root, "dataflow-bench-k8s-", DAG_MODULE, DAG_FILE)
    os.chmod(root, 0o755)
    data = root / "data"  # the hostPath data volume, mounted at the same path in pods
    data.mkdir(exist_ok=True)
    os.chmod(data, 0o755)
    for i in range(args.tasks):
        plain = data / "plain" / f"t{i}"
        plain.mkdir(parents=True, exist_ok=True)
        os.chmod(plain, 0o777)
    idmap = root / "identity-map.json"
    idmap.write_text(json.dumps({"identities": [{"owner": OWNER, "env": "prod", "runAsUser": UID, "runAsGroup": UID}]}))
    namespace = f"dfbench-{uuid.uuid4().hex[:8]}"
    os.environ.update({
        "DATAFLOW_BENCH_ROOT": str(data),
        "DATAFLOW_BENCH_IMAGE": args.image,
        "DATAFLOW_BENCH_TASKS": str(args.tasks),
        "DATAFLOW_BENCH_SLEEP": str(args.work_seconds),
        "DATAFLOW_ENV": "prod",
        "DATAFLOW_OWNER": OWNER,
        "DATAFLOW_RUNNER": "kubernetes",
        "DATAFLOW_IDENTITY_MAP": str(idmap),
        "DATAFLOW_NAMESPACE": namespace,
        "DATAFLOW_K8S_DATA_VOLUME": json.dumps({"name": "data", "hostPath": {"path": str(data), "type": "Directory"}}),
        "DATAFLOW_K8S_DATA_PATH": str(data),
        "DATAFLOW_CACHE_DIR": str(root / "cache"),
        "AIRFLOW_CONN_KUBERNETES_DEFAULT": json.dumps(
            {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig), "namespace": namespace}}),
    })  # fmt: skip
    created = False
    try:
        from dags_examples.demo import prepare_airflow

        log(f"work directory {root}; migrating a SQLite metadata DB")
        prepare_airflow(root / "airflow-home", dags)
        sys.path.insert(0, str(dags))
        mod = __import__(DAG_MODULE)
        setup_namespace([mod.dataflow_dag, mod.dataflow_fast_dag], namespace, kubeconfig, kubectl_bin)
        created = True
        return bench(root, data, mod, namespace, kubeconfig, args)
    finally:
        if created and not args.keep:
            log(f"deleting namespace {namespace}")
            subprocess.run([str(kubectl_bin), "--kubeconfig", str(kubeconfig), "delete", "namespace", namespace,
                            "--wait=false"], capture_output=True, timeout=60)
        drop_workdir(root, args.keep or bool(args.root), f" and namespace {namespace}" if args.keep else "")


def setup_namespace(dags: list[Any], namespace: str, kubeconfig: Path, kubectl_bin: Path) -> None:
    """Create the namespace and the DAGs' ServiceAccounts with the project's manifests."""
    from airflow_dataflow.identity.rbac import dag_manifests, dump_manifests

    docs = dag_manifests(dags[0], owner=OWNER, env="prod", namespace=namespace, with_namespace=True)
    for dag in dags[1:]:
        docs += [d for d in dag_manifests(dag, owner=OWNER, env="prod", namespace=namespace) if d["kind"] == "ServiceAccount"]
    log(f"applying namespace {namespace} and {sum(d['kind'] == 'ServiceAccount' for d in docs)} ServiceAccount(s)")
    kubectl(kubectl_bin, kubeconfig, "apply", "-f", "-", stdin=dump_manifests(docs))
    deadline = time.monotonic() + 60  # pods of the plain DAG need the controller-made default ServiceAccount
    while subprocess.run([str(kubectl_bin), "--kubeconfig", str(kubeconfig), "-n", namespace, "get", "sa", "default"],
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"[bench] namespace {namespace}: no default ServiceAccount after 60s")
        time.sleep(0.5)


class Runs:
    """Runs DAGs, records wall times, task instance times and the pods each run started."""

    def __init__(self, watcher: PodWatcher) -> None:
        self.watcher = watcher
        self.records: list[dict[str, Any]] = []

    def run(self, dag: Any, conf: dict[str, Any], label: str) -> dict[str, Any]:
        before = self.watcher.names()
        started = time.perf_counter()
        t0 = time.time()
        run = dag.test(run_conf=conf)
        took = time.perf_counter() - started
        state = str(getattr(getattr(run, "state", None), "value", getattr(run, "state", None)))
        if state != "success":
            raise SystemExit(f"[bench] {dag.dag_id} ({label}): the DAG run ended {state}; see the logs under $AIRFLOW_HOME")
        time.sleep(1.0)  # let the watcher catch the last pods' deletion
        pods = sorted(self.watcher.names() - before)
        rec = {"dag": dag.dag_id, "label": label, "conf": conf, "wall_s": took, "t0": t0, "pods": pods,
               "tis": task_instances(dag.dag_id, run.run_id)}
        self.records.append(rec)
        return rec


def cache_states(data: Path, n: int, prefix: str = "") -> dict[str, str]:
    """Each dataflow task's ``cache`` field of its output's last commit."""
    from airflow_dataflow.hooks.manifest import DatasetManifestHook

    hook = DatasetManifestHook()
    return {f"t{i}": str(hook.log_records(f"file://{data}/prod/{prefix}t{i}")[-1].info.stats.get("cache"))
            for i in range(n)}


PHASES = [  # key, label
    ("before_pod", "task start -> pod created (planning, pod request)"),
    ("to_first_running", "pod created -> first container running"),
    ("task_ctr", "task container running -> terminated"),
    ("gap_to_stage_out", "task terminated -> stage-out running"),
    ("stage_out", "stage-out helper running -> terminated"),
    ("after_ctrs", "last container terminated -> pod deletion asked"),
    ("after_delete", "pod deletion asked -> task end (commit)"),
    ("task_total", "task instance start -> end"),
]


def phases(rec: dict[str, Any], watcher: PodWatcher, dataflow: bool) -> list[dict[str, float]]:
    """Per-task phase durations of one run (seconds), from the TI dates and the watcher's sightings."""
    out = []
    for name in rec["pods"]:
        pod = watcher.pods[name]
        ev = pod["events"]
        task_id = pod["labels"].get("task_id") or pod["labels"].get("dataflow.io/task")
        if task_id not in rec["tis"]:
            continue
        start, end = rec["tis"][task_id]
        task_ctr = "task" if dataflow else "base"
        first = ev.get(f"{task_ctr}:running")
        last = ev.get("stage-out:terminated") if dataflow else ev.get("base:terminated")
        ph = {
            "before_pod": ev["seen"] - start,
            "to_first_running": (first - ev["seen"]) if first else float("nan"),
            "task_ctr": (ev[f"{task_ctr}:terminated"] - first) if first and f"{task_ctr}:terminated" in ev else float("nan"),
            "after_ctrs": (ev["delete_asked"] - last) if last and "delete_asked" in ev else float("nan"),
            "after_delete": (end - ev["delete_asked"]) if "delete_asked" in ev else float("nan"),
            "task_total": end - start,
        }
        if dataflow:
            so_run = ev.get("stage-out:running")
            ph["gap_to_stage_out"] = (so_run - ev["task:terminated"]) if so_run and "task:terminated" in ev else float("nan")
            ph["stage_out"] = (ev["stage-out:terminated"] - so_run) if so_run and last else float("nan")
        # second-resolution kubelet timestamps, for a cross-check of the watcher's sightings
        k8s_times = pod.get("k8s", {})
        created = epoch(pod.get("created"))
        if task_ctr in k8s_times and created is not None:
            s, f = k8s_times[task_ctr]
            ph["k8s_created_to_task_start"] = epoch(s) - created
            ph["k8s_task_run"] = epoch(f) - epoch(s)
            if dataflow and "stage-out" in k8s_times:
                s2, f2 = k8s_times["stage-out"]
                ph["k8s_task_end_to_stage_out_start"] = epoch(s2) - epoch(f)
                ph["k8s_stage_out_run"] = epoch(f2) - epoch(s2)
        out.append(ph)
    return out


def med(values: list[float]) -> float:
    vals = [v for v in values if v == v]  # drop NaN
    return statistics.median(vals) if vals else float("nan")


def fmt(v: float, width: int) -> str:
    return f"{'-' if v != v else f'{v:.2f}':>{width}}"


def bench(root: Path, data: Path, mod: Any, namespace: str, kubeconfig: Path, args: argparse.Namespace) -> int:
    from kubernetes import config as k8s_config

    n = args.tasks
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    watcher = PodWatcher(api, namespace)
    watcher.start()
    runs = Runs(watcher)
    load_start = os.getloadavg()[0]
    broken: list[str] = []
    f: dict[str, Any] = {"tasks": n, "repeat": args.repeat, "image": args.image, "namespace": namespace,
                         "work_seconds": args.work_seconds}

    w = runs.run(mod.plain_dag, {"run": 0}, "warm-up")
    f["warmup_plain_s"] = round(w["wall_s"], 2)
    log(f"warm-up plain run (starts the in-process API server, not counted): {w['wall_s']:.1f}s, {len(w['pods'])} pod(s)")
    w = runs.run(mod.dataflow_dag, {"run": 0}, "warm-up")
    f["warmup_dataflow_s"] = round(w["wall_s"], 2)
    log(f"warm-up dataflow run (cold, not counted): {w['wall_s']:.1f}s, {len(w['pods'])} pod(s)")

    variants = [  # key, dag, label, output prefix of a dataflow DAG (None: plain)
        ("plain", mod.plain_dag, "plain KubernetesPodOperator", None),
        ("dataflow", mod.dataflow_dag, "KubernetesDataflowOperator, cache miss", ""),
        ("plain_fast", mod.plain_fast_dag, "plain, start polled every 1 s (info)", None),
        ("dataflow_fast", mod.dataflow_fast_dag, "dataflow miss, start polled every 1 s (info)", "fast_"),
    ]
    if args.no_info:
        variants = variants[:2]
    timed: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in variants}
    for i in range(1, args.repeat + 1):
        for key, dag, _, prefix in variants:
            rec = runs.run(dag, {"run": f"{key}-{i}"}, f"round {i}")  # cache keys differ across variants
            timed[key].append(rec)
            if len(rec["pods"]) != n:
                broken.append(f"{key} round {i}: {len(rec['pods'])} pod(s) seen, expected {n}")
            if prefix is not None:
                states = cache_states(data, n, prefix)
                if any(s != "miss" for s in states.values()):
                    broken.append(f"{key} round {i}: not every task a cache miss: {states}")
        log(f"round {i}: " + ", ".join(f"{k} {v[-1]['wall_s']:.2f}s" for k, v in timed.items()))

    hit = runs.run(mod.dataflow_dag, {"run": f"dataflow-{args.repeat}"}, "cache hit")  # the last round's conf
    states = cache_states(data, n)
    if hit["pods"]:
        broken.append(f"cache-hit run launched {len(hit['pods'])} pod(s)")
    if any(s != "hit" for s in states.values()):
        broken.append(f"cache-hit run: not every task a cache hit: {states}")
    log(f"cache-hit dataflow run: {hit['wall_s']:.2f}s, {len(hit['pods'])} pod(s)")
    watcher.stop()

    for key, *_ in variants:
        walls = [r["wall_s"] for r in timed[key]]
        f[f"{key}_runs_s"] = [round(t, 3) for t in walls]
        f[f"{key}_median_s"] = round(statistics.median(walls), 3)
        f[f"{key}_per_task_s"] = round(statistics.median(walls) / n, 3)
        f[f"{key}_ti_median_s"] = round(statistics.median([e - s for r in timed[key] for s, e in r["tis"].values()]), 3)
    f["hit_s"] = round(hit["wall_s"], 3)
    f["hit_per_task_s"] = round(hit["wall_s"] / n, 3)
    f["hit_ti_median_s"] = round(statistics.median([e - s for s, e in hit["tis"].values()]), 3)
    f["ratio"] = round(f["dataflow_per_task_s"] / f["plain_per_task_s"], 3)
    f["ratio_ti"] = round(f["dataflow_ti_median_s"] / f["plain_ti_median_s"], 3)
    f["extra_per_task_s"] = round(f["dataflow_per_task_s"] - f["plain_per_task_s"], 3)
    if not args.no_info:
        f["ratio_fast"] = round(f["dataflow_fast_per_task_s"] / f["plain_fast_per_task_s"], 3)
        f["extra_per_task_fast_s"] = round(f["dataflow_fast_per_task_s"] - f["plain_fast_per_task_s"], 3)
    f["verdict"] = "PASS" if f["ratio"] <= TARGET_RATIO else "MISS"

    breakdown: dict[str, dict[str, float]] = {}
    for key, _, _, prefix in variants:
        rows = [ph for r in timed[key] for ph in phases(r, watcher, prefix is not None)]
        keys = sorted({k for ph in rows for k in ph})
        breakdown[key] = {k: round(med([ph.get(k, float("nan")) for ph in rows]), 3) for k in keys}
    f["breakdown_median_s"] = breakdown
    f["invariants_broken"] = broken
    f["load_start"], f["load_end"] = round(load_start, 2), round(os.getloadavg()[0], 2)

    print(f"\nk8s overhead benchmark: {n} independent tasks per DAG, task command {args.work_seconds:g} s of sleep + 5 files, dag.test() in one process (tasks run one "
          f"after another), median of {args.repeat} rounds, namespace {namespace}, image {args.image}, "
          f"{os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}")
    print(f"warm-up (not counted): plain {f['warmup_plain_s']:.1f}s (starts the API server), "
          f"dataflow {f['warmup_dataflow_s']:.1f}s (cold)")
    print(f"\n{'run':<48} {'median s':>9} {'s/task':>7} {'TI s':>6} {'x plain':>8}   runs (s)")
    for key, _, label, _ in variants:
        base = "plain_fast" if key.endswith("_fast") else "plain"
        print(f"{label:<48} {f[key + '_median_s']:>9.2f} {f[key + '_per_task_s']:>7.2f} {f[key + '_ti_median_s']:>6.2f} "
              f"{f[key + '_per_task_s'] / f[base + '_per_task_s']:>8.2f}   {' '.join(f'{t:.2f}' for t in f[key + '_runs_s'])}")
    print(f"{'KubernetesDataflowOperator, cache hit (no pod)':<48} {f['hit_s']:>9.2f} {f['hit_per_task_s']:>7.2f} "
          f"{f['hit_ti_median_s']:>6.2f} {f['hit_per_task_s'] / f['plain_per_task_s']:>8.2f}   once")
    print("(s/task: dag.test() wall time / tasks; TI s: median task-instance duration, start -> end date; "
          "x plain: s/task over the plain operator's with the same polling)")
    print(f"\nratio dataflow / plain, time per task (median wall times): {f['ratio']:.3f} "
          f"(target <= {TARGET_RATIO}) {f['verdict']}")
    print(f"ratio of the median task-instance durations: {f['ratio_ti']:.3f}; "
          f"extra time per task: {f['extra_per_task_s'] * 1000:.0f} ms")
    if not args.no_info:
        print(f"informational, both polling the pod start every 1 s (what the 5 s default hides): ratio "
              f"{f['ratio_fast']:.3f}, extra time per task {f['extra_per_task_fast_s'] * 1000:.0f} ms")

    keys = [key for key, *_ in variants]
    print("\nwhere a task's time goes (median over tasks and rounds, s; when this process's watcher saw each change):")
    print(f"{'phase':<56}" + "".join(f" {k:>13}" for k in keys))
    for k, label in PHASES:
        print(f"{label:<56}" + "".join(f" {fmt(breakdown[v].get(k, float('nan')), 13)}" for v in keys))
    print("kubelet timestamps (1 s resolution):")
    for k, label in (("k8s_created_to_task_start", "pod created -> task container started"),
                     ("k8s_task_run", "task container started -> finished"),
                     ("k8s_task_end_to_stage_out_start", "task finished -> stage-out started"),
                     ("k8s_stage_out_run", "stage-out started -> finished")):
        print(f"  {label:<54}" + "".join(f" {fmt(breakdown[v].get(k, float('nan')), 13)}" for v in keys))
    for b in broken:
        print(f"BROKEN: {b}")
    if f["verdict"] == "MISS":
        print(f"MISS: the dataflow operator takes {f['ratio']:.2f}x the time of a plain KubernetesPodOperator "
              f"per task (target <= {TARGET_RATIO}); see the breakdown above and bench/README.md")
    print_closing(f, "k8s_overhead", args.json)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
