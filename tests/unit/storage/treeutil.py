"""Helpers shared by the local-storage tests: write a tree of files, read one back with plain os calls.

Imported as a top-level module (``from treeutil import ...``): the tests have no ``__init__.py``, so pytest
puts this folder on ``sys.path`` for the test files in it.
"""

from __future__ import annotations

import os


def write_tree(root, files: dict[str, bytes], mtime: float | None = None) -> None:
    """Write ``files`` (relative path -> bytes) under ``root``; with ``mtime``, set it on every file."""
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))


def read_plain(root) -> dict[str, bytes]:
    """Read a directory with nothing but os.walk and open()."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, root)] = fh.read()
    return out
