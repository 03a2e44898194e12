# make run  - install, start the services, migrate, create the demo customer, start every process
# make test - the same set-up, then the whole test suite
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON ?= python3.11
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test setup services migrate lint bench clean

$(VENV)/.installed: requirements.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) is required"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

services:
	@bash scripts/services.sh

migrate: $(VENV)/.installed services
	@$(PY) manage.py migrate --noinput -v 0
	@$(PY) manage.py collectstatic --noinput -v 0

setup: migrate

run: setup
	@mkdir -p var
	@$(PY) manage.py demo
	@echo "Starting: $$(cut -d: -f1 Procfile | tr '\n' ' ')(Ctrl-C stops them all)"
	@echo "API http://127.0.0.1:8000/v1/docs  Flower http://127.0.0.1:5555 (admin:mailq)  Admin http://127.0.0.1:8000/admin/"
	@echo "Metrics http://127.0.0.1:8000/metrics  Dashboard http://127.0.0.1:8000/admin/dashboard/"
	@# Metrics of every process (prometheus-client multiprocess mode), fresh for each run.
	@rm -rf var/prometheus && mkdir -p var/prometheus
	PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/var/prometheus exec $(VENV)/bin/honcho start -f Procfile

test: $(VENV)/.installed
	@bash scripts/services.sh --with-browser
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed services
	$(PY) bench/throughput.py

clean:
	rm -rf $(VENV) var
