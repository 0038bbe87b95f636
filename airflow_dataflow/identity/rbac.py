"""Kubernetes manifests of a DAG's task identities, printed by ``airflow-dataflow k8s manifests``.

For each task that runs a pod (see :func:`runs_pod`), one ServiceAccount:
named by :func:`~airflow_dataflow.identity.naming.service_account_name`,
labelled with the identity, ``automountServiceAccountToken: false`` and, when
``[dataflow] iam_role_pattern`` is set, annotated with its IAM role
(``eks.amazonaws.com/role-arn``). A task pod needs no Kubernetes API right at
all (it reads and writes its mounted directories, or S3 with its IAM role), so
task ServiceAccounts get no Role, no RoleBinding and no token.

The one component that talks to the API is the Airflow worker that launches the
pods (KubernetesPodOperator). It gets one Role and RoleBinding in the task
namespace with exactly the calls KubernetesPodOperator makes there (provider
``cncf.kubernetes``: ``utils/pod_manager.py``, ``operators/pod.py``,
``hooks/kubernetes.py``):

========== ============================== =============================================
resource   verbs                          calls
========== ============================== =============================================
pods       create, get, list, watch,      create_namespaced_pod, read_namespaced_pod,
           patch, delete                  list_namespaced_pod (find_pod on retry),
                                          watch while it runs, patch_namespaced_pod
                                          (mark checked), delete_namespaced_pod
pods/log   get                            read_namespaced_pod_log (follow and read)
events     list, watch                    list_namespaced_event, and the watch of
                                          watch_pod_events while a pod starts
pods/exec  create, get (only with         connect_get_namespaced_pod_exec: only for
           ``--allow-exec``)              ``do_xcom_push`` (reads the XCom sidecar) and
                                          the Istio sidecar kill; our runner uses neither
========== ============================== =============================================

Output is deterministic: documents in a fixed order (Namespace, ServiceAccounts
sorted by name, Role, RoleBinding) and keys sorted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import yaml

from airflow_dataflow.identity.config import MANAGED_BY, IdentityConfig, TaskIdentity, task_identity

LAUNCHER_ROLE = "airflow-dataflow-pod-launcher"
NO_POD_STAGES = ("plan", "commit")


def launcher_rules(allow_exec: bool = False) -> list[dict[str, Any]]:
    """Return the RBAC rules KubernetesPodOperator needs in the task namespace (see the module docstring)."""
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "patch", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
    ]
    if allow_exec:
        rules.append({"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]})
    return rules


def _task_attr(task: Any, name: str, default: Any = None) -> Any:
    """Read an operator attribute, also from a mapped operator's class and partial kwargs."""
    if hasattr(task, "partial_kwargs") and name in getattr(task, "partial_kwargs", {}):
        return task.partial_kwargs[name]
    value = getattr(task, name, None)
    if value is not None:
        return value
    return getattr(getattr(task, "operator_class", None), name, default)


def runs_pod(task: Any) -> bool:
    """Return whether ``task`` runs its work in a pod under its own identity.

    An operator says so with the class or instance attribute
    ``dataflow_identity = True`` (or opts out with ``False``). Without it, every
    :class:`~airflow_dataflow.operators.dataflow.DataflowOperator` does, except
    the ``plan`` and ``commit`` steps of a fan-out, which only read and commit
    metadata on the worker. :class:`~airflow_dataflow.sensors.change.DirectoryChangeSensor`
    scans on the worker (or the triggerer) and gets no identity. Mapped tasks
    (``.partial().expand()``) are judged by their operator class.
    """
    explicit = _task_attr(task, "dataflow_identity")
    if explicit is not None:
        return bool(explicit)
    from airflow_dataflow.operators.dataflow import DataflowOperator

    cls = getattr(task, "operator_class", None) or type(task)
    if not (isinstance(cls, type) and issubclass(cls, DataflowOperator)):
        return False
    return _task_attr(task, "stage", "all") not in NO_POD_STAGES


def identity_task_ids(dag: Any) -> list[str]:
    """Return the sorted ids of the DAG's tasks that run a pod."""
    return sorted(tid for tid, task in dag.task_dict.items() if runs_pod(task))


def namespace_manifest(namespace: str) -> dict[str, Any]:
    """Return a Namespace document."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": dict(MANAGED_BY)}}


def service_account_manifest(identity: TaskIdentity) -> dict[str, Any]:
    """Return the ServiceAccount document of a task identity (no token mounted)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": identity.service_account,
            "namespace": identity.namespace,
            "labels": identity.labels,
            "annotations": identity.annotations,
        },
        "automountServiceAccountToken": False,
    }


def launcher_manifests(
    namespace: str,
    service_account: str,
    service_account_namespace: str | None = None,
    *,
    allow_exec: bool = False,
) -> list[dict[str, Any]]:
    """Return the Role and RoleBinding that let the Airflow worker launch task pods in ``namespace``.

    :param namespace: the task namespace
    :param service_account: the worker's ServiceAccount
    :param service_account_namespace: where that ServiceAccount lives (default: ``namespace``)
    :param allow_exec: also grant ``pods/exec`` (only ``do_xcom_push`` needs it)
    """
    meta = {"namespace": namespace, "labels": dict(MANAGED_BY)}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": LAUNCHER_ROLE, **meta},
        "rules": launcher_rules(allow_exec),
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": f"{LAUNCHER_ROLE}-{service_account}"[:253], **meta},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LAUNCHER_ROLE},
        "subjects": [
            {
                "kind": "ServiceAccount",
                "name": service_account,
                "namespace": service_account_namespace or namespace,
            }
        ],
    }
    return [role, binding]


def dag_manifests(
    dag: Any,
    *,
    owner: str,
    env: str,
    config: IdentityConfig | None = None,
    namespace: str | None = None,
    with_namespace: bool = False,
    launcher_namespace: str | None = None,
    allow_exec: bool = False,
) -> list[dict[str, Any]]:
    """Return the manifests of a DAG's task identities, in a fixed order.

    :param dag: the DAG (``dag_id`` and ``task_dict`` are read)
    :param owner: installing owner
    :param env: environment
    :param config: identity settings; default: :meth:`IdentityConfig.load`
    :param namespace: task namespace; default: ``[dataflow] namespace`` for ``env``
    :param with_namespace: also emit the Namespace
    :param launcher_namespace: namespace of the launcher ServiceAccount (default: the task namespace)
    :param allow_exec: grant the launcher ``pods/exec``
    """
    config = config or IdentityConfig.load()
    ns = namespace or config.namespace_for(env)
    identities = [
        task_identity(owner, env, dag.dag_id, tid, config=config, with_pod=False, namespace=ns)
        for tid in identity_task_ids(dag)
    ]
    docs = [namespace_manifest(ns)] if with_namespace else []
    docs += [service_account_manifest(i) for i in sorted(identities, key=lambda i: i.service_account)]
    docs += launcher_manifests(ns, config.launcher_service_account, launcher_namespace, allow_exec=allow_exec)
    return docs


def _comment(doc: dict[str, Any]) -> str:
    kind = doc["kind"]
    if kind == "ServiceAccount":
        ident = doc["metadata"]["annotations"]["dataflow.io/identity"]
        return (
            f"# Task identity {ident}.\n"
            "# No Role or RoleBinding and no token: a task pod needs no Kubernetes API access.\n"
        )
    if kind == "Role":
        return "# What KubernetesPodOperator calls in this namespace to launch, follow and clean up task pods.\n"
    if kind == "RoleBinding":
        return "# The Airflow worker's ServiceAccount launches the task pods.\n"
    return ""


def dump_manifests(docs: Iterable[dict[str, Any]], header: Sequence[str] = ()) -> str:
    """Return the documents as multi-document YAML for ``kubectl apply -f -``.

    :param docs: the documents, in order
    :param header: comment lines put first
    """
    out = [f"# {line}\n" for line in header]
    for doc in docs:
        out.append("---\n" + _comment(doc) + yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, width=4096))
    return "".join(out)
