# buddylab: `make qemu-test` runs the main job, `make test` the test suite.
# Each installs what is missing first (Debian packages, then the venv).
# KERNEL=NAME|PATH picks the kernel recipe (a name in images/ or a recipe file):
#   make qemu-test KERNEL=debian-5.10-32-cloud    make test KERNEL=source-5.10

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
KERNEL ?=
export BUDDYLAB_KERNEL := $(KERNEL)

.PHONY: qemu-test test test-host test-quick test-slow bench experiments mutants host-deps lava-deps venv clean

qemu-test: venv
	$(VENV)/bin/buddylab qemu-test

experiments: venv
	$(VENV)/bin/buddylab experiment all

# `make test`: the host-only tests and, beside them, the guest tests marked quick
# (an experiment restored and one booted fresh, the panic, hang and bad-kernel
# cases): two pytest processes at once, one mostly Python, the other mostly a
# QEMU guest, each with its output kept together; `make test-slow`: every
# other guest test, with Debian's lava-dispatcher installed first (`make
# lava-deps`, about 20 s once) so that its LAVA tests run, not skip.  CI
# (.ci/run) runs both.
# Bytecode is kept (in __pycache__/, ignored by git) even where the environment
# says PYTHONDONTWRITEBYTECODE: without it every run compiles the package and
# rewrites the tests' asserts again (pytest's header says so when it applies).
test: venv
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-host test-quick

test-host: venv
	PYTHONDONTWRITEBYTECODE= $(VPY) -m pytest -q -ra -n 0 -m "not qemu"

test-quick: venv
	PYTHONDONTWRITEBYTECODE= $(VPY) -m pytest -q -ra -m quick

test-slow: venv lava-deps
	PYTHONDONTWRITEBYTECODE= $(VPY) -m pytest -q -ra -m "qemu and not quick"

bench: venv
	$(VPY) bench/model_bench.py
	$(VPY) bench/run_bench.py
	$(VPY) bench/snapshot_bench.py
	$(VPY) bench/preload_bench.py
	$(VPY) bench/restore_parts.py
	$(VPY) bench/chapter8_bench.py

# Mutation testing of the models, parsers and scoring, one group of modules at
# a time with its own host tests (bench/mutants.py says why).  Results are kept
# in build/mutmut/GROUP: a second run retests only what changed.  MUTANT_GROUPS
# limits a run to some groups, for example  make mutants MUTANT_GROUPS=kmod
MUTMUT_JOBS ?= 2
MUTANT_GROUPS ?=

mutants: venv
	nice -n 10 $(VPY) bench/mutants.py --jobs $(MUTMUT_JOBS) $(MUTANT_GROUPS)

host-deps:
	@bash images/install-host-deps.sh

# Optional: LAVA's dispatcher (lava-run), for the LAVA tests (skipped without it).
lava-deps:
	@bash images/install-host-deps.sh images/lava-packages.txt

# The venv reads its packages from one environment in the cache, made once per
# dependency list (images/make_venv.py says why); checking it costs a few ms.
venv: host-deps
	@$(PYTHON) images/make_venv.py $(VENV)

clean:
	rm -rf $(VENV) results build
	$(MAKE) -C kmod clean
