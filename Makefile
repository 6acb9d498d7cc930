# Two entry points (README quick start): `make demo` and `make test`. Both install first, idempotently.
PYTHON ?= python3
# torch==2.13.0 is the CPU wheel on the dev/CI machines; it is installed only when no torch is:
# an installed torch (a cluster's own CUDA build) and its triton are kept, never upgraded (hpc/install.py).
TORCH_SPEC ?= torch==2.13.0
# make test-torch251: the CPU subset of the tests in a venv with torch 2.5.1 (the newest torch
# ColossalAI 0.5.0 declares; PyPI's CUDA build, which also runs on CPU, about 5 GB).
TORCH251_VENV ?= .venv-torch251
TORCH251_TESTS ?= tests/test_train_layouts.py tests/test_resume.py tests/test_cpu_compat.py \
	tests/test_one_rank_ddp.py tests/test_data_model.py tests/test_cli_train.py tests/test_graph_step.py

.PHONY: install install-python install-slurm test test-torch251 demo cluster-up cluster-down

install: install-python install-slurm

# One line per step; pip's output goes to the log file it names. A second run reads installed
# metadata only (no pip) when everything already fits.
install-python:
	@$(PYTHON) -m hpc.install --test --torch-spec "$(TORCH_SPEC)"
	@$(PYTHON) -c "import torch, colossalai, transformers, datasets, submitit, tensorboard; print('python deps ok: torch', torch.__version__, 'transformers', transformers.__version__)"

# Debian packages for the local real Slurm cluster used by tests and the demo, and Chromium for the
# TensorBoard screenshot test (needs root).
install-slurm:
	@$(PYTHON) -m hpc.dev.cluster install
	@command -v chromium >/dev/null || { mkdir -p .install && echo "[install] chromium (apt; log .install/chromium.log)" && \
		{ (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium || \
		   (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)) \
		  > .install/chromium.log 2>&1 || { echo "[install] FAILED: chromium; last lines of .install/chromium.log:"; tail -20 .install/chromium.log; exit 1; }; }; }

# Two pytest-xdist workers: the tests that use the local Slurm cluster run in order on one (they share
# it; tests/conftest.py groups them), the rest on the other. --durations lists the slowest tests at
# the end of every run (CI's time budget is 20 minutes).
test: install
	$(PYTHON) -m pytest -x -q -n 2 --dist loadgroup --durations=25

test-torch251:
	@test -x $(TORCH251_VENV)/bin/python || $(PYTHON) -m venv $(TORCH251_VENV)
	@$(TORCH251_VENV)/bin/python -m hpc.install --test --torch-spec torch==2.5.1
	@$(TORCH251_VENV)/bin/python -c "import importlib.metadata as m, sys; v = m.version('torch'); \
		sys.exit(None if v.split('+')[0] == '2.5.1' else '$(TORCH251_VENV) has torch ' + v + ', not 2.5.1: remove the folder')"
	$(TORCH251_VENV)/bin/python -m pytest -q $(TORCH251_TESTS)

demo: install
	$(PYTHON) -m hpc.dev.demo

cluster-up: install
	$(PYTHON) -m hpc.dev.cluster start

cluster-down:
	$(PYTHON) -m hpc.dev.cluster stop
