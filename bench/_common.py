"""Helpers shared by the benchmarks (log lines, machine load, work folders)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


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
