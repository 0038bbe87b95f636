"""Unit tests of airflow_dataflow.core.commit: commit records and the valid log prefix."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_dataflow.core.commit import LOG_VERSION, CommitInfo, CommitRecord, default_author, valid_prefix
from airflow_dataflow.exceptions import ManifestError


def rec(seq: int, digest: str, parent: str | None = None, **info) -> CommitRecord:
    return CommitRecord(seq=seq, digest=digest, parent=parent, time=1_700_000_000.5 + seq, files=seq, bytes=10 * seq,
                        info=CommitInfo(author="alice", **info))


def D(c: str) -> str:
    return c * 64


def test_json_round_trip_keeps_every_field():
    r = CommitRecord(
        seq=7, digest=D("a"), parent=D("b"), time=1_700_000_000.25, files=3, bytes=99,
        info=CommitInfo(author="bob", env="test-bob", dag_id="d", task_id="t", run_id="r", map_index=2,
                        try_number=1, partition="2024-01-01", stats={"processed": 2, "cache": "miss"}),
    )
    data = r.to_json()
    doc = json.loads(data)  # plain JSON, readable without the package
    assert doc["version"] == LOG_VERSION
    assert doc["seq"] == 7 and doc["digest"] == D("a") and doc["parent"] == D("b")
    assert doc["info"]["dag_id"] == "d" and doc["info"]["stats"] == {"processed": 2, "cache": "miss"}
    assert doc["time_iso"] == "2023-11-14T22:13:20Z"
    assert CommitRecord.from_json(data, "x") == r


def test_first_commit_has_no_parent():
    r = rec(1, D("a"))
    assert CommitRecord.from_json(r.to_json(), "x").parent is None


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{not json",
        b"[]",
        json.dumps({"version": 99, "seq": 1}).encode(),
        json.dumps({"version": 1, "seq": 1}).encode(),
        json.dumps({"version": 1, "seq": "x", "digest": "d", "parent": None, "time": 1, "files": 1, "bytes": 1, "info": {}}).encode(),
        json.dumps({"version": 1, "seq": 1, "digest": "d", "parent": None, "time": 1, "files": 1, "bytes": 1, "info": {"nope": 1}}).encode(),
        b"\xff\xfe",
    ],
)
def test_corrupt_entries_name_the_file(data):
    with pytest.raises(ManifestError) as err:
        CommitRecord.from_json(data, "/data/_dataflow/ds/log/0000000001.json")
    assert "/data/_dataflow/ds/log/0000000001.json" in str(err.value)


def test_default_author(monkeypatch):
    monkeypatch.setenv("DATAFLOW_OWNER", "team-x")
    assert default_author() == "team-x"
    assert CommitInfo().author == "team-x"
    monkeypatch.delenv("DATAFLOW_OWNER")
    assert default_author()  # the OS user


def test_valid_prefix_basic():
    log = [rec(1, D("a")), rec(2, D("b"), D("a")), rec(3, D("c"), D("b"))]
    assert valid_prefix(log, D("c")) == log
    assert valid_prefix(list(reversed(log)), D("c")) == log  # sorted by seq
    assert valid_prefix(log, None) == []


def test_valid_prefix_drops_trailing_aborted_entries():
    log = [rec(1, D("a")), rec(2, D("b"), D("a")), rec(3, D("c"), D("b"))]
    # the writer of #3 died between writing the entry and moving HEAD
    assert valid_prefix(log, D("b")) == log[:2]
    # two dead writers in a row
    log4 = log + [rec(4, D("d"), D("b"))]
    assert valid_prefix(log4, D("b")) == log[:2]


def test_valid_prefix_revert_to_earlier_digest():
    log = [rec(1, D("a")), rec(2, D("b"), D("a")), rec(3, D("a"), D("b"))]
    assert valid_prefix(log, D("a")) == log
    # an aborted entry with an old digest after it is still dropped
    assert valid_prefix(log + [rec(4, D("b"), D("a"))], D("a")) == log


def test_valid_prefix_head_not_in_log():
    assert valid_prefix([rec(1, D("a"))], D("z")) == []


@given(st.lists(st.sampled_from("abcd"), min_size=1, max_size=12), st.integers(0, 3))
def test_valid_prefix_property(digests, n_aborted):
    committed = [rec(i + 1, D(c)) for i, c in enumerate(digests)]
    head = committed[-1].digest
    aborted = [rec(len(committed) + 1 + j, D("e")) for j in range(n_aborted)]
    assert valid_prefix(committed + aborted, head) == committed
