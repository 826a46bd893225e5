# gradmesh: set up everything on a fresh Debian machine, then run the devnet or the tests.
#   make devnet [ARGS="--windows 3"]          make test [PYTEST_ARGS="-m 'not slow'"]
# Every set-up step is skipped when already done (a check, or a stamp file named after a
# hash of its input), so a second `make setup` only reports that the steps are up to date.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        ?= .venv
# pinned: here 2.13.0 resolves to a local CPU wheel, an unpinned torch pulls GBs of CUDA
TORCH       ?= 2.13.0
ARGS        ?=
PYTEST_ARGS ?=

PYPROJECT_HASH := $(shell sha256sum pyproject.toml | cut -c1-12)
NPM_HASH       := $(shell sha256sum chain/package.json | cut -c1-12)
TORCH_STAMP    := $(VENV)/.stamp-torch-$(TORCH)
PYDEPS_STAMP   := $(VENV)/.stamp-pyproject-$(PYPROJECT_HASH)
NPM_STAMP      := chain/node_modules/.stamp-package-$(NPM_HASH)

.PHONY: help setup sysdeps venv torch pydeps npm devnet test clean-venv clean

help: ## list the targets
	@echo "usage: make TARGET   (ARGS=... for devnet, PYTEST_ARGS=... for test)"
	grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-11s %s\n", $$1, $$2}'

setup: sysdeps venv torch pydeps npm ## all of the steps below, each skipped when done
	@echo "setup: done"

# Debian package names; each is checked by what it provides, not by dpkg, so the check also
# holds on other systems. Installed only as root with apt-get, else named and skipped.
sysdeps: ## system packages: gcc, libgmp-dev, iproute2, iptables, chromium
	@missing=()
	export PATH="$$PATH:/usr/sbin:/sbin"
	command -v gcc >/dev/null || missing+=(gcc)
	compgen -G '/usr/include/gmp.h' >/dev/null || compgen -G '/usr/include/*/gmp.h' >/dev/null \
	  || missing+=(libgmp-dev)
	command -v ip >/dev/null || missing+=(iproute2)
	command -v iptables >/dev/null || missing+=(iptables)
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || command -v google-chrome >/dev/null || missing+=(chromium)
	# Debian's own python3 needs these two for the venv and for building fastecdsa
	if [[ "$$(readlink -f "$$(command -v $(PYTHON))")" == /usr/bin/* ]]; then
	  $(PYTHON) -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
	  $(PYTHON) -c 'import sysconfig as s, os; assert os.path.exists(s.get_path("include") + "/Python.h")' \
	    2>/dev/null || missing+=(python3-dev)
	fi
	if [ $${#missing[@]} -eq 0 ]; then echo "sysdeps: up to date"; exit 0; fi
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
	  echo "sysdeps: apt-get install $${missing[*]}"
	  apt-get update -qq
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$${missing[@]}" >/dev/null
	else
	  echo "sysdeps: MISSING system packages: $${missing[*]}" >&2
	  echo "  install them as root, e.g.: sudo apt-get install -y $${missing[*]}" >&2
	  echo "  gcc, libgmp-dev (and python3-dev) are needed to build libp2p's fastecdsa;" >&2
	  echo "  without iproute2/iptables/chromium the NAT and browser tests skip. Continuing." >&2
	fi

venv: sysdeps ## .venv, created with python3 -m venv when missing
	@if [ -x $(VENV)/bin/python ] && [ -x $(VENV)/bin/pip ]; then echo "venv: up to date"; exit 0; fi
	echo "venv: $(PYTHON) -m venv $(VENV)"
	$(PYTHON) -m venv $(VENV)

torch: venv ## torch==2.13.0 in the venv (skipped when it imports at that version)
	@if [ -e $(TORCH_STAMP) ]; then echo "torch: $(TORCH) up to date"; exit 0; fi
	if $(VENV)/bin/python -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "$(TORCH)")' 2>/dev/null; then
	  echo "torch: $(TORCH) already installed"
	else
	  echo "torch: pip install torch==$(TORCH)"
	  $(VENV)/bin/pip install --quiet torch==$(TORCH)
	fi
	rm -f $(VENV)/.stamp-torch-*
	touch $(TORCH_STAMP)

pydeps: torch ## pip install -e '.[dev,eval]' (redone when pyproject.toml changes)
	@if [ -e $(PYDEPS_STAMP) ]; then echo "pydeps: up to date with pyproject.toml"; exit 0; fi
	echo "pydeps: pip install -e '.[dev,eval]' (a few minutes on a fresh venv)"
	$(VENV)/bin/pip install --quiet -e '.[dev,eval]'
	rm -f $(VENV)/.stamp-pyproject-*
	touch $(PYDEPS_STAMP)

# --no-save: npm would otherwise rewrite the committed chain/package-lock.json (it adds
# the other platforms' optional anvil packages); to change the pins, run npm by hand.
npm: ## anvil and solc into chain/node_modules (redone when chain/package.json changes)
	@if ! command -v npm >/dev/null; then
	  echo "npm: not found, skipped (install Node.js >= 20 and npm; the anvil tests skip)" >&2
	  exit 0
	fi
	if [ -e $(NPM_STAMP) ] && [ -x chain/node_modules/.bin/anvil ]; then
	  echo "npm: up to date with chain/package.json"; exit 0
	fi
	echo "npm: npm install --prefix chain --no-save"
	npm install --prefix chain --no-save --no-audit --no-fund --loglevel=error
	rm -f chain/node_modules/.stamp-package-*
	touch $(NPM_STAMP)

devnet: setup ## set up, then run gradmesh devnet with ARGS
	@. $(VENV)/bin/activate
	exec gradmesh devnet $(ARGS)

# two passes (tests/conftest.py): the tests that do not rest on the wall clock on every
# core (pytest-xdist; a module stays on one worker, so its module fixtures are built
# once), then the wall-clock ones (devnet, processes, real hosts) alone.
# pytest's exit status 5 is "nothing collected": PYTEST_ARGS may pick one phase's tests
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
test: setup ## set up, then run python -m pytest with PYTEST_ARGS (two phases)
	@. $(VENV)/bin/activate
	python -m pytest -n $(TEST_WORKERS) --dist loadscope --phase parallel $(PYTEST_ARGS) || [ $$? = 5 ]
	python -m pytest --phase serial $(PYTEST_ARGS) || [ $$? = 5 ]

clean-venv: ## remove .venv (the next setup rebuilds it)
	rm -rf $(VENV)

clean: clean-venv ## remove .venv and chain/node_modules
	rm -rf chain/node_modules
