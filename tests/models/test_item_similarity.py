"""ItemKNN and EASE: closed forms against plain loops, scoring, and the shared interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

import mdgr_graph.models.baselines.item_similarity as item_similarity
from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models import EASE, ItemKNN, build_model
from mdgr_graph.models.baselines import cooccurrence, training_matrix
from mdgr_graph.train import TrainConfig, evaluate, fit


def random_binary(users: int = 30, items: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(users, items, generator=gen) < 0.3).double()


def batch_of(sequences, candidates):
    graphs = [
        make_sequence_graph(torch.tensor(seq), torch.zeros(len(seq)),
                            candidates=torch.tensor(cand), labels=torch.zeros(len(cand)))
        for seq, cand in zip(sequences, candidates, strict=True)
    ]
    return Batch.from_data_list(graphs)


# ---------------------------------------------------------------------- ItemKNN
@pytest.mark.parametrize("neighbours,shrink", [(None, 0.0), (None, 5.0), (3, 0.0), (5, 2.0)])
def test_itemknn_similarity_matches_a_loop(neighbours, shrink):
    x = random_binary()
    got = ItemKNN.similarity(x, neighbours, shrink)
    items = x.shape[1]
    expected = torch.zeros(items, items, dtype=torch.float64)
    for j in range(items):
        sims = []
        for i in range(items):
            if i == j:
                sims.append(0.0)
                continue
            den = x[:, i].norm() * x[:, j].norm() + shrink
            sims.append(float(x[:, i] @ x[:, j] / den) if den > 0 else 0.0)
        sims = torch.tensor(sims, dtype=torch.float64)
        keep = range(items) if neighbours is None else sims.topk(neighbours).indices.tolist()
        for i in keep:
            expected[i, j] = sims[i]
    torch.testing.assert_close(got, expected)


def test_itemknn_options_are_validated():
    with pytest.raises(ValueError, match="neighbours"):
        ItemKNN.similarity(random_binary(), neighbours=0)
    with pytest.raises(ValueError, match="shrink"):
        ItemKNN.similarity(random_binary(), shrink=-1.0)


# ---------------------------------------------------------------------- EASE
def test_ease_solves_each_column_as_a_ridge_regression():
    x = random_binary(users=40, items=10)
    l2 = 3.0
    got = EASE.solve(x, l2)
    assert torch.all(got.diagonal() == 0)
    for j in range(x.shape[1]):
        others = [i for i in range(x.shape[1]) if i != j]
        a = x[:, others]
        ridge = torch.linalg.solve(a.T @ a + l2 * torch.eye(len(others), dtype=x.dtype),
                                   a.T @ x[:, j])
        torch.testing.assert_close(got[others, j], ridge)


def test_ease_needs_a_positive_l2():
    with pytest.raises(ValueError, match="l2"):
        EASE.solve(random_binary(), l2=0.0)


# ---------------------------------------------------------------------- scoring
@pytest.mark.parametrize("name", ["itemknn", "ease"])
def test_scores_are_history_sums_counting_repeats_once(name, paper_data):
    model = build_model(name, paper_data)
    w = model.weights
    seqs = [[3, 5, 3, 3, 9], [7], [1, 2, 1]]
    cands = [[4, 5, 6], [1, 2, 3], [8, 9, 10]]
    batch = batch_of(seqs, cands)
    scores = model.score_candidates(batch)
    for b, (seq, cand) in enumerate(zip(seqs, cands, strict=True)):
        for c, item in enumerate(cand):
            expected = sum(float(w[h, item]) for h in set(seq))
            assert scores[b, c].item() == pytest.approx(expected, abs=1e-5)
    full = model.score_all(batch)
    assert full.shape == (3, paper_data.num_items + 1)
    torch.testing.assert_close(full.gather(1, batch.candidates), scores, atol=1e-5, rtol=1e-5)


def test_padding_row_and_column_score_nothing(paper_data):
    model = build_model("itemknn", paper_data, neighbours=None, shrink=0.0)
    assert torch.all(model.weights[0] == 0) and torch.all(model.weights[:, 0] == 0)


def test_unknown_items_are_refused(paper_data):
    model = build_model("ease", paper_data)
    with pytest.raises(ValueError, match="item ids"):
        model.score_candidates(batch_of([[paper_data.num_items + 1]], [[1]]))


def test_training_matrix_holds_only_training_interactions(paper_data):
    x = training_matrix(paper_data)
    user, item = paper_data.training_interactions()
    assert x.sum() == len(set(zip(user.tolist(), item.tolist(), strict=True)))
    assert torch.all(x[:, 0] == 0)
    held_out = np.unique(paper_data.arrays["window_user"][paper_data.arrays["window_split"] > 0])
    assert torch.all(x[torch.from_numpy(held_out)] == 0)


@pytest.mark.parametrize("data", ["paper_data", "loo_data"])
def test_sparse_cooccurrence_equals_the_dense_product(data, request):
    prepared = request.getfixturevalue(data)
    x = training_matrix(prepared)
    co = cooccurrence(prepared)
    assert co.dtype == torch.float64
    assert torch.equal(co, x.T @ x)  # exact integer counts
    knn = ItemKNN.from_prepared(prepared, neighbours=5, shrink=2.0)
    torch.testing.assert_close(knn.weights, ItemKNN.similarity(x, 5, 2.0).float())
    ease = EASE.from_prepared(prepared, l2=50.0)
    torch.testing.assert_close(ease.weights, EASE.solve(x, 50.0).float())


def test_catalogue_too_large_for_the_dense_matrix(paper_data, monkeypatch):
    monkeypatch.setattr(item_similarity, "MAX_DENSE_ITEMS", 10)
    with pytest.raises(ValueError, match="dense item-item matrix"):
        training_matrix(paper_data)
    with pytest.raises(ValueError, match="dense item-item matrix"):
        cooccurrence(paper_data)


# ---------------------------------------------------------------------- the shared loop
@pytest.mark.parametrize("name", ["itemknn", "ease"])
@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_fit_and_evaluate_beat_chance_on_planted_topics(name, protocol, paper_data, loo_data):
    prepared = paper_data if protocol == "paper" else loo_data
    model = build_model(name, prepared)
    result = fit(model, prepared, TrainConfig(progress=False), log=None)
    assert result.epochs == 0 and result.best_valid
    test = evaluate(model, prepared, "test")
    assert test["auc/sampled"] > 0.6
    if protocol == "loo":
        assert {"hr@10/full", "ndcg@10/full", "mrr/full"} <= set(test)


def test_build_model_refuses_options_a_model_does_not_take(paper_data):
    with pytest.raises(TypeError):
        build_model("pop", paper_data, dim=8)
    with pytest.raises(TypeError):
        build_model("ease", paper_data, neighbours=3)
