# `make test`: a fresh machine to a green suite. `make demo`: set up, then train and evaluate the CPU demo.
# Both are idempotent: the environment is rebuilt only when a requirements file or setup.py changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
CONSTRAINTS ?= requirements/constraints.txt
STAMP := $(VENV)/.installed
DEMO_DIR ?= work_dirs/demo
PYTEST_ARGS ?=

FLOOR_VENV ?= .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed
# What needs only torch (models, weights and the tools built on them); tests needing mm skip themselves.
FLOOR_TESTS ?= tests/models tests/weights tests/test_compat.py tests/test_setup.py tests/test_doctor.py

.PHONY: env test test-floor demo demo-seg demo-det clean-env

env: $(STAMP)

$(STAMP): $(filter-out requirements/floor.txt,$(wildcard requirements/*.txt)) setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) torch -r requirements/build.txt
	@echo "Installing mmcv 2.1.0 (compiled from source the first time: about 10 minutes on 2 cores; cached after)"
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation mmcv==2.1.0
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/runtime.txt -r requirements/mminstall.txt \
		-r requirements/tests.txt -r requirements/optional.txt
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps --no-build-isolation -e .
	$(BIN)/python -m convnextv2_dense.doctor --require-mm  # versions, mmcv ops built for this torch, RoIAlign runs
	touch $(STAMP)

test: env
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

# The declared minimums (requirements/floor.txt) in a second, torch-only environment: proves torch>=2.1 holds.
$(FLOOR_STAMP): requirements/floor.txt
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip --disable-pip-version-check install -q -r requirements/floor.txt
	touch $(FLOOR_STAMP)

test-floor: $(FLOOR_STAMP)
	PYTHONPATH=$(CURDIR) $(FLOOR_VENV)/bin/python -m pytest $(FLOOR_TESTS) $(PYTEST_ARGS)

demo: demo-seg demo-det

demo-seg: env
	$(BIN)/python tools/run_demo.py seg --work-dir $(DEMO_DIR)/upernet

demo-det: env
	$(BIN)/python tools/run_demo.py det --work-dir $(DEMO_DIR)/mask-rcnn --backbone-from $(DEMO_DIR)/upernet/train

clean-env:
	rm -rf $(VENV) $(FLOOR_VENV)
