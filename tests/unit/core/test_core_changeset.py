"""Unit tests of airflow_dataflow.core.changeset: diff and apply of manifests."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_dataflow.core.changeset import apply, diff
from airflow_dataflow.core.manifest import Manifest

# a small universe of paths and contents, so that generated manifests overlap a lot
PATHS = [f"d{i % 3}/f{i}" for i in range(12)] + ["é", "z", "a/b/c"]
CONTENTS = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]


@st.composite
def manifests(draw):
    chosen = draw(st.lists(st.sampled_from(PATHS), unique=True, max_size=len(PATHS)))
    rows = [
        {
            "path": p,
            "size": draw(st.integers(0, 100)),
            "mtime_ns": draw(st.integers(0, 10**18)),
            "digest": draw(st.sampled_from(CONTENTS)),
        }
        for p in chosen
    ]
    return Manifest.from_rows(rows)


def as_map(m: Manifest) -> dict[str, str]:
    return dict(zip(m.paths(), m.table.column("digest").to_pylist(), strict=True))


def content_rows(m: Manifest) -> list[tuple]:
    return [(r["path"], r["size"], r["mtime_ns"], r["digest"]) for r in m.rows()]


fast = settings(max_examples=40, deadline=None)


@fast
@given(manifests(), manifests())
def test_apply_diff_gives_b(a, b):
    change = diff(a, b)
    result = apply(a, change)
    assert result.digest == b.digest
    assert content_rows(result) == content_rows(b)


@fast
@given(manifests())
def test_diff_with_itself_is_empty(a):
    change = diff(a, a)
    assert change.is_empty
    assert change.counts() == {"added": 0, "modified": 0, "deleted": 0, "unchanged": len(a)}
    assert change.old_digest == change.new_digest == a.digest


@fast
@given(manifests(), manifests())
def test_classes_partition_the_union_of_paths(a, b):
    change = diff(a, b)
    added = change.added.column("path").to_pylist()
    modified = change.modified.column("path").to_pylist()
    deleted = change.deleted.column("path").to_pylist()
    unchanged = change.unchanged.column("path").to_pylist()
    classes = [set(added), set(modified), set(deleted), set(unchanged)]
    union = set(a.paths()) | set(b.paths())
    assert sum(len(c) for c in classes) == len(union)  # disjoint ...
    assert set().union(*classes) == union  # ... and covering
    for lst in (added, modified, deleted, unchanged):
        assert lst == sorted(lst, key=lambda p: p.encode())
        assert len(lst) == len(set(lst))


@fast
@given(manifests(), manifests())
def test_diff_matches_a_dict_model(a, b):
    old, new = as_map(a), as_map(b)
    d = diff(a, b).to_dict()
    key = lambda p: p.encode()  # noqa: E731
    assert d["added"] == sorted((p for p in new if p not in old), key=key)
    assert d["deleted"] == sorted((p for p in old if p not in new), key=key)
    assert d["modified"] == sorted((p for p in new if p in old and old[p] != new[p]), key=key)
    assert d["unchanged"] == sum(1 for p in new if p in old and old[p] == new[p])
    assert d["from"] == a.digest and d["to"] == b.digest


@fast
@given(manifests(), manifests())
def test_diff_is_antisymmetric(a, b):
    ab, ba = diff(a, b).to_dict(), diff(b, a).to_dict()
    assert ab["added"] == ba["deleted"]
    assert ab["deleted"] == ba["added"]
    assert ab["modified"] == ba["modified"]
    assert ab["unchanged"] == ba["unchanged"]


@fast
@given(manifests(), manifests())
def test_rows_come_from_the_right_side(a, b):
    change = diff(a, b)
    new_rows = {r["path"]: r for r in b.rows()}
    old_rows = {r["path"]: r for r in a.rows()}
    for table in (change.added, change.modified, change.unchanged):
        for r in table.to_pylist():
            assert r == new_rows[r["path"]]
    for r in change.deleted.to_pylist():
        assert r == old_rows[r["path"]]
    assert change.changed.column("path").to_pylist() == sorted(
        change.added.column("path").to_pylist() + change.modified.column("path").to_pylist(), key=lambda p: p.encode()
    )


def test_mtime_only_change_is_unchanged():
    d = CONTENTS[0]
    a = Manifest.from_rows([{"path": "x", "size": 1, "mtime_ns": 1, "digest": d}])
    b = Manifest.from_rows([{"path": "x", "size": 1, "mtime_ns": 2, "digest": d, "location": "s3://b/x"}])
    assert diff(a, b).counts() == {"added": 0, "modified": 0, "deleted": 0, "unchanged": 1}


def test_concrete_diff():
    c0, c1 = CONTENTS[0], CONTENTS[1]
    a = Manifest.from_rows(
        [{"path": p, "size": 1, "digest": c0} for p in ["keep", "mod", "gone", "sub/keep"]]
    )
    b = Manifest.from_rows(
        [{"path": "keep", "size": 1, "digest": c0}, {"path": "mod", "size": 1, "digest": c1},
         {"path": "new", "size": 1, "digest": c0}, {"path": "sub/keep", "size": 1, "digest": c0},
         {"path": "sub/new", "size": 3, "digest": c1}]
    )
    d = diff(a, b).to_dict()
    assert d["added"] == ["new", "sub/new"]
    assert d["modified"] == ["mod"]
    assert d["deleted"] == ["gone"]
    assert d["unchanged"] == 2


def test_empty_sides():
    a = Manifest.from_rows([{"path": p, "size": 1, "digest": CONTENTS[0]} for p in ["a", "b"]])
    e = Manifest.empty()
    assert diff(e, a).to_dict()["added"] == ["a", "b"]
    assert diff(a, e).to_dict()["deleted"] == ["a", "b"]
    assert diff(e, e).is_empty
    assert apply(e, diff(e, a)).digest == a.digest
    assert apply(a, diff(a, e)).digest == e.digest


def test_large_diff_is_vectorised_and_correct():
    n = 100_000
    digests = pa.array([hashlib.sha256(b"%d" % (i % 1000)).hexdigest() for i in range(n)])
    paths = pa.array([f"p/{i:07d}" for i in range(n)])
    a = Manifest.from_table(pa.table({"path": paths, "size": pa.array([1] * n, pa.int64()), "digest": digests}))
    # b: drop every 100th, modify every 101st, add 500 new
    keep = [i for i in range(n) if i % 100]
    bd = [hashlib.sha256(b"x").hexdigest() if i % 101 == 0 else digests[i].as_py() for i in keep]
    bp = [f"p/{i:07d}" for i in keep] + [f"q/{i}" for i in range(500)]
    bd += [CONTENTS[0]] * 500
    b = Manifest.from_table(pa.table({"path": bp, "size": [1] * len(bp), "digest": bd}))
    change = diff(a, b)
    c = change.counts()
    assert c["deleted"] == n // 100
    assert c["added"] == 500
    n_mod = sum(1 for i in keep if i % 101 == 0)
    assert c["modified"] == n_mod
    assert c["unchanged"] == len(keep) - n_mod
    assert apply(a, change).digest == b.digest
