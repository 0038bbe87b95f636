"""The test session's private Airflow home (imported by tests/conftest.py before Airflow)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.mkdtemp(prefix="dataflow-tests-"))
AIRFLOW_HOME = SESSION_DIR / "airflow-home"
DAGS_DIR = SESSION_DIR / "dags"
DAGS_DIR.mkdir(parents=True)
AIRFLOW_HOME.mkdir(parents=True)

os.environ.update(
    {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_DIR),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "DATAFLOW_ENV": "prod",
        "DATAFLOW_OWNER": "tester",
        "DATAFLOW_CACHE_DIR": str(SESSION_DIR / "cache"),
    }
)
for p in (str(CHECKOUT), str(Path(__file__).resolve().parent)):
    if p not in sys.path:
        sys.path.insert(0, p)
