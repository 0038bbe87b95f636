"""``airflow-dataflow explain DAG_ID TASK_ID``: why a task ran or was skipped.

The answer comes from the output dataset's commit log, which records each run's
cache key, its components and the pinned input snapshots; it needs the DAG file
only to find which dataset the task writes, and no metadata DB.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from typing import Any

from airflow_dataflow.core.cachekey import differing
from airflow_dataflow.core.commit import CommitRecord
from airflow_dataflow.exceptions import DataflowError


@dataclass
class Explanation:
    """Why one run of a task did what it did."""

    dag_id: str
    task_id: str
    run_id: str | None
    dataset: str
    decision: str
    cache: str
    key: str
    components: dict[str, Any]
    previous_key: str | None = None
    previous_run_id: str | None = None
    previous_task: str | None = None
    changed: list[str] = field(default_factory=list)
    changed_inputs: dict[str, dict[str, str | None]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return plain values for ``--json``."""
        return dict(self.__dict__)

    def text(self) -> str:
        """Return a human-readable explanation."""
        lines = [
            f"{self.dag_id}.{self.task_id} run={self.run_id or '-'} -> {self.dataset}",
            f"decision: {self.decision}",
            f"cache: {self.cache}  key={self.key}",
        ]
        if self.previous_key:
            lines.append(
                f"compared with: key={self.previous_key} (run {self.previous_run_id or '-'} of {self.previous_task})"
            )
        if self.changed:
            lines.append("components that differ: " + ", ".join(self.changed))
        for name, (change) in self.changed_inputs.items():
            lines.append(f"  input {name}: {str(change['before'])[:12]} -> {str(change['after'])[:12]}")
        if self.counts:
            lines.append("files: " + " ".join(f"{k}={v}" for k, v in self.counts.items()))
        lines.append("components:")
        for key, value in sorted(self.components.items()):
            lines.append(f"  {key}: {json.dumps(value, sort_keys=True)[:200]}")
        return "\n".join(lines)


def _task_of(record: CommitRecord) -> str | None:
    task = record.info.task_id
    return task[: -len(".commit")] if task and task.endswith(".commit") else task


def explain_records(
    records: list[CommitRecord], dag_id: str, task_id: str, run_id: str | None, dataset: str
) -> Explanation:
    """Explain the run ``run_id`` (default: the latest) of a task from its dataset's log.

    :param records: the output dataset's commit log, oldest first
    """
    mine = [r for r in records if r.info.dag_id == dag_id and _task_of(r) == task_id and "code_key" in r.info.stats]
    if run_id is not None:
        mine = [r for r in mine if r.info.run_id == run_id]
    if not mine:
        what = f"run {run_id!r} of " if run_id else ""
        raise DataflowError(
            f"no commit of {what}{dag_id}.{task_id} in the log of {dataset}; "
            "has the task run in this environment (see `airflow-dataflow log`)?"
        )
    target = mine[-1]
    earlier = [r for r in records if r.seq < target.seq and "code_key" in r.info.stats]
    same_task = [r for r in earlier if r.info.dag_id == dag_id and _task_of(r) == task_id]
    previous = (same_task or earlier or [None])[-1]
    stats = target.info.stats
    components = stats.get("components", {})
    exp = Explanation(
        dag_id=dag_id,
        task_id=task_id,
        run_id=target.info.run_id,
        dataset=dataset,
        decision="",
        cache=stats.get("cache", "?"),
        key=stats.get("cache_key", ""),
        components=components,
        counts={k: stats[k] for k in ("processed", "reused", "deleted", "files") if k in stats},
    )
    if previous is not None:
        pstats = previous.info.stats
        exp.previous_key = pstats.get("cache_key")
        exp.previous_run_id = previous.info.run_id
        exp.previous_task = f"{previous.info.dag_id}.{_task_of(previous)}"
        exp.changed = differing(pstats.get("components", {}), components)
        before, after = pstats.get("inputs", {}), stats.get("inputs", {})
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                exp.changed_inputs[name] = {"before": before.get(name), "after": after.get(name)}
    mode = stats.get("mode")
    if exp.cache == "hit":
        exp.decision = "skipped: its cache key was already known, the recorded output was reused and nothing ran"
    elif mode == "per_file":
        why = "the code or settings changed" if exp.changed else "input files were added or modified"
        exp.decision = (
            f"ran for {stats.get('processed', 0)} input file(s) whose per-file keys were new ({why}); "
            f"{stats.get('reused', 0)} reused"
        )
    elif previous is None:
        exp.decision = "ran: first run, no earlier key to reuse"
    else:
        parts = exp.changed or ([f"input {n}" for n in exp.changed_inputs] or ["a cache entry that was gone or damaged"])
        exp.decision = "ran: the key differs in " + ", ".join(parts)
    return exp


def output_of(dag_id: str, task_id: str, dags_folder: str | None) -> Any:
    """Return the output dataset of a dataflow task found in the DAG files."""
    from airflow_dataflow.identity.cli import load_dag

    dag = load_dag(dag_id, dags_folder)
    for task in dag.tasks:
        if task.task_id in (task_id, f"{task_id}.commit") and hasattr(task, "output_dataset"):
            return task.output_dataset
    raise DataflowError(f"{dag_id}.{task_id} is not a dataflow task (tasks: {sorted(dag.task_ids)})")


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain why a task ran or was skipped."""
    from airflow_dataflow.hooks.manifest import DatasetManifestHook

    dataset = output_of(args.dag_id, args.task_id, args.dags_folder)
    hook = DatasetManifestHook(aws_conn_id=dataset.aws_conn_id)
    records = hook.log_records(dataset, args.partition)
    exp = explain_records(records, args.dag_id, args.task_id, args.run, dataset.location(args.partition).uri)
    print(json.dumps(exp.to_dict(), sort_keys=True) if args.json else exp.text())
    return 0


def register_cli(sub: Any, add: Any) -> None:
    """Register ``explain`` with the CLI."""
    p = add("explain", cmd_explain, "explain why a task ran or was skipped (cache key components)")
    p.add_argument("dag_id", metavar="DAG_ID")
    p.add_argument("task_id", metavar="TASK_ID")
    p.add_argument("--run", default=None, metavar="RUN_ID", help="a DAG run id (default: the latest run)")
    p.add_argument("--partition", default=None, help="partition of the output dataset")
    p.add_argument("--dags-folder", default=None, help="default: Airflow's [core] dags_folder")
