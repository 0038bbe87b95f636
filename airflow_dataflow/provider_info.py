"""Provider metadata for Airflow's providers manager (the ``apache_airflow_provider`` entry point)."""

from __future__ import annotations

from typing import Any

from airflow_dataflow import __version__


def get_provider_info() -> dict[str, Any]:
    """Return the provider info dict: hooks, operators, sensors, triggers, config."""
    return {
        "package-name": "airflow-dataflow",
        "name": "Dataflow",
        "description": "Directory datasets, incremental per-file processing and content-hash skipping.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Dataflow",
                "external-doc-url": "https://pypi.org/project/airflow-dataflow/",
                "tags": ["software"],
            }
        ],
        "hooks": [{"integration-name": "Dataflow", "python-modules": ["airflow_dataflow.hooks.manifest"]}],
        "operators": [{"integration-name": "Dataflow", "python-modules": ["airflow_dataflow.operators.dataflow"]}],
        "sensors": [{"integration-name": "Dataflow", "python-modules": ["airflow_dataflow.sensors.change"]}],
        "triggers": [{"integration-name": "Dataflow", "python-modules": ["airflow_dataflow.triggers.change"]}],
        "config": {
            "dataflow": {
                "description": "Settings of airflow-dataflow (each also readable from DATAFLOW_<NAME>).",
                "options": {
                    "env": {
                        "description": "Environment of this deployment: prod or a test environment.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "test-alice",
                        "default": "prod",
                    },
                    "owner": {
                        "description": "Installing owner, part of every task identity (default: OS user).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "alice",
                        "default": None,
                    },
                    "runner": {
                        "description": "Default runner of dataflow tasks: local or kubernetes.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "kubernetes",
                        "default": "local",
                    },
                    "batch_size": {
                        "description": "Files per mapped batch in per-file mode.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "500",
                        "default": "500",
                    },
                    "max_batches": {
                        "description": "Most mapped batches per task (keep under core.max_map_length).",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "256",
                        "default": "256",
                    },
                    "prod_env": {
                        "description": "Environment whose outputs test environments may reuse.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "prod",
                        "default": "prod",
                    },
                    "identity_map": {
                        "description": "YAML or JSON file giving task pods' runAsUser/runAsGroup (fsGroup, "
                        "supplementalGroups) per owner and environment; see airflow_dataflow.identity.config.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/opt/airflow/dataflow/identities.yaml",
                        "default": None,
                    },
                    "iam_role_pattern": {
                        "description": "IAM role ARN of each task's ServiceAccount (eks.amazonaws.com/role-arn); "
                        "placeholders {owner} {env} {dag_id} {task_id} {service_account} {namespace}.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "arn:aws:iam::123456789012:role/dataflow/{service_account}",
                        "default": None,
                    },
                    "namespace": {
                        "description": "Namespace of task pods; {env} allowed (dataflow-{env}: one per environment).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "dataflow-{env}",
                        "default": "airflow",
                    },
                    "launcher_service_account": {
                        "description": "ServiceAccount of the Airflow worker that launches task pods.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "airflow-worker",
                        "default": "airflow-worker",
                    },
                },
            }
        },
    }
