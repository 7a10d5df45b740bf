# Two entry points (see README.md): `make demo` and `make test`. Both create .venv on
# first use and are quick afterwards. torch is pinned to the CPU build on this machine's
# disk before anything else is installed, so no other torch is ever pulled.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
EXT_WHEELS := $(VENV)/ext-wheels

.PHONY: demo test data-stats lint clean-venv

demo: $(STAMP)
	$(PY) examples/train_mdgr.py

test: $(STAMP)
	$(PY) -m pytest -q

data-stats: $(STAMP)
	$(PY) -m mdgr_graph.data

lint: $(STAMP)
	$(VENV)/bin/ruff check mdgr_graph tests examples benchmarks

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install torch==2.13.0
	# torch-scatter/torch-cluster have no wheels here: built from source against the
	# installed torch, both at once and each compiling its extension modules on every core
	# (setuptools' build_ext --parallel, through DIST_EXTRA_CONFIG); minutes the first
	# time, then seconds from pip's wheel cache.
	printf '[build_ext]\nparallel = %s\n' "$$(nproc 2>/dev/null || echo 2)" > $(VENV)/build_ext.cfg
	export DIST_EXTRA_CONFIG=$(CURDIR)/$(VENV)/build_ext.cfg; \
	$(PIP) wheel -q --no-deps --no-build-isolation -w $(EXT_WHEELS) torch-scatter==2.1.2 & s=$$!; \
	$(PIP) wheel -q --no-deps --no-build-isolation -w $(EXT_WHEELS) torch-cluster==1.6.3 & c=$$!; \
	wait $$s; rs=$$?; wait $$c; rc=$$?; test $$rs -eq 0 && test $$rc -eq 0
	$(PIP) install --no-build-isolation --find-links $(EXT_WHEELS) \
	    -e '.[full,retrieval,large,viz,test,dev]'
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
