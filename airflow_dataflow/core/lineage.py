"""Per-file lineage: which input file each output file of a per-file task came from.

The rule, in order:

1. if the task wrote a lineage file (``$DATAFLOW_LINEAGE``, lines of
   ``output_path<TAB>input_path``), it decides;
2. an output whose path equals an input's path, or equals it with another
   extension (``a/x.csv`` -> ``a/x.json``), or lies in a folder named after the
   input without its extension (``a/x.csv`` -> ``a/x/part-0.parquet``), comes
   from that input.

An output that matches no input of the batch is an error naming it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable

from airflow_dataflow.core.paths import validate_relpath
from airflow_dataflow.exceptions import TaskCommandError


def _stem(path: str) -> str:
    root, ext = posixpath.splitext(path)
    return root if ext and not posixpath.basename(path).startswith(".") else path


def parse_lineage_file(text: str, where: str) -> dict[str, str]:
    """Parse ``output<TAB>input`` lines."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise TaskCommandError(f"{where}:{n}: expected 'output_path<TAB>input_path', got {line!r}")
        out[validate_relpath(parts[0], where)] = validate_relpath(parts[1], where)
    return out


def attribute(outputs: Iterable[str], inputs: Iterable[str], declared: dict[str, str] | None = None) -> dict[str, str]:
    """Map each output path to the input path it came from.

    :param outputs: output paths written by one batch
    :param inputs: the input paths that batch processed
    :param declared: lineage the task declared (wins over the naming rule)
    :raises TaskCommandError: an output matches no input, or a declared input
        was not in the batch
    """
    inputs = list(inputs)
    in_set = set(inputs)
    by_stem: dict[str, str] = {}
    for p in inputs:
        by_stem.setdefault(_stem(p), p)
        by_stem.setdefault(p, p)
    declared = declared or {}
    result: dict[str, str] = {}
    orphans = []
    for out in outputs:
        if out in declared:
            src = declared[out]
            if src not in in_set:
                raise TaskCommandError(
                    f"lineage file maps {out!r} to {src!r}, which is not an input of this batch"
                )
            result[out] = src
            continue
        src = by_stem.get(out) or by_stem.get(_stem(out))
        if src is None:
            # a folder named after the input: walk up the parents
            parent = posixpath.dirname(out)
            while parent and src is None:
                src = by_stem.get(parent)
                parent = posixpath.dirname(parent)
        if src is None:
            orphans.append(out)
        else:
            result[out] = src
    if orphans:
        shown = ", ".join(repr(o) for o in orphans[:5])
        raise TaskCommandError(
            f"per-file task wrote {len(orphans)} output(s) that match no input file ({shown}): name each output "
            "after its input (same path, another extension, or a folder named after it) or list "
            "'output<TAB>input' lines in $DATAFLOW_LINEAGE"
        )
    return result
