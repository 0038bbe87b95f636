"""Run a real S3-compatible server (versitygw, Apache-2.0) for integration tests.

No pytest dependency: usable from pytest fixtures, scripts or a REPL::

    from s3server import VersityGW

    with VersityGW() as s3:
        client = s3.boto3_client()
        client.create_bucket(Bucket="demo")

The binary is built by ``make versitygw`` (tools/s3/build-versitygw.sh) into a
cache outside the checkout; ``DATAFLOW_VERSITYGW`` overrides its path.

Every start uses a fresh temp dir and a free port picked at start, with no
pid files, so a previous run that was killed leaves nothing that can get in
the way of the next one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Keep in step with VERSITYGW_VERSION in tools/s3/build-versitygw.sh.
VERSITYGW_VERSION = "v1.8.0"
DEFAULT_TOOLS_CACHE = "/var/cache/airflow-dataflow"
REGION = "us-east-1"
HEALTH_PATH = "/dataflow-health"
WORKDIR_PREFIX = "dataflow-versitygw-"
LOCK_NAME = ".in-use.lock"


class VersityGWError(RuntimeError):
    """The versitygw binary is missing or the server could not be started."""


def versitygw_binary() -> Path:
    """Path of the versitygw binary; raises VersityGWError if it is missing."""
    override = os.environ.get("DATAFLOW_VERSITYGW")
    if override:
        path = Path(override)
        origin = "DATAFLOW_VERSITYGW"
    else:
        cache = os.environ.get("DATAFLOW_TOOLS_CACHE", DEFAULT_TOOLS_CACHE)
        path = Path(cache) / "versitygw" / VERSITYGW_VERSION / "bin" / "versitygw"
        origin = "the tools cache"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise VersityGWError(
            f"versitygw binary not found at {path} (from {origin}). "
            "Build it with `make versitygw` "
            "(or `bash tools/s3/build-versitygw.sh`), "
            "or point DATAFLOW_VERSITYGW at an existing binary."
        )
    return path


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class VersityGW:
    """A versitygw server with the posix backend on a fresh temp dir.

    Use as a context manager (or call start()/stop()). While running it has
    ``endpoint_url``, ``access_key``, ``secret_key`` and ``region``.
    """

    def __init__(
        self,
        *,
        binary: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        access_key: str = "dataflow-test-access",
        secret_key: str = "dataflow-test-secret-key",
        region: str = REGION,
        versioning: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        self.binary = Path(binary) if binary else None
        self.host = host
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.versioning = versioning
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.endpoint_url: str | None = None
        self.workdir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None
        self._lock_fd: int | None = None

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "VersityGW":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> "VersityGW":
        if self.proc is not None:
            raise VersityGWError("versitygw is already started")
        binary = self.binary or versitygw_binary()
        _remove_abandoned_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        # Held (flock) while this object uses the dir; the kernel drops it when
        # the process dies, so a later start can tell abandoned dirs apart.
        self._lock_fd = os.open(self.workdir / LOCK_NAME, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        data = self.workdir / "data"
        versions = self.workdir / "versions"
        data.mkdir()
        versions.mkdir()
        log_path = self.workdir / "versitygw.log"
        self._log = open(log_path, "wb")

        # The port is picked free just before the start; should another
        # process grab it in between, the server exits and we try again.
        last_error = ""
        for _attempt in range(3):
            self.port = _free_port(self.host)
            self.endpoint_url = f"http://{self.host}:{self.port}"
            cmd = [
                str(binary),
                "--port",
                f"{self.host}:{self.port}",
                "--region",
                self.region,
                "--health",
                HEALTH_PATH,
                "--quiet",
                "posix",
            ]
            if self.versioning:
                cmd += ["--versioning-dir", str(versions)]
            cmd.append(str(data))
            # versitygw reads VGW_*, ROOT_*, LOGFILE, WEBHOOK from the environment:
            # drop any inherited ones so only the flags below apply.
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("VGW_", "ROOT_", "ADMIN_"))
                and k not in ("LOGFILE", "WEBHOOK")
            }
            # Credentials go through the environment, not argv (ps shows argv).
            env["ROOT_ACCESS_KEY"] = self.access_key
            env["ROOT_SECRET_KEY"] = self.secret_key
            try:
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=self.workdir,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                self.stop()
                raise VersityGWError(f"cannot run {binary}: {exc}") from exc
            try:
                self._wait_ready()
                return self
            except VersityGWError as exc:
                last_error = str(exc)
                self._stop_process()
        self.stop()
        raise VersityGWError(last_error)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VersityGWError(
                    f"versitygw exited with code {self.proc.returncode} "
                    f"before answering on {self.endpoint_url}:\n{self.log_tail()}"
                )
            try:
                urllib.request.urlopen(self.endpoint_url + HEALTH_PATH, timeout=1).close()
                return
            except (urllib.error.URLError, OSError):
                # Includes HTTPError: up but not healthy yet (or a stranger on
                # the port, which the poll() above or the deadline catches).
                time.sleep(0.05)
        raise VersityGWError(
            f"versitygw did not answer on {self.endpoint_url} within "
            f"{self.start_timeout:.0f}s:\n{self.log_tail()}"
        )

    def _stop_process(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """Stop the server (SIGTERM by pid, then SIGKILL) and remove its files."""
        self._stop_process()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- helpers -----------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        if self.workdir is None:
            return ""
        try:
            text = (self.workdir / "versitygw.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def boto3_client(self, **config_kwargs: object):
        """A boto3 S3 client for this server.

        Path-style addressing. Checksums are computed/validated only when an
        operation requires it, so the client behaves the same with boto3
        before and after 1.36 (which started sending CRC32 on every upload);
        pass ``request_checksum_calculation="when_supported"`` to override.
        """
        import boto3
        from botocore.config import Config

        if self.endpoint_url is None:
            raise VersityGWError("versitygw is not running")
        options: dict[str, object] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 2, "mode": "standard"},
        }
        if _botocore_has_checksum_config():
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        options.update(config_kwargs)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )

    def airflow_connection(self) -> dict[str, object]:
        """The Airflow connection (JSON form) for an ``aws`` conn to this server."""
        return {
            "conn_type": "aws",
            "login": self.access_key,
            "password": self.secret_key,
            "extra": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }


def _remove_abandoned_workdirs() -> None:
    """Remove temp dirs left by runs that were killed before their cleanup."""
    for path in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            fd = os.open(path / LOCK_NAME, os.O_RDWR)
        except OSError:
            continue  # not ours, or being set up right now
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # in use by a live run
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux).

    So a test run that is killed (SIGKILL skips all cleanup) does not leave
    a server running behind it.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _botocore_has_checksum_config() -> bool:
    from botocore.config import Config

    try:
        Config(request_checksum_calculation="when_required")
    except TypeError:
        return False
    return True
