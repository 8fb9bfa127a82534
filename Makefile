# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1: the pair that lies on this workplace's disk (pip takes
# them from local files; see README "Install"). Override for another machine:
#   make venv TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/clipindex demo --out demo-out

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check clipindex tests benchmarks

clean:
	rm -rf demo-out .pytest_cache
