"""The package as a whole: its public names, its version, what importing it costs, and
that it runs without the optional compiled extensions (torch-scatter, torch-cluster)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import mdgr_graph

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (one thread) and return its stdout."""
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_name_of_all_resolves_and_is_listed_once():
    assert len(set(mdgr_graph.__all__)) == len(mdgr_graph.__all__)
    for name in mdgr_graph.__all__:
        assert getattr(mdgr_graph, name) is not None, name
    from mdgr_graph import models, nn, train

    # the same objects as in their home modules, not copies
    assert mdgr_graph.DynamicClusterConv is nn.DynamicClusterConv
    assert mdgr_graph.MDGR is models.MDGR and mdgr_graph.build_model is models.build_model
    assert mdgr_graph.fit is train.fit and mdgr_graph.TrainConfig is train.TrainConfig


def test_version_is_the_projects():
    text = (ROOT / "pyproject.toml").read_text()  # tomllib needs Python 3.11
    assert mdgr_graph.__version__ == re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def test_importing_the_package_leaves_the_drawing_libraries_alone():
    out = run_python("import sys, json, mdgr_graph; "
                     "print(json.dumps(sorted(m for m in ('matplotlib', 'networkx') "
                     "if m in sys.modules)))")
    assert json.loads(out) == []


def test_the_package_runs_without_torch_scatter_and_torch_cluster():
    """Every module imports and the docstring's workflow trains with both extensions
    unimportable (``sys.modules[name] = None`` makes ``import name`` fail)."""
    code = """
import sys
sys.modules["torch_scatter"] = None
sys.modules["torch_cluster"] = None
import importlib, math, pkgutil
import torch
import torch_geometric.typing as pyg_typing
import mdgr_graph
from mdgr_graph import typing as mdgr_typing

assert not (mdgr_typing.WITH_TORCH_SCATTER or mdgr_typing.WITH_TORCH_CLUSTER)
assert not pyg_typing.WITH_TORCH_SCATTER
optional = {"matplotlib", "networkx", "faiss", "pyarrow"}
for info in pkgutil.walk_packages(mdgr_graph.__path__, "mdgr_graph."):
    if info.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:  # an optional dependency that is not installed
        if exc.name not in optional:
            raise
assert "torch_scatter" not in sys.modules or sys.modules["torch_scatter"] is None

from mdgr_graph import DataOptions, TrainConfig, build_model, evaluate, fit, prepare_dataset
torch.manual_seed(0)
prepared = prepare_dataset(DataOptions(format="synthetic", protocol="loo", max_len=10,
                                       negatives=5, synthetic={"num_users": 40,
                                       "num_items": 60, "num_topics": 4,
                                       "length": (12, 20)}), cache_dir=None)
model = build_model("mdgr", prepared, dim=8, k=2, m=1)
result = fit(model, prepared, TrainConfig(epochs=1, batch_size=16, progress=False), log=None)
assert math.isfinite(result.history[0]["loss"])
assert 0 <= evaluate(model, prepared, "test")["hr@10/full"] <= 1
print("ok")
"""
    assert run_python(code).strip().endswith("ok")
