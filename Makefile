# numa-topology-exporter: `make run` and `make test` are all a newcomer needs (see README.md).
VENV        ?= .venv
PY          := $(VENV)/bin/python
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests use for real: the peers (hwloc, node_exporter), Prometheus/promtool,
# the hwdb for device names (udev), gcc for the fake libnvidia-ml.so.1, bzip2 for the hwloc trees,
# openssl for the TLS test certificate, util-linux for setpriv (the daemon run without capabilities) and,
# with mount, for the real kubelets' mount namespace (../shared/k8s/start-node),
# mmdebstrap, umoci and skopeo to build the image without a Docker engine, runc to run it as the chart does.
DEB_PACKAGES := prometheus prometheus-node-exporter hwloc udev bzip2 gcc libc6-dev python3-venv openssl util-linux mount \
                mmdebstrap umoci skopeo runc
LISTEN      ?= 127.0.0.1:9709

.PHONY: run test check lint system-deps install fuzz soak bench clean proto image demo

# Only what is missing, and nothing upgraded: udev is pinned to the installed libudev1's version, so that
# installing it does not pull a newer systemd onto the machine.
system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  libudev="$$(dpkg-query -W -f='$${Version}' libudev1 2>/dev/null || true)"; \
	  pinned=""; for p in $$missing; do \
	    if [ "$$p" = udev ] && [ -n "$$libudev" ]; then pinned="$$pinned udev=$$libudev"; else pinned="$$pinned $$p"; fi; \
	  done; \
	  echo "installing Debian packages:$$pinned"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends --no-upgrade $$pinned; \
	fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,kubeconfig]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check exporter tests bench dashboards
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: system-deps install lint
	$(VENV)/bin/pytest

# The image (OCI layout and archive in build/image), built from Debian packages without a Docker engine.
image: system-deps install
	bash image/build.sh build/image

# An example host with kubelet state and a cgroup tree: the tables a real GPU node would show.
demo: install
	@flags="$$($(PY) -m tests.demo build/demo)"; \
	$(VENV)/bin/numa-topology-exporter snapshot $$flags; \
	echo; echo "serve it:  $(VENV)/bin/numa-topology-exporter serve --no-nrt $$flags"

run: install
	$(VENV)/bin/numa-topology-exporter snapshot --format table
	$(VENV)/bin/numa-topology-exporter serve --web.listen-address $(LISTEN) --log-level info

# A large hypothesis budget for every parser, and thousands of generated node states and kubelet
# configurations judged against kubelet-oracle (make test runs the same targets with a small one).
FUZZ_EXAMPLES ?= 5000
ORACLE_EXAMPLES ?= 4000
fuzz: system-deps install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest tests/unit/test_fuzz.py -p no:cacheprovider
	ORACLE_EXAMPLES=$(ORACLE_EXAMPLES) ORACLE_RANDOM=1 $(VENV)/bin/pytest tests/integration/test_oracle_differential.py \
	  tests/integration/test_doctor_oracle.py -p no:cacheprovider

# 50 concurrent scrapers for 5 minutes while the state files change 10 times a second.
SOAK_SECONDS ?= 300
soak: system-deps install
	$(PY) bench/soak.py --seconds $(SOAK_SECONDS)

bench: system-deps install
	$(PY) bench/discovery.py
	$(PY) bench/kubelet_state.py
	$(PY) bench/gpu_host.py --fake-init-ms 11
	$(PY) bench/daemon.py latency --changes 200
	$(PY) bench/daemon.py scrape --seconds 10
	$(PY) bench/daemon.py idle --seconds 60
	$(PY) bench/daemon.py memory --seconds 600

# The podresources v1 client, generated from exporter/sources/podresources_v1/api.proto by the pinned
# grpcio-tools (pyproject.toml); the generated modules are committed.
proto: install
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \
	  exporter/sources/podresources_v1/api.proto

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
