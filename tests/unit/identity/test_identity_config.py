"""The identity map file, the IAM role pattern, the settings and the security contexts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_dataflow.identity.config import (
    IdentityConfig,
    IdentityConfigError,
    IdentityMap,
    PodIdentity,
    iam_role_arn,
    load_identity_map,
    task_identity,
)
from airflow_dataflow.identity.naming import service_account_name
from airflow_dataflow.identity.security import container_security_context, pod_security_context

MAP = """
default:
  runAsUser: 50000
  runAsGroup: 50000
identities:
  - owner: data-eng
    env: prod
    runAsUser: 10001
    runAsGroup: 10001
    fsGroup: 10001
    supplementalGroups: [10100, 10200]
  - owner: alice
    env: test-alice
    runAsUser: 20001
    runAsGroup: 20001
"""


@pytest.fixture
def map_file(tmp_path: Path) -> Path:
    path = tmp_path / "identities.yaml"
    path.write_text(MAP)
    return path


def test_resolve_listed_and_default(map_file: Path) -> None:
    m = load_identity_map(map_file)
    prod = m.resolve("data-eng", "prod")
    assert (prod.run_as_user, prod.run_as_group, prod.fs_group, prod.supplemental_groups) == (10001, 10001, 10001, (10100, 10200))
    assert m.resolve("alice", "test-alice").run_as_user == 20001
    assert m.resolve("bob", "test-bob").run_as_user == 50000


def test_production_never_falls_back_to_default(map_file: Path) -> None:
    with pytest.raises(IdentityConfigError) as err:
        load_identity_map(map_file).resolve("bob", "prod")
    msg = str(err.value)
    assert str(map_file) in msg and "'bob'" in msg and "'prod'" in msg and "never fall back" in msg


def test_missing_entry_without_default_names_file_and_pair(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"identities": [{"owner": "a", "env": "prod", "runAsUser": 5, "runAsGroup": 5}]}))
    with pytest.raises(IdentityConfigError, match=rf"{path}.*owner 'z', environment 'test-z'.*no 'default'"):
        load_identity_map(path).resolve("z", "test-z")


def test_setting_and_env_variable(map_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFLOW_IDENTITY_MAP", str(map_file))
    assert load_identity_map().resolve("alice", "test-alice").run_as_user == 20001
    assert IdentityConfig.load().identity_map == str(map_file)
    monkeypatch.delenv("DATAFLOW_IDENTITY_MAP")
    with pytest.raises(IdentityConfigError, match="set \\[dataflow\\] identity_map"):
        load_identity_map()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("identities: [{owner: a, env: prod, runAsUser: 0, runAsGroup: 1}]", r"identities\[0\]: runAsUser must be an integer >= 1"),
        ("identities: [{owner: a, env: prod, runAsUser: 1}]", "missing runAsGroup"),
        ("identities: [{env: prod, runAsUser: 1, runAsGroup: 1}]", "needs 'owner' and 'env'"),
        ("identities: [{owner: a, env: prod, runAsUser: 1, runAsGroup: 1, runAsUsr: 3}]", "unknown key"),
        ("identities: [{owner: a, env: prod, runAsUser: '1', runAsGroup: 1}]", "integer"),
        (
            "identities: [{owner: a, env: prod, runAsUser: 7, runAsGroup: 1}, {owner: a, env: prod, runAsUser: 8, runAsGroup: 1}]",
            "listed twice",
        ),
        (
            "identities: [{owner: a, env: prod, runAsUser: 7, runAsGroup: 1}, {owner: a, env: test-a, runAsUser: 7, runAsGroup: 2}]",
            "a/test-a has runAsUser 7, the uid of the production identity a/prod",
        ),
        ("default: {runAsUser: 7, runAsGroup: 2}\nidentities: [{owner: a, env: prod, runAsUser: 7, runAsGroup: 1}]", "default has runAsUser 7"),
        ("identities: [\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("idents: []", "unknown key"),
    ],
)
def test_bad_maps_are_refused_naming_the_file(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(IdentityConfigError, match=match) as err:
        load_identity_map(path)
    assert str(path) in str(err.value)


def test_unreadable_map(tmp_path: Path) -> None:
    with pytest.raises(IdentityConfigError, match="cannot read it"):
        load_identity_map(tmp_path / "absent.yaml")


def test_iam_role_pattern() -> None:
    pattern = "arn:aws:iam::123456789012:role/dataflow-{owner}-{env}-{dag_id}-{task_id}"
    assert iam_role_arn(pattern, "alice", "prod", "sales", "clean") == "arn:aws:iam::123456789012:role/dataflow-alice-prod-sales-clean"
    assert iam_role_arn(None, "a", "prod", "d", "t") is None
    sa = service_account_name("alice", "test-alice", "sales_pipeline", "clean")
    assert iam_role_arn("arn:aws:iam::123456789012:role/{service_account}", "alice", "test-alice", "sales_pipeline", "clean").endswith(f"/{sa}")
    with pytest.raises(IdentityConfigError, match="unknown placeholder.*user"):
        iam_role_arn("arn:aws:iam::123456789012:role/{user}", "a", "prod", "d", "t")
    with pytest.raises(IdentityConfigError, match="not an IAM role ARN.*role/dataflow/\\{service_account\\}"):
        iam_role_arn("arn:aws:iam::123456789012:role/df-{dag_id}-{task_id}", "a", "prod", "d" * 60, "t")
    with pytest.raises(IdentityConfigError, match="not an IAM role ARN"):
        iam_role_arn("arn:aws:iam::1234:role/{task_id}", "a", "prod", "d", "t")
    with pytest.raises(IdentityConfigError, match="not an IAM role ARN"):
        iam_role_arn("arn:aws:iam::123456789012:role/{task_id}", "a", "prod", "d", "t with space")


def test_config_is_validated_on_construction() -> None:
    with pytest.raises(IdentityConfigError, match="launcher_service_account"):
        IdentityConfig(launcher_service_account="Airflow_Worker")
    with pytest.raises(IdentityConfigError, match="iam_role_pattern"):
        IdentityConfig(iam_role_pattern="arn:aws:iam::12:role/x")
    with pytest.raises(Exception, match="namespace"):
        IdentityConfig(namespace="{team}")


def test_task_identity_bundles_everything(map_file: Path) -> None:
    config = IdentityConfig(
        identity_map=str(map_file),
        iam_role_pattern="arn:aws:iam::123456789012:role/{service_account}",
        namespace="dataflow-{env}",
    )
    ident = task_identity("alice", "test-alice", "sales_pipeline", "clean", config=config)
    assert ident.namespace == "dataflow-test-alice"
    assert ident.service_account == service_account_name("alice", "test-alice", "sales_pipeline", "clean")
    assert ident.pod == PodIdentity(20001, 20001)
    assert ident.annotations["eks.amazonaws.com/role-arn"].endswith(ident.service_account)
    assert json.loads(ident.annotations["dataflow.io/identity"])["dag_id"] == "sales_pipeline"
    assert ident.labels["dataflow.io/env"] == "test-alice"
    assert ident.record() == {
        "service_account": ident.service_account,
        "namespace": "dataflow-test-alice",
        "uid": 20001,
        "gid": 20001,
        "iam_role_arn": ident.iam_role_arn,
    }
    assert task_identity("x", "prod", "d", "t", config=IdentityConfig(), with_pod=False).pod is None


def test_security_contexts() -> None:
    pod = pod_security_context(PodIdentity(10001, 10002, 10003, (10100,)))
    assert (pod.run_as_user, pod.run_as_group, pod.fs_group, pod.supplemental_groups) == (10001, 10002, 10003, [10100])
    assert pod.run_as_non_root is True and pod.seccomp_profile.type == "RuntimeDefault"
    assert pod.fs_group_change_policy == "OnRootMismatch"
    bare = pod_security_context(PodIdentity(10001, 10002))
    assert bare.fs_group is None and bare.fs_group_change_policy is None and bare.supplemental_groups is None
    c = container_security_context()
    assert c.allow_privilege_escalation is False and c.read_only_root_filesystem is True
    assert c.run_as_non_root is True and c.capabilities.drop == ["ALL"] and c.privileged is False
    assert c.seccomp_profile.type == "RuntimeDefault"


def test_pod_identity_validates() -> None:
    with pytest.raises(IdentityConfigError, match="fsGroup"):
        PodIdentity(1, 1, fs_group=-3)
    with pytest.raises(IdentityConfigError, match="runAsUser"):
        PodIdentity(True, 1)  # type: ignore[arg-type]
    assert IdentityMap({}, PodIdentity(5, 5)).resolve("a", "test-a").run_as_user == 5
