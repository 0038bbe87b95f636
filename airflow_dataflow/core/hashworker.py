"""A hashing worker process: ``python -m airflow_dataflow.core.hashworker``.

Reads NUL-separated file paths on stdin and writes, for each, one line on
stdout: the hex SHA-256 of the file, or ``!<errno>\\t<message>`` if it cannot be
read. The local scanner runs one per core for many small files, where Python's
per-file overhead would otherwise hold one core. It imports nothing but the
standard library and :mod:`airflow_dataflow.core.hashing`, so it starts fast.
"""

from __future__ import annotations

import os
import sys

from airflow_dataflow.core.hashing import digest_small_files


def main() -> int:
    """Hash the paths given on stdin; return the exit status."""
    paths = [os.fsdecode(raw) for raw in sys.stdin.buffer.read().split(b"\0") if raw]
    lines = []
    for start in range(0, len(paths), 1024):
        batch = paths[start : start + 1024]
        try:
            lines.extend(digest_small_files(batch))
        except OSError:  # find which file, and say why, keeping the others
            for path in batch:
                try:
                    lines.extend(digest_small_files([path]))
                except OSError as err:
                    lines.append(f"!{err.errno or 0}\t{err.strerror or err}")
    sys.stdout.write("\n".join(lines) + ("\n" if lines else ""))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
