"""What every dataflow operator does the same way, whatever runs its command.

``DataflowOperator`` (local runner) and ``KubernetesDataflowOperator`` (pods)
share these functions instead of a base class, so the Kubernetes one can extend
``KubernetesPodOperator`` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from airflow_dataflow.config import DataflowConfig
from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.engine import PER_FILE, WHOLE, Engine, Plan, TaskSpec, summary_line
from airflow_dataflow.exceptions import DataflowError

if TYPE_CHECKING:
    from airflow.sdk import Context

STAGES = ("all", "plan", "batch", "commit")


def as_inputs(inputs: Any) -> dict[str, DirectoryDataset]:
    """Normalise ``inputs`` (a dataset, a list, or a mapping name -> dataset) to a mapping."""
    if inputs is None:
        return {}
    if isinstance(inputs, DirectoryDataset):
        inputs = [inputs]
    if isinstance(inputs, Mapping):
        return {str(k): v for k, v in inputs.items()}
    return {ds.dataset_name: ds for ds in inputs}


def check_args(stage: str, mode: str) -> None:
    """Raise on an unknown stage or mode."""
    if stage not in STAGES:
        raise DataflowError(f"stage must be one of {STAGES}, not {stage!r}")
    if mode not in (PER_FILE, WHOLE):
        raise DataflowError(f"mode must be 'per_file' or 'whole', not {mode!r}")


def set_dataflow_args(
    task: Any,
    *,
    command: Any,
    output: DirectoryDataset,
    mode: str,
    per_file_input: str | None,
    env: Mapping[str, str] | None,
    secret_env: Mapping[str, str] | None,
    dataflow_params: Mapping[str, Any] | None,
    version: str,
    partition: str | None,
    batch_size: int | None,
    stage: str,
    batch_index: int | None,
    plan_task_id: str | None,
) -> None:
    """Store the dataflow arguments on an operator: the attributes that
    :func:`build_spec` and :func:`execute_stage` read."""
    task.command = list(command)
    task.output_dataset = output
    task.mode = mode
    task.per_file_input = per_file_input
    task.env = dict(env or {})
    task.secret_env = dict(secret_env or {})
    task.dataflow_params = dict(dataflow_params or {})
    task.version = version
    task.partition = partition
    task.batch_size = batch_size
    task.stage = stage
    task.batch_index = batch_index
    task.plan_task_id = plan_task_id


def build_spec(
    task: Any,
    context: Context,
    config: DataflowConfig,
    *,
    command: list[str],
    env: Mapping[str, str],
    secret_env: Mapping[str, str],
) -> TaskSpec:
    """Return the spec of ``task`` (a dataflow operator) with its templates rendered."""
    partitioned = task.output_dataset.partitioned or any(d.partitioned for d in task.inputs.values())
    partition = (task.partition or context.get("partition_key") or None) if partitioned else None
    return TaskSpec(
        task_id=task.task_id,
        dag_id=task.dag_id,
        command=tuple(command),
        image=task.image,
        inputs=task.inputs,
        output=task.output_dataset,
        mode=task.mode,
        per_file_input=task.per_file_input,
        env=dict(env),
        secret_env=dict(secret_env),
        params=dict(task.dataflow_params),
        version=task.version,
        partition=partition,
        batch_size=task.batch_size or config.batch_size,
        max_batches=min(config.max_batches, _max_map_length()),
    )


def _max_map_length() -> int:
    """Airflow's ``[core] max_map_length``: mapped batches never exceed it."""
    try:
        from airflow.configuration import conf

        return conf.getint("core", "max_map_length", fallback=1024)
    except Exception:  # noqa: BLE001 - no Airflow configuration: Airflow's default
        return 1024


def commit_info(task: Any, context: Context, spec: TaskSpec, config: DataflowConfig, **stats: Any) -> CommitInfo:
    """Return who and what commits, from the task context."""
    ti = context.get("ti")
    return CommitInfo(
        author=config.owner,
        env=config.env,
        dag_id=task.dag_id,
        task_id=task.task_id,
        run_id=context.get("run_id"),
        map_index=getattr(ti, "map_index", -1) if ti is not None else -1,
        try_number=getattr(ti, "try_number", None) if ti is not None else None,
        partition=spec.partition,
        stats=stats,
    )


def report(task: Any, context: Context, engine: Engine, stats: dict[str, Any]) -> dict[str, Any]:
    """Put the facts on the asset event, log the summary line, return the XCom value."""
    extra = {k: v for k, v in stats.items() if k != "components"}
    extra["dataset"] = task.output_dataset.dataset_name
    extra["env"] = task.output_dataset.env
    events = context.get("outlet_events")
    if events is not None:
        event = events[task.output_dataset]
        event.extra = extra
        if engine.spec.partition:
            event.add_partitions(engine.spec.partition)
    task.log.info(summary_line(task.task_id, stats))
    return extra


def execute_stage(
    task: Any,
    context: Context,
    engine: Engine,
    info: Callable[[], CommitInfo],
    run: Callable[[Plan, int], Manifest],
    single_run: bool,
) -> Any:
    """Do the task's stage: everything (``all``), or one step of a fan-out.

    :param info: builds the commit info
    :param run: runs one batch (or, with index -1, every file)
    :param single_run: in stage ``all``, run every file in one call
    """
    if task.stage == "all":
        result = engine.execute(info(), run=run, single_run=single_run)
        return report(task, context, engine, result.stats)
    if task.stage == "plan":
        plan = engine.plan()
        task.log.info(
            "plan %s: %d file(s) to process in %d batch(es), %d reused, %d deleted input(s)",
            plan.plan_id,
            plan.todo.num_rows if plan.todo is not None else 0,
            plan.n_batches,
            plan.reused_inputs,
            plan.deleted_inputs,
        )
        engine.save_plan(plan)
        context["ti"].xcom_push(key="pins", value=plan.pins)
        return list(range(plan.n_batches))
    pins = context["ti"].xcom_pull(task_ids=task.plan_task_id, key="pins")
    if not pins:
        raise DataflowError(f"task {task.task_id!r}: no plan pins from {task.plan_task_id!r}; run the plan task first")
    plan = engine.plan(pins)
    if task.stage == "batch":
        if task.batch_index is None:
            raise DataflowError(f"task {task.task_id!r}: a batch stage needs batch_index (map it over the plan)")
        stored = run(plan, int(task.batch_index))
        return {"batch": task.batch_index, "outputs": len(stored), "bytes": stored.total_bytes}
    result = engine.finish(plan, info(), engine.load_batches(plan))
    return report(task, context, engine, result.stats)
