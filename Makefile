# `make demo` and `make test` do all set-up on a fresh machine through `make install`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mdgm-installed

.PHONY: install test demo demo-quick example default-model bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -rs test

demo: install
	$(PY) -m mdgm_ros demo --out demo_out

demo-quick: install
	$(PY) -m mdgm_ros demo --quick --out demo_out

example: install
	$(PY) -m mdgm_ros example --out demo_out/example

# the shipped default bundle, reproducibly: bags from the simulator, then the project's train command
default-model: install
	rm -rf build/default_model_bag
	$(PY) -m mdgm_ros simulate --out build/default_model_bag --duration 300 --seed 0
	$(PY) -m mdgm_ros train --bags build/default_model_bag --config config/train.yaml --out models/default

bench: install
	$(PY) -m mdgm_ros bench all --json

clean:
	rm -rf build install log demo_out *.egg-info
