"""Unit tests of airflow_dataflow.core.hashing: content digests and canonical hashing."""

from __future__ import annotations

import hashlib
import io
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_dataflow.core.hashing import (
    ALGORITHM,
    canonical_bytes,
    digest_bytes,
    digest_file,
    digest_stream,
    hash_struct,
    new_hasher,
)


def test_algorithm_is_sha256():
    assert ALGORITHM == "sha256"
    assert new_hasher().name == "sha256"


@given(st.binary(max_size=4096))
def test_digest_bytes_and_stream_are_sha256(data):
    want = hashlib.sha256(data).hexdigest()
    assert digest_bytes(data) == want
    assert digest_stream(io.BytesIO(data)) == want


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 17])
def test_digest_file_matches_sha256_across_chunk_boundaries(tmp_path, size):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert digest_file(str(path)) == want
    assert digest_file(os.fsencode(str(path))) == want


def test_digest_file_known_vector(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert digest_file(str(path)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# -- canonical hashing of structured values ---------------------------------------------
json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def _shuffled(value, rnd):
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


@settings(max_examples=50, deadline=None)
@given(json_like, st.randoms(use_true_random=False))
def test_hash_struct_is_dict_order_independent(value, rnd):
    assert hash_struct("t", _shuffled(value, rnd)) == hash_struct("t", value)


@given(st.dictionaries(st.text(max_size=5), st.integers(), min_size=2, max_size=8), st.randoms(use_true_random=False))
def test_hash_struct_dict_order_independent_flat(d, rnd):
    items = list(d.items())
    rnd.shuffle(items)
    assert hash_struct("k", dict(items)) == hash_struct("k", d)
    assert canonical_bytes("k", dict(items)) == canonical_bytes("k", d)


@pytest.mark.parametrize(
    "values",
    [
        [1, "1", 1.0, True, None, b"1", [1], {"int": "1"}],
        [0, "0", 0.0, False, None, "", b"", [], {}],
        [[1, 2], [2, 1], (1, 2)],  # a tuple is a list: same digest as [1, 2] on purpose
        [{"a": 1}, {"a": "1"}, {"a": 1.0}, {"a": [1]}],
        [{1, 2}, [1, 2]],
        ["null", None],
        ["true", True],
    ],
)
def test_hash_struct_is_type_tagged(values):
    digests = [hash_struct("t", v) for v in values]
    distinct = {}
    for v, d in zip(values, digests, strict=True):
        distinct.setdefault(d, []).append(v)
    collisions = [vs for vs in distinct.values() if len(vs) > 1]
    # the only allowed collision: a tuple and the equal list (both are sequences)
    for vs in collisions:
        assert len(vs) == 2 and {type(x) for x in vs} == {list, tuple} and list(vs[0]) == list(vs[1]), collisions


def test_int_str_float_bool_differ():
    assert len({hash_struct("t", 1), hash_struct("t", "1"), hash_struct("t", 1.0), hash_struct("t", True)}) == 4


@given(st.integers(), st.text(max_size=20))
def test_int_never_equals_its_string(i, s):
    assert hash_struct("t", i) != hash_struct("t", str(i))
    if s != i:
        assert hash_struct("t", s) != hash_struct("t", i)


@given(st.integers() | st.floats(allow_nan=False) | st.text() | st.booleans())
def test_tag_separates_domains(value):
    assert hash_struct("cache-key", value) != hash_struct("snapshot", value)


@given(st.frozensets(st.integers(), max_size=6), st.randoms(use_true_random=False))
def test_sets_are_order_independent(s, rnd):
    items = list(s)
    rnd.shuffle(items)
    assert hash_struct("t", set(items)) == hash_struct("t", s)


def test_big_ints_are_exact():
    assert hash_struct("t", 2**70) != hash_struct("t", 2**70 + 1)
    assert hash_struct("t", 2**70) != hash_struct("t", float(2**70))


def test_nested_structure_deterministic_and_distinct():
    a = {"image": "sha256:abc", "params": {"x": 1, "y": [1, 2]}, "inputs": ["d1", "d2"]}
    b = {"inputs": ["d1", "d2"], "params": {"y": [1, 2], "x": 1}, "image": "sha256:abc"}
    assert hash_struct("key", a) == hash_struct("key", b)
    c = {"image": "sha256:abc", "params": {"x": 1, "y": [2, 1]}, "inputs": ["d1", "d2"]}
    assert hash_struct("key", a) != hash_struct("key", c)


@pytest.mark.parametrize("bad", [object(), {1: "x"}, {("a",): 1}, [object()]])
def test_unhashable_values_raise_type_error(bad):
    with pytest.raises(TypeError):
        hash_struct("t", bad)


def test_canonical_bytes_is_compact_json_with_tag():
    raw = canonical_bytes("tag", {"b": 1, "a": "x"})
    assert raw == b'{"tag":"tag","value":{"map":[["a","x"],["b",{"int":"1"}]]}}'


def test_random_dicts_many_orders():
    rnd = random.Random(7)
    d = {f"k{i}": i for i in range(50)}
    ref = hash_struct("t", d)
    for _ in range(20):
        items = list(d.items())
        rnd.shuffle(items)
        assert hash_struct("t", dict(items)) == ref
