# `make demo` and `make test` do all set-up on a fresh machine through `make install`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mdgm-installed

.PHONY: install interfaces test lint demo demo-quick example default-model own-robot bench gpu-check clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg package.xml CMakeLists.txt $(wildcard msg/*.msg action/*.action)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	$(MAKE) interfaces
	touch $(STAMP)

# msg/ and action/ built with the pinned ROS wheels into the venv: the libraries
# in $(VENV)/lib, the Python modules in $(VENV)/lib/mdgm_ros_interfaces (mdgm_ros/__init__.py finds them)
VENV_ABS = $(abspath $(VENV))
interfaces:
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake -S . -B build/interfaces -DMDGM_INTERFACES_ONLY=ON -DBUILD_TESTING=OFF \
	  -DCMAKE_INSTALL_PREFIX=$(VENV_ABS) -DCMAKE_PREFIX_PATH=$(VENV_ABS) -DPython3_EXECUTABLE=$(VENV_ABS)/bin/python \
	  -DPYTHON_INSTALL_DIR=lib/mdgm_ros_interfaces > /dev/null
	AMENT_PREFIX_PATH=$(VENV_ABS) cmake --build build/interfaces -j2 > /dev/null
	cmake --install build/interfaces > /dev/null

test: install
	$(PY) -m pytest -q -rs test

# pyflakes, pycodestyle, import order and docstring basics over the package and the tests (ruff.toml)
lint: install
	$(VENV)/bin/ruff check mdgm_ros test launch docs setup.py

demo: install
	$(PY) -m mdgm_ros demo --out demo_out

demo-quick: install
	$(PY) -m mdgm_ros demo --quick --out demo_out

example: install
	$(PY) -m mdgm_ros example --out demo_out/example

# the shipped default bundle, reproducibly: three fault-free 300 s bags from the simulator (seeds 0, 3, 4;
# the test bags use 1 and 2), then the project's train command with the temporal config (about 1 h on 2 cores)
DEFAULT_BAGS := build/default_model_bags
default-model: install
	rm -rf $(DEFAULT_BAGS)
	for seed in 0 3 4; do $(PY) -m mdgm_ros simulate --out $(DEFAULT_BAGS)/seed$$seed --duration 300 --seed $$seed || exit 1; done
	$(PY) -m mdgm_ros train --bags $(DEFAULT_BAGS)/seed0 $(DEFAULT_BAGS)/seed3 $(DEFAULT_BAGS)/seed4 \
	  --config config/train_temporal.yaml --out models/default

# the README's "Your own robot" commands on the simulator's second robot (KUKA iiwa), from its bags alone:
# init -> train -> evaluate, the figures in build/own_robot/evaluate.json (a few minutes on 2 cores);
# other seeds, a longer training bag: make own-robot TRAIN_SEED=3 TEST_SEED=4 TRAIN_S=300
OWN := build/own_robot
TRAIN_SEED ?= 1
TEST_SEED ?= 2
TRAIN_S ?= 120
own-robot: install
	rm -rf $(OWN) && mkdir -p $(OWN)
	$(PY) -m mdgm_ros simulate --robot kuka --out $(OWN)/train --duration $(TRAIN_S) --seed $(TRAIN_SEED) > /dev/null
	$(PY) -m mdgm_ros simulate --robot kuka --out $(OWN)/test --duration 60 --seed $(TEST_SEED) --faults all --per-kind 1 > /dev/null
	$(PY) -m mdgm_ros init --bags $(OWN)/train --out $(OWN)/cfg
	$(PY) -m mdgm_ros train --config $(OWN)/cfg/train.yaml --bags $(OWN)/train --out $(OWN)/model > $(OWN)/train.json
	$(PY) -m mdgm_ros evaluate --model $(OWN)/model --bags $(OWN)/test --json > $(OWN)/evaluate.json
	$(PY) -m mdgm_ros evaluate --model $(OWN)/model --bags $(OWN)/test

bench: install
	$(PY) -m mdgm_ros bench all --json

# the prepared GPU check (mdgm_ros/bench/gpu_check.py): one report in $(GPU_CHECK_OUT), exit 1 if a part failed.
# On a GPU machine whose python3 already holds torch (no venv there): make gpu-check GPU_CHECK_PY=python3
# On a CPU, as CI runs it: make gpu-check GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1
GPU_CHECK_DEVICE ?= auto
GPU_CHECK_OUT ?= build/gpu_check.json
GPU_CHECK_PY ?= $(PY)
gpu-check: $(if $(filter $(PY),$(GPU_CHECK_PY)),install)
	$(GPU_CHECK_PY) -m mdgm_ros bench gpu --device $(GPU_CHECK_DEVICE) --out $(GPU_CHECK_OUT) $(if $(GPU_CHECK_QUICK),--quick)

clean:
	rm -rf build install log demo_out *.egg-info

# the documentation site (docs/, Sphinx): warnings are errors, and nitpicky mode (-n) makes every
# :doc: / :ref: that does not resolve one; external links are not checked (no network needed)
.PHONY: docs
docs: install
	$(VENV)/bin/sphinx-build -W --keep-going -n -b html docs docs/_build/html
