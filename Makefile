# sheepdog-backend: `make test` and `make demo` work on a fresh machine with Python 3.10+
# and a C compiler with Python's headers (the gateway's compiled lane, setup.py).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The [cinder] extra (OpenStack Cinder >= 29, Python >= 3.11) has its own stamp, so a venv
# without it (older Python) still works; the Cinder tests then skip saying why.
CINDER_STAMP := $(VENV)/.installed-cinder

.PHONY: venv test lint demo bench bench-scale-1000 bench-all genconfig cinder-sample clean

LANE_C := sheepdog_backend/gateway/_lane.c $(wildcard sheepdog_backend/gateway/lane_c/*)

$(STAMP): setup.cfg setup.py pyproject.toml $(LANE_C)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

$(CINDER_STAMP): $(STAMP)
	if $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
	  $(PY) -m pip install -q -e '.[cinder]'; \
	else echo "Python < 3.11: not installing the [cinder] extra (Cinder tests will skip)"; fi
	touch $(CINDER_STAMP)

# pytest exit code 5 means "no tests collected": that must fail, never pass.
test: $(STAMP) $(CINDER_STAMP)
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check sheepdog_backend
	$(VENV)/bin/mypy --strict sheepdog_backend

demo: $(STAMP)
	$(PY) -m sheepdog_backend.demo --config etc/sheepdog-backend-demo.conf

# bench: issue 13's table (dog, raw floor, ours) on real sheep nodes when
# SHEEPDOG_INTEROP_BIN (or SHEEPDOG_SHEEP/SHEEPDOG_DOG, PATH) finds sheep and
# dog, then on the embedded server; BENCH_ARGS="--config FILE" for your own
# cluster.  Then issue 24's figures (need tgt and QEMU 7.2; say why and exit 0
# without them; skipped with --config): bench_gateway, the five qemu-img bench
# jobs through QEMU 5.2's own driver, tgt -> sheep and tgt -> gateway -> sheep,
# the convert/dd throughput, what coherent creates cost and the guest's stall
# per snapshot (about 1.5 min); bench_scale, 300 LUs in one tgtd all doing I/O
# at once through one gateway next to tgt straight to the sheep (about 1 min);
# and the embedded server's fairness under clients that never read (about
# 35 s).  bench-scale-1000 is the opt-in 1,000-LU run (16,000 tgtd threads,
# 17,000 fds).
# bench-all adds the client and server micro-benchmarks.
bench: $(STAMP)
	$(PY) benchmarks/bench_sheep.py $(BENCH_ARGS)
	if [ -z "$(BENCH_ARGS)" ]; then \
	  $(PY) benchmarks/bench_gateway.py && $(PY) benchmarks/bench_scale.py --lus 300; fi
	$(PY) benchmarks/bench_server.py --fairness-only

bench-scale-1000: $(STAMP)
	$(PY) benchmarks/bench_scale.py --lus 1000

bench-all: bench
	$(PY) benchmarks/bench_client.py
	$(PY) benchmarks/bench_server.py --fairness-rounds 0

genconfig: $(STAMP)
	$(VENV)/bin/oslo-config-generator --config-file etc/oslo-config-generator/sheepdog-backend.conf

cinder-sample: $(STAMP)
	$(PY) -m sheepdog_backend.cinder.options > etc/cinder/cinder.conf.sample

clean:
	rm -rf $(VENV) build *.egg-info
