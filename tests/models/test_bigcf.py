import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import SequenceDataset, make_sequence_graph
from mdgr_graph.models.baselines.bigcf import BIGCF, info_nce
from mdgr_graph.train import TrainConfig, evaluate, fit

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ITEMS = 30
NUM_USERS = 12
D = 8


def interactions(seed=0, per_user=(3, 9)):
    """Random training interactions (with repeated pairs); items 29 and 30 never occur."""
    gen = torch.Generator().manual_seed(seed)
    users, items = [], []
    for u in range(NUM_USERS):
        n = int(torch.randint(per_user[0], per_user[1] + 1, (1,), generator=gen))
        users += [u] * n
        items += torch.randint(1, NUM_ITEMS - 1, (n,), generator=gen).tolist()
    users += [0, 0]  # a repeated pair
    items += [items[0], items[0]]
    return torch.tensor(users), torch.tensor(items)


def small_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    users, items = interactions()
    opts = dict(num_users=NUM_USERS + 2, max_len=6, dim=D, intents=5)  # 2 users unseen
    opts.update(kwargs)
    model = BIGCF(NUM_ITEMS, users, items, **opts)
    with torch.no_grad():  # a non-identity user transform, so the reference tests see it
        if model.user_lin is not None:
            model.user_lin.weight.add_(0.3 * torch.randn(D, D))
    return model


def make_batch(sequences, num_candidates=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for seq in sequences:
        x = torch.as_tensor(seq) if not isinstance(seq, int) else torch.randint(
            1, NUM_ITEMS + 1, (seq,), generator=gen)
        days = torch.arange(x.numel(), dtype=torch.float)
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(x, days, candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


# ---------------------------------------------------------------- slow dense reference
def dense_reference(model, sequences):
    """Per-node dense LightGCN + a per-sequence loop for the inductive users.

    Returns (user mu [B, d], item mu [I, d], graph user mu [U, d]).
    """
    num_u, num_i, d = model.num_users, model.num_items + 1, model.dim
    adj = torch.zeros(num_u, num_i)
    for u, i in zip(*interactions(), strict=True):
        adj[u, i] = 1.0  # binary: repeats once
    big = torch.zeros(num_u + num_i, num_u + num_i)
    big[:num_u, num_u:] = adj
    big[num_u:, :num_u] = adj.t()
    deg = big.sum(1)
    inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
    norm = inv[:, None] * big * inv[None, :]
    item0 = model.item_emb.weight
    lin = model.user_lin if model.user_lin is not None else (lambda v: v)
    user0 = torch.stack([lin(item0[adj[u] > 0].mean(0)) if adj[u].sum() > 0
                         else torch.zeros(d) for u in range(num_u)])
    layers = [torch.cat([user0, item0])]
    for _ in range(model.num_layers):
        layers.append(norm @ layers[-1])
    mu = torch.stack(layers).sum(0)
    item_deg = adj.sum(0)
    users = []
    for seq in sequences:
        kept = sorted(set(torch.as_tensor(seq)[-model.max_len:].tolist()))
        e = [lin(item0[kept].mean(0))]
        for layer in layers[: model.num_layers]:
            e.append(sum(layer[num_u + i] / (len(kept) * max(float(item_deg[i]), 1.0)) ** 0.5
                         for i in kept))
        users.append(torch.stack(e).sum(0))
    return torch.stack(users), mu[num_u:], mu[:num_u]


@pytest.mark.parametrize("layers", [0, 1, 2, 3])
@pytest.mark.parametrize("user_transform", [True, False])
def test_vectorised_forward_matches_the_dense_reference(layers, user_transform):
    model = small_model(layers=layers, user_transform=user_transform).eval()
    seqs = [[3, 5, 7], [1], [2, 2, 9, 4, 4, 11, 13, 2, 6], [29, 30, 3]]
    batch = make_batch(seqs)
    rep = model(batch)
    user_mu, item_mu, _ = dense_reference(model, seqs)
    assert torch.allclose(rep.user_z, user_mu, atol=1e-5)
    assert torch.allclose(rep.item_z, item_mu, atol=1e-5)
    # collective intents: softmax(mu C) C^T, row by row
    for b in range(len(seqs)):
        att = torch.softmax(user_mu[b] @ model.user_intent, dim=0)
        assert torch.allclose(rep.user_sigma[b], model.user_intent @ att, atol=1e-5)
    att = torch.softmax(item_mu[4] @ model.item_intent, dim=0)
    assert torch.allclose(rep.item_sigma[4], model.item_intent @ att, atol=1e-5)


def test_inductive_user_equals_its_node_in_the_training_graph():
    """A sequence made of a graph user's training items gets that user's propagated mean."""
    model = small_model(max_len=50).eval()
    users, items = interactions()
    seqs = [items[users == u].tolist() for u in range(NUM_USERS)]
    rep = model(make_batch(seqs))
    _, _, graph_users = dense_reference(model, seqs)
    assert torch.allclose(rep.user_z, graph_users[:NUM_USERS], atol=1e-5)


def test_training_samples_around_the_mean_with_the_collective_scale():
    model = small_model()
    batch = make_batch([4, 3])
    model.eval()
    mean = model(batch)
    model.train()
    torch.manual_seed(5)
    sample = model(batch)
    torch.manual_seed(5)
    eps_user = torch.randn_like(mean.user_z)
    eps_item = torch.randn_like(mean.item_z)
    assert torch.allclose(sample.user_z, mean.user_z + mean.user_sigma * eps_user, atol=1e-6)
    assert torch.allclose(sample.item_z, mean.item_z + mean.item_sigma * eps_item, atol=1e-6)


# ---------------------------------------------------------------- scores and shapes
def test_score_all_gathers_score_candidates_and_padding_scores_zero():
    model = small_model().eval()
    batch = make_batch([5, 1, 9, 2], num_candidates=7)
    batch.candidates[0, 0] = 0
    cand = model.score_candidates(batch)
    full = model.score_all(batch)
    assert cand.shape == (4, 7) and full.shape == (4, NUM_ITEMS + 1)
    assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-6)
    assert torch.all(full[:, 0] == 0) and cand[0, 0] == 0  # padding row is zero, isolated
    assert torch.allclose(model.score_all(batch, chunk_size=4), full, atol=1e-6)
    assert torch.isfinite(full).all()


@pytest.mark.parametrize("split", ["train", "test"])
def test_from_prepared_shapes_on_paper_and_loo(paper_data, loo_data, split):
    for prepared in (paper_data, loo_data):
        model = BIGCF.from_prepared(prepared, max_len=20, dim=D).eval()
        data = SequenceDataset(prepared, split)
        batch = Batch.from_data_list([data[i] for i in range(5)])
        assert model.score_candidates(batch).shape == batch.candidates.shape
        assert model.score_all(batch).shape == (5, prepared.num_items + 1)
        assert model.num_users == prepared.num_users


def test_batched_scores_equal_each_sequence_alone():
    model = small_model().eval()
    seqs = [[3, 5, 7], [1], [2, 2, 9, 4, 4, 11, 13, 2, 6]]
    batch = make_batch(seqs)
    together = model.score_candidates(batch)
    for b, seq in enumerate(seqs):
        alone = make_batch([seq])
        alone.candidates, alone.labels = batch.candidates[b:b + 1], batch.labels[b:b + 1]
        assert torch.allclose(model.score_candidates(alone), together[b:b + 1], atol=1e-6)


# ---------------------------------------------------------------- edge cases
def test_duplicates_order_and_recent_cut():
    model = small_model(max_len=4).eval()
    base = make_batch([[3, 5, 7]])

    def scores(seq):
        batch = make_batch([seq])
        batch.candidates, batch.labels = base.candidates, base.labels
        return model.score_candidates(batch)

    ref = scores([3, 5, 7])
    assert torch.allclose(scores([3, 5, 3, 7, 7]), ref, atol=1e-6)  # repeats count once
    assert torch.allclose(scores([7, 3, 5]), ref, atol=1e-6)  # a set: order is not read
    assert torch.allclose(scores([1, 2, 9, 3, 5, 7]), scores([9, 3, 5, 7]), atol=1e-6)  # cut
    assert not torch.allclose(scores([1, 2, 9, 3, 5, 7]), ref)


def test_single_item_histories_and_items_outside_the_training_graph():
    model = small_model().eval()
    batch = make_batch([[29], [30], [4]])  # 29, 30: no training interaction, degree 0
    scores = model.score_all(batch)
    assert torch.isfinite(scores).all()
    assert model.item_degree[29] == 0 and model.item_degree[30] == 0
    # an item without edges keeps only its ego embedding in its mean
    rep = model(batch)
    assert torch.allclose(rep.item_z[29], model.item_emb.weight[29], atol=1e-6)
    # single-item histories: e0 = W e_i, layer l+1 = e_i^(l) / sqrt(max(deg_i, 1))
    user_mu, _, _ = dense_reference(model, [[29], [30], [4]])
    assert torch.allclose(rep.user_z, user_mu, atol=1e-5)
    lin = model.user_lin
    assert torch.allclose(rep.user_z[0], lin(model.item_emb.weight[29])
                          + model.item_emb.weight[29], atol=1e-6)


# ---------------------------------------------------------------- the graph
def test_graph_holds_each_training_pair_once():
    model = small_model()
    users, items = interactions()
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))
    assert model.num_edges == len(pairs)
    assert set(zip(model.edge_user.tolist(), model.edge_item.tolist(), strict=True)) == pairs
    adj, mean = model.graph_matrices()
    dense = adj.to_dense()
    assert torch.allclose(dense, dense.t())
    assert torch.allclose(mean.to_dense().sum(1)[:NUM_USERS], torch.ones(NUM_USERS))


def test_graph_is_built_from_training_interactions_only(paper_data, loo_data):
    # paper: test windows belong to test users, who are not in the graph at all
    model = BIGCF.from_prepared(paper_data, max_len=20, dim=D)
    a = paper_data.arrays
    test_rows = np.flatnonzero(a["window_split"] == 2)
    test_users = set(a["window_user"][test_rows].tolist())
    graph_users = set(model.edge_user.tolist())
    assert test_users and not test_users & graph_users
    edges = set(zip(model.edge_user.tolist(), model.edge_item.tolist(), strict=True))
    for row in test_rows:
        user = int(a["window_user"][row])
        assert not any((user, int(t)) in edges for t in a["targets"][row])
    # loo: the valid and test targets (last two items) are not edges, unless seen earlier
    model = BIGCF.from_prepared(loo_data, max_len=20, dim=D)
    edges = set(zip(model.edge_user.tolist(), model.edge_item.tolist(), strict=True))
    ptr, seq = loo_data.arrays["seq_ptr"], loo_data.arrays["seq_items"]
    checked = 0
    for u in range(loo_data.num_users):
        earlier = set(seq[ptr[u]:ptr[u + 1] - 2].tolist())
        for target in seq[ptr[u + 1] - 2:ptr[u + 1]].tolist():
            if target not in earlier:
                assert (u, target) not in edges
                checked += 1
    assert checked > 0
    users, items = loo_data.training_interactions()
    assert edges == set(zip(users.tolist(), items.tolist(), strict=True))


def test_graph_buffers_are_not_in_the_state_dict_and_the_cache_follows_the_device():
    model = small_model()
    state = model.state_dict()
    assert not {"edge_user", "edge_item", "item_degree"} & set(state)
    other = small_model(seed=3)
    other.load_state_dict(state)
    batch = make_batch([4, 2])
    assert torch.allclose(other.eval().score_all(batch), model.eval().score_all(batch))
    model.graph_matrices()
    assert model._graph_cache is not None
    model.double()
    assert model._graph_cache is None


# ---------------------------------------------------------------- losses
def test_info_nce_matches_a_loop():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, D, generator=gen), torch.randn(5, D, generator=gen)
    ref = 0.0
    for p in range(5):
        sims = [float(F.cosine_similarity(a[p], b[q], dim=0)) / 0.2 for q in range(5)]
        ref += -np.log(np.exp(sims[p]) / np.sum(np.exp(sims)))
    assert info_nce(a, b, 0.2).item() == pytest.approx(ref / 5, rel=1e-5)


def all_positive_pairs(batch):
    rows, items = [], []
    for b in range(batch.num_graphs):
        for c in range(batch.candidates.size(1)):
            if batch.labels[b, c] > 0:
                rows.append(b)
                items.append(int(batch.candidates[b, c]))
    return rows, items


def contrastive_reference(model, rep, rows, items):
    tau = model.temperature
    loss = info_nce(rep.user_z, rep.user_z, tau) + info_nce(rep.user_sigma, rep.user_sigma, tau)
    rows, items = torch.as_tensor(rows), torch.as_tensor(items)
    distinct = torch.tensor(sorted(set(items.tolist())))
    loss = loss + info_nce(rep.item_z[distinct], rep.item_z[distinct], tau)
    loss = loss + info_nce(rep.item_sigma[distinct], rep.item_sigma[distinct], tau)
    return loss + info_nce(rep.user_z[rows], rep.item_z[items], tau)


@pytest.mark.parametrize("main_loss", ["bce", "bpr"])
@pytest.mark.parametrize("ssl_positives", [0, 1, 2])
def test_loss_is_the_sum_of_its_terms(main_loss, ssl_positives):
    model = small_model(main_loss=main_loss, ssl_reg=0.3, emb_reg=0.01, cen_reg=0.02,
                        ssl_positives=ssl_positives)
    batch = make_batch([5, 3, 8], num_candidates=6)
    torch.manual_seed(7)
    loss = model.loss(batch)
    torch.manual_seed(7)
    rep = model(batch)
    rows, items = model.contrastive_pairs(batch.candidates, batch.labels > 0)  # same draw
    if ssl_positives == 0:
        assert (rows.tolist(), items.tolist()) == all_positive_pairs(batch)
    logits = torch.stack([torch.stack([rep.user_z[b] @ rep.item_z[c] for c in row])
                          for b, row in enumerate(batch.candidates)])
    if main_loss == "bce":
        main = F.binary_cross_entropy_with_logits(logits, batch.labels)
    else:
        terms = [F.softplus(logits[b, n] - logits[b, p]) for b in range(3) for p in range(3)
                 for n in range(3, 6)]
        main = torch.stack(terms).mean()
    ego = rep.user_ego.pow(2).sum() + model.item_emb(batch.candidates).pow(2).sum()
    cen = model.user_intent.pow(2).sum() + model.item_intent.pow(2).sum()
    ref = main + 0.01 * ego / 3 + 0.02 * cen + 0.3 * contrastive_reference(model, rep, rows, items)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_without_regularisers_the_loss_is_the_candidate_bce_of_the_sample():
    model = small_model(ssl_reg=0.0, emb_reg=0.0, cen_reg=0.0)
    batch = make_batch([5, 3])
    torch.manual_seed(2)
    loss = model.loss(batch)
    torch.manual_seed(2)
    ref = F.binary_cross_entropy_with_logits(model.score_candidates(batch), batch.labels)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_contrastive_pairs_draw_k_distinct_positives_per_row(k):
    model = small_model(ssl_positives=k)
    labels = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 0, 0, 1], [0, 0, 0, 1, 0],
                           [0, 0, 0, 0, 0]], dtype=torch.bool)
    cand = torch.arange(1, 21).view(4, 5)
    seen = [set() for _ in range(4)]
    for seed in range(30):
        torch.manual_seed(seed)
        rows, items = model.contrastive_pairs(cand, labels)
        for b in range(4):
            mine = items[rows == b].tolist()
            allowed = cand[b][labels[b]].tolist()
            assert len(mine) == len(set(mine)) == min(k, len(allowed))
            assert set(mine) <= set(allowed)
            seen[b] |= set(mine)
    assert seen[0] == {1, 2, 3}  # uniform draw: every positive comes up


def test_rows_without_positives_keep_a_finite_loss():
    for main_loss in ("bce", "bpr"):
        model = small_model(main_loss=main_loss)
        batch = make_batch([4, 2])
        batch.labels = torch.zeros_like(batch.labels)
        loss = model.loss(batch)
        assert torch.isfinite(loss)
        loss.backward()


@pytest.mark.parametrize("options", [{}, {"main_loss": "bpr"}, {"user_transform": False}])
def test_gradients_reach_every_parameter(options):
    model = small_model(**options)
    model.loss(make_batch([5, 1, 7])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_same_seed_identical_and_other_seed_differs():
    batch = make_batch([5, 3, 8])
    losses = []
    for seed in (0, 0, 1):
        model = small_model(seed=seed)
        torch.manual_seed(11)
        losses.append(model.loss(batch).item())
    assert losses[0] == losses[1] and losses[0] != losses[2]
    model = small_model()
    torch.manual_seed(1)
    first = model.loss(batch).item()
    torch.manual_seed(2)
    assert model.loss(batch).item() != first  # the reparameterisation noise is drawn


# ---------------------------------------------------------------- arguments
def test_bad_arguments_and_batches():
    users, items = interactions()
    bad = [dict(max_len=0), dict(dim=0), dict(intents=0), dict(layers=-1),
           dict(temperature=0.0), dict(ssl_reg=-1.0), dict(emb_reg=-1e-5),
           dict(cen_reg=-1.0), dict(main_loss="mse"), dict(ssl_positives=-1)]
    for kwargs in bad:
        with pytest.raises(ValueError):
            BIGCF(NUM_ITEMS, users, items, **kwargs)
    with pytest.raises(ValueError, match="equal length"):
        BIGCF(NUM_ITEMS, users[:-1], items)
    with pytest.raises(ValueError, match="non-empty"):
        BIGCF(NUM_ITEMS, users[:0], items[:0])
    with pytest.raises(ValueError, match="item ids"):
        BIGCF(NUM_ITEMS, users, items + NUM_ITEMS)
    with pytest.raises(ValueError, match="user ids"):
        BIGCF(NUM_ITEMS, users, items, num_users=3)
    with pytest.raises(ValueError, match="integer"):
        BIGCF(NUM_ITEMS, users.float(), items)
    model = small_model()
    batch = make_batch([3, 2])
    batch.x[0] = 0
    with pytest.raises(ValueError, match="history item ids"):
        model.score_all(batch)
    batch = make_batch([3, 2])
    batch.candidates[0, 0] = NUM_ITEMS + 1
    with pytest.raises(ValueError, match="candidate ids"):
        model.score_candidates(batch)
    batch = make_batch([3, 2])
    del batch.labels
    with pytest.raises(ValueError, match="labels"):
        model.loss(batch)


def test_repr():
    text = repr(small_model())
    assert text.startswith("BIGCF(num_items=30, num_users=14, edges=")
    assert "layers=2" in text and "intents=5" in text and "main_loss='bce'" in text


# ---------------------------------------------------------------- training
def test_fit_and_evaluate_paper_and_loo(paper_data, loo_data):
    for prepared in (paper_data, loo_data):
        torch.manual_seed(0)
        model = BIGCF.from_prepared(prepared, max_len=20, dim=16, intents=8)
        config = TrainConfig(epochs=1, patience=9, batch_size=32, lr=5e-3, progress=False)
        result = fit(model, prepared, config, log=None)
        assert result.epochs == 1
        metrics = evaluate(model, prepared, "test")
        assert metrics and all(np.isfinite(v) for v in metrics.values())
        assert 0.0 <= metrics["auc/sampled"] <= 1.0
