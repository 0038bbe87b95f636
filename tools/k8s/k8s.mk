# Local single-node Kubernetes cluster (issue 5). Included by the top-level
# Makefile:   include tools/k8s/k8s.mk
# Also usable alone:   make -f tools/k8s/k8s.mk k8s-up
#
#   make k8s-build   build (once per machine, 15-40 min) and cache the binaries
#   make k8s-up      start the cluster (idempotent; builds first if needed);
#                    writes .k8s/kubeconfig and .k8s/bin/kubectl
#   make k8s-down    stop it, leaving no process, mount or interface behind
#   make test-k8s    k8s-up, then the tests/k8s suite
# With KUBECONFIG set in the environment, test-k8s runs the suite against
# that cluster instead and starts nothing.

K8S_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
PY ?= .venv/bin/python
K8S_KUBECONFIG ?= $(CURDIR)/.k8s/kubeconfig

.PHONY: k8s-build k8s-up k8s-down test-k8s

k8s-build:
	$(K8S_DIR)build.sh

k8s-up:
	$(K8S_DIR)up.sh $(K8S_KUBECONFIG)

k8s-down:
	$(K8S_DIR)down.sh

test-k8s:
ifeq ($(origin KUBECONFIG),environment)
	@echo "test-k8s: using KUBECONFIG=$(KUBECONFIG); not starting the local cluster"
	$(PY) -m pytest tests/k8s
else
	$(K8S_DIR)up.sh $(K8S_KUBECONFIG)
	KUBECONFIG=$(K8S_KUBECONFIG) $(PY) -m pytest tests/k8s
endif
