"""Identity settings, the identity map (uid/gid per owner and environment) and IAM roles.

Settings (section ``[dataflow]`` or ``DATAFLOW_<NAME>``, read when asked, never at import):

========================= ================== ==============================================
setting                   default            meaning
========================= ================== ==============================================
identity_map              (none)             YAML or JSON file: uid/gid per (owner, env)
iam_role_pattern          (none)             IAM role ARN per task, for the
                                             ``eks.amazonaws.com/role-arn`` annotation
namespace                 ``airflow``        namespace of task pods; ``{env}`` allowed
launcher_service_account  ``airflow-worker`` the Airflow worker's ServiceAccount, which
                                             launches task pods
========================= ================== ==============================================

The identity map file::

    # uid/gid of task pods, per installing owner and environment
    default:                 # optional: any (owner, env) not listed, except prod_env
      runAsUser: 50000
      runAsGroup: 50000
    identities:
      - owner: data-eng
        env: prod
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001              # optional
        supplementalGroups: [10100] # optional
      - owner: alice
        env: test-alice
        runAsUser: 20001
        runAsGroup: 20001

Rules, checked when the file is loaded (invariant 5: a test identity never
writes production data):

- uids and gids are integers >= 1 (task pods run as non-root);
- an (owner, env) pair is listed at most once;
- the production environment (``[dataflow] prod_env``) never falls back to
  ``default``: each production identity is listed on purpose;
- no identity of another environment, nor ``default``, shares a ``runAsUser``
  with a production identity.

``fsGroup`` is optional because on volumes that support ownership management
the kubelet changes the group of every file of the volume to it when the pod
starts: on a shared data volume that is slow and would hand files to the pod's
group. Prefer ``runAsGroup`` / ``supplementalGroups`` with group permissions set
on the storage; when ``fsGroup`` is set, the pod gets
``fsGroupChangePolicy: OnRootMismatch``.

``iam_role_pattern`` is an ARN with the placeholders ``{owner}``, ``{env}``,
``{dag_id}``, ``{task_id}``, ``{service_account}`` and ``{namespace}``, such as
``arn:aws:iam::123456789012:role/dataflow/{service_account}``. The filled ARN is
checked (``arn:<partition>:iam::<12 digits>:role/[path/]<name>``, a name of at
most 64 characters of ``[A-Za-z0-9+=,.@_-]``); ``{service_account}`` always gives
a valid name.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_dataflow.exceptions import DataflowError
from airflow_dataflow.identity import naming

DEFAULT_LAUNCHER_SERVICE_ACCOUNT = "airflow-worker"
ROLE_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:iam::(?P<account>\d{12}):role/(?P<path>(?:[\x21-\x7e]+/)*)(?P<name>[A-Za-z0-9+=,.@_-]{1,64})$"
)
ROLE_PLACEHOLDERS = ("owner", "env", "dag_id", "task_id", "service_account", "namespace")
_KEYS = {"owner", "env", "runAsUser", "runAsGroup", "fsGroup", "supplementalGroups"}


class IdentityConfigError(DataflowError):
    """The identity map or an identity setting is missing or invalid."""


def _setting(name: str, default: str | None) -> str | None:
    from airflow_dataflow.config import setting

    return setting(name, "") or default


@dataclass(frozen=True)
class PodIdentity:
    """The uid/gid a task pod runs with.

    :param run_as_user: ``securityContext.runAsUser`` (>= 1)
    :param run_as_group: ``securityContext.runAsGroup`` (>= 1)
    :param fs_group: ``securityContext.fsGroup``, or None to leave volume ownership alone
    :param supplemental_groups: extra gids (``securityContext.supplementalGroups``)
    :param source: where it came from (file and entry), for messages and records
    """

    run_as_user: int
    run_as_group: int
    fs_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        ids = [("runAsUser", self.run_as_user), ("runAsGroup", self.run_as_group)]
        if self.fs_group is not None:
            ids.append(("fsGroup", self.fs_group))
        ids += [("supplementalGroups", g) for g in self.supplemental_groups]
        for key, value in ids:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                where = f"{self.source}: " if self.source else ""
                raise IdentityConfigError(
                    f"{where}{key} must be an integer >= 1 (task pods never run as root), not {value!r}"
                )
        object.__setattr__(self, "supplemental_groups", tuple(self.supplemental_groups))

    @classmethod
    def from_dict(cls, doc: Any, source: str) -> PodIdentity:
        """Build from a mapping with the Kubernetes spelling (``runAsUser``...)."""
        if not isinstance(doc, dict):
            raise IdentityConfigError(f"{source}: expected a mapping with runAsUser and runAsGroup, got {doc!r}")
        unknown = set(doc) - _KEYS
        if unknown:
            raise IdentityConfigError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_KEYS)}")
        missing = [k for k in ("runAsUser", "runAsGroup") if k not in doc]
        if missing:
            raise IdentityConfigError(f"{source}: missing {', '.join(missing)}")
        groups = doc.get("supplementalGroups") or []
        if not isinstance(groups, list):
            raise IdentityConfigError(f"{source}: supplementalGroups must be a list of gids, not {groups!r}")
        return cls(doc["runAsUser"], doc["runAsGroup"], doc.get("fsGroup"), tuple(groups), source)

    def to_dict(self) -> dict[str, Any]:
        """Return the Kubernetes spelling, without unset fields."""
        out: dict[str, Any] = {"runAsUser": self.run_as_user, "runAsGroup": self.run_as_group}
        if self.fs_group is not None:
            out["fsGroup"] = self.fs_group
        if self.supplemental_groups:
            out["supplementalGroups"] = list(self.supplemental_groups)
        return out


@dataclass(frozen=True)
class IdentityMap:
    """uid/gid per (owner, env), with an optional default; validated on construction.

    :param entries: (owner, env) -> identity
    :param default: identity of unlisted pairs outside ``prod_env``, or None
    :param prod_env: the production environment (never falls back to ``default``)
    :param path: the file it was read from, named in errors
    """

    entries: dict[tuple[str, str], PodIdentity]
    default: PodIdentity | None = None
    prod_env: str = "prod"
    path: str = "<identity map>"

    def __post_init__(self) -> None:
        prod_uids = {i.run_as_user: k for k, i in self.entries.items() if k[1] == self.prod_env}
        others = [(f"{o}/{e}", i) for (o, e), i in self.entries.items() if e != self.prod_env]
        if self.default is not None:
            others.append(("default", self.default))
        for who, ident in others:
            if ident.run_as_user in prod_uids:
                owner, env = prod_uids[ident.run_as_user]
                raise IdentityConfigError(
                    f"identity map {self.path}: {who} has runAsUser {ident.run_as_user}, the uid of the production "
                    f"identity {owner}/{env}; give it a uid of its own so that it cannot write production data"
                )

    def resolve(self, owner: str, env: str) -> PodIdentity:
        """Return the identity of (owner, env); raise naming the file if there is none."""
        found = self.entries.get((owner, env))
        if found is not None:
            return found
        if self.default is not None and env != self.prod_env:
            return self.default
        why = (
            "production identities never fall back to 'default'"
            if self.default is not None
            else "and it has no 'default' entry"
        )
        raise IdentityConfigError(
            f"identity map {self.path} has no entry for owner {owner!r}, environment {env!r} ({why}); "
            f"add one under 'identities:' with owner: {owner}, env: {env}, runAsUser and runAsGroup"
        )

    @classmethod
    def from_document(cls, doc: Any, path: str, prod_env: str = "prod") -> IdentityMap:
        """Build from the parsed file (see the module docstring for the format)."""
        if not isinstance(doc, dict):
            raise IdentityConfigError(f"identity map {path}: expected a mapping with 'identities:', got {type(doc).__name__}")
        unknown = set(doc) - {"default", "identities", "version"}
        if unknown:
            raise IdentityConfigError(f"identity map {path}: unknown key(s) {sorted(unknown)}; use 'default' and 'identities'")
        if doc.get("version", 1) != 1:
            raise IdentityConfigError(f"identity map {path}: version {doc['version']!r} is not supported (use 1)")
        default = doc.get("default")
        entries: dict[tuple[str, str], PodIdentity] = {}
        items = doc.get("identities") or []
        if not isinstance(items, list):
            raise IdentityConfigError(f"identity map {path}: 'identities' must be a list of entries")
        for n, item in enumerate(items):
            source = f"identity map {path}, identities[{n}]"
            if not isinstance(item, dict) or not item.get("owner") or not item.get("env"):
                raise IdentityConfigError(f"{source}: each entry needs 'owner' and 'env' (and runAsUser, runAsGroup)")
            key = (str(item["owner"]), str(item["env"]))
            if key in entries:
                raise IdentityConfigError(f"{source}: owner {key[0]!r}, environment {key[1]!r} is listed twice")
            ident = {k: v for k, v in item.items() if k not in ("owner", "env")}
            entries[key] = PodIdentity.from_dict(ident, source)
        return cls(
            entries=entries,
            default=None if default is None else PodIdentity.from_dict(default, f"identity map {path}, default"),
            prod_env=prod_env,
            path=path,
        )


def load_identity_map(path: str | Path | None = None, prod_env: str | None = None) -> IdentityMap:
    """Read the identity map file (YAML or JSON).

    :param path: the file; default: the ``[dataflow] identity_map`` setting
    :param prod_env: the production environment; default: ``[dataflow] prod_env``
    """
    if path is None:
        path = _setting("identity_map", None)
        if not path:
            raise IdentityConfigError(
                "no identity map: set [dataflow] identity_map (or DATAFLOW_IDENTITY_MAP) to a YAML file giving "
                "runAsUser/runAsGroup per owner and environment (format: airflow_dataflow.identity.config)"
            )
    prod_env = prod_env or _setting("prod_env", "prod")
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise IdentityConfigError(f"identity map {path}: cannot read it ({err.strerror or err})") from err
    try:
        if path.endswith(".json"):
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - yaml.YAMLError and json's ValueError alike
        raise IdentityConfigError(f"identity map {path}: not valid YAML/JSON ({err})") from err
    return IdentityMap.from_document(doc, path, prod_env)


def iam_role_arn(
    pattern: str | None,
    owner: str,
    env: str,
    dag_id: str,
    task_id: str,
    *,
    namespace: str = "",
) -> str | None:
    """Fill the IAM role pattern for a task; None when there is no pattern.

    :param pattern: the ``[dataflow] iam_role_pattern`` (see the module docstring)
    :raises IdentityConfigError: unknown placeholder, or the result is not a role ARN
    """
    if not pattern:
        return None
    fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    unknown = fields - set(ROLE_PLACEHOLDERS)
    if unknown:
        raise IdentityConfigError(
            f"[dataflow] iam_role_pattern {pattern!r}: unknown placeholder(s) {sorted(unknown)}; "
            f"use {', '.join('{' + p + '}' for p in ROLE_PLACEHOLDERS)}"
        )
    values = {
        "owner": owner,
        "env": env,
        "dag_id": dag_id,
        "task_id": task_id,
        "service_account": naming.service_account_name(owner, env, dag_id, task_id),
        "namespace": namespace,
    }
    arn = pattern.format(**values)
    if not ROLE_ARN_RE.match(arn):
        raise IdentityConfigError(
            f"[dataflow] iam_role_pattern {pattern!r} gives {arn!r} for task {dag_id}.{task_id} "
            f"(owner {owner!r}, env {env!r}), which is not an IAM role ARN "
            "(arn:aws:iam::<12-digit account>:role/<name of at most 64 of A-Za-z0-9+=,.@_->); "
            "{service_account} alone (at most 63 characters) always makes a valid role name; put a prefix "
            "in the role path instead (role/dataflow/{service_account})"
        )
    return arn


@dataclass(frozen=True)
class IdentityConfig:
    """The identity settings of a deployment (see the module docstring).

    :param identity_map: path of the identity map file, or None
    :param iam_role_pattern: IAM role ARN pattern, or None
    :param namespace: namespace template of task pods (``{env}`` allowed)
    :param launcher_service_account: the Airflow worker's ServiceAccount
    :param prod_env: the production environment
    """

    identity_map: str | None = None
    iam_role_pattern: str | None = None
    namespace: str = naming.DEFAULT_NAMESPACE_PATTERN
    launcher_service_account: str = DEFAULT_LAUNCHER_SERVICE_ACCOUNT
    prod_env: str = "prod"

    def __post_init__(self) -> None:
        naming.namespace_for("prod", self.namespace)  # placeholders and shape
        if not naming.is_dns1123_label(self.launcher_service_account):
            raise IdentityConfigError(
                f"[dataflow] launcher_service_account {self.launcher_service_account!r} is not a valid "
                "ServiceAccount name (lowercase letters, digits and '-', at most 63 characters)"
            )
        if self.iam_role_pattern:
            iam_role_arn(self.iam_role_pattern, "owner", "env", "dag", "task", namespace="ns")

    @classmethod
    def load(cls) -> IdentityConfig:
        """Read the settings from the environment and Airflow's configuration."""
        return cls(
            identity_map=_setting("identity_map", None),
            iam_role_pattern=_setting("iam_role_pattern", None),
            namespace=_setting("namespace", naming.DEFAULT_NAMESPACE_PATTERN),
            launcher_service_account=_setting("launcher_service_account", DEFAULT_LAUNCHER_SERVICE_ACCOUNT),
            prod_env=_setting("prod_env", "prod"),
        )

    def namespace_for(self, env: str) -> str:
        """Return the namespace of ``env``'s task pods."""
        return naming.namespace_for(env, self.namespace)

    def load_identity_map(self) -> IdentityMap:
        """Read the configured identity map file."""
        return load_identity_map(self.identity_map or None, self.prod_env)


@dataclass(frozen=True)
class TaskIdentity:
    """Everything a runner needs to run one task under its identity.

    :param owner: installing owner
    :param env: environment
    :param dag_id: DAG id
    :param task_id: full task id
    :param namespace: namespace of the task's pods
    :param service_account: the ServiceAccount name
    :param iam_role_arn: the IAM role for the ServiceAccount, or None
    :param pod: uid/gid from the identity map, or None when not asked for
    """

    owner: str
    env: str
    dag_id: str
    task_id: str
    namespace: str
    service_account: str
    iam_role_arn: str | None = None
    pod: PodIdentity | None = None

    def __post_init__(self) -> None:
        expected = naming.service_account_name(self.owner, self.env, self.dag_id, self.task_id)
        if self.service_account != expected:
            raise IdentityConfigError(
                f"task {self.dag_id}.{self.task_id}: service account {self.service_account!r} is not the "
                f"identity's name {expected!r}"
            )

    @property
    def labels(self) -> dict[str, str]:
        """Labels for the ServiceAccount and the task's pods (label-safe values)."""
        return identity_labels(self.owner, self.env, self.dag_id, self.task_id)

    @property
    def annotations(self) -> dict[str, str]:
        """Annotations: the exact identity (JSON) and the IAM role when there is one."""
        out = {"dataflow.io/identity": identity_annotation(self.owner, self.env, self.dag_id, self.task_id)}
        if self.iam_role_arn:
            out["eks.amazonaws.com/role-arn"] = self.iam_role_arn
        return out

    def record(self) -> dict[str, Any]:
        """Return what a commit log records about who produced a snapshot."""
        out: dict[str, Any] = {"service_account": self.service_account, "namespace": self.namespace}
        if self.pod is not None:
            out.update(uid=self.pod.run_as_user, gid=self.pod.run_as_group)
        if self.iam_role_arn:
            out["iam_role_arn"] = self.iam_role_arn
        return out


MANAGED_BY = {"app.kubernetes.io/managed-by": "airflow-dataflow"}


def identity_labels(owner: str, env: str, dag_id: str, task_id: str) -> dict[str, str]:
    """Return the labels of a task identity (label-safe values)."""
    return {
        **MANAGED_BY,
        "dataflow.io/owner": naming.label_value(owner),
        "dataflow.io/env": naming.label_value(env),
        "dataflow.io/dag": naming.label_value(dag_id),
        "dataflow.io/task": naming.label_value(task_id),
    }


def identity_annotation(owner: str, env: str, dag_id: str, task_id: str) -> str:
    """Return the exact identity as JSON, for the ``dataflow.io/identity`` annotation."""
    return json.dumps({"owner": owner, "env": env, "dag_id": dag_id, "task_id": task_id}, sort_keys=True)


def task_identity(
    owner: str,
    env: str,
    dag_id: str,
    task_id: str,
    *,
    config: IdentityConfig | None = None,
    identity_map: IdentityMap | None = None,
    with_pod: bool = True,
    namespace: str | None = None,
) -> TaskIdentity:
    """Return the identity a task runs with.

    :param owner: installing owner (``DataflowConfig.owner``)
    :param env: environment (``DataflowConfig.env``)
    :param dag_id: DAG id
    :param task_id: full task id
    :param config: identity settings; default: :meth:`IdentityConfig.load`
    :param identity_map: the identity map; default: the configured file
    :param with_pod: resolve the uid/gid (needs the identity map); False for
        ServiceAccount manifests, which need no uid
    :param namespace: override the configured namespace
    """
    config = config or IdentityConfig.load()
    ns = namespace or config.namespace_for(env)
    pod = None
    if with_pod:
        pod = (identity_map or config.load_identity_map()).resolve(owner, env)
    return TaskIdentity(
        owner=owner,
        env=env,
        dag_id=dag_id,
        task_id=task_id,
        namespace=ns,
        service_account=naming.service_account_name(owner, env, dag_id, task_id),
        iam_role_arn=iam_role_arn(config.iam_role_pattern, owner, env, dag_id, task_id, namespace=ns),
        pod=pod,
    )
