"""The pod helper: stages S3 data in and out beside a task container on Kubernetes.

It runs in the helper image (``localhost/dataflow-helper:dev``, recipe in
``tools/k8s/images/dataflow-helper/``) as an init container (``stage-in``) and
as the step after the task (``stage-out``), so that the task's own image needs
nothing of this package and no byte passes through the Airflow worker::

    python -m airflow_dataflow.podhelper stage-in|stage-out
    python /opt/dataflow/podhelper.py stage-in|stage-out      # in the helper image

This module imports only the standard library and boto3/botocore: the image
ships a bare CPython with those packages and this one file.

Input: the environment variable ``DATAFLOW_POD_SPEC``, a JSON object::

    {"version": 1,
     "s3": {"endpoint_url": "http://10.244.0.1:7070" | null, "region": "us-east-1"},
     "inputs": [{"name": "raw", "dir": "/dataflow/in/raw",
                 "list_uri": "s3://bucket/key.jsonl" | null, "primary": true}],
     "files_list": "/dataflow/files.txt" | null,
     "output": {"dir": "/dataflow/out",
                "store_uri": "s3://bucket/prefix/_dataflow/objects" | null,
                "result_uri": "s3://bucket/.../result.json" | null,
                "result_path": "/dataflow/result.json" | null,
                "lineage_path": "/dataflow/lineage.tsv"}}

``s3`` may also carry ``"addressing_style"`` (``path``, ``virtual`` or ``auto``;
default ``path`` when an endpoint is given, from the spec or
``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``, else ``auto``).

``stage-in``
    For each input with a ``list_uri``: reads that JSON-lines object (one
    ``{"path", "digest", "location"}`` per line), downloads every object to
    ``dir/path`` in parallel, checks each file's SHA-256 against ``digest``,
    then makes the files read-only (0444) and the directories 0555. Every
    input's ``dir`` and the output ``dir`` are created (the latter empty and
    writable). For the ``primary`` input, writes its paths to ``files_list``,
    one per line.

``stage-out``
    Walks ``output.dir`` (symlinks are followed inside it and refused when they
    leave it; only regular files; names must be UTF-8; ``_dataflow`` folders
    are skipped, as the local runner's scan does), hashes every file in
    parallel, and when ``store_uri`` is set uploads each to
    ``<store key>/sha256/<2 hex>/<62 hex>`` with ``ChecksumSHA256`` (the server
    verifies the bytes), ``x-amz-meta-dataflow-digest`` and ``If-None-Match: *``
    (an object already stored is not sent again: a HEAD first, and a 412 is
    fine). Then writes the result document::

        {"version": 1,
         "files": [{"path", "size", "mtime_ns", "digest", "location"}, ...],
         "lineage": "<text of lineage_path>" | null}

    to ``result_uri`` (PutObject) and/or ``result_path`` (atomic rename);
    ``location`` is ``s3://bucket/<key>`` of the stored object, or null when
    nothing was uploaded.

Credentials come from boto3's default chain: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (from a Secret), or IRSA on EKS (``AWS_ROLE_ARN`` +
``AWS_WEB_IDENTITY_TOKEN_FILE``). The helper writes only under the
directories of the spec: it runs as a non-root uid with a read-only root
filesystem.

Exit status 0 on success; on any error 1, with one line on stderr naming the
file or object and what to do. Progress goes to stdout every few seconds
(``DATAFLOW_HELPER_PROGRESS_S``, default 5), and a summary line at the end.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlsplit

SPEC_ENV = "DATAFLOW_POD_SPEC"
SPEC_VERSION = 1
RESULT_VERSION = 1
RESERVED_DIR = "_dataflow"
DIGEST_META = "dataflow-digest"  # the same object metadata as airflow_dataflow.storage.s3
CHUNK = 1 << 20
#: Files above this are uploaded in parts (the single PUT limit is 5 GiB).
MULTIPART_THRESHOLD = int(os.environ.get("DATAFLOW_HELPER_MULTIPART_THRESHOLD", str(4 * 1024**3)))
MULTIPART_CHUNK = 256 * 1024**2
DOWNLOAD_ATTEMPTS = 3
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_HEX = set("0123456789abcdef")


class HelperError(Exception):
    """An error with a message fit for the task log: what failed, where, what to do."""


def say(line: str) -> None:
    print(f"dataflow-helper: {line}", flush=True)


def _workers() -> int:
    env = os.environ.get("DATAFLOW_HELPER_WORKERS")
    if env:
        return max(1, int(env))
    return max(4, min(32, (os.cpu_count() or 2) * 4))


# ---------------------------------------------------------------------------------
# paths and URIs (the rules of airflow_dataflow.core.paths, restated)
# ---------------------------------------------------------------------------------
def validate_relpath(path: Any, where: str = "") -> str:
    """Return ``path`` if it is a safe relative dataset path, else raise HelperError."""
    ctx = f" in {where}" if where else ""
    if not isinstance(path, str) or not path:
        raise HelperError(f"empty or missing file path{ctx}; every file needs a relative path")
    if "\x00" in path:
        raise HelperError(f"file path {path!r}{ctx} contains a NUL byte")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise HelperError(f"file path {path!r}{ctx} is absolute; dataset paths are relative to the dataset root")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise HelperError(
                f"file path {path!r}{ctx} has a {part or 'empty'!r} component; "
                "paths must be normalised and stay inside the dataset (no '..')"
            )
    if RESERVED_DIR in parts:
        raise HelperError(f"file path {path!r}{ctx} has a component named {RESERVED_DIR!r}, which is reserved")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise HelperError(f"file path {path!r}{ctx} is not valid UTF-8") from None
    return path


def parse_s3_uri(uri: Any, what: str = "URI") -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key)."""
    if not isinstance(uri, str):
        raise HelperError(f"{what} {uri!r} is not an S3 URI (s3://bucket/key)")
    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("s3", "s3a") or not parts.netloc or not parts.path.strip("/") or parts.query:
        raise HelperError(f"{what} {uri!r} is not an S3 object URI (s3://bucket/key)")
    return parts.netloc, unquote(parts.path).lstrip("/")


def store_key(store_uri: str, digest: str) -> tuple[str, str]:
    """Return (bucket, key) of ``digest`` in the content store at ``store_uri``."""
    bucket, prefix = parse_s3_uri(store_uri, "output.store_uri")
    return bucket, f"{prefix.rstrip('/')}/sha256/{digest[:2]}/{digest[2:]}"


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


# ---------------------------------------------------------------------------------
# the spec
# ---------------------------------------------------------------------------------
def load_spec(text: str | None) -> dict[str, Any]:
    """Parse and check the pod spec (the JSON of ``DATAFLOW_POD_SPEC``)."""
    if not text:
        raise HelperError(f"{SPEC_ENV} is not set; the runner must pass the pod spec JSON in it")
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise HelperError(f"{SPEC_ENV} is not valid JSON ({err}); the runner must pass the pod spec JSON") from None
    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION:
        got = spec.get("version") if isinstance(spec, dict) else type(spec).__name__
        raise HelperError(
            f"{SPEC_ENV} has version {got!r}, this helper reads version {SPEC_VERSION}; "
            "use the helper image of the same airflow-dataflow release as the runner"
        )
    spec.setdefault("s3", {})
    spec.setdefault("inputs", [])
    out = spec.get("output")
    if not isinstance(out, dict) or not isinstance(out.get("dir"), str) or not out["dir"].startswith("/"):
        raise HelperError(f"{SPEC_ENV}: output.dir must be an absolute directory path")
    names = set()
    for inp in spec["inputs"]:
        if not isinstance(inp, dict) or not isinstance(inp.get("dir"), str) or not inp["dir"].startswith("/"):
            raise HelperError(f"{SPEC_ENV}: input {inp!r} needs a name and an absolute dir")
        if inp.get("name") in names:
            raise HelperError(f"{SPEC_ENV}: input {inp.get('name')!r} is listed twice")
        names.add(inp.get("name"))
    if sum(1 for inp in spec["inputs"] if inp.get("primary")) > 1:
        raise HelperError(f"{SPEC_ENV}: more than one input is primary")
    return spec


def _set_writable_home(spec: dict[str, Any]) -> None:
    """Point HOME and the temp dir at the work dir (the root filesystem is read-only)."""
    work = os.path.dirname(spec["output"]["dir"].rstrip("/")) or "/"
    if not os.environ.get("HOME") or not os.access(os.environ["HOME"], os.W_OK):
        os.environ["HOME"] = work
    if not os.environ.get("TMPDIR") or not os.access(os.environ["TMPDIR"], os.W_OK):
        os.environ["TMPDIR"] = work


# ---------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------
def make_client(spec: dict[str, Any], workers: int) -> Any:
    """Return a boto3 S3 client from the spec's ``s3`` section and the default credential chain."""
    import boto3
    from botocore.config import Config

    s3 = spec.get("s3") or {}
    endpoint = s3.get("endpoint_url") or None
    has_endpoint = bool(endpoint or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3"))
    style = s3.get("addressing_style") or ("path" if has_endpoint else "auto")
    config = Config(
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=max(10, workers),
        retries={"mode": "standard", "max_attempts": 5},
        s3={"addressing_style": style},
        connect_timeout=20,
        read_timeout=120,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=s3.get("region") or None, config=config)


def _code(err: BaseException) -> str:
    return str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))


def _status(err: BaseException) -> int:
    meta = (getattr(err, "response", None) or {}).get("ResponseMetadata", {})
    return int(meta.get("HTTPStatusCode", 0) or 0)


def _is_client_error(err: BaseException) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(err, ClientError)


def s3_error(err: BaseException, action: str, uri: str) -> HelperError:
    """Translate a botocore error into a HelperError naming ``uri`` and what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(err, HelperError):
        return err
    if isinstance(err, ClientError):
        code = _code(err)
        if code == "NoSuchBucket":
            hint = "the bucket does not exist: create it or fix the URI"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            hint = f"the credentials were rejected ({code}): fix the pod's AWS secret or its IAM role"
        elif code in ("AccessDenied", "AllAccessDisabled", "403") or _status(err) == 403:
            hint = "access denied: check the pod's identity (service account / IAM role) and the bucket policy"
        elif code in _NOT_FOUND or _status(err) == 404:
            hint = "no such object; rerun the task that produced it"
        else:
            hint = f"{code or _status(err)}: {err}"
        return HelperError(f"cannot {action} {uri}: {hint}")
    if isinstance(err, NoCredentialsError):
        return HelperError(
            f"cannot {action} {uri}: no AWS credentials in the pod; give the helper container "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (a Secret) or an IRSA service account"
        )
    if isinstance(err, EndpointConnectionError):
        return HelperError(f"cannot {action} {uri}: S3 endpoint unreachable ({err}); check the endpoint and the pod's network")
    return HelperError(f"cannot {action} {uri}: {type(err).__name__}: {err}")


# ---------------------------------------------------------------------------------
# progress and parallel work
# ---------------------------------------------------------------------------------
class Progress:
    """Counts files and bytes; a thread prints a line every few seconds."""

    def __init__(self, what: str, total_files: int) -> None:
        self.what = what
        self.total = total_files
        self.files = 0
        self.bytes = 0
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._every = float(os.environ.get("DATAFLOW_HELPER_PROGRESS_S", "5"))
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.bytes += n

    def done_file(self) -> None:
        with self.lock:
            self.files += 1

    def line(self) -> str:
        secs = time.monotonic() - self.start
        rate = self.bytes / secs / 1e6 if secs > 0 else 0.0
        return f"{self.what}: {self.files}/{self.total} files, {_mb(self.bytes)} in {secs:.1f}s ({rate:.1f} MB/s)"

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            say(self.line())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def run_parallel(fn: Callable[[Any], Any], items: Iterable[Any], workers: int) -> list[Any]:
    """Run ``fn`` over ``items`` in threads; the first error cancels the rest and is raised."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="helper") as pool:
        futures = [pool.submit(fn, item) for item in items]
        wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                for other in futures:
                    other.cancel()
                raise fut.exception()  # type: ignore[misc]
        return [fut.result() for fut in futures]


# ---------------------------------------------------------------------------------
# stage-in
# ---------------------------------------------------------------------------------
def read_list(client: Any, uri: str, input_name: str) -> list[tuple[str, str, str]]:
    """Read an input's JSON-lines file list from S3: [(path, digest, location)]."""
    bucket, key = parse_s3_uri(uri, f"list_uri of input {input_name!r}")
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:
        raise s3_error(err, f"read the file list of input {input_name!r} at", uri) from err
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for n, raw in enumerate(body.decode("utf-8", errors="strict").splitlines(), 1):
        if not raw.strip():
            continue
        where = f"{uri} line {n}"
        try:
            row = json.loads(raw)
        except ValueError:
            raise HelperError(f"{where} is not JSON; the file list is corrupt: rerun the task") from None
        if not isinstance(row, dict):
            raise HelperError(f"{where} is not a JSON object with path, digest and location")
        path = validate_relpath(row.get("path"), where)
        digest = row.get("digest")
        if not _is_digest(digest):
            raise HelperError(f"{where}: digest {digest!r} of {path!r} is not a SHA-256 hex digest")
        location = row.get("location")
        if not location:
            raise HelperError(f"{where}: file {path!r} has no stored bytes (empty location); it cannot be staged")
        parse_s3_uri(location, f"location of {path!r} ({where})")
        if path in seen:
            raise HelperError(f"{where}: file {path!r} is listed twice")
        seen.add(path)
        rows.append((path, digest, location))
    return rows


def _make_writable(root: str) -> None:
    """Let a re-run of stage-in replace what an earlier attempt left read-only."""
    if not os.path.isdir(root) or os.path.islink(root):
        return
    for dirpath, dirnames, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
        for f in files:
            if f.startswith(".") and ".part-" in f:  # a download an earlier attempt left unfinished
                _unlink(os.path.join(dirpath, f))


def _seal(root: str) -> None:
    """Make every file under ``root`` 0444 and every directory 0555 (deepest first)."""
    for dirpath, dirnames, files in os.walk(root, topdown=False):
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o444)
        os.chmod(dirpath, 0o555)


def download(client: Any, location: str, dest: str, digest: str, prog: Progress) -> None:
    """Download ``location`` to ``dest`` (temp file then rename), checking its SHA-256."""
    bucket, key = parse_s3_uri(location, "location")
    parent = os.path.dirname(dest)
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.part-{threading.get_ident()}")
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        sent = 0
        try:
            hasher = hashlib.sha256()
            with open(tmp, "wb") as fh:
                body = client.get_object(Bucket=bucket, Key=key)["Body"]
                for chunk in iter(lambda: body.read(CHUNK), b""):
                    fh.write(chunk)
                    hasher.update(chunk)
                    sent += len(chunk)
                    prog.add_bytes(len(chunk))
            got = hasher.hexdigest()
            if got != digest:
                raise HelperError(
                    f"{location} hashes to {got}, not {digest} (for {dest}): the object was changed or "
                    "corrupted; restore it or rerun the task that produced it"
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            prog.done_file()
            return
        except HelperError:
            _unlink(tmp)
            raise
        except OSError as err:
            _unlink(tmp)
            prog.add_bytes(-sent)
            if type(err).__module__.startswith(("botocore", "urllib3")) and attempt < DOWNLOAD_ATTEMPTS:
                continue
            if type(err).__module__.startswith(("botocore", "urllib3")):
                raise s3_error(err, "download", location) from err
            raise HelperError(f"cannot write {dest}: {err.strerror or err}; check the volume (space, permissions)") from err
        except Exception as err:
            _unlink(tmp)
            prog.add_bytes(-sent)
            transient = not _is_client_error(err) or _status(err) >= 500
            if transient and attempt < DOWNLOAD_ATTEMPTS:
                continue
            raise s3_error(err, "download", location) from err


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def stage_in(spec: dict[str, Any]) -> dict[str, Any]:
    """Download every listed input file, verified, read-only; write the primary's file list."""
    workers = _workers()
    client = None
    out_dir = spec["output"]["dir"]
    os.makedirs(out_dir, exist_ok=True)
    os.chmod(out_dir, 0o775)
    summary = {"inputs": 0, "files": 0, "bytes": 0}
    primary_paths: list[str] | None = None
    start = time.monotonic()
    for inp in spec["inputs"]:
        name, root = inp.get("name"), inp["dir"]
        _make_writable(root)
        os.makedirs(root, exist_ok=True)
        rows: list[tuple[str, str, str]] = []
        if inp.get("list_uri"):
            if client is None:
                client = make_client(spec, workers)
            rows = read_list(client, inp["list_uri"], str(name))
        say(f"stage-in {name}: {len(rows)} files to {root}")
        # parents first, in one thread: no races between workers creating them
        for d in sorted({os.path.dirname(p) for p, _, _ in rows} - {""}):
            full = os.path.join(root, d)
            try:
                os.makedirs(full, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise HelperError(
                    f"input {name!r}: cannot create folder {d!r} under {root}: a file has that name "
                    "(the file list names both 'a' and 'a/...'); the list is inconsistent"
                ) from None
        with Progress(f"stage-in {name}", len(rows)) as prog:
            run_parallel(lambda r: download(client, r[2], os.path.join(root, r[0]), r[1], prog), rows, workers)
        _seal(root)
        summary["inputs"] += 1
        summary["files"] += prog.files
        summary["bytes"] += prog.bytes
        if inp.get("primary"):
            primary_paths = [p for p, _, _ in rows]
    files_list = spec.get("files_list")
    if files_list:
        if primary_paths is None and not any(inp.get("primary") for inp in spec["inputs"]):
            raise HelperError(f"{SPEC_ENV}: files_list is set but no input is primary")
        _write_atomic(files_list, "".join(p + "\n" for p in primary_paths or []).encode("utf-8"))
    secs = time.monotonic() - start
    say(
        f"stage-in done: {summary['files']} files, {_mb(summary['bytes'])} of {summary['inputs']} input(s) "
        f"in {secs:.1f}s"
    )
    return summary


# ---------------------------------------------------------------------------------
# stage-out
# ---------------------------------------------------------------------------------
def walk_output(root: str) -> list[tuple[str, str, os.stat_result]]:
    """Return (relpath, abspath, stat) of every regular file under ``root``, sorted by path.

    Symlinks are followed inside ``root`` and refused when they leave it;
    ``_dataflow`` folders are skipped; names must be UTF-8.
    """
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.lexists(root) else "is not a directory"
        raise HelperError(f"output directory {root} {what}; the task must write its output there")
    real_root = os.path.realpath(root)
    seen_dirs = {real_root}
    found: list[tuple[str, str, os.stat_result]] = []
    stack: list[tuple[bytes, str]] = [(os.fsencode(real_root), "")]
    while stack:
        dir_b, rel_dir = stack.pop()
        where = os.fsdecode(dir_b)
        try:
            entries = list(os.scandir(dir_b))
        except OSError as err:
            raise HelperError(f"cannot list output folder {where}: {err.strerror}") from err
        for entry in entries:
            try:
                name = entry.name.decode("utf-8")
            except UnicodeDecodeError:
                shown = entry.name.decode("utf-8", errors="backslashreplace")
                raise HelperError(
                    f"output file name '{shown}' in {where} is not valid UTF-8 (bytes shown as \\xNN); "
                    "the task must write UTF-8 file names"
                ) from None
            rel = f"{rel_dir}/{name}" if rel_dir else name
            full = entry.path
            try:
                if entry.is_symlink():
                    target = os.path.realpath(full)
                    target_s = os.fsdecode(target)
                    if not (target_s == real_root or target_s.startswith(real_root.rstrip("/") + "/")):
                        raise HelperError(
                            f"output symlink {os.fsdecode(full)} points to {target_s}, outside the output "
                            f"directory {root}; the task must copy the file in instead of linking it"
                        )
                    try:
                        st = os.stat(target)
                    except FileNotFoundError:
                        raise HelperError(f"output symlink {os.fsdecode(full)} is dangling; remove or fix it") from None
                    if stat.S_ISDIR(st.st_mode):
                        if name != RESERVED_DIR and target_s not in seen_dirs:
                            seen_dirs.add(target_s)
                            stack.append((target, rel))
                        continue
                    full = target
                elif entry.is_dir(follow_symlinks=False):
                    if name != RESERVED_DIR:
                        stack.append((full, rel))
                    continue
                else:
                    st = entry.stat(follow_symlinks=False)
            except PermissionError as err:
                raise HelperError(f"cannot stat output file {os.fsdecode(full)}: permission denied") from err
            if not stat.S_ISREG(st.st_mode):
                raise HelperError(
                    f"output {os.fsdecode(full)} is not a regular file (socket, FIFO or device); "
                    "outputs are regular files only"
                )
            found.append((rel, os.fsdecode(full), st))
    found.sort(key=lambda item: item[0])
    return found


def hash_file(path: str) -> str:
    """Return the SHA-256 hex digest of a file."""
    try:
        with open(path, "rb", buffering=0) as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as err:
        raise HelperError(f"cannot read output file {path}: {err.strerror}; the task must leave it readable") from err


def upload(client: Any, src: str, size: int, bucket: str, key: str, digest: str, prog: Progress) -> bool:
    """Store ``src`` at ``key`` unless it is there already; return True if bytes were sent."""
    uri = f"s3://{bucket}/{key}"
    try:
        client.head_object(Bucket=bucket, Key=key)
        return False  # content-addressed: an existing object has these bytes
    except Exception as err:
        if not (_is_client_error(err) and (_code(err) in _NOT_FOUND or _status(err) == 404)):
            raise s3_error(err, "inspect", uri) from err
    if size > MULTIPART_THRESHOLD:
        from boto3.s3.transfer import TransferConfig

        try:
            client.upload_file(
                src,
                bucket,
                key,
                ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {DIGEST_META: digest}},
                Config=TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_CHUNK),
                Callback=prog.add_bytes,
            )
        except Exception as err:
            raise s3_error(err, f"upload {src} to", uri) from err
        return True
    try:
        with open(src, "rb") as fh:
            client.put_object(
                Bucket=bucket,
                Key=key,
                Body=fh,
                ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
                Metadata={DIGEST_META: digest},
                IfNoneMatch="*",
            )
    except OSError as err:
        if not type(err).__module__.startswith(("botocore", "urllib3")):
            raise HelperError(f"cannot read output file {src}: {err.strerror}") from err
        raise s3_error(err, f"upload {src} to", uri) from err
    except Exception as err:
        if _is_client_error(err) and (_code(err) in _PRECONDITION or _status(err) == 412):
            return False  # stored meanwhile by another writer: the same bytes
        if _code(err) in ("BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"):
            raise HelperError(
                f"cannot upload {src} to {uri}: its bytes no longer hash to {digest} (the file changed "
                "after it was hashed: is a process still writing it?); rerun the task"
            ) from err
        raise s3_error(err, f"upload {src} to", uri) from err
    prog.add_bytes(size)
    return True


def stage_out(spec: dict[str, Any]) -> dict[str, Any]:
    """Hash (and upload) every output file and write the result document."""
    out = spec["output"]
    workers = _workers()
    start = time.monotonic()
    files = walk_output(out["dir"])
    say(f"stage-out: {len(files)} files in {out['dir']}")
    with Progress("stage-out hash", len(files)) as prog:

        def one_hash(item: tuple[str, str, os.stat_result]) -> str:
            digest = hash_file(item[1])
            prog.add_bytes(item[2].st_size)
            prog.done_file()
            return digest

        digests = run_parallel(one_hash, files, workers)
    total = sum(st.st_size for _, _, st in files)
    locations: list[str | None] = [None] * len(files)
    sent = 0
    client = None
    if out.get("store_uri"):
        client = make_client(spec, workers)
        # one upload per distinct digest (two output files with equal bytes share one object)
        first: dict[str, int] = {}
        for i, digest in enumerate(digests):
            first.setdefault(digest, i)
        keys = {digest: store_key(out["store_uri"], digest) for digest in first}
        with Progress("stage-out upload", len(first)) as up:

            def one_upload(i: int) -> bool:
                bucket, key = keys[digests[i]]
                did = upload(client, files[i][1], files[i][2].st_size, bucket, key, digests[i], up)
                up.done_file()
                return did

            order = sorted(first.values())
            results = run_parallel(one_upload, order, workers)
        sent = sum(1 for r in results if r)
        for i, digest in enumerate(digests):
            bucket, key = keys[digest]
            locations[i] = f"s3://{bucket}/{key}"
    lineage = None
    if out.get("lineage_path") and os.path.isfile(out["lineage_path"]):
        try:
            with open(out["lineage_path"], encoding="utf-8") as fh:
                lineage = fh.read()
        except (OSError, UnicodeDecodeError) as err:
            raise HelperError(f"cannot read the lineage file {out['lineage_path']}: {err}; write it as UTF-8 text") from err
    doc = {
        "version": RESULT_VERSION,
        "files": [
            {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": digest, "location": loc}
            for (rel, _full, st), digest, loc in zip(files, digests, locations)
        ],
        "lineage": lineage,
    }
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if out.get("result_uri"):
        bucket, key = parse_s3_uri(out["result_uri"], "output.result_uri")
        client = client or make_client(spec, workers)
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        except Exception as err:
            raise s3_error(err, "write the result document to", out["result_uri"]) from err
    if out.get("result_path"):
        _write_atomic(out["result_path"], body)
    secs = time.monotonic() - start
    stored = f", {sent} uploaded, {len(set(digests)) - sent} already stored" if out.get("store_uri") else ""
    say(f"stage-out done: {len(files)} files, {_mb(total)}{stored} in {secs:.1f}s")
    return doc


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _unlink(tmp)
        raise HelperError(f"cannot write {path}: {err.strerror or err}; check the volume (space, permissions)") from err


# ---------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------
COMMANDS = {"stage-in": stage_in, "stage-out": stage_out}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in COMMANDS:
        print(f"usage: podhelper.py {{{'|'.join(COMMANDS)}}}  (pod spec JSON in ${SPEC_ENV})", file=sys.stderr)
        return 1
    try:
        spec = load_spec(os.environ.get(SPEC_ENV))
        _set_writable_home(spec)
        COMMANDS[args[0]](spec)
    except HelperError as err:
        print(f"dataflow-helper: {args[0]} failed: {err}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"dataflow-helper: {args[0]} interrupted", file=sys.stderr, flush=True)
        return 1
    except Exception as err:  # noqa: BLE001 - one clear line, not a traceback, in the task log
        print(
            f"dataflow-helper: {args[0]} failed: unexpected {type(err).__name__}: {err}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
