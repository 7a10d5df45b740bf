"""MAERec: transition graph, adaptive path masking, GCN encoder, decoder, recommender."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models.base import candidate_loss
from mdgr_graph.models.baselines.maerec import (
    EdgeDecoder,
    MAERec,
    TransitionConv,
    csr,
    gcn_norm_values,
    mask_paths,
    sample_negative_edges,
    semantic_scores,
    transition_graph,
    transpose_order,
)
from mdgr_graph.train import TrainConfig, evaluate, fit

from .test_losses import reference_sampled_softmax

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ITEMS = 30
MAX_LEN = 8
DIM = 16


def random_graph(seed: int = 0, num_items: int = NUM_ITEMS, users: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    item = torch.randint(1, num_items + 1, (users * 6,), generator=gen)
    user = torch.arange(users).repeat_interleave(6)
    return transition_graph(user, item, num_items, distance=2)


def small_model(seed: int = 0, **kwargs) -> MAERec:
    torch.manual_seed(seed)
    opts = dict(dim=DIM, heads=2, num_anchors=3, recon_edges=64, recon_negatives=6)
    opts.update(kwargs)
    return MAERec(NUM_ITEMS, MAX_LEN, random_graph(), **opts)


def make_batch(lengths=None, num_candidates=6, seed=0, items=None):
    gen = torch.Generator().manual_seed(seed)
    if items is None:
        items = [torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) for n in lengths]
    graphs = []
    for x in items:
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(x, torch.arange(x.numel()).float(),
                                          candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


def edge_set(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    return set(map(tuple, edge_index.t().tolist()))


# ---------------------------------------------------------------------- transition graph
def test_transition_graph_matches_a_per_user_loop():
    gen = torch.Generator().manual_seed(1)
    user = torch.tensor([0] * 7 + [1] * 1 + [2] * 5)
    item = torch.randint(1, 10, (13,), generator=gen)
    for distance in (1, 2, 3, 20):
        ref = {(i, i) for i in range(11)}
        for u in range(3):
            seq = item[user == u].tolist()
            for a in range(len(seq)):
                for b in range(a + 1, min(len(seq), a + distance + 1)):
                    ref |= {(seq[a], seq[b]), (seq[b], seq[a])}
        edge_index = transition_graph(user, item, 10, distance)
        assert edge_set(edge_index) == ref and edge_index.shape[1] == len(ref)
        key = edge_index[0] * 11 + edge_index[1]
        assert torch.all(key[1:] > key[:-1])  # sorted, no duplicates
    # an empty or single-interaction log leaves the self-loops only
    assert edge_set(transition_graph(torch.tensor([0]), torch.tensor([3]), 4, 3)) == {
        (i, i) for i in range(5)}
    with pytest.raises(ValueError, match="distance"):
        transition_graph(user, item, 10, 0)
    with pytest.raises(ValueError, match="item ids"):
        transition_graph(user, item, 5, 1)


@pytest.mark.parametrize("fixture", ["paper_data", "loo_data"])
def test_from_prepared_uses_training_interactions_only(fixture, request):
    prepared = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    model = MAERec.from_prepared(prepared, max_len=20, dim=DIM, distance=1)
    user, item = prepared.training_interactions()
    ref = transition_graph(torch.from_numpy(user), torch.from_numpy(item),
                           prepared.num_items, 1)
    assert torch.equal(model.edge_index, ref)
    assert model.num_items == prepared.num_items and model.distance == 1
    edges = edge_set(model.edge_index)
    a = prepared.arrays
    if prepared.protocol == "paper":  # transitions inside test windows (unseen test users)
        test = a["window_split"] == 2
        seqs = np.concatenate([a["hist_items"][test], a["targets"][test]], 1)
    else:  # the transition into each user's test target (its last item)
        seqs = np.stack([a["seq_items"][a["seq_ptr"][1:] - 2],
                         a["seq_items"][a["seq_ptr"][1:] - 1]], 1)
    test_pairs = {(int(s[j]), int(s[j + 1])) for s in seqs for j in range(len(s) - 1)}
    leaked = test_pairs - edges
    assert leaked  # some test transition is missing from the training graph
    assert not leaked & edge_set(model.edge_index)


# ---------------------------------------------------------------------- encoder
def dense_norm_adj(edge_index, keep, n):
    adj = torch.zeros(n, n)
    adj[edge_index[0][keep], edge_index[1][keep]] = 1.0
    deg = adj.sum(1)
    inv = (deg + 1e-12).pow(-0.5)
    return inv[:, None] * adj * inv[None, :]


def test_transition_conv_sparse_matches_edge_list_and_dense():
    edge_index = random_graph(2)
    n = NUM_ITEMS + 1
    keep = torch.rand(edge_index.shape[1], generator=torch.Generator().manual_seed(0)) > 0.3
    sym = keep & keep[transpose_order(edge_index, n)]  # keep an edge iff its reverse is kept
    assert edge_set(edge_index[:, sym]) == {(v, u) for u, v in edge_set(edge_index[:, sym])}
    value = gcn_norm_values(edge_index, sym, n)
    conv = TransitionConv()
    x = torch.randn(n, 5, requires_grad=True)
    adj = csr(edge_index[0][sym], edge_index[1][sym], value[sym], n)
    fast = conv(x, adj)
    slow = conv(x, edge_index[:, sym].flip(0), value[sym])
    dense = dense_norm_adj(edge_index, sym, n) @ x
    assert torch.allclose(fast, dense, atol=1e-6) and torch.allclose(slow, dense, atol=1e-6)
    w = torch.randn(n, 5)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), x)
    (g_dense,) = torch.autograd.grad((dense * w).sum(), x)
    assert torch.allclose(g_fast, g_dense, atol=1e-6)
    assert repr(conv) == "TransitionConv()"
    with pytest.raises(ValueError, match="edge_weight"):
        conv(x, edge_index)


def test_item_table_sums_the_gcn_layers_of_the_unmasked_graph():
    model = small_model()
    n = NUM_ITEMS + 1
    full = torch.ones(model.edge_index.shape[1], dtype=torch.bool)
    adj = dense_norm_adj(model.edge_index, full, n)
    e = model.item_emb.weight
    ref = e + adj @ e + adj @ adj @ e
    assert torch.allclose(model.item_table(), ref, atol=1e-6)
    assert torch.all(model.item_table()[0] == 0)  # padding stays zero


# ---------------------------------------------------------------------- masking
def semantic_reference(edge_index, x, depth, path_prob):
    """Dense re-computation of the learning-to-mask scores, drawing the same randoms."""
    n = x.shape[0]
    entries = edge_index.t().tolist()  # row-major order, as the fast path draws them
    alive = [True] * len(entries)
    adj = torch.zeros(n, n)
    for r, c in entries:
        adj[r, c] = 1.0
    order = adj.sum(1, keepdim=True)
    emb, num = [adj @ x - x], [order]
    for k in range(1, depth + 1):
        idx = [e for e, a in enumerate(alive) if a]
        draw = torch.rand(len(idx))
        for e, u in zip(idx, draw.tolist(), strict=True):
            alive[e] = u >= path_prob ** k
        adj = torch.zeros(n, n)
        for e, (r, c) in enumerate(entries):
            if alive[e]:
                adj[r, c] = 1.0
        emb.append(adj @ emb[-1] - emb[-1] - order * emb[-1])
        num.append(adj @ num[-1] - num[-1] - order)
        order = adj.sum(1, keepdim=True)
    sub = sum(emb) / (sum(num) + 1e-8)
    return (F.normalize(sub, dim=-1) * F.normalize(x, dim=-1)).sum(-1)


@pytest.mark.parametrize("depth,path_prob", [(1, 0.5), (3, 0.5), (2, 0.8)])
def test_semantic_scores_match_a_dense_reference(depth, path_prob):
    edge_index = random_graph(3)
    n = NUM_ITEMS + 1
    x = torch.randn(n, 6, requires_grad=True)
    torch.manual_seed(7)
    fast = semantic_scores(edge_index, transpose_order(edge_index, n), x, depth, path_prob)
    torch.manual_seed(7)
    slow = semantic_reference(edge_index, x, depth, path_prob)
    assert fast.shape == (n,) and torch.allclose(fast, slow, atol=1e-5)
    w = torch.randn(n)
    (g_fast,) = torch.autograd.grad((fast * w).sum(), x)
    (g_slow,) = torch.autograd.grad((slow * w).sum(), x)
    assert torch.allclose(g_fast, g_slow, atol=1e-4)


def mask_reference(edge_index, anchors, depth, path_prob):
    """Per-edge Python loop over sets, drawing the same permutations."""
    edges = edge_index.t().tolist()
    remaining = set(range(len(edges)))
    seeds = set(anchors.tolist())
    for k in range(depth):
        hit = {e for e in remaining if edges[e][0] in seeds or edges[e][1] in seeds}
        remaining -= hit
        if k == depth - 1:
            break
        ends = sorted({v for e in hit for v in edges[e]})
        perm = torch.randperm(len(ends)).tolist()
        seeds = {ends[i] for i in perm[: int(len(ends) * path_prob ** (k + 1))]}
    return remaining


@pytest.mark.parametrize("depth,path_prob", [(1, 0.5), (3, 0.5), (3, 1.0), (2, 0.0)])
def test_mask_paths_match_a_set_reference(depth, path_prob):
    edge_index = random_graph(4)
    anchors = torch.tensor([3, 17])
    torch.manual_seed(5)
    remaining, masked = mask_paths(edge_index, anchors, depth, path_prob)
    torch.manual_seed(5)
    ref = mask_reference(edge_index, anchors, depth, path_prob)
    assert set(remaining.nonzero().view(-1).tolist()) == ref
    assert torch.equal(masked, ~remaining)
    # every edge touching an anchor is masked; the rest stays symmetric
    row, col = edge_index
    touch = (row == 3) | (row == 17) | (col == 3) | (col == 17)
    assert bool(masked[touch].all())
    kept = edge_set(edge_index[:, remaining])
    assert kept == {(v, u) for u, v in kept}


def test_draw_mask_never_anchors_padding_and_masks_something():
    model = small_model(num_anchors=NUM_ITEMS + 5)  # more anchors than items
    torch.manual_seed(0)
    scores, remaining, masked = model.draw_mask()
    assert scores.shape == (NUM_ITEMS + 1,) and bool(masked.any())
    row, col = model.edge_index
    assert not bool(masked[(row == 0) & (col == 0)].any())  # padding's self-loop stays


# ---------------------------------------------------------------------- decoder
def test_negative_edges_are_non_edges_with_one_endpoint_kept():
    edge_index = random_graph(5)
    n = NUM_ITEMS + 1
    key = edge_index[0] * n + edge_index[1]
    pos = edge_index[:, edge_index[0] > 0][:, :25].t()  # never padding, as masked edges
    torch.manual_seed(0)
    neg = sample_negative_edges(pos, key, n, 7)
    assert neg.shape == (25, 6, 2)
    assert torch.all(neg[:, :3, 0] == pos[:, None, 0])  # new tails
    assert torch.all(neg[:, 3:, 1] == pos[:, None, 1])  # new heads
    assert int(neg.min()) >= 1 and int(neg.max()) <= NUM_ITEMS
    edges = edge_set(edge_index)
    assert not any(tuple(e) in edges for e in neg.reshape(-1, 2).tolist())


def test_decoder_loss_matches_a_per_edge_loop():
    torch.manual_seed(0)
    dec = EdgeDecoder(4, 2)
    embeds = [torch.randn(10, 4) for _ in range(3)]
    pos = torch.tensor([[1, 2], [3, 3], [4, 9]])
    neg = torch.randint(1, 10, (3, 4, 2))
    ref = 0.0
    with torch.no_grad():
        loss = float(dec(embeds, pos, neg))
    for p in range(3):
        def s(u, v):
            feats = torch.cat([embeds[i][u] * embeds[j][v] for i in range(2) for j in range(2)])
            with torch.no_grad():
                return math.exp(float(torch.sigmoid(dec.mlp(feats))))
        sp = s(*pos[p].tolist())
        ref -= sp / (sp + sum(s(*neg[p, k].tolist()) for k in range(4)))
    assert math.isclose(loss, ref, rel_tol=1e-5)
    assert repr(dec) == "EdgeDecoder(4, layers=2)"


# ---------------------------------------------------------------------- reward
def authors_reward(losses, eps):
    if len(losses) < 3:
        return 1.0
    cur = losses[-2] - losses[-1]
    avg = sum(losses[i] - losses[i + 1] for i in range(len(losses) - 2)) / (len(losses) - 2)
    return 1.0 if cur > avg else eps


def test_reward_follows_the_loss_history():
    model = small_model(reward_window=3, reward_eps=0.25)
    losses = [1.0, 0.9, 0.7, 0.69, 0.5, 0.6, 0.2]
    for t, value in enumerate(losses):
        assert model.reward(value) == authors_reward(losses[max(0, t - 3): t + 1], 0.25)
    assert "loss_history" in model.state_dict()  # a resumed run continues the history
    model.reset_parameters()
    assert torch.isnan(model.loss_history).all()


# ---------------------------------------------------------------------- recommender
def test_shapes_and_score_all_matches_score_candidates():
    model = small_model().eval()
    batch = make_batch([1, 4, 8, 11])
    cand = model.score_candidates(batch)
    full = model.score_all(batch)
    assert cand.shape == (4, 6) and full.shape == (4, NUM_ITEMS + 1)
    assert torch.allclose(torch.gather(full, 1, batch.candidates), cand, atol=1e-5)
    assert torch.allclose(model.score_all(batch, chunk_size=7), full, atol=1e-5)


def test_vectorised_states_match_a_per_sequence_loop():
    model = small_model().eval()
    items = [torch.tensor([5]), torch.tensor([3, 3, 3]), torch.randint(1, 31, (12,)),
             torch.tensor([7, 1, 7, 2, 9])]
    batch = make_batch(items=items)
    scores = model.score_candidates(batch)
    table = model.item_table()
    for g, x in enumerate(items):
        x = x[-MAX_LEN:]  # the most recent max_len items
        with torch.no_grad():
            states = model.encode(x[None], torch.ones(1, len(x), dtype=torch.bool), table)
        user = states[0, -1]
        ref = table[batch.candidates[g]] @ user
        assert torch.allclose(scores[g], ref, atol=1e-5)


def test_eval_is_deterministic_and_uses_the_unmasked_graph():
    model = small_model().eval()
    batch = make_batch([3, 5])
    torch.manual_seed(1)
    a = model.score_candidates(batch)
    torch.manual_seed(2)
    b = model.score_candidates(batch)
    assert torch.equal(a, b)
    loss = model.loss(batch)  # eval mode: the candidate loss, no auxiliary terms
    assert torch.allclose(loss, reference_sampled_softmax(a, batch.labels), atol=1e-6)
    bce = small_model(loss="bce").eval()
    assert torch.allclose(bce.loss(batch), F.binary_cross_entropy_with_logits(
        bce.score_candidates(batch), batch.labels))


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax"])
def test_eval_loss_is_the_candidate_loss(loss):
    model = small_model(loss=loss).eval()
    batch = make_batch([3, 5, 2])
    logits = model.score_candidates(batch)
    assert torch.allclose(model.loss(batch), candidate_loss(logits, batch.labels, loss))
    assert f"loss={loss!r}" in repr(model)
    if loss == "sampled_softmax":
        ref = reference_sampled_softmax(logits, batch.labels)
        assert torch.allclose(model.loss(batch), ref, atol=1e-6)
    with pytest.raises(ValueError, match="unknown candidate loss"):
        small_model(loss="hinge")


def test_default_loss_is_the_sampled_softmax():
    assert small_model().candidate_loss_kind == "sampled_softmax"


def test_gradients_reach_every_parameter():
    for history_targets in (False, True):
        model = small_model(history_targets=history_targets).train()
        torch.manual_seed(0)
        model.loss(make_batch([1, 4, 9])).backward()
        for name, param in model.named_parameters():
            assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_loss_is_the_weighted_sum_of_the_terms():
    model = small_model(recon_weight=0.5, mask_weight=0.3, l2_weight=1e-3).train()
    batch = make_batch([2, 6])
    torch.manual_seed(3)
    terms = model.loss_terms(batch)
    model.loss_history.fill_(math.nan)
    torch.manual_seed(3)
    loss = model.loss(batch)
    ref = terms["rec"] + 0.5 * terms["recon"] + 0.3 * terms["mask"] + 1e-3 * terms["l2"]
    assert torch.allclose(loss, ref, atol=1e-5)
    assert float(terms["recon"].detach()) < 0 and float(terms["l2"].detach()) > 0


def test_seeded_training_loss_is_deterministic_and_the_mask_is_random():
    batch = make_batch([3, 7, 2])
    losses = []
    for seed in (0, 0, 1):
        model = small_model().train()
        torch.manual_seed(seed)
        losses.append(float(model.loss(batch).detach()))
    assert losses[0] == losses[1] and losses[0] != losses[2]


def test_padding_and_batch_neighbours_do_not_change_a_sequence():
    model = small_model().eval()
    x = torch.tensor([4, 4, 9])
    alone = model.score_candidates(make_batch(items=[x], seed=3))
    batch = make_batch(items=[x, torch.randint(1, 31, (10,))], seed=3)
    assert torch.allclose(model.score_candidates(batch)[0], alone[0], atol=1e-5)


def test_repr_and_parameter_count():
    model = small_model()
    text = repr(model)
    assert text.startswith(f"MAERec(num_items={NUM_ITEMS}, max_len={MAX_LEN}, edges=")
    assert "gcn_layers=2" in text and "mask_weight=0.1" in text
    counts = model.num_parameters()
    assert counts["params"] - counts["params_without_item_table"] == (NUM_ITEMS + 1) * DIM


@pytest.mark.parametrize("kwargs,match", [
    (dict(gcn_layers=0), "gcn_layers"), (dict(num_anchors=0), "num_anchors"),
    (dict(mask_depth=0), "mask_depth"), (dict(recon_edges=0), "recon_edges"),
    (dict(recon_negatives=1), "recon_negatives"), (dict(path_prob=1.5), "path_prob"),
    (dict(reward_eps=-0.1), "reward_eps"), (dict(reward_window=0), "reward_window"),
    (dict(recon_weight=-1.0), "recon_weight"), (dict(mask_weight=-1.0), "mask_weight"),
    (dict(l2_weight=-1.0), "l2_weight"), (dict(heads=3), "heads"),
    (dict(dropout=1.0), "dropout"), (dict(dim=0), "dim"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_model(**kwargs)


def test_bad_graph_and_batch_raise():
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        MAERec(NUM_ITEMS, MAX_LEN, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="node ids"):
        MAERec(NUM_ITEMS, MAX_LEN, torch.tensor([[1], [NUM_ITEMS + 1]]))
    with pytest.raises(ValueError, match="max_len"):
        MAERec(NUM_ITEMS, 0, random_graph())
    model = small_model()
    bad = make_batch(items=[torch.tensor([1, NUM_ITEMS + 1])])
    with pytest.raises(ValueError, match="item ids"):
        model.score_all(bad)
    batch = make_batch([3])
    batch.candidates = batch.candidates.reshape(-1)
    with pytest.raises(ValueError, match="candidates"):
        model.score_candidates(batch)


# ---------------------------------------------------------------------- training loop
@pytest.mark.parametrize("fixture,metric", [("paper_data", "auc/sampled"),
                                            ("loo_data", "ndcg@10/full")])
def test_fit_and_evaluate(fixture, metric, request):
    prepared = request.getfixturevalue(fixture)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MAERec.from_prepared(prepared, max_len=20, dim=DIM, num_anchors=5,
                                     recon_edges=256)
        config = TrainConfig(epochs=1, patience=9, batch_size=32, lr=5e-3, progress=False)
        result = fit(model, prepared, config, log=None)
        results.append((result.history[0]["loss"], model.state_dict()))
    assert result.epochs == 1 and metric in result.best_valid
    assert math.isfinite(results[0][0]) and results[0][0] == results[1][0]
    for (k, v), w in zip(results[0][1].items(), results[1][1].values(), strict=True):
        assert torch.allclose(v, w, rtol=0.0, atol=0.0, equal_nan=True), k
    metrics = evaluate(model, prepared, "test")
    assert metrics and all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())
