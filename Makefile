# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PIN := torch==2.13.0
# where torch comes from: empty = the package index pip is configured with (what it serves depends on the
# machine: see README); `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build
TORCH_INDEX ?=
TORCH_FROM := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))

.PHONY: demo test lint venv test-venv bench clean mutate

# torch first, pinned (an unpinned torch could pull another build on top); skipped when the venv has one
define install_torch
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN) $(TORCH_FROM)
endef

# what the demo uses: aelab and TensorBoard (train logs to RUN/tb); not the test tools nor MLflow
$(VENV)/.installed: pyproject.toml
	$(install_torch)
	$(PY) -m pip install -q -e ".[tensorboard]"
	@echo "make venv: installed aelab and TensorBoard; left out: MLflow (pip install -e '.[mlflow]') and the test tools (make test)"
	touch $@

# what the tests use: aelab and the test extras (pytest, ruff, hypothesis, mutmut, MLflow with its UI)
$(VENV)/.installed-test: pyproject.toml
	$(install_torch)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

venv: $(VENV)/.installed

test-venv: $(VENV)/.installed-test

demo: venv
	$(VENV)/bin/aelab experiment demo --out runs/demo

test: test-venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest tests

bench: venv
	$(PY) benchmarks/run_all.py

# mutation testing (mutmut 3; minutes per module, not part of `make test`): every module of
# [tool.aelab-mutate.modules] in pyproject.toml, or `make mutate MODULE=aelab.optim` (a name or a prefix)
MODULE ?=
mutate: test-venv
	$(PY) tests/mutate.py $(MODULE)

clean:
	rm -rf runs .pytest_cache
