# Two commands on a fresh machine (Python 3.11, pip, make):
#   make demo   install into .venv and run the demo on a generated sample case
#   make test   install into .venv (with test extras) and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vclust-installed

.PHONY: install browser services bytecode demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	# compile pynndescent's and umap-learn's numba kernels into numba's disk cache once, here,
	# instead of in the user's first fit and report (vclust/warmup.py; 37-67 s on the 2-core machines measured,
	# benchmarks/RESULTS.md)
	$(PY) -m vclust.warmup
	touch $(STAMP)

# Headless Chromium (Debian's package) for the report's browser test. Installed when missing,
# as root or through sudo; where neither works the test says so and fails.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing Debian's chromium for the report's browser test"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null \
	  || echo "could not install chromium: the browser test will fail and say so"; }

# A one-node SLURM (slurmctld, slurmd, munge, sacct) and an SSH server (Debian's packages) for
# tests/test_slurm.py and tests/test_ssh.py; the tests' fixtures (tests/clusters.py) configure,
# start and stop them on 127.0.0.1. Installed when missing, as root or through sudo; no service
# is started here. Where the install fails those tests fail and say what is missing.
services:
	@missing=; \
	for cmd in slurmctld:slurmctld slurmd:slurmd sacct:slurm-client munged:munge sshd:openssh-server ssh-keygen:openssh-client; do \
	  command -v $${cmd%%:*} >/dev/null 2>&1 || [ -x /usr/sbin/$${cmd%%:*} ] || missing="$$missing $${cmd##*:}"; done; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing Debian's$$missing for the SLURM and SSH tests"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends$$missing >/dev/null \
	  || echo "could not install$$missing: the SLURM and SSH tests will fail and say so"; }

install: $(STAMP) browser

demo: $(STAMP) bytecode
	$(VENV)/bin/vclust demo --out demo-out

# pytest exits 5 when no test ran: make treats any non-zero exit as failure. Two pytest-xdist
# workers, each taking a whole test file at a time (so a file's module fixtures are made once);
# TEST_WORKERS=0 runs the suite in this one process.
# Each worker's BLAS and OpenMP at one thread (and the commands the tests start): two workers
# on 2 cores, each at two threads, oversubscribe them (tests 338 s -> 293 s, user CPU 514 s ->
# 426 s, benchmarks/RESULTS.md, the tenth session).
# bytecode: vclust and the tests compiled to __pycache__ before the suite, the demo and the
# benchmarks run. The install is editable, so pip compiles none of vclust, and where
# PYTHONDONTWRITEBYTECODE is set (this project's machines have it) every process compiled the
# vclust modules it imports from source again: `vclust fit` of a 3,000-row store 1.35 -> 1.23
# CPU-s, `vclust info` 0.58 -> 0.55 (six pairs each); a suite run starts about 370 Python
# processes (benchmarks/RESULTS.md). A source edited later is newer than its .pyc and is
# compiled again as usual.
TEST_WORKERS ?= 2
TEST_ENV = $(if $(filter 0,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1)
bytecode:
	@$(PY) -m compileall -q vclust tests >/dev/null

test: $(STAMP) browser services bytecode
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# while developing: everything but the tests marked slow (a minute or more each on 2 cores) and
# the system tests (whole commands, real clusters, faults, the notebook: tests/conftest.py);
# the SLURM and SSH tests are among the system tests, so no `services` here
test-fast: $(STAMP) browser bytecode
	$(TEST_ENV) $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  -m "not slow and not system"

bench: $(STAMP) bytecode
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
