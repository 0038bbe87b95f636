"""``securityContext`` objects of task pods (Kubernetes client models).

The pod runs with the uid/gid of its identity (:class:`~airflow_dataflow.identity.config.PodIdentity`)
and the restricted Pod Security Standard: non-root, no privilege escalation,
a read-only root filesystem, every capability dropped, the runtime's default
seccomp profile. Tasks write only to their mounted output directory (and any
``emptyDir`` the runner mounts, such as ``/tmp``).
"""

from __future__ import annotations

from kubernetes.client import V1Capabilities, V1PodSecurityContext, V1SeccompProfile, V1SecurityContext

from airflow_dataflow.identity.config import PodIdentity


def pod_security_context(identity: PodIdentity) -> V1PodSecurityContext:
    """Return the pod-level ``securityContext`` of a task pod running as ``identity``.

    ``fsGroupChangePolicy: OnRootMismatch`` comes with ``fsGroup`` so that the
    kubelet does not walk a large volume at every start.
    """
    return V1PodSecurityContext(
        run_as_user=identity.run_as_user,
        run_as_group=identity.run_as_group,
        run_as_non_root=True,
        fs_group=identity.fs_group,
        fs_group_change_policy="OnRootMismatch" if identity.fs_group is not None else None,
        supplemental_groups=list(identity.supplemental_groups) or None,
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> V1SecurityContext:
    """Return the container-level ``securityContext`` of every container of a task pod."""
    return V1SecurityContext(
        run_as_non_root=True,
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        capabilities=V1Capabilities(drop=["ALL"]),
        seccomp_profile=V1SeccompProfile(type="RuntimeDefault"),
    )
