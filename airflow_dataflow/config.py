"""Configuration, read lazily (never at import time).

Each setting comes from, in order: the environment variable ``DATAFLOW_<NAME>``,
Airflow's configuration section ``[dataflow]`` (``AIRFLOW__DATAFLOW__<NAME>``),
then the default below.

=================== ============ ===================================================
setting             default      meaning
=================== ============ ===================================================
env                 ``prod``     environment of this deployment (``prod``, ``test-alice``)
owner               OS user      the installing owner, part of every task identity
runner              ``local``    default runner: ``local`` or ``kubernetes``
batch_size          ``500``      files per mapped batch in per-file mode
max_batches         ``256``      most mapped batches per task (kept under
                                 Airflow's ``max_map_length``)
prod_env            ``prod``     the environment whose outputs tests may reuse
=================== ============ ===================================================
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from airflow_dataflow.core.commit import default_author
from airflow_dataflow.exceptions import DataflowError

_LOADED: dict[tuple[tuple[str, str], ...], DataflowConfig] = {}
ENV_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


def setting(name: str, default: str) -> str:
    """Return setting ``name``: ``$DATAFLOW_<NAME>``, else ``[dataflow] <name>``, else ``default``."""
    value = os.environ.get(f"DATAFLOW_{name.upper()}")
    if value:
        return value
    try:
        from airflow.configuration import conf

        value = conf.get("dataflow", name, fallback=None)
    except Exception:  # noqa: BLE001 - Airflow missing or not configured: use defaults
        value = None
    return value or default


def validate_env(env: str) -> str:
    """Return ``env`` if it is a valid environment name, else raise."""
    if not ENV_RE.match(env):
        raise DataflowError(
            f"environment name {env!r} is invalid: use 1-40 lowercase letters, digits and '-', "
            "such as 'prod' or 'test-alice'"
        )
    return env


@dataclass(frozen=True)
class DataflowConfig:
    """Settings of one deployment; see the module docstring."""

    env: str = "prod"
    owner: str = field(default_factory=default_author)
    runner: str = "local"
    batch_size: int = 500
    max_batches: int = 256
    prod_env: str = "prod"

    def __post_init__(self) -> None:
        validate_env(self.env)
        validate_env(self.prod_env)
        if self.runner not in ("local", "kubernetes"):
            raise DataflowError(f"runner {self.runner!r} is unknown; use 'local' or 'kubernetes'")
        if self.batch_size < 1 or self.max_batches < 1:
            raise DataflowError("batch_size and max_batches must be positive")

    @classmethod
    def load(cls) -> DataflowConfig:
        """Read the settings from the environment and Airflow's configuration.

        The result is remembered per set of ``DATAFLOW_*`` variables, since a DAG
        file builds many datasets and each task reads the settings several times.
        """
        env_key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("DATAFLOW_", "AIRFLOW__DATAFLOW__"))))
        cached = _LOADED.get(env_key)
        if cached is None:
            cached = _LOADED[env_key] = cls._read()
        return cached

    @classmethod
    def _read(cls) -> DataflowConfig:
        return cls(
            env=setting("env", "prod"),
            owner=setting("owner", default_author()),
            runner=setting("runner", "local"),
            batch_size=int(setting("batch_size", "500")),
            max_batches=int(setting("max_batches", "256")),
            prod_env=setting("prod_env", "prod"),
        )
