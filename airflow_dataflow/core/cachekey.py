"""Cache keys: the digest of everything that determines a task's output.

A key covers the code version (container image, command, arguments, non-secret
environment, the user's ``version`` string), the params, the partition, the mode
and the input snapshot digests; in per-file mode the input file's path and
digest replace the per-file input's snapshot digest. It never covers the DAG id,
task id, run id, environment, try number or secret values: renaming a DAG,
moving a task, retrying or testing in another environment reuse the outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import pyarrow as pa

from airflow_dataflow.core.hashing import digest_bytes, hash_struct

CODE_TAG = "dataflow-code-v1"
WHOLE_TAG = "dataflow-whole-v1"
FILE_TAG = "dataflow-file-v1"


@dataclass(frozen=True)
class CodeVersion:
    """What a task runs, and with which settings; the part of a key shared by all its files.

    :param image: container image (a digest reference when the runner resolved one)
    :param command: command and arguments
    :param env: non-secret environment variables given to the command
    :param version: the user's version string, bumped to force a rerun
    :param params: task params
    :param partition: partition key, or None
    :param mode: ``per_file`` or ``whole``
    :param side_inputs: snapshot digests of inputs read whole (per-file mode), or
        of every input (whole mode)
    """

    image: str
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    partition: str | None = None
    mode: str = "whole"
    side_inputs: Mapping[str, str] = field(default_factory=dict)

    def components(self) -> dict[str, Any]:
        """Return the key's components as plain values (for ``explain``)."""
        doc = asdict(self)
        doc["command"] = list(self.command)
        doc["env"] = dict(self.env)
        doc["params"] = dict(self.params)
        doc["side_inputs"] = dict(self.side_inputs)
        return doc

    @cached_property
    def key(self) -> str:
        """The code key: the whole-mode cache key, and the prefix of per-file keys."""
        return hash_struct(CODE_TAG, self.components())


def file_keys(code_key: str, paths: pa.Array | pa.ChunkedArray, digests: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return the per-file cache key of each (path, digest) under ``code_key``.

    ``sha256("dataflow-file-v1\\0" + code_key + "\\0" + path + "\\0" + digest)``
    """
    prefix = f"{FILE_TAG}\x00{code_key}\x00".encode()
    out = [
        digest_bytes(prefix + p.encode() + b"\x00" + d.encode())
        for p, d in zip(paths.to_pylist(), digests.to_pylist(), strict=True)
    ]
    return pa.array(out, pa.string())


def differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Return the names of the components that differ between two component dicts."""
    names = sorted(set(a) | set(b))
    return [n for n in names if a.get(n) != b.get(n)]
