"""The ``airflow-dataflow`` command line.

Subcommands: ``scan``, ``diff``, ``log``, ``show`` (and more registered by
later modules). Every subcommand takes ``--json`` for machine-readable output.
S3 URIs use boto3's default credentials and ``AWS_ENDPOINT_URL``, or an Airflow
connection with ``--aws-conn-id``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from airflow_dataflow.exceptions import DataflowError

Handler = Callable[[argparse.Namespace], int]


def _hook(args: argparse.Namespace) -> Any:
    from airflow_dataflow.hooks.manifest import DatasetManifestHook

    return DatasetManifestHook(aws_conn_id=args.aws_conn_id, progress=lambda line: print(line, file=sys.stderr))


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        print(text)


def cmd_scan(args: argparse.Namespace) -> int:
    """Scan a directory or URI: digest, file count, bytes."""
    manifest = _hook(args).scan(args.target)
    if args.output:
        manifest.write(args.output)
    doc = {"target": args.target, "digest": manifest.digest, "files": len(manifest), "bytes": manifest.total_bytes}
    _emit(args, doc, f"{manifest.digest}  {len(manifest)} files  {manifest.total_bytes} bytes  {args.target}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two snapshots, manifests or directories."""
    hook = _hook(args)
    change = hook.diff(hook.resolve(args.a), hook.resolve(args.b))
    doc = change.to_dict()
    lines = [f"+ {p}" for p in doc["added"]] + [f"M {p}" for p in doc["modified"]]
    lines += [f"- {p}" for p in doc["deleted"]]
    lines.append(
        f"{len(doc['added'])} added, {len(doc['modified'])} modified, "
        f"{len(doc['deleted'])} deleted, {doc['unchanged']} unchanged"
    )
    _emit(args, doc, "\n".join(lines))
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    """Show the commits of a dataset, newest first."""
    records = list(reversed(_hook(args).log_records(args.uri)))
    docs = [r.to_dict() for r in records]
    lines = []
    for r in records:
        i = r.info
        stats = " ".join(f"{k}={v}" for k, v in sorted(i.stats.items()) if not isinstance(v, (dict, list)))
        who = f"{i.dag_id}.{i.task_id}" if i.dag_id else "-"
        lines.append(
            f"#{r.seq} {r.digest[:12]} parent={(r.parent or '-')[:12]} {r.to_dict()['time_iso']} "
            f"{i.author} {who} run={i.run_id or '-'} files={r.files} bytes={r.bytes} {stats}".rstrip()
        )
    _emit(args, docs, "\n".join(lines) if lines else "no commits")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """List the files of a snapshot (``URI`` for HEAD or ``URI@DIGEST``)."""
    manifest = _hook(args).resolve(args.spec)
    rows = manifest.rows()
    doc = {"digest": manifest.digest, "files": rows}
    text = "\n".join(f"{r['digest'][:12]} {r['size']:>12} {r['path']}" for r in rows)
    _emit(args, doc, f"snapshot {manifest.digest}\n{text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the CLI."""
    parser = argparse.ArgumentParser(prog="airflow-dataflow", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and debug lines")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="print one JSON document")
        p.add_argument("--aws-conn-id", default=None, help="Airflow connection for s3:// URIs")
        p.set_defaults(handler=handler)
        return p

    p = add("scan", cmd_scan, "scan a directory or URI into a manifest and print its digest")
    p.add_argument("target", metavar="PATH_OR_URI")
    p.add_argument("-o", "--output", help="also write the manifest to this Parquet file")
    p = add("diff", cmd_diff, "print the files added, modified and deleted from A to B")
    p.add_argument("a", metavar="A", help="directory, URI, manifest .parquet, URI (HEAD) or URI@DIGEST")
    p.add_argument("b", metavar="B")
    p = add("log", cmd_log, "print the commits of a dataset, newest first")
    p.add_argument("uri", metavar="URI")
    p = add("show", cmd_show, "print the files of a snapshot")
    p.add_argument("spec", metavar="URI[@DIGEST]")
    for register in _extensions():
        register(sub, add)
    return parser


def _extensions() -> list[Callable[..., None]]:
    """Return the subcommand registrars of other modules (explain, k8s...)."""
    import importlib

    out = []
    for module in ("airflow_dataflow.explain", "airflow_dataflow.identity.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if not (err.name and module.startswith(err.name)):  # a broken extension must not hide
                raise
            continue
        out.append(mod.register_cli)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for bad input, 1 for other errors)."""
    import os

    # Airflow logs to stdout; keep stdout for results (one JSON document with --json).
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    args = build_parser().parse_args(argv)
    from airflow_dataflow.core.manifest import use_returning_memory_pool

    use_returning_memory_pool()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.handler(args)
    except DataflowError as err:
        print(f"airflow-dataflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
