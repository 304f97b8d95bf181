# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bonemet-dask demo --out demo-output

test: $(STAMP)
	$(BIN)/ruff check bonemet_dask tests benchmarks
	$(BIN)/ruff format --check bonemet_dask tests benchmarks
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=15

lint: $(STAMP)
	$(BIN)/ruff check bonemet_dask tests benchmarks
	$(BIN)/ruff format --check bonemet_dask tests benchmarks

clean:
	rm -rf $(VENV) demo-output .pytest_cache
