"""``DataflowOperator``: run a container command from input datasets into an output dataset."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, TaskGroup

from airflow_dataflow.config import DataflowConfig
from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.engine import PER_FILE, WHOLE, Engine
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
from airflow_dataflow.runners.base import Runner

if TYPE_CHECKING:
    from airflow.sdk import Context


class DataflowOperator(BaseOperator):
    """Run a command against input datasets into an output dataset, skipping unchanged work.

    The command sees the task I/O contract (see :mod:`airflow_dataflow.runners.base`):
    read-only input directories, an empty output directory and, in per-file
    mode, the list of files to process. Its output is hashed and committed
    atomically as the new snapshot of ``output``; the asset event and the commit
    log record the counts ``processed``, ``reused`` and ``deleted``.

    :param command: argv of the command (templated)
    :param output: the dataset this task produces
    :param inputs: datasets read: a dataset, a list, or a mapping name -> dataset
    :param mode: ``per_file`` (only added and modified input files run; deleted
        ones drop their outputs) or ``whole`` (the output depends on the whole input)
    :param image: container image; part of the cache key even for the local runner
    :param per_file_input: per-file mode: the input iterated file by file
        (default: the first); the others are read whole
    :param env: non-secret environment variables for the command (templated;
        part of the cache key)
    :param secret_env: secret environment variables (not part of the cache key)
    :param dataflow_params: params given as ``$DATAFLOW_PARAMS`` (templated;
        part of the cache key)
    :param version: a string to bump when the code changed in a way the image
        and command do not show
    :param partition: partition key (templated); default: the DAG run's
        partition key
    :param runner: ``local`` or ``kubernetes``; default: ``[dataflow] runner``
    :param batch_size: files per batch in per-file mode; default ``[dataflow] batch_size``
    :param stage: ``all`` (plan, run and commit here), or one step of a fan-out
        built by :func:`dataflow_task`: ``plan``, ``batch`` or ``commit``
    :param batch_index: the batch a ``batch`` stage runs (mapped)
    :param plan_task_id: the ``plan`` stage a ``batch`` or ``commit`` stage follows
    """

    template_fields: Sequence[str] = ("command", "env", "dataflow_params", "partition", "version")
    template_fields_renderers = {"env": "json", "dataflow_params": "json"}
    ui_color = "#d9ecff"

    def __init__(
        self,
        *,
        command: Sequence[str],
        output: DirectoryDataset,
        inputs: Any = None,
        mode: str = WHOLE,
        image: str = "local",
        per_file_input: str | None = None,
        env: dict[str, str] | None = None,
        secret_env: dict[str, str] | None = None,
        dataflow_params: dict[str, Any] | None = None,
        version: str = "",
        partition: str | None = None,
        runner: str | None = None,
        batch_size: int | None = None,
        stage: str = "all",
        batch_index: int | None = None,
        plan_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_args(stage, mode)
        self.inputs = as_inputs(inputs)
        if stage in ("all", "commit"):
            kwargs.setdefault("outlets", [output])
        kwargs.setdefault("inlets", list(self.inputs.values()))
        # the facts go to the asset event and the commit log; only the plan's batch list is an XCom
        kwargs.setdefault("do_xcom_push", stage == "plan")
        super().__init__(**kwargs)
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
        self.image = image
        self.runner = runner

    # -- collaborators -------------------------------------------------------------------
    @cached_property
    def config(self) -> DataflowConfig:
        """The deployment's settings (read when the task runs)."""
        return DataflowConfig.load()

    @cached_property
    def hook(self) -> DatasetManifestHook:
        """All storage I/O."""
        return DatasetManifestHook(aws_conn_id=self.output_dataset.aws_conn_id, progress=self.log.info)

    def make_runner(self) -> Runner:
        """Return the runner that executes the command."""
        name = self.runner or self.config.runner
        if name == "local":
            from airflow_dataflow.runners.local import LocalRunner

            return LocalRunner()
        raise DataflowError(
            f"task {self.task_id!r}: runner {name!r} cannot run inside DataflowOperator; "
            "use KubernetesDataflowOperator for the kubernetes runner"
        )

    def engine(self, context: Context) -> Engine:
        """Return the engine of this task."""
        spec = build_spec(self, context, self.config, command=self.command, env=self.env, secret_env=self.secret_env)
        return Engine(spec, self.hook, self.make_runner(), self.log.info, self.config.env)

    def execute(self, context: Context) -> Any:
        engine = self.engine(context)

        def info() -> CommitInfo:
            return commit_info(self, context, engine.spec, self.config, runner=self.runner or self.config.runner)

        return execute_stage(self, context, engine, info, engine.run_batch, single_run=False)


def dataflow_task(task_id: str, *, fan_out: bool = False, operator_class: type | None = None, **kwargs: Any) -> Any:
    """Return a dataflow task: one operator, or a plan -> mapped batches -> commit group.

    With ``fan_out=True`` (per-file mode), a large change set is split into
    batches that run as mapped tasks (``max_map_length`` respected through
    ``[dataflow] max_batches``); each mapped batch re-derives its files from the
    pinned manifests, and only the commit step emits the asset event. The plan
    and commit steps run no command (and launch no pod).

    :param task_id: the operator's task id, or the group's id with ``fan_out``
    :param operator_class: ``DataflowOperator`` or ``KubernetesDataflowOperator``;
        default: the one of the configured runner (``[dataflow] runner``, read
        when the DAG file is parsed)
    :param kwargs: the operator's arguments
    """
    cls = operator_class
    if cls is None:
        if DataflowConfig.load().runner == "kubernetes":
            from airflow_dataflow.operators.kubernetes import KubernetesDataflowOperator

            cls = KubernetesDataflowOperator
        else:
            cls = DataflowOperator
    if not fan_out:
        return cls(task_id=task_id, **kwargs)
    if kwargs.get("mode") != PER_FILE:
        raise DataflowError(f"{task_id}: fan_out needs mode='per_file'")
    with TaskGroup(group_id=task_id) as group:
        plan = cls(task_id="plan", stage="plan", **kwargs)
        batches = cls.partial(task_id="batch", stage="batch", plan_task_id=plan.task_id, **kwargs).expand(
            batch_index=plan.output
        )
        commit = cls(task_id="commit", stage="commit", plan_task_id=plan.task_id, trigger_rule="none_failed", **kwargs)
        plan >> batches >> commit
    return group
