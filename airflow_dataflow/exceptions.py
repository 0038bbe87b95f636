"""Exceptions of airflow_dataflow.

Every message says what went wrong, where (the path, URI or object) and what to do.
The pure core raises these too, so this module imports nothing from Airflow.
"""

from __future__ import annotations


class DataflowError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidPathError(DataflowError, ValueError):
    """A relative path is unsafe or unsupported (``..``, absolute, reserved, not UTF-8)."""


class ScanError(DataflowError):
    """A directory or prefix could not be scanned into a manifest."""


class ManifestError(DataflowError):
    """A manifest file is missing, corrupt, foreign or of an unsupported version."""


class SnapshotNotFoundError(DataflowError, LookupError):
    """No snapshot with the requested digest, or no HEAD yet, for a dataset."""


class ConcurrentCommitError(DataflowError):
    """HEAD moved between reading it and committing: another writer won the race."""


class EnvironmentViolationError(DataflowError, PermissionError):
    """An attempt to write outside the current environment."""


class StorageError(DataflowError, OSError):
    """A storage backend failed (permission, network, missing bucket...)."""


class TaskCommandError(DataflowError):
    """A task's container command failed."""
