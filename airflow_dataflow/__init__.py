"""airflow_dataflow: directory datasets, incremental processing and content-hash skipping for Airflow.

Importing this package has no side effects: it reads no configuration and imports
no Airflow module; import the submodule you need.
"""

from __future__ import annotations

__version__ = "0.1.0"
