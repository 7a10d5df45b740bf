"""Every model name of the command line builds on both protocols and scores a batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.models import CAUSAL_BASELINES, MODELS, build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import train_mdgr  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("protocol", ["paper", "loo"])
@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_from_the_command_line_options(name, protocol, paper_data, loo_data):
    prepared = paper_data if protocol == "paper" else loo_data
    args = train_mdgr.parse_args(["--model", name, "--dim", "16"])
    torch.manual_seed(0)
    model = build_model(name, prepared, **train_mdgr.model_options(args)).eval()
    batch = next(iter(DataLoader(SequenceDataset(prepared, "valid"), batch_size=4)))
    with torch.no_grad():
        cand = model.score_candidates(batch)
        full = model.score_all(batch)
    assert cand.shape == batch.candidates.shape and torch.isfinite(cand).all()
    assert full.shape == (4, prepared.num_items + 1) and torch.isfinite(full[:, 1:]).all()


@pytest.mark.parametrize("name", CAUSAL_BASELINES)
def test_history_targets_reach_the_causal_models(name):
    args = train_mdgr.parse_args(["--model", name, "--history-targets"])
    assert train_mdgr.model_options(args)["history_targets"] is True
