# chimein: `make setup` builds .venv (idempotent), `make test` runs the suite in it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.chimein-setup
export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast demo lint typecheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, as the CPU wheel: anything else downloads gigabytes of CUDA libraries
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[all,dev]'
	# optimum-intel requires torchvision, whose PyPI build fails to import beside this torch
	# ("operator torchvision::nms does not exist") and then breaks transformers' imports.
	# chimein needs no vision code: remove it.
	$(PY) -m pip uninstall -q -y torchvision || true
	$(PY) -c "import torch, transformers, peft, trl, datasets, aiosqlite, slack_bolt, discord, openvino, openvino_genai, optimum.intel, bitsandbytes; print('setup ok: torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m training.demo

lint: setup
	$(PY) -m ruff check bot adapters training tests benchmarks

typecheck: setup
	$(PY) -m mypy

bench: setup
	$(PY) benchmarks/decision_latency.py --messages 120

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
