# Everything a developer or CI runs. `make serve` and `make test` are the README's two commands.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_MODEL := .cache/models/detector.pt
SETUP_STAMP := $(VENV)/.installed

.PHONY: setup serve test e2e lint protos bench clean cluster cluster-down cluster-build cluster-load-images images \
	gpu-check gpu-check-wheels docs

$(SETUP_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision first, pinned: these exact builds lie on this machine's disk (no multi-GB download)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[runtime,torch,operator,dev]'
	touch $@

setup: $(SETUP_STAMP)

$(DEMO_MODEL): | $(SETUP_STAMP)
	$(BIN)/kubeinfer demo --out $(DEMO_MODEL)

# The runtime serving the demo detector on 127.0.0.1 (gRPC 8001, HTTP 8080); Ctrl-C drains and stops it.
serve: $(SETUP_STAMP) $(DEMO_MODEL)
	$(BIN)/kubeinfer serve --task detect --model $(DEMO_MODEL) --model-name demo --host 127.0.0.1

test: $(SETUP_STAMP)
	bash scripts/install-test-tools.sh
	bash scripts/cluster/build.sh >/dev/null
	bash scripts/cluster/build.sh node >/dev/null
	bash scripts/storage/build.sh >/dev/null
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Issue #29's user flows on the real node, all of them (root; ~15 min): the chart's operator pod, every CPU example
# from the images scripts/images.py builds, clients through the Services and CoreDNS, no request lost during a pod
# deletion, a rollout, a scale-down and an operator pod deleted mid-rollout, CPU autoscaling 1 -> 3 -> 1, queue-depth
# autoscaling 1 -> 3 -> 1 through KEDA and a real Prometheus, GPU work on kwok. `make test` runs
# tests/test_real_node_e2e.py; this adds tests/test_real_node_disruptions.py and tests/test_real_node_keda.py (--e2e)
# and prints the figures measured at the end. KEDA is built once from its Go module (scripts/keda/build.sh, ~10 min).
e2e: $(SETUP_STAMP)
	bash scripts/install-test-tools.sh helm prometheus image_tools real_node
	bash scripts/cluster/build.sh >/dev/null
	bash scripts/cluster/build.sh node >/dev/null
	bash scripts/keda/build.sh >/dev/null
	$(BIN)/python -m pytest --e2e tests/test_real_node_e2e.py tests/test_real_node_disruptions.py \
		tests/test_real_node_keda.py tests/test_real_node_rollout.py

# A real control plane on 127.0.0.1 (kube-apiserver, controller-manager, scheduler, etcd, kwok fake nodes), built
# from the Kubernetes Go module on first use (cached under .cache/cluster/bin). Runs until Ctrl-C or cluster-down.
# REAL_NODE=1 adds a real node real-0 (containerd, kubelet, kube-proxy, CoreDNS, metrics-server; root; the API
# server then on 10.85.0.1) where CPU pods run for real; kubeinfer's images in buildah's storage are loaded into it.
cluster:
ifeq ($(REAL_NODE),1)
	bash scripts/install-test-tools.sh real_node
endif
	$(PYTHON) scripts/cluster/localcluster.py up $(if $(filter 1,$(REAL_NODE)),--real-node)

# Stops the cluster; a real node's teardown restores the machine (also after a killed run: realnode.py cleanup).
cluster-down:
	$(PYTHON) scripts/cluster/localcluster.py down
	$(PYTHON) scripts/cluster/realnode.py cleanup

cluster-build:
	bash scripts/cluster/build.sh
	bash scripts/cluster/build.sh node

# localhost/kubeinfer-operator:dev and localhost/kubeinfer-runtime:* from buildah's storage into the real node's
# containerd (only the layers it lacks; pods use imagePullPolicy IfNotPresent/Never). IMAGES="a b" picks others.
cluster-load-images:
	$(PYTHON) scripts/cluster/localcluster.py load-images $(IMAGES)

lint: $(SETUP_STAMP)
	$(BIN)/ruff check .

protos: $(SETUP_STAMP)
	$(BIN)/python protos/generate.py

# The documentation (docs/, mkdocs.yml; the InferenceService reference generated from the CRD by docs/hooks.py) as a
# site in .cache/site. --strict: a broken link or anchor, or a page left out of the nav, fails the build.
docs: $(SETUP_STAMP)
	$(BIN)/mkdocs build --strict --site-dir .cache/site

# Benchmark: kubeinfer vs the raw model and KServe/MLServer/LitServe (installs peers on first use; ~7-10 min on 2 cores)
bench: $(SETUP_STAMP) $(DEMO_MODEL)
	$(BIN)/python benchmarks/run.py

# The CUDA path proved and measured in one run of a few minutes (benchmarks/gpu_check.py); on a machine without
# a GPU the same pipeline runs on the CPU and says so. Figures go to benchmarks/results/gpu-check-*.json.
gpu-check: $(SETUP_STAMP) $(DEMO_MODEL)
	$(BIN)/python benchmarks/gpu_check.py --model $(DEMO_MODEL)

# What a bare GPU machine (Python 3.12, torch, no network) lacks to run gpu_check.py from this source tree:
# wheels into .whl/, to carry there and install with `pip install --no-index --no-deps --target DIR .whl/*.whl`.
gpu-check-wheels: $(SETUP_STAMP)
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .whl ultralytics==8.4.190 ultralytics-thop grpcio==1.85.1 grpcio-health-checking==1.85.1 \
		grpcio-reflection==1.85.1 protobuf==7.36.2

# Both container images built from the Dockerfiles with buildah (local Debian base, cached) and run with podman
# as their pods run them (docs/images.md; root, ~50 GB free disk, ~20-25 min the first time)
images: $(SETUP_STAMP) $(DEMO_MODEL)
	bash scripts/install-test-tools.sh image_tools
	$(BIN)/python scripts/images.py

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
