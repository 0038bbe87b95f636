"""The runner interface: where a task's command runs, with the task I/O contract.

The task I/O contract (what the command sees; the image needs nothing of this
package):

===================== ==============================================================
variable              meaning
===================== ==============================================================
DATAFLOW_INPUT_DIR    read-only directory of the first (per-file: the per-file) input
DATAFLOW_INPUT_<NAME> read-only directory of input ``NAME`` (upper case, ``-`` -> ``_``)
DATAFLOW_INPUTS       JSON object: input name -> directory
DATAFLOW_OUTPUT_DIR   empty directory; everything written here becomes the output
DATAFLOW_FILES        per-file mode: a text file listing the input paths to process,
                      one relative UTF-8 path per line (relative to DATAFLOW_INPUT_DIR)
DATAFLOW_FILE_COUNT   per-file mode: number of lines in DATAFLOW_FILES
DATAFLOW_LINEAGE      per-file mode: optional file the command may write with
                      ``output_path<TAB>input_path`` lines (see core.lineage)
DATAFLOW_MODE         ``per_file`` or ``whole``
DATAFLOW_PARTITION    partition key, empty when the dataset is not partitioned
DATAFLOW_PARAMS       JSON object of the task's params
DATAFLOW_ENV          environment name (``prod``, ``test-alice``)
===================== ==============================================================

A command that exits non-zero fails the task; nothing it wrote is committed.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

LogFn = Callable[[str], None]


def input_var(name: str) -> str:
    """Return the environment variable naming input ``name``'s directory."""
    return "DATAFLOW_INPUT_" + "".join(c if c.isalnum() else "_" for c in name).upper()


@dataclass
class RunRequest:
    """One execution of a task's command.

    :param command: argv of the command
    :param inputs: input name -> local directory (read-only for the command)
    :param primary: name of the input exposed as ``DATAFLOW_INPUT_DIR``
    :param output_dir: empty directory the command writes to
    :param files_list: per-file mode: file listing the input paths to process
    :param file_count: number of paths in ``files_list``
    :param lineage_file: where the command may declare lineage
    :param mode: ``per_file`` or ``whole``
    :param partition: partition key or None
    :param params: task params (JSON-able)
    :param env_name: environment name
    :param env: extra environment variables (user env and secrets)
    :param workdir: working directory of the command
    """

    command: list[str]
    inputs: Mapping[str, str]
    primary: str | None
    output_dir: str
    mode: str
    env_name: str
    files_list: str | None = None
    file_count: int = 0
    lineage_file: str | None = None
    partition: str | None = None
    params: Mapping[str, object] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None

    def contract_env(self) -> dict[str, str]:
        """Return the contract's environment variables (see the module docstring)."""
        env = {
            "DATAFLOW_OUTPUT_DIR": self.output_dir,
            "DATAFLOW_MODE": self.mode,
            "DATAFLOW_PARTITION": self.partition or "",
            "DATAFLOW_PARAMS": json.dumps(dict(self.params), sort_keys=True),
            "DATAFLOW_ENV": self.env_name,
            "DATAFLOW_INPUTS": json.dumps(dict(self.inputs), sort_keys=True),
        }
        for name, path in self.inputs.items():
            env[input_var(name)] = path
        if self.primary is not None:
            env["DATAFLOW_INPUT_DIR"] = self.inputs[self.primary]
        if self.files_list is not None:
            env["DATAFLOW_FILES"] = self.files_list
            env["DATAFLOW_FILE_COUNT"] = str(self.file_count)
        if self.lineage_file is not None:
            env["DATAFLOW_LINEAGE"] = self.lineage_file
        return env


class Runner(ABC):
    """Runs a command under the task I/O contract."""

    name: str = ""

    @abstractmethod
    def run(self, request: RunRequest, log: LogFn) -> None:
        """Run the command to completion, streaming its output to ``log``.

        :raises TaskCommandError: the command failed or could not start
        """

    def resolve_image(self, image: str) -> str:
        """Return the most precise reference of ``image`` the runner can tell (a digest if possible)."""
        return image
