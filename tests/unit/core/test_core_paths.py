"""Unit tests of airflow_dataflow.core.paths: relative path rules and name decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_dataflow.core.paths import RESERVED_DIR, decode_name, inside, validate_relpath
from airflow_dataflow.exceptions import InvalidPathError

GOOD = ["a", "a.csv", "dir/file.txt", "a/b/c/d", "..a", "a..", ".hidden", "x/.y", "é/ü.txt", "sp ace/t\tab", "_dataflow2", "x_dataflow/y"]


@pytest.mark.parametrize("path", GOOD)
def test_valid_paths_are_returned_unchanged(path):
    assert validate_relpath(path, "somewhere") == path


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("/", "absolute"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("a/..", "'..'"),
        (".", "'.'"),
        ("./a", "'.'"),
        ("a//b", "empty"),
        ("a/", "empty"),
        ("a\x00b", "NUL"),
        (RESERVED_DIR, RESERVED_DIR),
        (f"{RESERVED_DIR}/x", RESERVED_DIR),
        (f"a/{RESERVED_DIR}/x", RESERVED_DIR),
        (f"a/{RESERVED_DIR}", RESERVED_DIR),
    ],
)
def test_unsafe_paths_are_rejected_naming_path_and_source(path, fragment):
    with pytest.raises(InvalidPathError) as err:
        validate_relpath(path, "/data/m.parquet")
    msg = str(err.value)
    assert fragment in msg
    assert "/data/m.parquet" in msg
    if path:
        assert repr(path) in msg


def test_reserved_message_is_readable():
    with pytest.raises(InvalidPathError) as err:
        validate_relpath("a/_dataflow/b", "here")
    msg = str(err.value)
    # each phrase once: the message must read as one sentence, not a stutter
    assert msg.count("dataset metadata") == 1, msg


def test_non_string_is_rejected():
    with pytest.raises(InvalidPathError):
        validate_relpath(None)  # type: ignore[arg-type]


def test_decode_name_utf8():
    assert decode_name("é.txt".encode(), "/d") == "é.txt"


def test_decode_name_rejects_non_utf8_naming_directory_and_name():
    with pytest.raises(InvalidPathError) as err:
        decode_name(b"bad\xff.bin", "/data/in")
    msg = str(err.value)
    assert "/data/in" in msg
    assert "\\xff" in msg
    assert "UTF-8" in msg


@pytest.mark.parametrize(
    ("root", "target", "expected"),
    [
        ("/a/b", "/a/b", True),
        ("/a/b", "/a/b/c", True),
        ("/a/b/", "/a/b/c", True),
        ("/a/b", "/a/bc", False),
        ("/a/b", "/a", False),
        ("/", "/x", True),
    ],
)
def test_inside(root, target, expected):
    assert inside(root, target) is expected


_component = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=8
).filter(lambda c: c not in (".", "..", RESERVED_DIR))


@given(st.lists(_component, min_size=1, max_size=5))
def test_joined_safe_components_are_valid(parts):
    path = "/".join(parts)
    if len(path) > 1 and path[1] == ":":  # drive-letter lookalikes are rejected on purpose
        return
    assert validate_relpath(path) == path


@given(st.lists(_component, max_size=3), st.sampled_from(["..", ".", "", RESERVED_DIR]), st.lists(_component, max_size=3))
def test_any_bad_component_is_rejected(before, bad, after):
    with pytest.raises(InvalidPathError):
        validate_relpath("/".join([*before, bad, *after]))
