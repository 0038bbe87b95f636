"""Run DAG files with ``dag.test()`` in this process (helpers for integration tests)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

from airflow_home import DAGS_DIR


def install_dag_file(source: str | Path, name: str | None = None, text: str | None = None) -> Path:
    """Put a DAG file into the DAGs folder (copy of ``source``, or ``text``); return its path."""
    target = DAGS_DIR / (name or Path(source).name)
    if text is not None:
        target.write_text(text)
    else:
        shutil.copyfile(source, target)
    return target


def remove_dag_file(path: Path) -> None:
    """Take a DAG file out of the DAGs folder."""
    path.unlink(missing_ok=True)


def load_dag(path: Path, dag_id: str) -> Any:
    """Import a DAG file freshly (its module-level settings are re-read) and return the DAG."""
    mod_name = f"_dag_{path.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    spec.loader.exec_module(module)
    for value in vars(module).values():
        if getattr(value, "dag_id", None) == dag_id and hasattr(value, "test"):
            return value
    raise LookupError(f"{path} defines no DAG {dag_id!r}")


def run_dag(path: Path, dag_id: str, conf: dict | None = None) -> str:
    """Run the DAG once; return the final state as a string ('success', 'failed')."""
    dag = load_dag(path, dag_id)
    run = dag.test(run_conf=conf)
    state = getattr(run, "state", None)
    return str(getattr(state, "value", state))
