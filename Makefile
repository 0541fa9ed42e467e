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

.PHONY: env test demo demo-seg demo-det clean-env

env: $(STAMP)

$(STAMP): requirements/*.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTRAINTS) torch -r requirements/build.txt
	@echo "Installing mmcv 2.1.0 (compiled from source the first time: about 10 minutes on 2 cores; cached after)"
	$(PIP) install -c $(CONSTRAINTS) --no-build-isolation mmcv==2.1.0
	$(PIP) install -q -c $(CONSTRAINTS) -r requirements/runtime.txt -r requirements/mminstall.txt \
		-r requirements/tests.txt -r requirements/optional.txt
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, mmcv, mmdet, mmseg, convnextv2_dense; print('torch', torch.__version__, '| mmcv', mmcv.__version__, '| mmdet', mmdet.__version__, '| mmseg', mmseg.__version__)"
	touch $(STAMP)

test: env
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

demo: demo-seg demo-det

demo-seg: env
	$(BIN)/python tools/run_demo.py seg --work-dir $(DEMO_DIR)/upernet

demo-det: env
	$(BIN)/python tools/run_demo.py det --work-dir $(DEMO_DIR)/mask-rcnn --backbone-from $(DEMO_DIR)/upernet/train

clean-env:
	rm -rf $(VENV)
