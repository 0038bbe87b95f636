"""ServiceAccount names, label values and the namespace policy (pure, with hypothesis properties)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_dataflow.exceptions import DataflowError
from airflow_dataflow.identity.naming import (
    LABEL_VALUE_RE,
    is_dns1123_label,
    label_value,
    namespace_for,
    sanitize,
    service_account_name,
)

# Parts drawn from a small alphabet so that many distinct tuples sanitise alike
# ("a_b" / "a-b" / "A.B"), plus arbitrary text (unicode, very long).
_tricky = st.text(alphabet="aAbB_-.0 é", min_size=1, max_size=8)
_any = st.text(min_size=1, max_size=200)
part = st.one_of(_tricky, _any, st.from_regex(r"[a-z0-9]{1,30}", fullmatch=True))
tuples = st.tuples(part, part, part, part)


def test_plain_name_when_nothing_is_lost() -> None:
    assert service_account_name("alice", "prod", "sales", "clean") == "df-alice-prod-sales-clean"


def test_hashed_name_keeps_the_readable_parts() -> None:
    name = service_account_name("alice", "test-alice", "sales_pipeline", "clean")
    assert name.startswith("df-alice-test-alice-sales-pipeline-clean--")
    assert len(name.rsplit("--", 1)[1]) == 10


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("a_b", "prod", "d", "t"), ("a-b", "prod", "d", "t")),
        (("a", "b-c", "d", "t"), ("a-b", "c", "d", "t")),  # the join itself is ambiguous
        (("Alice", "prod", "d", "t"), ("alice", "prod", "d", "t")),
        (("alice", "prod", "group.task", "t"), ("alice", "prod", "group-task", "t")),
        (("x" * 100, "prod", "d", "t1"), ("x" * 100, "prod", "d", "t2")),
        (("x" * 100 + "a", "prod", "d", "t"), ("x" * 100 + "b", "prod", "d", "t")),  # differ after the cut
    ],
)
def test_tuples_that_sanitise_alike_get_distinct_names(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    assert service_account_name(*a) != service_account_name(*b)


def test_long_parts_are_cut_fairly_and_fit() -> None:
    name = service_account_name("owner", "prod", "d" * 300, "t" * 300)
    assert len(name) <= 63 and is_dns1123_label(name)
    assert "-owner-prod-" in name and "ddd" in name and "ttt" in name


@pytest.mark.parametrize("bad", ["", None, 3])
def test_empty_or_non_string_parts_are_refused(bad: object) -> None:
    with pytest.raises(DataflowError, match="task_id must be a non-empty string"):
        service_account_name("o", "prod", "d", bad)  # type: ignore[arg-type]


@settings(max_examples=1500, deadline=None)
@given(tuples)
def test_always_a_valid_label_and_deterministic(t: tuple[str, str, str, str]) -> None:
    name = service_account_name(*t)
    assert is_dns1123_label(name), name
    assert LABEL_VALUE_RE.match(name)
    assert name == service_account_name(*t)


@settings(max_examples=300, deadline=None)
@given(st.lists(tuples, min_size=2, max_size=60, unique=True))
def test_distinct_tuples_never_collide(ts: list[tuple[str, str, str, str]]) -> None:
    names = [service_account_name(*t) for t in ts]
    assert len(set(names)) == len(ts)


def test_many_tuples_that_sanitise_alike_never_collide() -> None:
    # Every spelling of owner/dag/task over an alphabet that sanitises to few strings.
    alphabet = ["a", "A", "a_", "_a", "a-", "a.b", "a_b", "a-b", "A-B", "a__b", "a b", "ab"]
    ts = [(o, "prod", d, t) for o in alphabet for d in alphabet for t in alphabet]
    ts += [(o, e, "d", "t") for o in ("a", "a-b", "a-b-c") for e in ("b", "b-c", "c", "test-a")]
    names = {service_account_name(*t) for t in ts}
    assert len(names) == len(set(ts))
    assert len({sanitize(t[0]) + sanitize(t[2]) + sanitize(t[3]) for t in ts}) < len(ts) / 10


def test_names_are_stable_across_processes() -> None:
    """No per-process salt (PYTHONHASHSEED): a name computed elsewhere is the same."""
    code = "from airflow_dataflow.identity.naming import service_account_name as n; print(n('a_b', 'test-x', 'D', 't.1'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == service_account_name("a_b", "test-x", "D", "t.1")


def test_naming_imports_neither_airflow_nor_kubernetes() -> None:
    code = (
        "import sys, airflow_dataflow.identity.naming; "
        "print([m for m in sys.modules if m.split('.')[0] in ('airflow', 'kubernetes')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@settings(max_examples=500, deadline=None)
@given(_any)
def test_label_values_are_label_safe(value: str) -> None:
    out = label_value(value)
    assert len(out) <= 63 and LABEL_VALUE_RE.match(out) and out


def test_label_values_kept_when_already_safe() -> None:
    assert label_value("sales_pipeline") == "sales_pipeline"
    assert label_value("group.task") == "group.task"
    assert label_value("a" * 64) != label_value("a" * 65)


def test_namespace_policy() -> None:
    assert namespace_for("test-alice") == "airflow"
    assert namespace_for("test-alice", "dataflow-{env}") == "dataflow-test-alice"
    with pytest.raises(DataflowError, match=r"unknown placeholder.*owner"):
        namespace_for("prod", "df-{owner}")
    with pytest.raises(DataflowError, match="not a valid namespace name"):
        namespace_for("prod", "Data_{env}")
