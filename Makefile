# Two entry points (README quick start): `make demo` and `make test`. Both install first, idempotently.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# torch==2.13.0 is the CPU wheel on the dev/CI machines; a cluster keeps its own CUDA torch (never replaced).
TORCH_SPEC ?= torch==2.13.0
COLOSSALAI_SPEC ?= colossalai==0.5.0

.PHONY: install install-python install-slurm test demo cluster-up cluster-down lint

install: install-python install-slurm

install-python:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	@$(PYTHON) -c "import colossalai" 2>/dev/null || $(PIP) install -q --no-deps --no-build-isolation "$(COLOSSALAI_SPEC)"
	@$(PYTHON) -c "import transformers, datasets, submitit, tensorboard, yaml, rich, pytest_timeout, hypothesis, ninja, triton" 2>/dev/null || $(PIP) install -q -e ".[test]"
	@$(PYTHON) -c "import torch, colossalai, transformers, datasets, submitit, tensorboard; print('python deps ok: torch', torch.__version__, 'transformers', transformers.__version__)"

# Debian packages for the local real Slurm cluster used by tests and the demo, and Chromium for the
# TensorBoard screenshot test (needs root).
install-slurm:
	@$(PYTHON) -m hpc.dev.cluster install
	@command -v chromium >/dev/null || (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium))

test: install
	$(PYTHON) -m pytest -x -q

demo: install
	$(PYTHON) -m hpc.dev.demo

cluster-up: install
	$(PYTHON) -m hpc.dev.cluster start

cluster-down:
	$(PYTHON) -m hpc.dev.cluster stop
