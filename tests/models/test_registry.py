"""Every model name of the command line builds on both protocols and scores a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from mdgr_graph.cli import train as train_cli
from mdgr_graph.cli.model_options import model_options
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models import (
    CAUSAL_BASELINES,
    CLOSED_FORM,
    MODELS,
    NEURAL_BASELINES,
    build_model,
    model_class,
    model_defaults,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("protocol", ["paper", "loo"])
@pytest.mark.parametrize("name", MODELS)
def test_every_model_builds_from_the_command_line_options(name, protocol, paper_data, loo_data):
    prepared = paper_data if protocol == "paper" else loo_data
    args = train_cli.parse_args(["--model", name, "--dim", "16"])
    torch.manual_seed(0)
    model = build_model(name, prepared, **model_options(args)).eval()
    batch = next(iter(DataLoader(SequenceDataset(prepared, "valid"), batch_size=4)))
    with torch.no_grad():
        cand = model.score_candidates(batch)
        full = model.score_all(batch)
    assert cand.shape == batch.candidates.shape and torch.isfinite(cand).all()
    assert full.shape == (4, prepared.num_items + 1) and torch.isfinite(full[:, 1:]).all()


@pytest.mark.parametrize("name", MODELS)
def test_model_class_is_what_build_model_builds(name, paper_data):
    options = {} if name in CLOSED_FORM else {"dim": 8}
    assert type(build_model(name, paper_data, **options)) is model_class(name)


def test_model_defaults_follow_forwarded_kwargs_and_variants():
    mdgr = model_defaults("mdgr")
    assert mdgr["k"] == "8" and mdgr["weighting"] == "'paper'"
    assert model_defaults("mdgr-w") == {**mdgr, "variant.use_weights": "False"}
    assert model_defaults("mip")["variant.dynamic"] == "False"
    assert model_defaults("static-graph") == mdgr  # its __init__ forwards **kwargs to MDGR
    dcrec = model_defaults("dcrec")
    assert dcrec["loss"] == "'sampled_softmax'" and dcrec["from_prepared.sim_neighbours"] == "4"
    assert model_defaults("pop") == {}
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        model_class("nope")


@pytest.mark.parametrize("name", CAUSAL_BASELINES)
def test_history_targets_reach_the_causal_models(name):
    args = train_cli.parse_args(["--model", name, "--history-targets"])
    assert model_options(args)["history_targets"] is True


#: Neural baselines built from global statistics of the training data.
GRAPH_MODELS = [name for name, cls in NEURAL_BASELINES.items() if hasattr(cls, "from_prepared")]


def _outside_training(prepared) -> np.ndarray:
    """Offsets of ``seq_items`` that no training example may read: under ``paper`` those
    outside every training window, under ``loo`` each user's last two items."""
    a = prepared.arrays
    inside = np.zeros(len(a["seq_items"]), dtype=bool)
    if prepared.protocol == "paper":
        window = prepared.meta["options"]["window"]
        for start in a["window_start"][a["window_split"] == 0]:
            inside[start : start + window] = True
    else:
        inside[:] = True
        inside[a["seq_ptr"][1:] - 1] = inside[a["seq_ptr"][1:] - 2] = False
    return np.flatnonzero(~inside)


def _data_buffers(name, prepared) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(build_model(name, prepared, dim=8).named_buffers())


def _changed(prepared, positions) -> PreparedDataset:
    arrays = {k: v.copy() for k, v in prepared.arrays.items()}
    items = arrays["seq_items"]
    items[positions] = 1 + (items[positions] + 6) % prepared.num_items
    return PreparedDataset(arrays, prepared.meta)


@pytest.mark.parametrize("protocol", ["paper", "loo"])
@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_global_statistics_never_read_validation_or_test_items(name, protocol, paper_data,
                                                               loo_data):
    prepared = paper_data if protocol == "paper" else loo_data
    hidden = _outside_training(prepared)
    assert hidden.size
    before = _data_buffers(name, prepared)
    after = _data_buffers(name, _changed(prepared, hidden))
    assert before.keys() == after.keys()
    for key in before:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0, equal_nan=True,
                                   msg=f"{name}: buffer {key} read held-out items")
    # the same change on the training items does change them (the test can fail)
    everything = np.arange(len(prepared.arrays["seq_items"]))
    moved = _data_buffers(name, _changed(prepared, everything))
    assert any(moved[k].shape != before[k].shape or not torch.equal(moved[k], before[k])
               for k in before if before[k].is_floating_point() or before[k].numel() > 1)


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_checkpoints_hold_no_data_tables(name, paper_data):
    torch.manual_seed(0)
    model = build_model(name, paper_data, dim=8)
    saved = set(model.state_dict())
    for key, buffer in model.named_buffers():
        if buffer.dtype == torch.long and buffer.numel() > 8:  # an index table of the data
            assert key not in saved, f"{name}: {key} is in the state dict"
    # checkpoints of earlier versions, which saved some tables, still load
    legacy = {"maerec": ["edge_index"],
              "pintext": ["category_ptr", "category_index", "word_ptr", "word_index"]}
    buffers = dict(model.named_buffers())
    state = dict(model.state_dict())
    state.update({k: buffers[k] for k in legacy.get(name, []) if k in buffers})
    model.load_state_dict(state)
