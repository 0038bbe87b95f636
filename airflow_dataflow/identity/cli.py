"""``airflow-dataflow k8s manifests DAG_ID``: the ServiceAccounts and RBAC of a DAG's tasks.

Registered by :func:`airflow_dataflow.cli.build_parser` through :func:`register_cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from airflow_dataflow.exceptions import DataflowError


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set ``DATAFLOW_<NAME>`` variables while DAG files are parsed, then restore them."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def load_dag(dag_id: str, dags_folder: str | None, env: str | None = None) -> Any:
    """Parse the DAG files of ``dags_folder`` (as environment ``env``, if given) and return DAG ``dag_id``.

    Datasets take their environment when the DAG file is parsed, so
    ``DATAFLOW_ENV`` is set to ``env`` meanwhile. Anything the DAG files print
    goes to stderr, so that stdout stays valid YAML (or JSON). Also used by
    ``airflow-dataflow explain``.

    :param dag_id: the DAG
    :param dags_folder: folder or file to parse; default: Airflow's ``[core] dags_folder``
    :param env: the environment; default: leave ``DATAFLOW_ENV`` as it is
    """
    with contextlib.redirect_stdout(sys.stderr), _environment(**({"DATAFLOW_ENV": env} if env else {})):
        from airflow import settings
        from airflow.dag_processing.dagbag import DagBag

        folder = dags_folder or settings.DAGS_FOLDER
        if not Path(folder).exists():
            raise DataflowError(f"cannot load DAG {dag_id!r}: DAGs folder {folder} does not exist; pass --dags-folder")
        bag = DagBag(dag_folder=folder)
    dag = bag.dags.get(dag_id)
    if dag is None:
        errors = "".join(f"\n  {path}: {err.strip().splitlines()[-1]}" for path, err in sorted(bag.import_errors.items()))
        raise DataflowError(
            f"no DAG {dag_id!r} in {folder} (found: {', '.join(sorted(bag.dags)) or 'none'})"
            + (f"; import errors:{errors}" if errors else "")
            + "; pass --dags-folder to parse another folder"
        )
    return dag


def cmd_manifests(args: argparse.Namespace) -> int:
    """Print the ServiceAccounts, Role and RoleBinding of a DAG's tasks as YAML."""
    from airflow_dataflow.config import DataflowConfig, validate_env
    from airflow_dataflow.identity.config import IdentityConfig
    from airflow_dataflow.identity.rbac import dag_manifests, dump_manifests, identity_task_ids

    env = validate_env(args.env) if args.env else DataflowConfig.load().env
    owner = args.owner or DataflowConfig.load().owner
    config = IdentityConfig.load()
    if args.launcher_service_account:
        config = dataclasses.replace(config, launcher_service_account=args.launcher_service_account)
    dag = load_dag(args.dag_id, args.dags_folder, env)
    docs = dag_manifests(
        dag,
        owner=owner,
        env=env,
        config=config,
        namespace=args.namespace,
        with_namespace=args.with_namespace,
        launcher_namespace=args.launcher_namespace,
        allow_exec=args.allow_exec,
    )
    if args.json:
        print(json.dumps(docs, sort_keys=True, indent=2))
        return 0
    tasks = identity_task_ids(dag)
    namespace = args.namespace or config.namespace_for(env)
    header = [
        f"airflow-dataflow k8s manifests {args.dag_id} --env {env}: owner {owner}, namespace {namespace}",
        f"{len(tasks)} task identit{'y' if len(tasks) == 1 else 'ies'}: {', '.join(tasks) or 'none'}",
        "Apply with: kubectl apply -f -",
    ]
    sys.stdout.write(dump_manifests(docs, header))
    return 0


def register_cli(sub: argparse._SubParsersAction, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the ``k8s`` command group (``k8s manifests``) to the CLI."""

    def usage(args: argparse.Namespace) -> int:
        k8s.print_help(sys.stderr)
        return 2

    k8s = add("k8s", usage, "Kubernetes: manifests of the task identities")
    group = k8s.add_subparsers(dest="k8s_command", metavar="COMMAND")
    p = group.add_parser(
        "manifests",
        help="print the ServiceAccounts and RBAC of a DAG's tasks, for kubectl apply -f -",
        description=(
            "Print, ready for `kubectl apply -f -`, a ServiceAccount per task that runs a pod (no API rights, "
            "no token, optional IAM role annotation from [dataflow] iam_role_pattern) and the Role and "
            "RoleBinding that let the Airflow worker launch the pods."
        ),
    )
    p.add_argument("dag_id", metavar="DAG_ID")
    p.add_argument("--env", help="environment (default: [dataflow] env)")
    p.add_argument("--owner", help="installing owner (default: [dataflow] owner)")
    p.add_argument("--namespace", help="namespace of the task pods (default: [dataflow] namespace)")
    p.add_argument("--dags-folder", help="folder or file of DAGs to parse (default: Airflow's [core] dags_folder)")
    p.add_argument("--with-namespace", action="store_true", help="also print the Namespace")
    p.add_argument(
        "--launcher-service-account",
        help="the Airflow worker's ServiceAccount (default: [dataflow] launcher_service_account, airflow-worker)",
    )
    p.add_argument("--launcher-namespace", help="namespace of that ServiceAccount (default: the task namespace)")
    p.add_argument(
        "--allow-exec", action="store_true", help="grant the worker pods/exec (only do_xcom_push needs it)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list of the documents instead")
    p.set_defaults(handler=cmd_manifests)
