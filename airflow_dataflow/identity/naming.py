"""Names of task identities: ServiceAccounts, label values, namespaces (pure).

A task's identity is the tuple (owner, environment, DAG id, task id). Its
ServiceAccount name is:

- ``df-<owner>-<env>-<dag>-<task>`` when every part is already made only of
  ``[a-z0-9]`` and the whole fits in 63 characters: the name then reads back
  into exactly one tuple (the parts hold no ``-``, so ``df-`` plus four
  ``-``-joined parts splits one way only);
- otherwise ``df-<readable>--<hash>``: each part lowercased, every run of other
  characters turned into one ``-``, the longest parts shortened until the name
  fits, then ``--`` and 10 base32 characters (50 bits) of the SHA-256 of the
  exact tuple. Names of this form always hold ``--`` and names of the first
  form never do, so the two forms never meet; two tuples that sanitise alike
  (``a_b`` and ``a-b``, ``Sales`` and ``sales``) differ by their hash.

Every name is a DNS-1123 label (``[a-z0-9]([-a-z0-9]*[a-z0-9])?``, at most 63
characters), so it is a valid ServiceAccount name and a valid label value too.
``dag_id`` and ``task_id`` are Airflow's full ids (a task in a task group is
``group.task``).

Namespace policy (:func:`namespace_for`): the ``[dataflow] namespace`` setting
is a template where ``{env}`` is optional. Its default, ``airflow``, puts every
environment's task pods in one namespace beside Airflow: the shared data
volume (a PersistentVolumeClaim, which is namespaced) and the worker's
pod-launching rights then need no copy per namespace, and environments stay
apart through their own uids/gids and IAM roles. ``dataflow-{env}`` gives each
environment its own namespace (its own ServiceAccounts, Secrets and quotas); the
data PVC must then exist in every such namespace, and ``airflow-dataflow k8s
manifests --namespace`` is run once per environment.

Nothing here imports Airflow or Kubernetes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string

from airflow_dataflow.exceptions import DataflowError

PREFIX = "df"
MAX_NAME_LENGTH = 63
HASH_LENGTH = 10
DEFAULT_NAMESPACE_PATTERN = "airflow"

DNS1123_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SIMPLE_RE = re.compile(r"^[a-z0-9]+$")
_UNSAFE_RE = re.compile(r"[^a-z0-9]+")
_UNSAFE_LABEL_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_FIELDS = ("owner", "env", "dag_id", "task_id")


def identity_hash(*parts: str, length: int = HASH_LENGTH) -> str:
    """Return ``length`` lowercase base32 characters of the SHA-256 of the exact ``parts``.

    The parts are encoded as a tagged JSON list, so ``("a", "b-c")`` and
    ``("a-b", "c")`` hash apart.
    """
    payload = json.dumps(["dataflow-identity-v1", *parts], ensure_ascii=False, separators=(",", ":"))
    digest = hashlib.sha256(payload.encode("utf-8", "surrogatepass")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:length]


def sanitize(value: str) -> str:
    """Return ``value`` lowercased with each run of characters outside ``[a-z0-9]`` as one ``-``.

    Leading and trailing ``-`` are dropped; a value with nothing left becomes ``x``.
    """
    return _UNSAFE_RE.sub("-", value.lower()).strip("-") or "x"


def _check_parts(owner: str, env: str, dag_id: str, task_id: str) -> tuple[str, str, str, str]:
    parts = (owner, env, dag_id, task_id)
    for name, value in zip(_FIELDS, parts):
        if not isinstance(value, str) or not value:
            raise DataflowError(f"task identity: {name} must be a non-empty string, not {value!r}")
    return parts


def _shorten(parts: list[str], budget: int) -> list[str]:
    """Shorten the longest parts, one character at a time, until ``-``-joined they fit ``budget``."""
    parts = list(parts)
    while sum(map(len, parts)) + len(parts) - 1 > budget:
        longest = max(range(len(parts)), key=lambda i: (len(parts[i]), -i))
        parts[longest] = parts[longest][:-1]
    return [p.rstrip("-") for p in parts]


def service_account_name(owner: str, env: str, dag_id: str, task_id: str) -> str:
    """Return the ServiceAccount name of a task identity: deterministic, a DNS-1123 label.

    See the module docstring for the two forms. Distinct tuples give distinct
    names (the hashed form up to a 50-bit hash collision).

    :param owner: the installing owner (``[dataflow] owner``)
    :param env: the environment (``prod``, ``test-alice``)
    :param dag_id: the DAG id
    :param task_id: the full task id (``group.task`` inside a task group)
    """
    parts = _check_parts(owner, env, dag_id, task_id)
    plain = f"{PREFIX}-" + "-".join(parts)
    if all(_SIMPLE_RE.match(p) for p in parts) and len(plain) <= MAX_NAME_LENGTH:
        return plain
    suffix = "--" + identity_hash(*parts)
    budget = MAX_NAME_LENGTH - len(suffix) - len(PREFIX) - 1
    readable = "-".join(_shorten([sanitize(p) for p in parts], budget))
    return f"{PREFIX}-{readable}{suffix}"


def label_value(value: str) -> str:
    """Return ``value`` as a Kubernetes label value (at most 63 characters, label-safe).

    A value that already is one is returned unchanged. Otherwise the unsafe
    characters become ``-``, the result is cut to fit and ``-`` plus a short
    hash of the exact value is appended. Labels are for selecting; the exact
    identity travels in the ``dataflow.io/identity`` annotation.
    """
    if LABEL_VALUE_RE.match(value) and len(value) <= MAX_NAME_LENGTH:
        return value
    suffix = "-" + identity_hash(value)
    head = _UNSAFE_LABEL_RE.sub("-", value)[: MAX_NAME_LENGTH - len(suffix)]
    head = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", head)
    return f"{head}{suffix}" if head else suffix[1:]


def is_dns1123_label(value: str) -> bool:
    """Return whether ``value`` is a DNS-1123 label of at most 63 characters."""
    return len(value) <= MAX_NAME_LENGTH and bool(DNS1123_LABEL_RE.match(value))


def namespace_for(env: str, pattern: str = DEFAULT_NAMESPACE_PATTERN) -> str:
    """Return the namespace of an environment's task pods under ``pattern``.

    :param env: the environment
    :param pattern: the ``[dataflow] namespace`` template; ``{env}`` is its only
        placeholder (``airflow``: one namespace; ``dataflow-{env}``: one per environment)
    """
    fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    if fields - {"env"}:
        raise DataflowError(
            f"[dataflow] namespace {pattern!r}: unknown placeholder(s) {sorted(fields - {'env'})}; "
            "only {env} is filled in"
        )
    namespace = pattern.replace("{env}", env)
    if not is_dns1123_label(namespace):
        raise DataflowError(
            f"[dataflow] namespace {pattern!r} gives {namespace!r} for environment {env!r}, which is not a "
            "valid namespace name (lowercase letters, digits and '-', at most 63 characters)"
        )
    return namespace
