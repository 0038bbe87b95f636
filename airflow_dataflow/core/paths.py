"""Validation of the relative paths that name files inside a dataset.

A dataset path is a relative POSIX path in UTF-8: no leading ``/``, no ``.`` or
``..`` component, no empty component, no NUL, and no component is the reserved
metadata folder name ``_dataflow``.
"""

from __future__ import annotations

import os

from airflow_dataflow.exceptions import InvalidPathError

RESERVED_DIR = "_dataflow"


def decode_name(raw: bytes, where: str) -> str:
    """Decode a file name read from disk as UTF-8, or raise naming the file.

    :param raw: the name as bytes, as the filesystem returned it
    :param where: the directory holding the file, for the message
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        shown = raw.decode("utf-8", errors="backslashreplace")
        raise InvalidPathError(
            f"file name '{shown}' in {where!r} is not valid UTF-8 (undecodable bytes shown as \\xNN); "
            "rename it to UTF-8 (dataset paths are UTF-8 so that manifests, S3 keys "
            "and every reader agree on them)"
        ) from None


def validate_relpath(path: str, where: str = "") -> str:
    """Return ``path`` if it is a safe relative dataset path, else raise.

    :param path: candidate relative POSIX path
    :param where: the manifest or directory it came from, for the message
    """
    ctx = f" in {where}" if where else ""
    if not isinstance(path, str) or not path:
        raise InvalidPathError(f"empty file path{ctx}; every file needs a relative path")
    if "\x00" in path:
        raise InvalidPathError(f"file path {path!r}{ctx} contains a NUL byte")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise InvalidPathError(
            f"file path {path!r}{ctx} is absolute; dataset paths are relative to the dataset root"
        )
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidPathError(
                f"file path {path!r}{ctx} has a {part or 'empty'!r} component; "
                "paths must be normalised and stay inside the dataset (no '..')"
            )
    if RESERVED_DIR in parts:
        raise InvalidPathError(
            f"file path {path!r}{ctx} has a component named {RESERVED_DIR!r}, which is reserved for "
            "dataset metadata; rename that file or folder"
        )
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPathError(f"file path {path!r}{ctx} is not valid UTF-8") from None
    return path


def inside(root: str, target: str) -> bool:
    """Tell whether ``target`` (absolute, resolved) lies inside ``root`` (resolved)."""
    root = root.rstrip(os.sep)
    return target == (root or os.sep) or target.startswith(root + os.sep)
