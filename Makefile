# buddylab: `make qemu-test` runs the main job, `make test` the test suite.
# Each installs what is missing first (Debian packages, then the venv).

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: qemu-test test bench experiments host-deps lava-deps venv clean

qemu-test: venv
	$(VENV)/bin/buddylab qemu-test

experiments: venv
	$(VENV)/bin/buddylab experiment all

test: venv
	$(VPY) -m pytest -q -ra

bench: venv
	$(VPY) bench/model_bench.py
	$(VPY) bench/run_bench.py
	$(VPY) bench/snapshot_bench.py
	$(VPY) bench/chapter8_bench.py

host-deps:
	@bash images/install-host-deps.sh

# Optional: LAVA's dispatcher (lava-run), for the LAVA tests (skipped without it).
lava-deps:
	@bash images/install-host-deps.sh images/lava-packages.txt

venv: host-deps $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) results
	$(MAKE) -C kmod clean
