"""Plan, run and commit one dataflow task: the orchestration behind the operators.

No Airflow here: the operators give a :class:`TaskSpec`, a hook for I/O, a runner
and a log function. The steps are separate so that per-file work can fan out over
mapped Airflow tasks: :meth:`Engine.plan` pins the input snapshots and the
output's parent, :meth:`Engine.run_batch` re-derives its batch from those pins
(never from a file list shipped through XCom), and :meth:`Engine.finish` commits.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_dataflow.cache import SEGMENT_SCHEMA, CacheIndex
from airflow_dataflow.core.cachekey import CodeVersion, file_keys
from airflow_dataflow.core.commit import CommitInfo, CommitRecord
from airflow_dataflow.core.hashing import hash_struct
from airflow_dataflow.core.lineage import attribute, parse_lineage_file
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.core.manifest import Manifest
from airflow_dataflow.dataset import DirectoryDataset
from airflow_dataflow.exceptions import DataflowError, EnvironmentViolationError
from airflow_dataflow.runners.base import LogFn, Runner, RunRequest
from airflow_dataflow.storage.local import scan_directory

PER_FILE = "per_file"
WHOLE = "whole"


@dataclass(frozen=True)
class TaskSpec:
    """Everything that defines one dataflow task.

    :param task_id: Airflow task id (not part of any cache key)
    :param dag_id: Airflow DAG id (not part of any cache key)
    :param command: argv run by the runner
    :param image: container image (part of the cache key)
    :param inputs: input name -> dataset
    :param output: the dataset the task produces
    :param mode: ``per_file`` or ``whole``
    :param per_file_input: per-file mode: the input iterated file by file
        (default: the first); the other inputs are read whole
    :param env: non-secret environment variables (part of the key)
    :param secret_env: secret environment variables (never part of the key)
    :param params: task params (part of the key)
    :param version: user version string (part of the key)
    :param partition: partition key or None
    :param batch_size: files per batch in per-file mode
    :param max_batches: most batches (the batch size grows to stay under it)
    """

    task_id: str
    dag_id: str | None
    command: tuple[str, ...]
    image: str
    inputs: dict[str, DirectoryDataset]
    output: DirectoryDataset
    mode: str = WHOLE
    per_file_input: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    secret_env: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    partition: str | None = None
    batch_size: int = 500
    max_batches: int = 256

    def __post_init__(self) -> None:
        if self.mode not in (PER_FILE, WHOLE):
            raise DataflowError(f"task {self.task_id!r}: mode must be 'per_file' or 'whole', not {self.mode!r}")
        if not self.command:
            raise DataflowError(f"task {self.task_id!r}: command is empty")
        if self.mode == PER_FILE:
            if not self.inputs:
                raise DataflowError(f"task {self.task_id!r}: per-file mode needs an input")
            if self.per_file_input is not None and self.per_file_input not in self.inputs:
                raise DataflowError(
                    f"task {self.task_id!r}: per_file_input {self.per_file_input!r} is not one of "
                    f"the inputs {sorted(self.inputs)}"
                )

    @property
    def primary(self) -> str | None:
        """The per-file input (per-file mode) or the first input."""
        if self.per_file_input:
            return self.per_file_input
        return next(iter(self.inputs), None)


@dataclass
class Plan:
    """What a run will do, pinned to input snapshots and the output's parent.

    :param pins: small JSON-able values that re-derive the plan (for XCom)
    """

    pins: dict[str, Any]
    code: CodeVersion
    input_manifests: dict[str, Manifest]
    parent: str | None
    plan_id: str
    # per-file
    todo: pa.Table | None = None  # input rows to process, with a "cache_key" column
    reused: pa.Table | None = None  # segment rows of input files served from the cache
    reused_inputs: int = 0
    deleted_inputs: int = 0
    batch_size: int = 0
    # whole
    hit: Manifest | None = None

    @property
    def n_batches(self) -> int:
        """Number of batches to run (0 when everything is cached)."""
        if self.todo is None:
            return 0 if self.hit is not None else 1
        return math.ceil(self.todo.num_rows / self.batch_size) if self.todo.num_rows else 0


@dataclass
class Result:
    """The outcome of a task: the commit and the facts recorded with it."""

    record: CommitRecord
    stats: dict[str, Any]


class Engine:
    """Plan, run and commit one task.

    :param spec: the task
    :param hook: a ``DatasetManifestHook`` (all storage I/O goes through it)
    :param runner: where commands run
    :param log: receives progress and summary lines
    :param env_name: the current environment; the output must belong to it
    """

    def __init__(self, spec: TaskSpec, hook: Any, runner: Runner, log: LogFn, env_name: str) -> None:
        self.spec = spec
        self.hook = hook
        self.runner = runner
        self.log = log
        self.env_name = env_name
        if spec.output.env != env_name:
            raise EnvironmentViolationError(
                f"task {spec.task_id!r} would write {spec.output.name!r} of environment {spec.output.env!r} "
                f"from environment {env_name!r}: environments never cross; deploy the DAG in {spec.output.env!r} "
                "or build the dataset for the current environment"
            )
        self.out_loc = spec.output.location(spec.partition)
        self.out_storage = hook.storage(self.out_loc)
        self.cache = CacheIndex(self.out_storage, self.out_loc)
        self.damaged = False  # set when damaged objects were moved aside in this run

    # -- planning ---------------------------------------------------------------------
    def input_loc(self, name: str) -> DatasetLocation:
        """Return the location of input ``name`` (for the run's partition if it is partitioned)."""
        ds = self.spec.inputs[name]
        return ds.location(self.spec.partition if ds.partitioned else None)

    def plan(self, pins: dict[str, Any] | None = None) -> Plan:
        """Pin the inputs and the output's parent, and decide what must run.

        :param pins: the pins of an earlier :meth:`plan` (mapped batches pass them
            to re-derive exactly the same plan)
        """
        spec = self.spec
        manifests: dict[str, Manifest] = {}
        for name in spec.inputs:
            loc = self.input_loc(name)
            digest = pins["inputs"][name] if pins else None
            try:
                manifests[name] = self.hook.snapshot(loc, digest)
            except DataflowError as err:
                raise DataflowError(
                    f"task {spec.task_id!r}: input {name!r} ({loc.uri}) has no usable snapshot: {err}"
                ) from err
        parent = pins["parent"] if pins else self.out_storage.read_head(self.out_loc)
        side = {n: m.digest for n, m in manifests.items() if spec.mode == WHOLE or n != spec.primary}
        code = CodeVersion(
            image=self.runner.resolve_image(spec.image),
            command=tuple(spec.command),
            env=dict(spec.env),
            version=spec.version,
            params=dict(spec.params),
            partition=spec.partition,
            mode=spec.mode,
            side_inputs=side,
        )
        new_pins = {"inputs": {n: m.digest for n, m in manifests.items()}, "parent": parent}
        plan_id = hash_struct("dataflow-plan-v1", {"code": code.key, "pins": new_pins})[:24]
        plan = Plan(pins=new_pins, code=code, input_manifests=manifests, parent=parent, plan_id=plan_id)
        if spec.mode == WHOLE:
            self._plan_whole(plan)
        elif not (pins and self._load_saved(plan)):
            self._plan_per_file(plan)
        return plan

    # A fan-out's plan step saves what it decided, so that its mapped batches and its
    # commit step do not repeat the cache lookup and the checks of every cached file.
    def _plan_rel(self, plan: Plan, name: str) -> str:
        return f"staging/{plan.plan_id}/plan-{name}"

    def save_plan(self, plan: Plan) -> None:
        """Store a per-file plan's decisions beside its batch results (see :meth:`plan`)."""
        if self.spec.mode != PER_FILE:
            return
        assert plan.todo is not None and plan.reused is not None
        for name, table in (("todo.parquet", plan.todo), ("reused.parquet", plan.reused)):
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            self.out_storage.put_meta(self.out_loc, self._plan_rel(plan, name), sink.getvalue().to_pybytes())
        facts = {k: getattr(plan, k) for k in ("reused_inputs", "deleted_inputs", "batch_size")}
        facts["damaged"] = self.damaged
        self.out_storage.put_meta(self.out_loc, self._plan_rel(plan, "facts.json"), json.dumps(facts).encode())

    def _load_saved(self, plan: Plan) -> bool:
        facts = self.out_storage.get_meta(self.out_loc, self._plan_rel(plan, "facts.json"))
        todo = self.out_storage.get_meta(self.out_loc, self._plan_rel(plan, "todo.parquet"))
        reused = self.out_storage.get_meta(self.out_loc, self._plan_rel(plan, "reused.parquet"))
        if facts is None or todo is None or reused is None:
            return False
        doc = json.loads(facts)
        plan.todo = pq.read_table(pa.BufferReader(todo))
        plan.reused = pq.read_table(pa.BufferReader(reused))
        plan.reused_inputs, plan.deleted_inputs, plan.batch_size = (
            doc["reused_inputs"], doc["deleted_inputs"], doc["batch_size"]
        )
        self.damaged = self.damaged or doc["damaged"]
        return True

    def _plan_whole(self, plan: Plan) -> None:
        entry = self.cache.get_whole(plan.code.key)
        if entry is None:
            return
        manifest = self.cache.whole_manifest(entry)
        if manifest is None:
            self.log(f"cache: entry {plan.code.key[:12]} names a snapshot that is gone; running")
            return
        bad = self._unverified(manifest.table)
        if bad:
            self.log(f"cache: {bad} file(s) of cached snapshot {entry.digest[:12]} are missing or changed; running")
            return
        plan.hit = manifest

    def _plan_per_file(self, plan: Plan) -> None:
        spec = self.spec
        primary = plan.input_manifests[spec.primary]  # type: ignore[index]
        table = primary.table
        keys = file_keys(plan.code.key, table.column("path"), table.column("digest"))
        table = table.set_column(table.schema.get_field_index("cache_key"), "cache_key", keys)
        cached = self.cache.lookup_files(plan.code.key, keys)
        # a key is a hit only if every output file it names is still intact
        if cached.num_rows:
            outputs = cached.filter(pc.is_valid(cached.column("path")))
            bad_rows = self.out_storage.damaged(self.out_loc, outputs)
            if bad_rows.num_rows:
                self._quarantine(bad_rows)
                bad_keys = pc.unique(bad_rows.column("cache_key"))
                self.log(f"cache: {len(bad_keys)} cached file(s) are missing or changed; they run again")
                cached = cached.filter(pc.invert(pc.is_in(cached.column("cache_key"), value_set=bad_keys)))
        hit_keys = pc.unique(cached.column("cache_key"))
        is_hit = pc.is_in(keys, value_set=hit_keys)
        plan.todo = table.filter(pc.invert(is_hit))
        plan.reused = cached
        plan.reused_inputs = int(pc.sum(is_hit).as_py() or 0)
        previous = self.out_storage.read_manifest(self.out_loc, plan.parent) if plan.parent else None
        if previous is not None and previous.table.num_rows:
            sources = pc.unique(previous.table.column("source_path").drop_null())
            gone = pc.invert(pc.is_in(sources, value_set=table.column("path")))
            plan.deleted_inputs = int(pc.sum(gone).as_py() or 0)
        n = plan.todo.num_rows
        plan.batch_size = max(spec.batch_size, math.ceil(n / spec.max_batches)) if n else spec.batch_size

    def _unverified(self, table: pa.Table) -> int:
        bad = self.out_storage.damaged(self.out_loc, table)
        self._quarantine(bad)
        return bad.num_rows

    def _quarantine(self, bad: pa.Table) -> None:
        """Move damaged content-store objects aside, so a rerun stores fresh bytes (nothing is deleted)."""
        for location in bad.column("location").to_pylist():
            moved = self.out_storage.quarantine(self.out_loc, location) if location else None
            if moved:
                self.damaged = True
                self.log(f"cache: moved damaged object {location} aside to {moved}")

    # -- running ----------------------------------------------------------------------
    def _input_dir(self, name: str, manifest: Manifest, rows: pa.Table | None, scratch: str) -> str:
        """Return a local directory holding input ``name`` (only ``rows`` if given)."""
        loc = self.input_loc(name)
        storage = self.hook.storage(loc)
        if loc.scheme == "file":
            storage.check_unchanged(loc, manifest.table if rows is None else rows)
            return storage.snapshot_dir(loc, manifest.digest)
        dest = os.path.join(scratch, "in", name)
        wanted = manifest.table if rows is None else rows
        storage.download_rows(wanted, dest, progress=self.log)
        return dest

    def _scratch(self) -> str:
        if self.out_loc.scheme == "file":
            base = os.path.join(self.out_loc.store_root, "staging")
            os.makedirs(base, exist_ok=True)
            return tempfile.mkdtemp(prefix=f"{self.spec.task_id}-", dir=base)
        return tempfile.mkdtemp(prefix=f"dataflow-{self.spec.task_id}-")

    def batch_rows(self, plan: Plan, index: int) -> pa.Table | None:
        """Return the input rows of batch ``index`` (per-file mode), re-derived from the plan."""
        if self.spec.mode != PER_FILE:
            return None
        assert plan.todo is not None
        if index < 0:  # every file at once
            return plan.todo
        return plan.todo.slice(index * plan.batch_size, plan.batch_size)

    def run_batch(self, plan: Plan, index: int) -> Manifest:
        """Run batch ``index`` of a per-file plan (or the single run of a whole plan) here.

        :returns: the output rows of the batch, stored and with lineage; per-file
            batch results are also saved in the store so a separate commit step
            (another Airflow task) can collect them
        """
        spec = self.spec
        scratch = self._scratch()
        try:
            out_dir = os.path.join(scratch, "out")
            os.makedirs(out_dir)
            request = RunRequest(
                command=list(spec.command),
                inputs={},
                primary=spec.primary,
                output_dir=out_dir,
                mode=spec.mode,
                env_name=self.env_name,
                partition=spec.partition,
                params=spec.params,
                env={**spec.env, **spec.secret_env},
            )
            batch = self.batch_rows(plan, index)
            if batch is not None:
                files_list = os.path.join(scratch, "files.txt")
                with open(files_list, "w", encoding="utf-8") as fh:
                    for p in batch.column("path").to_pylist():
                        fh.write(p + "\n")
                request.files_list = files_list
                request.file_count = batch.num_rows
                request.lineage_file = os.path.join(scratch, "lineage.tsv")
            for name, manifest in plan.input_manifests.items():
                rows = batch if (batch is not None and name == spec.primary) else None
                request.inputs[name] = self._input_dir(name, manifest, rows, scratch)
            started = time.monotonic()
            self.runner.run(request, self.log)
            took = time.monotonic() - started
            produced, _ = scan_directory(out_dir)
            lineage = None
            if request.lineage_file and os.path.exists(request.lineage_file):
                with open(request.lineage_file, encoding="utf-8") as fh:
                    lineage = fh.read()
            stored = self.accept_outputs(plan, index, batch, produced, staging=out_dir, lineage=lineage)
            self.log(
                f"batch {index + 1}/{max(plan.n_batches, 1)}: {request.file_count or 'whole'} input file(s) -> "
                f"{len(stored)} output file(s), {stored.total_bytes} bytes in {took:.1f}s"
            )
            return stored
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def accept_outputs(
        self,
        plan: Plan,
        index: int,
        batch: pa.Table | None,
        produced: Manifest,
        *,
        staging: str | None,
        lineage: str | None,
    ) -> Manifest:
        """Attribute lineage, store the bytes and (per-file) save the batch result.

        :param produced: the outputs, hashed (by the scan here, or by the pod helper)
        :param staging: local directory holding the outputs to store, or None when
            their bytes are already in the content store (``location`` filled)
        :param lineage: the text the command wrote to ``$DATAFLOW_LINEAGE``, if any
        """
        if batch is not None:
            produced = self._with_lineage(produced, batch, lineage)
        stored = self.hook.ingest(self.out_loc, staging, produced) if staging is not None else produced
        if batch is not None and index >= 0:
            self._save_batch(plan, index, batch, stored)
        return stored

    def _with_lineage(self, produced: Manifest, batch: pa.Table, lineage: str | None) -> Manifest:
        declared = parse_lineage_file(lineage, "$DATAFLOW_LINEAGE") if lineage else None
        mapping = attribute(produced.paths(), batch.column("path").to_pylist(), declared)
        in_digest = dict(zip(batch.column("path").to_pylist(), batch.column("digest").to_pylist(), strict=True))
        in_key = dict(zip(batch.column("path").to_pylist(), batch.column("cache_key").to_pylist(), strict=True))
        sources = [mapping[p] for p in produced.paths()]
        return produced.with_columns(
            source_path=pa.array(sources, pa.string()),
            source_digest=pa.array([in_digest[s] for s in sources], pa.string()),
            cache_key=pa.array([in_key[s] for s in sources], pa.string()),
        )

    def _batch_rel(self, plan: Plan, index: int) -> str:
        return f"staging/{plan.plan_id}/batch-{index:05d}.parquet"

    def _save_batch(self, plan: Plan, index: int, batch: pa.Table, stored: Manifest) -> None:
        rows = segment_rows(batch, stored)
        sink = pa.BufferOutputStream()
        pq.write_table(rows, sink)
        self.out_storage.put_meta(self.out_loc, self._batch_rel(plan, index), sink.getvalue().to_pybytes())

    def load_batches(self, plan: Plan) -> pa.Table:
        """Collect the saved results of every batch of a per-file plan."""
        tables = []
        for i in range(plan.n_batches):
            data = self.out_storage.get_meta(self.out_loc, self._batch_rel(plan, i))
            if data is None:
                raise DataflowError(
                    f"task {self.spec.task_id!r}: batch {i} of plan {plan.plan_id} has no result in "
                    f"{self.out_loc.store_root}/staging; it did not run or failed: clear that batch to rerun it"
                )
            tables.append(pq.read_table(pa.BufferReader(data)).cast(SEGMENT_SCHEMA))
        return pa.concat_tables(tables) if tables else SEGMENT_SCHEMA.empty_table()

    # -- committing -------------------------------------------------------------------
    def finish(self, plan: Plan, info: CommitInfo, produced: pa.Table | Manifest | None) -> Result:
        """Commit the output of ``plan`` and record it in the cache index.

        :param produced: per-file: the segment rows of all batches; whole: the
            stored output manifest (None on a cache hit)
        """
        spec = self.spec
        stats: dict[str, Any] = {"mode": spec.mode, "code_key": plan.code.key, "inputs": plan.pins["inputs"]}
        if spec.mode == WHOLE:
            manifest = plan.hit if plan.hit is not None else produced
            assert isinstance(manifest, Manifest)
            hit = plan.hit is not None
            n_in = sum(len(m) for m in plan.input_manifests.values())
            stats.update(
                cache="hit" if hit else "miss",
                cache_key=plan.code.key,
                processed=0 if hit else n_in,
                reused=n_in if hit else 0,
                deleted=0,
                bytes_written=0 if hit else manifest.total_bytes,
                components=plan.code.components(),
            )
        else:
            assert isinstance(produced, pa.Table) and plan.reused is not None and plan.todo is not None
            rows = pa.concat_tables([plan.reused.cast(SEGMENT_SCHEMA), produced.cast(SEGMENT_SCHEMA)])
            files = rows.filter(pc.is_valid(rows.column("path")))
            manifest = Manifest.from_table(files.select(["path", "size", "mtime_ns", "digest", "location", "source_path", "source_digest", "cache_key"]))
            processed = plan.todo.num_rows
            stats.update(
                cache="hit" if processed == 0 else ("miss" if plan.reused_inputs == 0 else "partial"),
                cache_key=plan.code.key,
                processed=processed,
                reused=plan.reused_inputs,
                deleted=plan.deleted_inputs,
                bytes_written=int(pc.sum(produced.column("size")).as_py() or 0) if produced.num_rows else 0,
                components=plan.code.components(),
            )
        stats["files"] = len(manifest)
        stats["bytes"] = manifest.total_bytes
        info = CommitInfo(**{**info.__dict__, "stats": {**info.stats, **stats}})
        if self.damaged:  # existing trees of this content still link the damaged bytes
            self.out_storage.rebuild_tree(self.out_loc, manifest)
        record = self.hook.commit(self.out_loc, manifest, info, parent=plan.parent)
        if spec.mode == WHOLE and plan.hit is None:
            self.cache.put_whole(plan.code.key, manifest.digest, plan.code.components())
        elif spec.mode == PER_FILE and produced is not None and produced.num_rows:
            self.cache.put_files(plan.code.key, produced)  # type: ignore[arg-type]
        self.out_storage.drop_meta(self.out_loc, f"staging/{plan.plan_id}")
        stats["digest"] = record.digest
        stats["parent"] = record.parent
        return Result(record=record, stats=stats)

    def execute(
        self,
        info: CommitInfo,
        run: Callable[[Plan, int], Manifest] | None = None,
        single_run: bool = False,
    ) -> Result:
        """Plan, run what must run, and commit.

        :param run: runs one batch (default :meth:`run_batch`, in this process)
        :param single_run: per-file mode: run every file in one call (batch index
            -1), as a pod does, instead of batch by batch
        """
        run = run or self.run_batch
        plan = self.plan()
        if self.spec.mode == WHOLE:
            if plan.hit is not None:
                self.log(f"cache: hit {plan.code.key[:16]}: reusing snapshot {plan.hit.digest[:12]}, nothing runs")
                return self.finish(plan, info, None)
            self.log(f"cache: miss {plan.code.key[:16]}: running")
            return self.finish(plan, info, run(plan, 0))
        assert plan.todo is not None
        self.log(
            f"plan: {plan.todo.num_rows} file(s) to process in {plan.n_batches} batch(es), "
            f"{plan.reused_inputs} reused from the cache, {plan.deleted_inputs} deleted input(s)"
        )
        if single_run and plan.todo.num_rows:
            stored = run(plan, -1)
            return self.finish(plan, info, segment_rows(plan.todo, stored))
        for i in range(plan.n_batches):
            run(plan, i)
        return self.finish(plan, info, self.load_batches(plan))


def segment_rows(batch: pa.Table, stored: Manifest) -> pa.Table:
    """Return cache segment rows: the outputs of a batch, plus a null row per input with none."""
    out = stored.table
    with_output = pc.unique(out.column("source_path")) if out.num_rows else pa.array([], pa.string())
    silent = batch.filter(pc.invert(pc.is_in(batch.column("path"), value_set=with_output)))
    rows = pa.table(
        {
            "cache_key": out.column("cache_key"),
            "source_path": out.column("source_path"),
            "source_digest": out.column("source_digest"),
            "path": out.column("path"),
            "size": out.column("size"),
            "mtime_ns": out.column("mtime_ns"),
            "digest": out.column("digest"),
            "location": out.column("location"),
        },
        schema=SEGMENT_SCHEMA,
    )
    empty = pa.table(
        {
            "cache_key": silent.column("cache_key"),
            "source_path": silent.column("path"),
            "source_digest": silent.column("digest"),
            "path": pa.nulls(silent.num_rows, pa.string()),
            "size": pa.nulls(silent.num_rows, pa.int64()),
            "mtime_ns": pa.nulls(silent.num_rows, pa.int64()),
            "digest": pa.nulls(silent.num_rows, pa.string()),
            "location": pa.nulls(silent.num_rows, pa.string()),
        },
        schema=SEGMENT_SCHEMA,
    )
    return pa.concat_tables([rows, empty])


def summary_line(task_id: str, stats: dict[str, Any]) -> str:
    """Return the one-line summary of a task for its log."""
    return (
        f"dataflow summary: task={task_id} mode={stats['mode']} cache={stats['cache']} "
        f"processed={stats['processed']} reused={stats['reused']} deleted={stats['deleted']} "
        f"files={stats['files']} bytes={stats['bytes']} bytes_written={stats['bytes_written']} "
        f"digest={stats['digest'][:12]} key={stats['cache_key'][:12]}"
    )


__all__ = ["Engine", "Plan", "Result", "TaskSpec", "PER_FILE", "WHOLE", "summary_line"]
