"""Unit tests of airflow_dataflow.core.manifest: schema, snapshot digest, Parquet I/O."""

from __future__ import annotations

import hashlib
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_dataflow.core.manifest import FORMAT_NAME, SCHEMA, SCHEMA_VERSION, Manifest
from airflow_dataflow.exceptions import InvalidPathError, ManifestError

COLUMNS = ["path", "size", "mtime_ns", "digest", "location", "source_path", "source_digest", "cache_key"]
META_KEYS = {b"dataflow.format", b"dataflow.version", b"dataflow.digest_algorithm", b"dataflow.snapshot_digest"}


def reference_digest(pairs):
    """The documented formula, re-implemented from the README/docstring, independent of the package."""
    h = hashlib.sha256(b"dataflow-snapshot-v1\n")
    for path, digest in sorted(pairs, key=lambda pd: pd[0].encode("utf-8")):
        h.update(path.encode("utf-8") + b"\0" + digest.encode("ascii"))
    return h.hexdigest()


def hexd(seed) -> str:
    return hashlib.sha256(str(seed).encode()).hexdigest()


# -- strategies -------------------------------------------------------------------
# a small alphabet keeps generation fast but still mixes ASCII, multi-byte UTF-8 and
# characters whose code point order differs from naive expectations
_component = st.text(alphabet="abAB09-_. é€\uffff\U00010000", min_size=1, max_size=5).filter(
    lambda c: c not in (".", "..", "_dataflow")
)
paths_st = st.lists(_component, min_size=1, max_size=3).map("/".join)
digest_st = st.binary(min_size=4, max_size=4).map(lambda b: hashlib.sha256(b).hexdigest())


@st.composite
def rows_st(draw, min_size=0, max_size=25):
    paths = draw(st.lists(paths_st, min_size=min_size, max_size=max_size, unique=True))
    return [
        {
            "path": p,
            "size": draw(st.integers(0, 2**40)),
            "mtime_ns": draw(st.none() | st.integers(0, 2**62)),
            "digest": draw(digest_st),
            "location": draw(st.none() | st.just(f"file:///store/{i}")),
        }
        for i, p in enumerate(paths)
    ]


# -- digest ----------------------------------------------------------------------------
def test_empty_manifest_digest_is_hash_of_prefix():
    m = Manifest.empty()
    assert len(m) == 0
    assert m.digest == hashlib.sha256(b"dataflow-snapshot-v1\n").hexdigest()
    assert m.total_bytes == 0


def test_digest_known_value_pins_format():
    rows = [{"path": "b.txt", "size": 1, "digest": "a" * 64}, {"path": "a/x.csv", "size": 2, "digest": "b" * 64}]
    want = hashlib.sha256(
        b"dataflow-snapshot-v1\n" + b"a/x.csv\0" + b"b" * 64 + b"b.txt\0" + b"a" * 64
    ).hexdigest()
    assert Manifest.from_rows(rows).digest == want


@settings(max_examples=40, deadline=None)
@given(rows_st())
def test_digest_equals_reference_formula(rows):
    m = Manifest.from_rows(rows)
    assert m.digest == reference_digest([(r["path"], r["digest"]) for r in rows])


@settings(max_examples=40, deadline=None)
@given(rows_st(min_size=1), st.randoms(use_true_random=False))
def test_digest_does_not_depend_on_row_order(rows, rnd):
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    a, b = Manifest.from_rows(rows), Manifest.from_rows(shuffled)
    assert a.digest == b.digest
    assert a.table.equals(b.table)


@settings(max_examples=40, deadline=None)
@given(rows_st(min_size=1), st.integers(0, 2**62), st.text(max_size=10))
def test_digest_ignores_mtime_size_and_location(rows, mtime, loc):
    base = Manifest.from_rows(rows)
    other = Manifest.from_rows([{**r, "mtime_ns": mtime, "location": loc, "size": r["size"] + 1} for r in rows])
    assert other.digest == base.digest


@settings(max_examples=40, deadline=None)
@given(rows_st(min_size=1), digest_st, st.data())
def test_digest_changes_with_any_content_or_name(rows, new_digest, data):
    base = Manifest.from_rows(rows)
    i = data.draw(st.integers(0, len(rows) - 1))
    if new_digest != rows[i]["digest"]:
        changed = [dict(r) for r in rows]
        changed[i]["digest"] = new_digest
        assert Manifest.from_rows(changed).digest != base.digest
    renamed = [dict(r) for r in rows]
    renamed[i]["path"] = rows[i]["path"] + "~renamed"
    if renamed[i]["path"] not in {r["path"] for r in rows}:
        assert Manifest.from_rows(renamed).digest != base.digest


def test_path_boundaries_are_unambiguous():
    # "a" + "b/c" vs "ab" + "/c"-like regroupings must not collide
    d = "c" * 64
    m1 = Manifest.from_rows([{"path": "ab", "size": 0, "digest": d}, {"path": "c", "size": 0, "digest": d}])
    m2 = Manifest.from_rows([{"path": "a", "size": 0, "digest": d}, {"path": "bc", "size": 0, "digest": d}])
    assert m1.digest != m2.digest


def test_rows_sorted_by_utf8_bytes():
    names = ["z", "é", "\uffff", "\U00010000", "A", "a/b", "a-b", "a"]
    m = Manifest.from_rows([{"path": p, "size": 0, "digest": hexd(p)} for p in names])
    assert m.paths() == sorted(names, key=lambda p: p.encode("utf-8"))
    assert m.digest == reference_digest([(p, hexd(p)) for p in names])


def test_large_manifest_digest_matches_reference():
    rnd = random.Random(1)
    names = [f"d{rnd.randrange(100)}/f{i}.bin" for i in range(20_000)]
    pairs = [(p, hexd(i)) for i, p in enumerate(names)]
    rnd.shuffle(pairs)
    m = Manifest.from_table(pa.table({"path": [p for p, _ in pairs], "size": [1] * len(pairs), "digest": [d for _, d in pairs]}))
    assert m.digest == reference_digest(pairs)
    assert len(m) == 20_000 and m.total_bytes == 20_000


def test_chunked_input_gives_same_digest():
    rows = [{"path": f"f{i:03d}", "size": i, "digest": hexd(i)} for i in range(100)]
    whole = Manifest.from_rows(rows)
    t = pa.Table.from_pylist(rows)
    chunked = pa.concat_tables([t.slice(0, 30), t.slice(30, 50), t.slice(80)])
    assert chunked.column("path").num_chunks == 3
    assert Manifest.from_table(chunked).digest == whole.digest


# -- construction and validation ------------------------------------------------------------
def test_from_rows_fills_optional_columns_and_schema():
    m = Manifest.from_rows([{"path": "x", "size": 3, "digest": "d" * 64}])
    assert m.table.column_names == COLUMNS
    row = m.rows()[0]
    assert row["mtime_ns"] is None and row["location"] is None and row["cache_key"] is None
    assert m.table.schema.field("path").nullable is False


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([{"path": "a", "size": 1, "digest": "a" * 64}, {"path": "a", "size": 2, "digest": "b" * 64}], "more than once"),
        ([{"path": "b", "size": 1, "digest": "a" * 64}, {"path": "a", "size": 1, "digest": "a" * 64}, {"path": "b", "size": 1, "digest": "a" * 64}], "more than once"),
        ([{"path": "a", "size": 1, "digest": "A" * 64}], "digest"),
        ([{"path": "a", "size": 1, "digest": "a" * 63}], "digest"),
        ([{"path": "a", "size": 1, "digest": "g" * 64}], "digest"),
        ([{"path": "a", "size": -1, "digest": "a" * 64}], "negative"),
        ([{"path": "a", "size": None, "digest": "a" * 64}], "null"),
        ([{"path": "a", "size": 1, "digest": None}], "null"),
        ([{"path": None, "size": 1, "digest": "a" * 64}], "null"),
    ],
)
def test_invalid_rows_are_rejected(rows, fragment):
    with pytest.raises(ManifestError) as err:
        Manifest.from_rows(rows, where="my-manifest")
    assert fragment in str(err.value)
    assert "my-manifest" in str(err.value)


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../b", "a//b", "./a", "_dataflow/x", "a/_dataflow", "a\x00b", ""])
def test_unsafe_paths_rejected(bad):
    with pytest.raises(InvalidPathError) as err:
        Manifest.from_rows([{"path": "ok", "size": 1, "digest": "a" * 64}, {"path": bad, "size": 1, "digest": "b" * 64}], where="m.parquet")
    assert "m.parquet" in str(err.value)


def test_missing_required_column():
    with pytest.raises(ManifestError, match="missing column"):
        Manifest.from_table(pa.table({"path": ["a"], "size": [1]}), where="w")


def test_wrong_column_type():
    with pytest.raises(ManifestError, match="size"):
        Manifest.from_table(pa.table({"path": ["a"], "size": ["big"], "digest": ["a" * 64]}), where="w")


def test_select_and_with_columns():
    rows = [{"path": f"f{i}", "size": i, "digest": hexd(i)} for i in range(5)]
    m = Manifest.from_rows(rows)
    sub = m.select(["f1", "f3", "nope"])
    assert sub.paths() == ["f1", "f3"]
    assert sub.digest == reference_digest([("f1", hexd(1)), ("f3", hexd(3))])
    moved = m.with_columns(location="s3://b/k")
    assert moved.digest == m.digest
    assert set(moved.table.column("location").to_pylist()) == {"s3://b/k"}
    with pytest.raises(KeyError):
        m.with_columns(nope=1)
    with pytest.raises(InvalidPathError):
        m.with_columns(path=pa.array(["a", "b", "c", "d", "../e"]))


# -- Parquet I/O -------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(rows_st())
def test_parquet_round_trip(rows):
    m = Manifest.from_rows(rows)
    back = Manifest.from_parquet_bytes(m.to_parquet_bytes(), "mem")
    assert back.digest == m.digest
    assert back.table.equals(m.table)


def test_file_round_trip_and_plain_pyarrow_reading(tmp_path):
    rows = [
        {"path": "b/c.txt", "size": 5, "mtime_ns": 123, "digest": hexd("c"), "location": "file:///x/c", "source_path": "in/c", "source_digest": hexd("s"), "cache_key": hexd("k")},
        {"path": "a.txt", "size": 7, "mtime_ns": None, "digest": hexd("a")},
    ]
    m = Manifest.from_rows(rows)
    path = tmp_path / "manifest.parquet"
    m.write(str(path))

    back = Manifest.read(str(path))
    assert back.digest == m.digest and back.table.equals(m.table)

    # plain pyarrow, no package code: documented columns and metadata keys
    table = pq.read_table(str(path))
    assert table.column_names == COLUMNS
    assert table.schema.field("path").type == pa.string()
    assert table.schema.field("size").type == pa.int64()
    assert table.schema.field("mtime_ns").type == pa.int64()
    assert table.schema.field("digest").type == pa.string()
    meta = table.schema.metadata
    assert META_KEYS <= set(meta)
    assert meta[b"dataflow.format"] == b"airflow-dataflow-manifest" == FORMAT_NAME.encode()
    assert meta[b"dataflow.version"] == b"1" == str(SCHEMA_VERSION).encode()
    assert meta[b"dataflow.digest_algorithm"] == b"sha256"
    assert meta[b"dataflow.snapshot_digest"].decode() == m.digest
    assert table.column("path").to_pylist() == ["a.txt", "b/c.txt"]
    pairs = list(zip(table.column("path").to_pylist(), table.column("digest").to_pylist(), strict=True))
    assert reference_digest(pairs) == meta[b"dataflow.snapshot_digest"].decode()
    assert table.to_pylist()[1]["source_path"] == "in/c"


def test_manifest_written_by_plain_pyarrow_is_readable(tmp_path):
    """Anyone can write a manifest with pyarrow following the README; the package reads it."""
    pairs = [("x/1", hexd(1)), ("x/0", hexd(0))]
    table = pa.table({"path": [p for p, _ in pairs], "size": [1, 2], "digest": [d for _, d in pairs]})
    table = table.replace_schema_metadata(
        {
            "dataflow.format": "airflow-dataflow-manifest",
            "dataflow.version": "1",
            "dataflow.digest_algorithm": "sha256",
            "dataflow.snapshot_digest": reference_digest(pairs),
        }
    )
    path = tmp_path / "plain.parquet"
    pq.write_table(table, str(path))
    m = Manifest.read(str(path))
    assert m.digest == reference_digest(pairs)
    assert m.paths() == ["x/0", "x/1"]


def test_schema_constant_matches_documented_columns():
    assert SCHEMA.names == COLUMNS
