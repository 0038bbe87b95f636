"""``KubernetesDataflowOperator``: the ``kubernetes`` runner, a KubernetesPodOperator subclass.

Each run is one pod (one per mapped batch with ``dataflow_task(fan_out=True)``),
launched under the task's own identity: the ServiceAccount of (owner,
environment, DAG, task) and the uid/gid of the identity map, with a restricted
security context. A cache hit launches no pod.

The pod::

    init containers: [stage-in (S3 only)] -> task (the user's image and command)
    container:       stage-out (hashes the outputs; on S3 uploads them)

Data reaches the pod in one of two ways:

* **shared volume** (a PVC in production, a hostPath on a test cluster): the
  volume is mounted read-only at the same path as on the Airflow worker, so
  inputs are the committed snapshot trees themselves; the output is a staging
  folder on the same volume mounted read-write; the helper hashes it and the
  worker links the files into the content store (no byte is copied or read by
  the worker);
* **S3**: ``stage-in`` downloads only the files the run needs (per-file mode: the
  changed subset) into an ``emptyDir``, ``stage-out`` uploads the outputs to the
  content store with the pod's own credentials, and the worker commits metadata.

The user's image needs nothing of this package: it sees the task I/O contract of
:mod:`airflow_dataflow.runners.base`. The helpers run ``localhost/dataflow-helper:dev``
(``[dataflow] helper_image``; recipe in ``tools/k8s/images/dataflow-helper``).

This operator overrides ``execute`` (the documented seams do not allow ending a
task as a success without a pod, as a cache hit must) and shapes the pod in
``build_pod_request_obj``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

from airflow_dataflow.config import DataflowConfig, setting
from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.engine import WHOLE, Engine, Plan
from airflow_dataflow.exceptions import DataflowError
from airflow_dataflow.hooks.manifest import DatasetManifestHook
from airflow_dataflow.operators.common import (
    as_inputs,
    build_spec,
    check_args,
    commit_info,
    execute_stage,
    set_dataflow_args,
)
from airflow_dataflow.runners.base import Runner, RunRequest

if TYPE_CHECKING:
    from airflow.sdk import Context

WORK = "/dataflow"
STAGE_OUT = "stage-out"
DEFAULT_HELPER_IMAGE = "localhost/dataflow-helper:dev"
TASK_TIMEOUT_S = 24 * 3600


class _PodRunner(Runner):
    """Placeholder runner: the engine plans and commits, pods run the command."""

    name = "kubernetes"

    def run(self, request: RunRequest, log: Any) -> None:  # pragma: no cover - never called
        raise DataflowError("the kubernetes runner runs commands in pods, not in the worker")


@dataclass
class PodJob:
    """One pod's worth of work, prepared by the worker before the pod starts."""

    spec: dict[str, Any]
    contract: dict[str, str]
    mounts: list[k8s.V1VolumeMount] = field(default_factory=list)
    helper_mounts: list[k8s.V1VolumeMount] = field(default_factory=list)
    volumes: list[k8s.V1Volume] = field(default_factory=list)
    staging: str | None = None  # shared volume: the local staging folder
    result_rel: str | None = None  # S3: metadata key of the result document
    stage_in: bool = False


class KubernetesDataflowOperator(KubernetesPodOperator):
    """Run a dataflow task in a pod under the task's own identity.

    Takes the dataflow arguments of :class:`~airflow_dataflow.operators.dataflow.DataflowOperator`
    (``command``, ``output``, ``inputs``, ``mode``, ``image``, ``per_file_input``,
    ``env``, ``dataflow_params``, ``version``, ``partition``, ``batch_size``,
    ``stage``...) and any KubernetesPodOperator argument, plus:

    :param data_volume: the shared data volume (a ``V1Volume`` or its dict), for
        datasets on a shared filesystem; default ``[dataflow] k8s_data_volume`` (JSON)
    :param data_mount_path: where that volume's root is mounted, on the workers
        and in the pods; default ``[dataflow] k8s_data_path``
    :param s3_secret: a Secret with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
        for the helper containers (none with IRSA); default ``[dataflow] k8s_s3_secret``
    :param helper_image: image of the stage-in/stage-out helper
    :param secret_env: secrets for the task container, as ``{VAR: "secret-name:key"}``
        references to Kubernetes Secrets (never part of the cache key)
    """

    dataflow_identity = True
    template_fields: Sequence[str] = (
        *KubernetesPodOperator.template_fields,
        "command",
        "env",
        "dataflow_params",
        "partition",
        "version",
    )

    def __init__(
        self,
        *,
        command: Sequence[str],
        output: DirectoryDataset,
        image: str,
        inputs: Any = None,
        mode: str = WHOLE,
        per_file_input: str | None = None,
        env: dict[str, str] | None = None,
        secret_env: dict[str, str] | None = None,
        dataflow_params: dict[str, Any] | None = None,
        version: str = "",
        partition: str | None = None,
        batch_size: int | None = None,
        stage: str = "all",
        batch_index: int | None = None,
        plan_task_id: str | None = None,
        data_volume: k8s.V1Volume | dict[str, Any] | None = None,
        data_mount_path: str | None = None,
        s3_secret: str | None = None,
        helper_image: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_args(stage, mode)
        inputs_map = as_inputs(inputs)
        if stage in ("all", "commit"):
            kwargs.setdefault("outlets", [output])
        kwargs.setdefault("inlets", list(inputs_map.values()))
        kwargs.setdefault("get_logs", True)
        kwargs.setdefault("on_finish_action", "delete_pod")
        kwargs["do_xcom_push"] = stage == "plan"  # the batch list; pods never push XCom
        kwargs["base_container_name"] = STAGE_OUT
        kwargs.setdefault("init_container_logs", True)
        # The task runs in an init container, so the pod stays Pending while it works:
        # the "startup" timeout covers the whole command (a day by default) and the
        # start poll decides how soon its end is noticed.
        kwargs.setdefault("startup_timeout_seconds", TASK_TIMEOUT_S)
        kwargs.setdefault("startup_check_interval_seconds", 1)
        super().__init__(image=image, cmds=list(command), **kwargs)
        self.inputs = inputs_map
        set_dataflow_args(
            self,
            command=command,
            output=output,
            mode=mode,
            per_file_input=per_file_input,
            env=env,
            secret_env=secret_env,
            dataflow_params=dataflow_params,
            version=version,
            partition=partition,
            batch_size=batch_size,
            stage=stage,
            batch_index=batch_index,
            plan_task_id=plan_task_id,
        )
        self.data_volume = data_volume
        self.data_mount_path = data_mount_path
        self.s3_secret = s3_secret
        self.helper_image = helper_image
        self._job: PodJob | None = None
        self._identity: Any = None

    # -- collaborators ---------------------------------------------------------------------
    @cached_property
    def config(self) -> DataflowConfig:
        """The deployment's settings (read when the task runs)."""
        return DataflowConfig.load()

    @cached_property
    def dataflow_hook(self) -> DatasetManifestHook:
        """All storage I/O (``hook`` is the pod hook of the parent class)."""
        return DatasetManifestHook(aws_conn_id=self.output_dataset.aws_conn_id, progress=self.log.info)

    def identity(self) -> Any:
        """Return the task identity: ServiceAccount, namespace, uid/gid."""
        if self._identity is None:
            from airflow_dataflow.identity.config import task_identity

            self._identity = task_identity(self.config.owner, self.config.env, self.dag_id, self.task_id)
        return self._identity

    def _volume(self) -> k8s.V1Volume | None:
        vol = self.data_volume
        if vol is None:
            raw = setting("k8s_data_volume", "")
            vol = json.loads(raw) if raw else None
        if isinstance(vol, dict):
            from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator

            vol = PodGenerator.deserialize_model_dict({"spec": {"containers": [], "volumes": [vol]}}).spec.volumes[0]
        return vol

    def _mount_path(self) -> str:
        path = self.data_mount_path or setting("k8s_data_path", "")
        if not path:
            raise DataflowError(
                f"task {self.task_id!r}: datasets on a shared filesystem need the data volume's mount path "
                "(data_mount_path or [dataflow] k8s_data_path), the same on workers and pods"
            )
        return path.rstrip("/") or "/"

    # -- execution -------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        spec = build_spec(self, context, self.config, command=self.command, env=self.env, secret_env={})
        engine = Engine(spec, self.dataflow_hook, _PodRunner(), self.log.info, self.config.env)
        ident = self.identity()
        self.namespace = ident.namespace
        self.service_account_name = ident.service_account
        self.labels = {**(self.labels or {}), **ident.labels}

        def info() -> CommitInfo:
            return commit_info(self, context, engine.spec, self.config, runner="kubernetes", identity=ident.record())

        def run(plan: Plan, index: int) -> Manifest:
            return self._run_pod(context, engine, plan, index)

        return execute_stage(self, context, engine, info, run, single_run=True)

    def _run_pod(self, context: Context, engine: Engine, plan: Plan, index: int) -> Manifest:
        batch = engine.batch_rows(plan, index)
        loc = engine.out_loc
        job = self._prepare_s3(engine, plan, index, batch) if loc.scheme == "s3" else self._prepare_volume(engine, plan, batch)
        self._job = job
        self.pod_request_obj = None
        self.pod = None
        self.remote_pod = None
        try:
            super().execute(context)
            doc = self._read_result(engine, job)
            files = doc.get("files") or []
            produced = Manifest.from_rows(files, where="pod result") if files else Manifest.empty()
            if loc.scheme == "s3":
                return engine.accept_outputs(plan, index, batch, produced, staging=None, lineage=doc.get("lineage"))
            out_dir = os.path.join(job.staging, "out")  # type: ignore[arg-type]
            produced = produced.with_columns(location=pa.nulls(len(produced), pa.string()))
            return engine.accept_outputs(plan, index, batch, produced, staging=out_dir, lineage=doc.get("lineage"))
        finally:
            self._job = None
            if job.staging:
                shutil.rmtree(job.staging, ignore_errors=True)

    def _read_result(self, engine: Engine, job: PodJob) -> dict[str, Any]:
        if job.staging is not None:
            path = os.path.join(job.staging, "result.json")
            try:
                with open(path, encoding="utf-8") as fh:
                    return json.load(fh)
            except FileNotFoundError:
                raise DataflowError(f"the pod wrote no result document at {path}; see the stage-out log above") from None
        data = engine.out_storage.get_meta(engine.out_loc, job.result_rel)
        if data is None:
            raise DataflowError(f"the pod wrote no result document at {job.result_rel}; see the stage-out log above")
        return json.loads(data)

    # -- preparing the pod's data ------------------------------------------------------------
    def _contract(self, engine: Engine, inputs: dict[str, str], out_dir: str, files: str | None, lineage: str | None, n: int) -> dict[str, str]:
        spec = engine.spec
        request = RunRequest(
            command=list(spec.command),
            inputs=inputs,
            primary=spec.primary,
            output_dir=out_dir,
            mode=spec.mode,
            env_name=engine.env_name,
            files_list=files,
            file_count=n,
            lineage_file=lineage,
            partition=spec.partition,
            params=spec.params,
        )
        return {**spec.env, **request.contract_env()}

    def _prepare_volume(self, engine: Engine, plan: Plan, batch: pa.Table | None) -> PodJob:
        root = self._mount_path()
        volume = self._volume()
        if volume is None:
            raise DataflowError(
                f"task {self.task_id!r}: {engine.out_loc.uri} is on a shared filesystem; give the data volume "
                "(data_volume or [dataflow] k8s_data_volume) mounted at the same path on workers and pods"
            )
        staging = os.path.join(engine.out_loc.store_root, "staging", f"pod-{uuid.uuid4().hex[:12]}")
        for path in (staging, os.path.join(staging, "out")):
            os.makedirs(path)
            os.chmod(path, 0o777)  # written by the task's uid
        rel = os.path.relpath(staging, root)
        if rel.startswith(".."):
            raise DataflowError(f"staging folder {staging} is not under the data volume mount {root}")
        inputs = {}
        for name, manifest in plan.input_manifests.items():
            loc = engine.input_loc(name)
            if loc.scheme != "file":
                raise DataflowError(f"task {self.task_id!r}: input {name!r} is on S3 but the output is not; use one storage")
            storage = engine.hook.storage(loc)
            storage.check_unchanged(loc, batch if (batch is not None and name == engine.spec.primary) else manifest.table)
            inputs[name] = storage.snapshot_dir(loc, manifest.digest)
        files = None
        if batch is not None:
            with open(os.path.join(staging, "files.txt"), "w", encoding="utf-8") as fh:
                fh.writelines(p + "\n" for p in batch.column("path").to_pylist())
            files = f"{WORK}/files.txt"
        contract = self._contract(
            engine, inputs, f"{WORK}/out", files, f"{WORK}/lineage.tsv" if batch is not None else None,
            batch.num_rows if batch is not None else 0,
        )
        helper_spec = {
            "version": 1,
            "inputs": [],
            "files_list": None,
            "output": {"dir": f"{WORK}/out", "store_uri": None, "result_uri": None,
                       "result_path": f"{WORK}/result.json", "lineage_path": f"{WORK}/lineage.tsv"},
        }
        data_name = volume.name
        mounts = [
            k8s.V1VolumeMount(name=data_name, mount_path=root, read_only=True),
            k8s.V1VolumeMount(name=data_name, mount_path=WORK, sub_path=rel),
        ]
        return PodJob(spec=helper_spec, contract=contract, mounts=mounts, helper_mounts=mounts,
                      volumes=[volume], staging=staging)

    def _prepare_s3(self, engine: Engine, plan: Plan, index: int, batch: pa.Table | None) -> PodJob:
        storage = engine.out_storage
        loc = engine.out_loc
        job_id = f"{plan.plan_id}/pod-{index if index >= 0 else 'all'}-{uuid.uuid4().hex[:8]}"
        inputs_spec = []
        inputs = {}
        for name, manifest in plan.input_manifests.items():
            in_loc = engine.input_loc(name)
            if in_loc.scheme != "s3":
                raise DataflowError(f"task {self.task_id!r}: input {name!r} is local but the output is on S3; use one storage")
            rows = batch if (batch is not None and name == engine.spec.primary) else manifest.table
            lines = "".join(
                json.dumps({"path": p, "digest": d, "location": loc_}) + "\n"
                for p, d, loc_ in zip(
                    rows.column("path").to_pylist(), rows.column("digest").to_pylist(),
                    rows.column("location").to_pylist(), strict=True,
                )
            )
            rel = f"staging/{job_id}/in-{name}.jsonl"
            storage.put_meta(loc, rel, lines.encode())
            inputs_spec.append({
                "name": name, "dir": f"{WORK}/in/{name}", "primary": name == engine.spec.primary and batch is not None,
                "list_uri": f"s3://{loc.bucket}/{loc.store_root}/{rel}",
            })
            inputs[name] = f"{WORK}/in/{name}"
        result_rel = f"staging/{job_id}/result.json"
        client = storage.client
        helper_spec = {
            "version": 1,
            "s3": {"endpoint_url": client.meta.endpoint_url, "region": client.meta.region_name},
            "inputs": inputs_spec,
            "files_list": f"{WORK}/files.txt" if batch is not None else None,
            "output": {"dir": f"{WORK}/out", "store_uri": f"s3://{loc.bucket}/{loc.objects}",
                       "result_uri": f"s3://{loc.bucket}/{loc.store_root}/{result_rel}", "result_path": None,
                       "lineage_path": f"{WORK}/lineage.tsv"},
        }
        contract = self._contract(
            engine, inputs, f"{WORK}/out", f"{WORK}/files.txt" if batch is not None else None,
            f"{WORK}/lineage.tsv" if batch is not None else None, batch.num_rows if batch is not None else 0,
        )
        work = k8s.V1Volume(name="dataflow-work", empty_dir=k8s.V1EmptyDirVolumeSource())
        mount = k8s.V1VolumeMount(name="dataflow-work", mount_path=WORK)
        return PodJob(spec=helper_spec, contract=contract, mounts=[mount], helper_mounts=[mount],
                      volumes=[work], result_rel=result_rel, stage_in=True)

    # -- the pod -------------------------------------------------------------------------------
    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        pod = super().build_pod_request_obj(context, dry_run=dry_run)
        job = self._job
        if job is None:
            return pod  # dry run or rendering: the plain pod
        from airflow_dataflow.identity.security import container_security_context, pod_security_context

        ident = self.identity()
        spec = pod.spec
        task = next(c for c in spec.containers if c.name == STAGE_OUT)
        spec.containers = [c for c in spec.containers if c.name != STAGE_OUT]
        task.name = "task"
        task.env = [k8s.V1EnvVar(name=k, value=v) for k, v in sorted(job.contract.items())]
        for var, ref in sorted(self.secret_env.items()):
            secret, _, key = ref.partition(":")
            task.env.append(k8s.V1EnvVar(name=var, value_from=k8s.V1EnvVarSource(
                secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key or var))))
        task.volume_mounts = [*(task.volume_mounts or []), *job.mounts]
        task.security_context = container_security_context()
        helper_image = self.helper_image or setting("helper_image", DEFAULT_HELPER_IMAGE)
        pull = setting("helper_image_pull_policy", "IfNotPresent")
        env_from = None
        secret = self.s3_secret or setting("k8s_s3_secret", "")
        if secret and job.staging is None:  # S3: the helpers' own credentials
            env_from = [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret))]

        def helper(name: str, verb: str) -> k8s.V1Container:
            return k8s.V1Container(
                name=name,
                image=helper_image,
                image_pull_policy=pull,
                args=[verb],
                env=[k8s.V1EnvVar(name="DATAFLOW_POD_SPEC", value=json.dumps(job.spec, sort_keys=True))],
                env_from=env_from,
                volume_mounts=job.helper_mounts,
                security_context=container_security_context(),
            )

        init = list(spec.init_containers or [])
        if job.stage_in:
            init.append(helper("stage-in", "stage-in"))
        init.append(task)
        spec.init_containers = init
        spec.containers = [helper(STAGE_OUT, "stage-out"), *spec.containers]
        spec.volumes = [*(spec.volumes or []), *job.volumes]
        spec.service_account_name = ident.service_account
        spec.automount_service_account_token = False
        spec.security_context = pod_security_context(ident.pod)
        spec.restart_policy = "Never"
        pod.metadata.labels = {**(pod.metadata.labels or {}), **ident.labels}
        pod.metadata.annotations = {**(pod.metadata.annotations or {}), **ident.annotations}
        return pod
