# `make demo` and `make test` do all set-up on a fresh machine through `make install`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mdgm-installed

.PHONY: install test demo demo-quick bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -rs test

demo: install
	$(PY) -m mdgm_ros example --out demo_out

demo-quick: install
	$(PY) -m mdgm_ros example --quick --out demo_out

bench: install
	$(PY) -m mdgm_ros bench all --json

clean:
	rm -rf build install log demo_out *.egg-info
