"""The Airflow plugin (``airflow.plugins`` entry point).

It registers nothing at import time beyond the class itself; the UI and
listeners are added here as they are built.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class DataflowPlugin(AirflowPlugin):
    """Registers airflow-dataflow with Airflow's plugin manager."""

    name = "dataflow"
