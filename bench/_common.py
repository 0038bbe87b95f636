"""Helpers shared by the benchmarks (log lines, machine load, work folders, closing lines)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """Print a progress line to stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def load_note(start: float, end: float) -> str | None:
    """Return a warning when the machine was busier than its CPUs during the run."""
    cpus = os.cpu_count() or 1
    if max(start, end) > cpus:
        return (f"WARNING: 1-minute load average {start:.1f} at the start, {end:.1f} at the end, above the "
                f"{cpus} CPUs: other work shares the machine, wall times are noisy")
    return None


def remove_tree(root: Path) -> None:
    """Remove a work directory (committed snapshot trees are read-only: make them writable first)."""
    log(f"removing {root}")
    for dirpath, _, _ in os.walk(root):
        try:
            os.chmod(dirpath, 0o755)
        except OSError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def make_workdir(root_arg: str | None, prefix: str, dag_module: str, dag_file: str) -> tuple[Path, Path]:
    """Create the work directory (``root_arg``, else a new temporary one) and its ``dags`` folder holding
    ``<dag_module>.py`` with ``dag_file``; return both."""
    root = Path(root_arg or tempfile.mkdtemp(prefix=prefix)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    dags = root / "dags"
    dags.mkdir(exist_ok=True)
    (dags / f"{dag_module}.py").write_text(dag_file)
    return root, dags


def drop_workdir(root: Path, keep: bool, kept_note: str = "") -> None:
    """Remove the work directory at the end of a run, unless it is to be kept."""
    if keep:
        log(f"kept {root}{kept_note}")
    else:
        remove_tree(root)


def print_closing(f: dict[str, Any], bench: str, as_json: bool) -> None:
    """Print the load warning (if any) and, with ``--json``, every figure as one JSON line."""
    note = load_note(f["load_start"], f["load_end"])
    if note:
        print(note)
    if as_json:
        print(json.dumps({"bench": bench, **f}, sort_keys=True))
