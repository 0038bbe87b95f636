"""The ``local`` runner: the command as a subprocess on this machine.

The embedded default for laptops, demos and fast tests. Inputs are the committed
snapshot trees themselves (read-only files in read-only folders), so nothing is
copied in; the image is not pulled or used, but it still counts in the cache key.
"""

from __future__ import annotations

import os
import subprocess

from airflow_dataflow.exceptions import TaskCommandError
from airflow_dataflow.runners.base import LogFn, Runner, RunRequest


class LocalRunner(Runner):
    """Run commands as subprocesses with the task I/O contract.

    :param inherit_env: pass this process's environment to the command (the
        contract's variables are always set)
    """

    name = "local"
    #: commands started by local runners in this process (for demos and tests)
    started = 0

    def __init__(self, inherit_env: bool = True) -> None:
        self.inherit_env = inherit_env

    def run(self, request: RunRequest, log: LogFn) -> None:
        env = dict(os.environ) if self.inherit_env else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        env.update(request.env)
        env.update(request.contract_env())
        shown = " ".join(request.command)
        log(f"run: {shown}")
        LocalRunner.started += 1
        try:
            proc = subprocess.Popen(
                request.command,
                env=env,
                cwd=request.workdir or request.output_dir,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
        except OSError as err:
            raise TaskCommandError(f"cannot start {request.command[0]!r}: {err.strerror}; check the command") from err
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                log(line.rstrip("\n"))
        code = proc.wait()
        if code != 0:
            raise TaskCommandError(f"command {shown!r} exited with status {code}; see its output above")
