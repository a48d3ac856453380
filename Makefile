# Two commands set up a fresh machine (see README): `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# DeepSpeed's compiled ops cache in torch's default (~/.cache/torch_extensions; TORCH_EXTENSIONS_DIR moves it); the
# tests keep theirs, and every other file they write, under the temp dir (tests/conftest.py): never in the checkout.
# rlwork's own cache (tiny coders, the demo's warm start): RLWORK_CACHE if set, else ~/.cache/rlwork (XDG), the same
# place `.venv/bin/rlwork` uses when run by hand; every command prints it at start.

# WANDB_MODE: offline unless you configured W&B (rlwork/cli.py decides; WANDB_MODE/WANDB_API_KEY win).

.PHONY: venv demo test test-slow lint bench clean

venv: $(STAMP)

# torch is pinned to 2.13.0: on this kind of machine its CPU wheel is on disk; other versions download GBs.
$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlwork demo --config configs/tiny.yaml $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The slow and distributed tests (2-rank ZeRO-2/3, offload, the DeepSpeed launcher, kill/resume, learning), each
# listed by name with its result.
test-slow: $(STAMP)
	$(PY) -m pytest -m slow -v --durations=10

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) bench/sampler.py
	$(PY) bench/elbo.py
	$(PY) bench/step.py
	$(PY) bench/sandbox.py

clean:
	rm -rf $(VENV) .cache  # .cache: where earlier versions kept DeepSpeed's ops
