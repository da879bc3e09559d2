# dentalmim: the two commands a new user needs are `make demo` and `make test`.
# Both create .venv (Python 3.11) and install the project from pyproject.toml first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch is pinned in pyproject.toml; on CPU machines the local CPU wheel is taken (see README for CUDA).
TORCH_SPEC ?= torch==2.13.0
export NO_ALBUMENTATIONS_UPDATE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: setup demo test bench clean browser postgres

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/dentalmim demo --out demo_out

# The web-page test drives Debian's chromium with Playwright (never `playwright install`): installed here when
# missing and we are root with apt-get; otherwise tests/service/test_browser.py skips with the reason.
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null \
	      || echo "chromium could not be installed; the browser test will be skipped"; \
	  else echo "chromium not installed (needs root + apt-get); the browser test will be skipped"; fi; \
	fi

# The PostgreSQL tests start a throwaway server from Debian's postgresql binaries (initdb, pg_ctl, postgres):
# installed here when missing and we are root with apt-get; otherwise tests/service/test_postgres.py skips.
postgres:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql) \
	      >/dev/null || echo "postgresql could not be installed; the PostgreSQL tests will be skipped"; \
	  else echo "PostgreSQL not installed (needs root + apt-get); the PostgreSQL tests will be skipped"; fi; \
	fi

test: setup browser postgres
	$(PY) -m pytest -q -n 2 --durations=15

bench: setup
	$(PY) benchmarks/ingest.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
