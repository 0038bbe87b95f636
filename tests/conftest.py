"""Test-wide setup: a private Airflow home with a SQLite metadata DB.

The environment is set here, before any test module imports Airflow, because
Airflow reads its configuration when first imported. Tests that run DAGs use the
``airflow_db`` fixture, which creates the tables once per session, and write
their DAG files into ``DAGS_DIR`` (the configured DAGs folder), since
``dag.test()`` runs only DAGs that its bundle can parse.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airflow_home import AIRFLOW_HOME, SESSION_DIR  # noqa: E402  (sets the environment)


def migrate_db() -> None:
    """Create (or upgrade) the metadata DB's tables."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB; returns the Airflow home."""
    migrate_db()
    return AIRFLOW_HOME


def pytest_sessionfinish(session, exitstatus):  # noqa: ARG001 - pytest hook signature
    import shutil

    shutil.rmtree(SESSION_DIR, ignore_errors=True)
