"""The pod helper (airflow_dataflow/podhelper.py) without S3: path rules, the
output walk and hashes, the result document, and its errors.

Most tests run the module as the pod does, a subprocess with a crafted
``DATAFLOW_POD_SPEC``; the S3 paths are in tests/integration/test_podhelper_s3.py.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_dataflow import podhelper
from airflow_dataflow.core.paths import validate_relpath as core_validate
from airflow_dataflow.exceptions import InvalidPathError

HELPER = Path(podhelper.__file__)


def run_helper(command: str, spec: dict | str | None, *, cwd: Path | None = None, env: dict | None = None):
    """Run ``python podhelper.py COMMAND`` as the helper image does (the file alone, isolated)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DATAFLOW_"))}
    full_env["DATAFLOW_HELPER_PROGRESS_S"] = "0.2"
    if spec is not None:
        full_env["DATAFLOW_POD_SPEC"] = spec if isinstance(spec, str) else json.dumps(spec)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-B", str(HELPER), command],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def out_spec(out: Path, result: Path | None, lineage: Path | None = None) -> dict:
    return {
        "version": 1,
        "s3": {"endpoint_url": None, "region": "us-east-1"},
        "inputs": [],
        "files_list": None,
        "output": {
            "dir": str(out),
            "store_uri": None,
            "result_uri": None,
            "result_path": str(result) if result else None,
            "lineage_path": str(lineage) if lineage else None,
        },
    }


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


# ---------------------------------------------------------------------------------
# the module itself
# ---------------------------------------------------------------------------------
def test_imports_only_stdlib_and_boto3():
    tree = ast.parse(HELPER.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    foreign = {m for m in imported if m not in sys.stdlib_module_names and m not in ("boto3", "botocore")}
    assert not foreign, f"podhelper.py must import only the stdlib and boto3/botocore, found {foreign}"


def test_runs_as_a_module_too(tmp_path):
    (tmp_path / "out").mkdir()
    spec = out_spec(tmp_path / "out", tmp_path / "r.json")
    env = {"DATAFLOW_POD_SPEC": json.dumps(spec), "PYTHONPATH": str(HELPER.parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_dataflow.podhelper", "stage-out"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["files"] == []


# ---------------------------------------------------------------------------------
# path rules: the same verdicts as airflow_dataflow.core.paths
# ---------------------------------------------------------------------------------
PATHS = [
    "a.csv",
    "dir/sub/a b.csv",
    "ü/名前.txt",
    ".hidden",
    "..x",
    "",
    "/etc/passwd",
    "C:evil",
    "../up",
    "a/../../b",
    "a//b",
    "a/./b",
    "a/",
    "./a",
    "_dataflow/x",
    "a/_dataflow",
    "nul\x00byte",
    "\udcff-surrogate",
]


@pytest.mark.parametrize("path", PATHS)
def test_path_rules_match_core(path):
    try:
        core_validate(path)
        core_ok = True
    except InvalidPathError:
        core_ok = False
    try:
        podhelper.validate_relpath(path)
        helper_ok = True
    except podhelper.HelperError:
        helper_ok = False
    assert helper_ok == core_ok, path


def test_store_key_layout():
    digest = sha(b"x")
    bucket, key = podhelper.store_key("s3://bkt/some/prefix/_dataflow/objects", digest)
    assert (bucket, key) == ("bkt", f"some/prefix/_dataflow/objects/sha256/{digest[:2]}/{digest[2:]}")
    assert podhelper.store_key("s3://bkt/_dataflow/objects/", digest)[1] == f"_dataflow/objects/sha256/{digest[:2]}/{digest[2:]}"


# ---------------------------------------------------------------------------------
# the file list of stage-in, and its digest check (a fake client: no S3 here)
# ---------------------------------------------------------------------------------
class FakeS3:
    def __init__(self, objects: dict[tuple[str, str], bytes]):
        self.objects = objects

    def get_object(self, Bucket, Key):  # noqa: N803 - boto3's names
        return {"Body": io.BytesIO(self.objects[(Bucket, Key)])}


def _list_body(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.mark.parametrize(
    "row, message",
    [
        ({"path": "../x", "digest": "0" * 64, "location": "s3://b/k"}, "'..'"),
        ({"path": "/abs", "digest": "0" * 64, "location": "s3://b/k"}, "absolute"),
        ({"path": "a//b", "digest": "0" * 64, "location": "s3://b/k"}, "empty"),
        ({"path": "a", "digest": "XYZ", "location": "s3://b/k"}, "not a SHA-256"),
        ({"path": "a", "digest": "0" * 64, "location": None}, "no stored bytes"),
        ({"path": "a", "digest": "0" * 64, "location": "file:///etc/passwd"}, "not an S3 object URI"),
    ],
)
def test_file_list_rejects_bad_rows(row, message):
    client = FakeS3({("b", "list.jsonl"): _list_body([row])})
    with pytest.raises(podhelper.HelperError, match=message) as info:
        podhelper.read_list(client, "s3://b/list.jsonl", "raw")
    assert "s3://b/list.jsonl line 1" in str(info.value)


def test_file_list_rejects_duplicates_and_garbage():
    row = {"path": "a", "digest": "0" * 64, "location": "s3://b/k"}
    client = FakeS3({("b", "dup"): _list_body([row, row]), ("b", "junk"): b"{not json\n"})
    with pytest.raises(podhelper.HelperError, match="listed twice"):
        podhelper.read_list(client, "s3://b/dup", "raw")
    with pytest.raises(podhelper.HelperError, match="not JSON"):
        podhelper.read_list(client, "s3://b/junk", "raw")


def test_download_refuses_a_bad_digest(tmp_path):
    client = FakeS3({("b", "obj"): b"corrupted bytes"})
    prog = podhelper.Progress("t", 1)
    dest = tmp_path / "a.txt"
    with pytest.raises(podhelper.HelperError, match=r"s3://b/obj hashes to .* not ") as info:
        podhelper.download(client, "s3://b/obj", str(dest), sha(b"original bytes"), prog)
    assert str(dest) in str(info.value)
    assert os.listdir(tmp_path) == []  # no partial file is left behind


def test_download_checks_and_seals(tmp_path):
    client = FakeS3({("b", "obj"): b"payload"})
    prog = podhelper.Progress("t", 1)
    podhelper.download(client, "s3://b/obj", str(tmp_path / "a.txt"), sha(b"payload"), prog)
    assert (tmp_path / "a.txt").read_bytes() == b"payload"
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o444
    assert (prog.files, prog.bytes) == (1, 7)


# ---------------------------------------------------------------------------------
# stage-out without S3: walk, hash, result document
# ---------------------------------------------------------------------------------
def test_stage_out_result_document(tmp_path):
    out = tmp_path / "out"
    files = {
        "a.csv": b"x,y\n1,2\n",
        "dir/sub/b.bin": os.urandom(3 * 1024 * 1024 + 17),
        "dir/empty": b"",
        "ü name.txt": "ü".encode(),
    }
    write(out, files)
    (out / "_dataflow").mkdir()  # reserved: skipped, as the local scan does
    (out / "_dataflow" / "junk").write_bytes(b"ignored")
    os.symlink("a.csv", out / "link-inside.csv")  # a symlink inside the output is followed
    lineage = tmp_path / "lineage.tsv"
    lineage.write_text("a.csv\traw/a.csv\n", encoding="utf-8")
    result = tmp_path / "result.json"

    proc = run_helper("stage-out", out_spec(out, result, lineage))
    assert proc.returncode == 0, proc.stderr
    assert "stage-out done: 5 files" in proc.stdout

    doc = json.loads(result.read_text())
    assert set(doc) == {"version", "files", "lineage"}
    assert doc["version"] == 1
    assert doc["lineage"] == "a.csv\traw/a.csv\n"
    expected = dict(files, **{"link-inside.csv": files["a.csv"]})
    assert [f["path"] for f in doc["files"]] == sorted(expected)
    for entry in doc["files"]:
        assert set(entry) == {"path", "size", "mtime_ns", "digest", "location"}
        data = expected[entry["path"]]
        assert entry["digest"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)
        assert entry["location"] is None
        assert entry["mtime_ns"] == os.stat(out / entry["path"]).st_mtime_ns
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # atomic write left nothing


def test_stage_out_without_lineage_file(tmp_path):
    (tmp_path / "out").mkdir()
    result = tmp_path / "r.json"
    proc = run_helper("stage-out", out_spec(tmp_path / "out", result, tmp_path / "missing.tsv"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(result.read_text()) == {"version": 1, "files": [], "lineage": None}


def _fails(proc, *needles: str) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr  # one clear line, no traceback
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_symlink_leaving_the_output_is_refused(tmp_path):
    out = tmp_path / "out"
    write(out, {"ok.txt": b"ok"})
    (tmp_path / "secret").write_bytes(b"outside")
    os.symlink(tmp_path / "secret", out / "escape")
    result = tmp_path / "r.json"
    _fails(run_helper("stage-out", out_spec(out, result)), str(out / "escape"), "outside the output")
    assert not result.exists()


def test_dangling_symlink_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(out / "nowhere", out / "dangling")
    _fails(run_helper("stage-out", out_spec(out, tmp_path / "r.json")), "dangling")


def test_non_utf8_name_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    bad = os.fsencode(str(out)) + b"/bad-\xff.txt"
    with open(bad, "wb") as fh:
        fh.write(b"x")
    line = _fails(run_helper("stage-out", out_spec(out, tmp_path / "r.json")), "not valid UTF-8", "bad-\\xff.txt")
    assert str(out) in line


def test_fifo_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "pipe")
    _fails(run_helper("stage-out", out_spec(out, tmp_path / "r.json")), str(out / "pipe"), "not a regular file")


def test_missing_output_dir(tmp_path):
    _fails(run_helper("stage-out", out_spec(tmp_path / "nope", tmp_path / "r.json")), "does not exist")


@pytest.mark.parametrize(
    "spec, needle",
    [
        (None, "DATAFLOW_POD_SPEC is not set"),
        ("{oops", "not valid JSON"),
        ({"version": 2, "output": {"dir": "/x"}}, "version 2"),
        ({"version": 1, "output": {"dir": "relative"}}, "output.dir"),
    ],
)
def test_bad_spec(spec, needle):
    _fails(run_helper("stage-out", spec), needle)


def test_bad_command():
    proc = run_helper("stage-sideways", {"version": 1, "output": {"dir": "/x"}})
    assert proc.returncode == 1
    assert "usage" in proc.stderr


def test_stage_in_without_lists_prepares_dirs(tmp_path):
    """No list_uri: nothing to download and no S3 client; the dirs and the empty files list are made."""
    spec = out_spec(tmp_path / "out", None)
    spec["inputs"] = [
        {"name": "raw", "dir": str(tmp_path / "in" / "raw"), "list_uri": None, "primary": True},
        {"name": "ref", "dir": str(tmp_path / "in" / "ref"), "list_uri": None, "primary": False},
    ]
    spec["files_list"] = str(tmp_path / "files.txt")
    proc = run_helper("stage-in", spec)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "files.txt").read_text() == ""
    assert (tmp_path / "in" / "raw").stat().st_mode & 0o777 == 0o555
    assert (tmp_path / "out").is_dir() and os.access(tmp_path / "out", os.W_OK)
    assert "stage-in done: 0 files" in proc.stdout
