"""``helm-values/*.yaml``: valid for the official Airflow chart, and carrying what dataflow needs.

The chart's schema is ``../shared/airflow-chart/values.schema.json`` beside the
checkout, or ``$DATAFLOW_HELM_SCHEMA``. A missing schema fails the tests.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from airflow_dataflow.identity.config import IdentityConfig, IdentityMap
from airflow_dataflow.identity.naming import is_dns1123_label

CHECKOUT = Path(__file__).resolve().parents[2]
VALUES_DIR = CHECKOUT / "helm-values"
SCHEMA = Path(os.environ.get("DATAFLOW_HELM_SCHEMA") or CHECKOUT.parent / "shared" / "airflow-chart" / "values.schema.json")
EXECUTORS = {"kubernetes-executor.yaml": "KubernetesExecutor", "celery-executor.yaml": "CeleryExecutor"}
VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    if not SCHEMA.is_file():
        pytest.fail(f"no Helm chart schema at {SCHEMA}; set DATAFLOW_HELM_SCHEMA to values.schema.json", pytrace=False)
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_both_executors_are_there() -> None:
    assert sorted(p.name for p in VALUES_FILES) == sorted(EXECUTORS)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_valid_against_the_chart_schema(validator: Draft7Validator, path: Path) -> None:
    errors = sorted(validator.iter_errors(load(path)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{path.name}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_validator_catches_mistakes(validator: Draft7Validator) -> None:
    values = load(VALUES_DIR / "kubernetes-executor.yaml")
    for mutate in (
        lambda v: v.update(executor="Kubernetes"),
        lambda v: v["workers"]["extraVolumeMounts"][0].pop("mountPath"),
        lambda v: v["config"]["dataflow"].update(runner=["kubernetes"]),
        lambda v: v["images"]["airflow"].update(pullPolicy="Sometimes"),
    ):
        bad = copy.deepcopy(values)
        mutate(bad)
        assert list(validator.iter_errors(bad)), "the schema let a broken values file through"


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_dataflow_settings(path: Path) -> None:
    values = load(path)
    assert values["executor"] == EXECUTORS[path.name]
    repo = values["images"]["airflow"]["repository"]
    assert repo != "apache/airflow" and repo == values["defaultAirflowRepository"], "use an image with airflow-dataflow"
    assert values["airflowVersion"].startswith("3.") and tuple(map(int, values["airflowVersion"].split(".")[:2])) >= (3, 3)

    dataflow = values["config"]["dataflow"]
    assert dataflow["runner"] == "kubernetes"
    IdentityConfig(
        identity_map=dataflow["identity_map"],
        namespace=dataflow["namespace"],
        launcher_service_account=dataflow["launcher_service_account"],
    )  # the settings pass the package's own checks

    # pod launching for the worker ServiceAccount that [dataflow] names
    assert values["rbac"]["create"] is True and values["allowPodLaunching"] is True
    assert values["workers"]["serviceAccount"]["name"] == dataflow["launcher_service_account"]
    assert is_dns1123_label(values["workers"]["serviceAccount"]["name"])


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_data_volume_and_identity_map_are_mounted(path: Path) -> None:
    values = load(path)
    workers = values["workers"]
    volumes = {v["name"]: v for v in workers["extraVolumes"]}
    mounts = {m["name"]: m for m in workers["extraVolumeMounts"]}
    assert volumes["dataflow-data"]["persistentVolumeClaim"]["claimName"] == "dataflow-data"
    assert mounts["dataflow-data"]["mountPath"] == "/data" and not mounts["dataflow-data"].get("readOnly")
    trig_volumes = {v["name"]: v for v in values["triggerer"]["extraVolumes"]}
    trig_mounts = {m["name"]: m for m in values["triggerer"]["extraVolumeMounts"]}
    assert trig_volumes["dataflow-data"]["persistentVolumeClaim"]["claimName"] == "dataflow-data"
    assert trig_mounts["dataflow-data"]["mountPath"] == "/data"

    # the identity map file: mounted where [dataflow] identity_map points, and valid
    map_path = Path(values["config"]["dataflow"]["identity_map"])
    cm_name = volumes["dataflow-identities"]["configMap"]["name"]
    assert mounts["dataflow-identities"]["mountPath"] == str(map_path.parent)
    cm_data = yaml.safe_load(values["extraConfigMaps"][cm_name]["data"])
    doc = yaml.safe_load(cm_data[map_path.name])
    identities = IdentityMap.from_document(doc, f"{path.name}: {cm_name}/{map_path.name}")
    owner, env = values["config"]["dataflow"]["owner"], values["config"]["dataflow"]["env"]
    assert identities.resolve(owner, env).run_as_user >= 1
