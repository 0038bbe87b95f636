"""Unit tests of airflow_dataflow.core.location: URIs and the ``_dataflow/`` layout."""

from __future__ import annotations

import pytest

from airflow_dataflow.core.location import DatasetLocation, file_uri, split_uri
from airflow_dataflow.exceptions import DataflowError


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("/data/x", ("file", "", "/data/x")),
        ("/data/x/", ("file", "", "/data/x")),
        ("/data/./y/../x", ("file", "", "/data/x")),
        ("file:///data/x", ("file", "", "/data/x")),
        ("file://localhost/data/x", ("file", "", "/data/x")),
        ("file:///data/a%20b", ("file", "", "/data/a b")),
        ("FILE:///data/x", ("file", "", "/data/x")),
        ("s3://bucket/prefix/x/", ("s3", "bucket", "prefix/x")),
        ("s3a://bucket/p", ("s3", "bucket", "p")),
        ("s3://bucket/a%20b", ("s3", "bucket", "a b")),
    ],
)
def test_split_uri(uri, expected):
    assert split_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("relative/path", "relative"),
        ("file://otherhost/x", "local"),
        ("s3:///no-bucket", "bucket"),
        ("gs://b/x", "unsupported"),
    ],
)
def test_split_uri_rejects(uri, fragment):
    with pytest.raises(DataflowError) as err:
        split_uri(uri)
    assert fragment in str(err.value)
    assert uri in str(err.value)


def test_file_uri_quotes():
    assert file_uri("/data/a b/é") == "file:///data/a%20b/%C3%A9"
    assert split_uri(file_uri("/data/a b/é#?%")) == ("file", "", "/data/a b/é#?%")


def test_local_layout():
    loc = DatasetLocation.parse("/data/prod/raw/events")
    assert loc.uri == "file:///data/prod/raw/events"
    assert loc.scheme == "file" and loc.bucket == ""
    assert loc.path == "/data/prod/raw/events"
    assert loc.meta == "/data/prod/raw/_dataflow/events"
    assert loc.objects == "/data/prod/raw/_dataflow/objects"
    assert loc.owned
    d = "ab" + "c" * 62
    assert loc.object_key(d) == "/data/prod/raw/_dataflow/objects/sha256/ab/" + "c" * 62
    assert loc.object_uri(d) == "file:///data/prod/raw/_dataflow/objects/sha256/ab/" + "c" * 62
    assert loc.data_uri("x/y.csv") == "file:///data/prod/raw/events/x/y.csv"


def test_same_layout_from_path_and_file_uri():
    assert DatasetLocation.parse("/data/x") == DatasetLocation.parse("file:///data/x/")


def test_s3_layout():
    loc = DatasetLocation.parse("s3://bkt/prod/events/")
    assert loc.uri == "s3://bkt/prod/events"
    assert (loc.scheme, loc.bucket, loc.path) == ("s3", "bkt", "prod/events")
    assert loc.meta == "prod/_dataflow/events"
    assert loc.objects == "prod/_dataflow/objects"
    assert loc.object_uri("ab" + "0" * 62) == "s3://bkt/prod/_dataflow/objects/sha256/ab/" + "0" * 62
    assert loc.data_uri("a.txt") == "s3://bkt/prod/events/a.txt"


def test_s3_dataset_at_bucket_top():
    loc = DatasetLocation.parse("s3://bkt/events")
    assert loc.meta == "_dataflow/events"
    assert loc.objects == "_dataflow/objects"


def test_metadata_root_for_observed_sources():
    a = DatasetLocation.parse("/share/landing", metadata_root="/meta", owned=False)
    b = DatasetLocation.parse("/other/landing", metadata_root="/meta", owned=False)
    assert not a.owned
    assert a.path == "/share/landing"
    assert a.meta.startswith("/meta/_dataflow/landing-")
    assert a.meta != b.meta  # same name, different sources: separate metadata
    assert a.objects == "/meta/_dataflow/objects"


def test_metadata_root_must_be_same_storage():
    with pytest.raises(DataflowError, match="same storage"):
        DatasetLocation.parse("s3://a/x", metadata_root="s3://b/meta")
    with pytest.raises(DataflowError, match="same storage"):
        DatasetLocation.parse("/data/x", metadata_root="s3://b/meta")


@pytest.mark.parametrize("uri", ["/", "s3://bkt", "s3://bkt/", "/data/_dataflow", "/data/_dataflow/x", "s3://b/_dataflow/x/y"])
def test_reserved_or_root_locations_are_rejected(uri):
    with pytest.raises(DataflowError) as err:
        DatasetLocation.parse(uri)
    assert uri in str(err.value)
