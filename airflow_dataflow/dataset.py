"""``DirectoryDataset``: a named directory of files that is also an Airflow ``Asset``."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset

from airflow_dataflow.config import DataflowConfig, validate_env
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.exceptions import DataflowError

PARTITION = "{partition}"
ENV = "{env}"


class DirectoryDataset(Asset):
    """A directory dataset at a URI template, seen by Airflow as an ``Asset``.

    ``{env}`` and ``{partition}`` in the template are filled at run time. The asset
    identity includes the environment (name ``<name>@<env>``, URI with the
    environment filled in), so a test deployment's asset events never trigger
    production DAGs; the partition travels as the asset event's partition key.

    :param name: dataset name, unique in the deployment (``raw_events``)
    :param template: ``file:///data/{env}/raw/events/{partition}`` or
        ``s3://bucket/{env}/events``; a dataset the pipeline writes must contain
        ``{env}`` so that environments never share a directory
    :param env: environment; default: the configured ``[dataflow] env``
    :param owned: False for a source the pipeline only observes (a landing
        directory, another team's bucket); its snapshots reference the files in
        place and its metadata goes under ``metadata_root``
    :param metadata_root: where an observed source keeps ``_dataflow/``
        (default: beside it, which needs write access to its parent)
    :param aws_conn_id: Airflow connection for S3 datasets
    """

    def __init__(
        self,
        name: str,
        template: str,
        *,
        env: str | None = None,
        owned: bool = True,
        metadata_root: str | None = None,
        aws_conn_id: str | None = None,
    ) -> None:
        env = validate_env(env or DataflowConfig.load().env)
        if owned and ENV not in template:
            raise DataflowError(
                f"dataset {name!r}: template {template!r} has no {ENV}; a dataset the pipeline "
                "writes must contain {env} so that test environments never write production data "
                "(or pass owned=False for a source the pipeline only reads)"
            )
        if metadata_root is not None and ENV in template and ENV not in metadata_root:
            raise DataflowError(f"dataset {name!r}: metadata_root must contain {ENV} when the template does")
        self.template = template
        self.env = env
        self.owned = owned
        self.metadata_root = metadata_root
        self.aws_conn_id = aws_conn_id
        uri = template.replace(ENV, env)
        uri = uri.split("/" + PARTITION)[0].split(PARTITION)[0].rstrip("/")
        if ENV not in template:
            uri = f"{uri}?env={env}"  # observed sources: one asset per environment
        super().__init__(
            name=f"{name}@{env}",
            uri=uri,
            group="dataflow",
            extra={
                "dataflow": {
                    "dataset": name,
                    "template": template,
                    "env": env,
                    "owned": owned,
                    "metadata_root": metadata_root,
                    "aws_conn_id": aws_conn_id,
                }
            },
        )

    @property
    def dataset_name(self) -> str:
        """The dataset's name without the environment."""
        return self.name.rsplit("@", 1)[0]

    @property
    def partitioned(self) -> bool:
        """True when the template has a ``{partition}`` placeholder."""
        return PARTITION in self.template

    def with_env(self, env: str) -> DirectoryDataset:
        """Return the same dataset in another environment."""
        return DirectoryDataset(
            self.dataset_name,
            self.template,
            env=env,
            owned=self.owned,
            metadata_root=self.metadata_root,
            aws_conn_id=self.aws_conn_id,
        )

    def render(self, partition: str | None = None) -> str:
        """Return the URI of one partition (or of the dataset if unpartitioned)."""
        if self.partitioned and not partition:
            raise DataflowError(
                f"dataset {self.name!r} is partitioned ({self.template}); give a partition "
                "(the DAG run's partition key or a templated value)"
            )
        if partition is not None and ("/" in partition or partition in ("", ".", "..")):
            raise DataflowError(f"partition {partition!r} of {self.name!r} must be a single path component")
        return self.template.replace(ENV, self.env).replace(PARTITION, partition or "")

    def location(self, partition: str | None = None) -> DatasetLocation:
        """Return the resolved storage location of one partition."""
        root = self.metadata_root.replace(ENV, self.env) if self.metadata_root else None
        return DatasetLocation.parse(self.render(partition), metadata_root=root, owned=self.owned)

    @classmethod
    def from_asset(cls, asset: Asset) -> DirectoryDataset:
        """Rebuild a dataset from an ``Asset`` (e.g. after DAG serialisation)."""
        if isinstance(asset, DirectoryDataset):
            return asset
        spec: dict[str, Any] = (asset.extra or {}).get("dataflow") or {}
        if "template" not in spec:
            raise DataflowError(f"asset {asset.name!r} is not a DirectoryDataset (no dataflow extra)")
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> DirectoryDataset:
        """Rebuild a dataset from its ``extra["dataflow"]`` values (plain, serialisable)."""
        return cls(
            spec["dataset"],
            spec["template"],
            env=spec["env"],
            owned=spec.get("owned", True),
            metadata_root=spec.get("metadata_root"),
            aws_conn_id=spec.get("aws_conn_id"),
        )
