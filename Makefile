# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The dev/CI venv installs exactly requirements/dev.lock (every package, torch 2.14.1 +
# torchvision 0.29.1 included: the pair that lies on this workplace's disk), so a release
# upstream cannot change a result or turn CI red. The library itself keeps ranges
# (pyproject.toml). `make lock` regenerates the lock (see README "Development").
LOCK := requirements/dev.lock
# Test tools whose declared pins (pandas<3, numpy<2, ...) the lock cannot satisfy, installed
# without their dependencies: img2dataset writes the shards the remote-source tests read,
# clip-retrieval's ClipClient queries serve; what they import at run time is in the lock.
NODEPS := requirements/nodeps.txt
# pip-tools runs in its own throwaway venv, pinned like everything else.
PIP_TOOLS := pip==26.3 pip-tools==7.7.0
LOCKENV := .lockenv

.PHONY: venv lock browser demo test test-fast lint docs clean

$(BIN)/.installed: pyproject.toml $(LOCK) $(NODEPS)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -r $(NODEPS)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(BIN)/.installed

# Recompile the lock from pyproject.toml's [dev] extra + requirements/dev.in. Pins already in
# the lock are kept; `make lock UPGRADE=wcwidth` moves one package (and what it needs) to its
# newest release, `make lock UPGRADE=all` every package. Then `make venv` installs it.
lock:
	test -x $(LOCKENV)/bin/pip-compile || { $(PY) -m venv $(LOCKENV) && $(LOCKENV)/bin/pip install -q $(PIP_TOOLS); }
	$(LOCKENV)/bin/pip-compile -q --extra dev --strip-extras --allow-unsafe \
	  --unsafe-package clipindex --no-emit-index-url --no-emit-find-links \
	  --annotation-style line $(if $(filter all,$(UPGRADE)),--upgrade,$(if $(UPGRADE),--upgrade-package $(UPGRADE))) \
	  -o $(LOCK) pyproject.toml requirements/dev.in
	sed -i '/^clipindex @/d; /considered to be unsafe/d' $(LOCK)

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

# The docs site (MkDocs + Material, API reference by mkdocstrings) into site/; --strict: a
# broken link or anchor fails. `$(BIN)/mkdocs serve` previews it.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

clean:
	rm -rf demo-out .pytest_cache site $(LOCKENV)
