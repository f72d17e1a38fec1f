# The two commands the README promises: `make demo` and `make test`. Both create .venv/ on first use.
# `make docs` builds the documentation site (docs/, mkdocs.yml) into $(SITE), failing on any warning.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SAMPLE := $(abspath ../shared/data/mmimdb-sample)
SITE ?= site
# DATA=PATH runs on your own copy of MM-IMDb (official split, every movie); without it the shared sample is used
# with the stratified split over movies that have both a poster and a plot (its official train/test have no dev posters).
DATA ?=
ifeq ($(strip $(DATA)),)
  DEMO_ARGS := --split stratified --modalities both
else
  DEMO_ARGS := --split official --modalities any
endif

.PHONY: demo test docs install clean-venv

$(VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	@data="$(DATA)"; \
	if [ -z "$$data" ]; then \
	  if [ -d "$${GENREFUSION_SAMPLE:-$(SAMPLE)}" ]; then data="$${GENREFUSION_SAMPLE:-$(SAMPLE)}"; else \
	    echo "No data. Get MM-IMDb (see docs/gpu.md) and run: make demo DATA=/path/to/mmimdb"; exit 2; fi; \
	fi; \
	$(PY) -m genrefusion demo --data "$$data" $(DEMO_ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q

docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir "$(SITE)"

clean-venv:
	rm -rf $(VENV)
