# Two entry points (see README.md): `make demo` and `make test`. Both create .venv on
# first use and are quick afterwards. torch is pinned to the CPU build on this machine's
# disk before anything else is installed, so no other torch is ever pulled.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

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
	# installed torch (minutes the first time, then from pip's wheel cache).
	$(PIP) install --no-build-isolation -e '.[full,retrieval,large,test,dev]'
	touch $(STAMP)

clean-venv:
	rm -rf $(VENV)
