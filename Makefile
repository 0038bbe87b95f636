# airflow-dataflow: the two commands are `make demo` and `make test`.
# Everything they need is installed by the targets below (virtualenv, pip
# packages pinned by constraints.txt, Debian packages, Go-built servers).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup demo test test-unit test-integration bench bench-k8s clean-demo apt-bench

setup: $(VENV)/.installed

# Idempotent: reinstalls only when pyproject.toml or constraints.txt change.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: setup
	$(PY) -m dags_examples.demo

test: setup versitygw
	$(PY) -m pytest tests/unit tests/integration

test-unit: setup
	$(PY) -m pytest tests/unit

apt-bench:
	@command -v b3sum >/dev/null || { apt-get update -qq && apt-get install -y -qq b3sum >/dev/null; }

bench: setup apt-bench
	$(PY) bench/scan.py
	$(PY) bench/incremental.py --json
	$(PY) bench/cached_rerun.py --json

# Needs a cluster (not part of `make bench`, which runs without one): starts the
# local one first, unless KUBECONFIG in the environment names another (as test-k8s).
bench-k8s: setup
ifeq ($(origin KUBECONFIG),environment)
	$(PY) bench/k8s_overhead.py --json
else
	$(MAKE) k8s-up
	KUBECONFIG=$(K8S_KUBECONFIG) $(PY) bench/k8s_overhead.py --json
endif

clean-demo:
	rm -rf demo-data

include tools/s3/s3.mk
include tools/k8s/k8s.mk
test-k8s: setup
k8s-up: setup
