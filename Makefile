# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1: the pair that lies on this workplace's disk (pip takes
# them from local files; see README "Install"). Override for another machine:
#   make venv TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv browser demo test test-fast lint clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/clipindex demo --out demo-out

# The report's and the serve page's browser tests use Debian's chromium and chromium-driver
# (installed when we are root; without them those tests are skipped with a reason).
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium/chromedriver missing: browser tests will be skipped (sudo apt-get install chromium chromium-driver)"; fi; }

# Two pytest workers (one per core; tests run one thread each), whole test files per
# worker so module fixtures are built once: the suite takes ~6 min instead of ~17 on 2 cores.
test: venv browser
	$(BIN)/python -m pytest -q -n auto --dist loadfile

# Everything but the tests marked slow (held-out worlds, top-10 bars, benchmark scripts);
# CI runs them all through `make test`.
test-fast: venv
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m 'not slow'

lint: venv
	$(BIN)/ruff check clipindex tests benchmarks

clean:
	rm -rf demo-out .pytest_cache
