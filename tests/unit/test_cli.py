"""The ``airflow-dataflow`` command line, run as a real subprocess.

Every CLI start imports Airflow (a few seconds), so the invocations of this module
are started together by one module fixture and the tests assert on their results.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from airflow_dataflow.core.commit import CommitInfo
from airflow_dataflow.core.location import DatasetLocation
from airflow_dataflow.storage.local import LocalStorage, scan_directory

CLI = [sys.executable, "-m", "airflow_dataflow.cli"]
_SCRIPT = os.path.join(os.path.dirname(sys.executable), "airflow-dataflow")
if os.path.exists(_SCRIPT):
    CLI = [_SCRIPT]  # the installed console script, as users run it

A_FILES = {
    "same.txt": b"unchanged\n",
    "sub/same2.bin": b"\x00\x01\x02",
    "mod.txt": b"before",
    "sub/mod2.csv": b"a,b\n1,2\n",
    "gone.txt": b"deleted later",
    "sub/deep/gone2": b"x",
}
B_FILES = {
    "same.txt": b"unchanged\n",
    "sub/same2.bin": b"\x00\x01\x02",
    "mod.txt": b"AFTER",  # different size
    "sub/mod2.csv": b"a,b\n9,9\n",  # same size
    "new.txt": b"added",
    "sub/new/é.txt": b"added too",
}
ADDED = ["new.txt", "sub/new/é.txt"]
MODIFIED = ["mod.txt", "sub/mod2.csv"]
DELETED = ["gone.txt", "sub/deep/gone2"]
UNCHANGED = 2


def write_tree(root, files):
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def reference_digest(files: dict[str, bytes]) -> str:
    h = hashlib.sha256(b"dataflow-snapshot-v1\n")
    for path in sorted(files, key=lambda p: p.encode()):
        h.update(path.encode() + b"\0" + hashlib.sha256(files[path]).hexdigest().encode())
    return h.hexdigest()


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        assert self.returncode == 0, self
        return json.loads(self.stdout)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(args: list[str], proc: subprocess.Popen) -> Run:
    stdout, stderr = proc.communicate(timeout=180)
    return Run(args, proc.returncode, stdout, stderr)


def run_all(cmds: dict[str, list[str]], then: dict[str, tuple[str, list[str]]]) -> dict[str, Run]:
    """Start every command at once (each pays the Airflow import), then collect them.

    :param then: key -> (the key it needs, args): started as soon as that one ends
    """
    procs = {k: _start(args) for k, args in cmds.items()}
    out = {}
    for key, (after, args) in then.items():
        out[after] = _finish(cmds[after], procs.pop(after))
        procs[key] = _start(args)
        cmds = {**cmds, key: args}
    for k, p in procs.items():
        out[k] = _finish(cmds[k], p)
    return out


def run_main(args: list[str]) -> Run:
    import contextlib
    import io

    from airflow_dataflow.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return Run(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    a, b = str(root / "dirs" / "a"), str(root / "dirs" / "b")
    write_tree(a, A_FILES)
    write_tree(b, B_FILES)

    # a committed dataset with two snapshots: A then B
    storage = LocalStorage()
    ds = str(root / "data" / "ds")
    os.makedirs(os.path.dirname(ds))
    loc = DatasetLocation.parse(ds)
    digests = []
    for n, src in enumerate((a, b), 1):
        m, _ = scan_directory(src)
        storage.commit(loc, storage.ingest(loc, src, m), CommitInfo(author=f"writer{n}", dag_id="dag", task_id=f"t{n}"))
        digests.append(m.digest)

    # bad input
    missing = str(root / "no" / "such" / "dir")
    corrupt = str(root / "corrupt.parquet")
    with open(corrupt, "wb") as fh:
        fh.write(b"PAR1\x00\x00 truncated")
    escaping = str(root / "dirs" / "escaping")
    write_tree(escaping, {"ok": b"1"})
    os.symlink(os.path.join(a, "same.txt"), os.path.join(escaping, "leak"))
    manifest_out = str(root / "a-manifest.parquet")

    # as subprocesses: one per case the issue names (each start costs an Airflow import)
    cmds = {
        "scan_a_out": ["scan", a, "-o", manifest_out, "--json"],
        "diff_ab": ["diff", a, b, "--json"],
        "diff_commits": ["diff", f"{ds}@{digests[0]}", ds, "--json"],
        "log": ["log", ds, "--json"],
        "show_head": ["show", ds],
        "bad_missing": ["scan", missing, "--json"],
    }
    # needs the manifest that `scan -o` writes
    then = {"diff_manifest": ("scan_a_out", ["diff", manifest_out, b, "--json"])}
    results = run_all(cmds, then)

    # variants run in-process through the same entry point (main), output captured
    inproc = {
        "scan_a_text": ["scan", a],
        "diff_ab_text": ["diff", a, b],
        "diff_aa": ["diff", a, a, "--json"],
        "diff_commits_prefix": ["diff", f"file://{ds}@{digests[0][:12]}", f"file://{ds}", "--json"],
        "log_text": ["log", ds],
        "show_old": ["show", f"{ds}@{digests[0][:10]}", "--json"],
        "bad_symlink": ["scan", escaping],
        "bad_digest": ["show", f"{ds}@{'0' * 12}"],
        "bad_corrupt": ["diff", corrupt, b, "--json"],
    }
    for key, args in inproc.items():
        results[key] = run_main(args)
    return {
        "results": results, "a": a, "b": b, "ds": ds, "digests": digests, "missing": missing,
        "corrupt": corrupt, "escaping": escaping, "manifest_out": manifest_out,
    }


def test_scan_json(cli):
    doc = cli["results"]["scan_a_out"].json()
    assert doc["digest"] == reference_digest(A_FILES)
    assert doc["files"] == len(A_FILES)
    assert doc["bytes"] == sum(len(v) for v in A_FILES.values())


def test_scan_text(cli):
    r = cli["results"]["scan_a_text"]
    assert r.returncode == 0, r
    assert reference_digest(A_FILES) in r.stdout and f"{len(A_FILES)} files" in r.stdout


def test_scan_output_is_a_manifest_file(cli):
    import pyarrow.parquet as pq

    assert cli["results"]["scan_a_out"].json()["digest"] == reference_digest(A_FILES)
    table = pq.read_table(cli["manifest_out"])
    assert table.schema.metadata[b"dataflow.snapshot_digest"].decode() == reference_digest(A_FILES)
    assert sorted(table.column("path").to_pylist()) == sorted(A_FILES)


def _check_change(doc):
    assert doc["added"] == ADDED
    assert doc["modified"] == MODIFIED
    assert doc["deleted"] == DELETED
    assert doc["unchanged"] == UNCHANGED


def test_diff_two_directories(cli):
    doc = cli["results"]["diff_ab"].json()
    _check_change(doc)
    assert doc["from"] == reference_digest(A_FILES) and doc["to"] == reference_digest(B_FILES)


def test_diff_text(cli):
    r = cli["results"]["diff_ab_text"]
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert "+ new.txt" in lines and "M mod.txt" in lines and "- gone.txt" in lines
    assert "2 added, 2 modified, 2 deleted, 2 unchanged" in lines[-1]


def test_diff_with_itself_is_empty(cli):
    doc = cli["results"]["diff_aa"].json()
    assert doc["added"] == doc["modified"] == doc["deleted"] == []
    assert doc["unchanged"] == len(A_FILES)


def test_diff_manifest_file_against_directory(cli):
    _check_change(cli["results"]["diff_manifest"].json())


def test_diff_committed_snapshot_against_head(cli):
    _check_change(cli["results"]["diff_commits"].json())
    _check_change(cli["results"]["diff_commits_prefix"].json())


def test_log_newest_first(cli):
    docs = cli["results"]["log"].json()
    d1, d2 = cli["digests"]
    assert [d["seq"] for d in docs] == [2, 1]
    assert [d["digest"] for d in docs] == [d2, d1]
    assert docs[0]["parent"] == d1 and docs[1]["parent"] is None
    assert docs[0]["info"]["author"] == "writer2" and docs[0]["info"]["task_id"] == "t2"
    assert docs[0]["files"] == len(B_FILES)
    text = cli["results"]["log_text"].stdout.splitlines()
    assert text[0].startswith("#2 " + d2[:12]) and text[1].startswith("#1 " + d1[:12])


def test_show_lists_files(cli):
    head = cli["results"]["show_head"]
    assert head.returncode == 0, head
    assert cli["digests"][1] in head.stdout
    listed = {line.split()[-1]: line.split()[0] for line in head.stdout.splitlines()[1:]}
    assert listed == {p: hashlib.sha256(v).hexdigest()[:12] for p, v in B_FILES.items()}
    doc = cli["results"]["show_old"].json()
    assert doc["digest"] == cli["digests"][0]
    got = {f["path"]: f["digest"] for f in doc["files"]}
    assert got == {p: hashlib.sha256(v).hexdigest() for p, v in A_FILES.items()}


@pytest.mark.parametrize(
    ("key", "names"),
    [
        ("bad_missing", ["missing"]),
        ("bad_corrupt", ["corrupt"]),
        ("bad_symlink", ["escaping"]),
        ("bad_digest", ["ds"]),
    ],
)
def test_bad_input_exits_2_naming_the_path(cli, key, names):
    r = cli["results"][key]
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one clear line
    for name in names:
        assert cli[name] in r.stderr, r.stderr
    assert r.stderr.startswith("airflow-dataflow ")


def test_bad_input_changed_nothing(cli):
    assert not os.path.exists(os.path.dirname(os.path.dirname(cli["missing"])))
    with open(cli["corrupt"], "rb") as fh:
        assert fh.read() == b"PAR1\x00\x00 truncated"
    assert os.path.islink(os.path.join(cli["escaping"], "leak"))
