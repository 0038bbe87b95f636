"""Task identities on Kubernetes: one ServiceAccount and one uid/gid per task.

Every task runs as the identity of (installing owner, environment, DAG, task):

- :mod:`~airflow_dataflow.identity.naming` (pure, no Airflow or Kubernetes import):
  the deterministic ServiceAccount name, label values and the namespace policy;
- :mod:`~airflow_dataflow.identity.config`: the settings (``[dataflow]
  identity_map``, ``iam_role_pattern``, ``namespace``, ``launcher_service_account``),
  the identity map file (uid/gid per owner and environment) and
  :func:`~airflow_dataflow.identity.config.task_identity`, which bundles it all
  for a runner;
- :mod:`~airflow_dataflow.identity.security`: the pod and container
  ``securityContext`` objects;
- :mod:`~airflow_dataflow.identity.rbac`: the manifests printed by
  ``airflow-dataflow k8s manifests``;
- :mod:`~airflow_dataflow.identity.cli`: that command.

This package imports nothing on import; use the submodules.
"""

from __future__ import annotations
