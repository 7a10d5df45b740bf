import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models import history_length
from mdgr_graph.models.base import candidate_loss
from mdgr_graph.models.baselines.dcrec import (
    DCRec,
    ItemGraph,
    ItemGraphConv,
    LightGraphEncoder,
    info_nce,
    similarity_graph,
    transition_graph,
    weight_kl,
)
from mdgr_graph.train import TrainConfig, evaluate, fit

from .test_losses import reference_sampled_softmax

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ITEMS = 30
D = 16


def training_log(num_users=12, length=(5, 15), seed=0):
    """``(user, item)`` of random sequences, each user's contiguous and in order."""
    gen = torch.Generator().manual_seed(seed)
    users, items = [], []
    for u in range(num_users):
        n = int(torch.randint(length[0], length[1] + 1, (1,), generator=gen))
        seq = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
        if u == 0:
            seq[1] = seq[0]  # a repeat transition a -> a
        users.append(torch.full((n,), u))
        items.append(seq)
    return torch.cat(users), torch.cat(items)


def small_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    opts = dict(dim=D, dropout=0.1, graph_dropout=0.2)
    opts.update(kwargs)
    user, item = training_log()
    return DCRec.from_interactions(user, item, NUM_ITEMS, max_len=opts.pop("max_len", 10),
                                   **opts)


def make_batch(lengths, num_candidates=6, seed=0, items=None):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for g, n in enumerate(lengths):
        x = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) if items is None else items[g]
        days = torch.rand(len(x), generator=gen).cumsum(0)
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(torch.as_tensor(x), days, candidates=cand,
                                          labels=labels))
    return Batch.from_data_list(graphs)


def dense_of(edge_index, weight, n):
    out = torch.zeros(n, n, dtype=torch.float64)
    out[edge_index[0], edge_index[1]] = weight.double()  # [source, target]
    return out


# ---------------------------------------------------------------- global graphs
def test_transition_graph_matches_the_authors_dict_construction():
    user, item = training_log()
    n = NUM_ITEMS + 1
    adj = torch.zeros(n, n, dtype=torch.float64)
    for u in user.unique():
        seq = item[user == u].tolist()
        for i in range(len(seq)):  # run_DCRec.build_adj_graph, literally
            if i > 0:
                adj[seq[i], seq[i - 1]] += 1
                adj[seq[i - 1], seq[i]] += 1
            if i + 1 < len(seq):
                adj[seq[i], seq[i + 1]] += 1
                adj[seq[i + 1], seq[i]] += 1
    adj.fill_diagonal_(1.0)
    deg = adj.sum(1)
    expected = adj / deg.sqrt()[:, None] / deg.sqrt()[None, :]
    edge_index, weight = transition_graph(user, item, NUM_ITEMS)
    assert torch.allclose(dense_of(edge_index, weight, n), expected, atol=1e-6)
    key = edge_index[1] * n + edge_index[0]
    assert torch.equal(key, key.sort().values)  # CSR order by target


def test_similarity_graph_keeps_the_top_cosines_of_each_row():
    user, item = training_log()
    n, k = NUM_ITEMS + 1, 3
    x = torch.zeros(int(user.max()) + 1, n, dtype=torch.float64)
    x.index_put_((user, item), torch.ones(len(user), dtype=torch.float64), accumulate=True)
    norm = x.norm(dim=0)
    sim = (x.T @ x) / (norm[:, None] * norm[None, :]).clamp_min(1e-300)
    edge_index, weight = similarity_graph(user, item, NUM_ITEMS, neighbours=k)
    dense = dense_of(edge_index, weight, n)
    for i in range(n):
        cols = edge_index[1][edge_index[0] == i]
        positive = int((sim[i] > 0).sum())
        assert len(cols) == min(k + 1, positive)
        if len(cols):
            top = sim[i].sort(descending=True).values[: len(cols)]
            assert torch.allclose(sim[i, cols].sort(descending=True).values, top)
            assert torch.allclose(dense[i, cols], sim[i, cols] / sim[i, cols].sum())
            assert i in cols.tolist()  # itself, similarity 1
    assert dense[0].sum() == 0  # padding has no edges
    chunked = similarity_graph(user, item, NUM_ITEMS, neighbours=k, chunk_size=4)
    assert torch.equal(chunked[0], edge_index) and torch.allclose(chunked[1], weight)


def test_item_graph_normalisation_is_dgl_both_with_edge_counts():
    user, item = training_log()
    n = NUM_ITEMS + 1
    for edge_index, weight in (transition_graph(user, item, NUM_ITEMS),
                               similarity_graph(user, item, NUM_ITEMS, 4)):
        graph = ItemGraph(edge_index, weight, n)
        raw = dense_of(edge_index, weight, n) + torch.eye(n, dtype=torch.float64)
        count = (dense_of(edge_index, torch.ones_like(weight), n) > 0).double() + torch.eye(n)
        deg_out, deg_in = count.sum(1).clamp_min(1), count.sum(0).clamp_min(1)
        expected = raw / deg_out.sqrt()[:, None] / deg_in.sqrt()[None, :]  # [source, target]
        got = graph.dense(graph.normalised(None)).double().T
        assert torch.allclose(got, expected, atol=1e-6)
        assert torch.allclose(graph.full_norm, graph.normalised(None))
        # removing entries: the degrees count the remaining entries only
        removed = torch.zeros(graph.num_edges, dtype=torch.bool)
        off = (graph.source != graph.target).nonzero().squeeze(1)
        removed[off[::3]] = True
        keep = torch.ones(n, n, dtype=torch.bool)
        keep[graph.source[removed], graph.target[removed]] = False
        count_r, raw_r = count * keep, raw * keep
        deg_out, deg_in = count_r.sum(1).clamp_min(1), count_r.sum(0).clamp_min(1)
        expected = raw_r / deg_out.sqrt()[:, None] / deg_in.sqrt()[None, :]
        got = graph.dense(graph.normalised(removed)).double().T
        assert torch.allclose(got, expected, atol=1e-6)


def test_light_graph_encoder_matches_the_dense_propagation():
    user, item = training_log()
    graph = ItemGraph(*transition_graph(user, item, NUM_ITEMS), NUM_ITEMS + 1)
    encoder = LightGraphEncoder(D, layers=2, edge_dropout=0.5, dropout=0.5).eval()
    table = torch.randn(NUM_ITEMS + 1, D)
    a_hat = graph.dense(graph.full_norm)  # [target, source]
    h1 = a_hat @ table
    h2 = a_hat @ h1
    expected = F.layer_norm((table + h1 + h2) / 3 + table, (D,), eps=1e-12)
    assert torch.allclose(encoder(table, graph), expected, atol=1e-5)
    # training: entries dropped (different outputs), degrees unchanged
    encoder.train()
    torch.manual_seed(0)
    values = encoder.edge_values(graph)
    dropped = values == 0
    assert 0.3 < dropped.float().mean() < 0.7
    assert torch.allclose(values[~dropped], graph.full_norm[~dropped])


def test_item_graph_conv_sparse_and_edge_paths_agree_in_both_directions():
    user, item = training_log()
    graph = ItemGraph(*transition_graph(user, item, NUM_ITEMS), NUM_ITEMS + 1)
    torch.manual_seed(0)
    values = graph.full_norm * (torch.rand(graph.num_edges) > 0.3)  # no longer symmetric
    conv = ItemGraphConv()
    upstream = torch.randn(NUM_ITEMS + 1, D)
    outs, grads = [], []
    for mode in ("csr+adj", "csr", "edges", "dense"):
        x = torch.randn(NUM_ITEMS + 1, D, generator=torch.Generator().manual_seed(1))
        x.requires_grad_(True)
        if mode == "csr+adj":
            out = conv(x, graph.adj_t(values), adj=graph.adj(values))
        elif mode == "csr":
            out = conv(x, graph.adj_t(values))
        elif mode == "edges":
            out = conv(x, torch.stack([graph.source, graph.target]), values)
        else:
            out = graph.dense(values) @ x
        (out * upstream).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    for out, grad in zip(outs[1:], grads[1:], strict=True):
        assert torch.allclose(outs[0], out, atol=1e-5)
        assert torch.allclose(grads[0], grad, atol=1e-5)
    assert repr(conv) == "ItemGraphConv()"


def test_item_graph_rejects_bad_input():
    edge_index = torch.tensor([[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="2, E"):
        ItemGraph(edge_index[0], torch.ones(2), 3)
    with pytest.raises(ValueError, match="one weight"):
        ItemGraph(edge_index, torch.ones(3), 3)
    with pytest.raises(ValueError, match="must lie in 0..1"):
        ItemGraph(edge_index, torch.ones(2), 2)
    with pytest.raises(ValueError, match="duplicate"):
        ItemGraph(torch.tensor([[1, 1], [2, 2]]), torch.ones(2), 3)
    with pytest.raises(ValueError, match="symmetric"):
        DCRec(2, 5, (torch.tensor([[1], [2]]), torch.ones(1)),
              (torch.zeros(2, 0, dtype=torch.long), torch.zeros(0)))
    z = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
    with pytest.raises(ValueError, match="1-D"):
        transition_graph(z(3), torch.ones(2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="item ids"):
        transition_graph(z(2), torch.tensor([0, 1]), 4)
    with pytest.raises(ValueError, match="integer ids"):
        transition_graph(torch.zeros(2), torch.ones(2), 4)
    with pytest.raises(ValueError, match="contiguous"):
        transition_graph(torch.tensor([0, 1, 0]), torch.tensor([1, 2, 3]), 4)
    with pytest.raises(ValueError, match="neighbours"):
        similarity_graph(z(2), torch.ones(2, dtype=torch.long), 4, neighbours=0)
    assert ItemGraph(*transition_graph(z(0), z(0), 3), 4).num_edges == 4


# ---------------------------------------------------------------- the parts of the loss
def test_info_nce_and_weight_kl_follow_the_authors_formulas():
    z1, z2 = torch.randn(5, D), torch.randn(5, D)
    tau = 0.7
    for i, value in enumerate(info_nce(z1, z2, tau)):
        sims = torch.stack([F.cosine_similarity(z1[i], z2[j], dim=0) for j in range(5)])
        ratio = torch.exp(sims[i] / tau) / torch.exp(sims / tau).sum()
        assert torch.isclose(value, -torch.log(1e-8 + ratio), atol=1e-5)
    weights = torch.rand(6)
    torch.manual_seed(3)
    got = weight_kl(weights, 0.5)
    torch.manual_seed(3)
    target = torch.normal(0.5, 0.1, (6,)).sort().values.clamp_min(1e-8)
    log_q = torch.log_softmax(weights.sort().values + 1e-8, dim=0)
    expected = (target * (torch.log(target + 1e-8) - log_q)).sum() / 6
    assert torch.isclose(got, expected, atol=1e-6)


def test_fusion_is_an_attention_over_three_views():
    model = small_model()
    views = torch.randn(3, 4, D)
    fused = model.fuse(views)
    for b in range(4):
        logits = torch.stack([(views[k, b] @ model.fusion_weight) @ model.fusion_query
                              for k in range(3)])
        alpha = torch.softmax(logits, dim=0)
        assert torch.allclose(fused[b], sum(alpha[k] * views[k, b] for k in range(3)),
                              atol=1e-6)


def test_batch_transitions_are_the_histories_consecutive_pairs():
    model = small_model()
    batch = make_batch([4, 7, 1, 3], items=[torch.tensor([1, 2, 2, 3]),
                                            torch.tensor([5, 6, 7, 8, 9, 10, 11]),
                                            torch.tensor([4]), torch.tensor([12, 13, 12])])
    items, mask = model.dense_items(batch)
    removed = model.batch_transitions(items, mask)
    pairs = set()
    for seq in ([1, 2, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4], [12, 13, 12]):
        for a, b in zip(seq[:-1], seq[1:], strict=True):
            if a != b:
                pairs |= {(a, b), (b, a)}
    graph = model.transition
    got = {(int(s), int(t)) for s, t in zip(graph.source[removed], graph.target[removed],
                                            strict=True)}
    present = {(int(s), int(t)) for s, t in zip(graph.source, graph.target, strict=True)}
    assert got == pairs & present
    assert not bool((graph.source[removed] == graph.target[removed]).any())


def neighbour_reference(model, last, removed, table):
    graph = model.transition
    civil, foreign = [], []
    for v in last.tolist():
        rows = (graph.target == v).nonzero().squeeze(1)
        split = {True: [], False: []}
        for e in rows.tolist():
            split[bool(removed[e])].append(table[graph.source[e]])
        civil.append(torch.stack(split[True]).mean(0) if split[True] else torch.zeros(D))
        foreign.append(torch.stack(split[False]).mean(0) if split[False] else torch.zeros(D))
    return torch.stack(civil), torch.stack(foreign)


def test_neighbour_readout_matches_a_per_sequence_loop():
    model = small_model(neighbour_sample=None)
    batch = make_batch([5, 1, 8, 3, 3], seed=2)
    items, mask = model.dense_items(batch)
    removed = model.batch_transitions(items, mask)
    last = model.last_items(items, mask)
    table = torch.randn(NUM_ITEMS + 1, D)
    civil, foreign = model.neighbour_readout(last, removed, table)
    ref_civil, ref_foreign = neighbour_reference(model, last, removed, table)
    assert torch.allclose(civil, ref_civil, atol=1e-6)
    assert torch.allclose(foreign, ref_foreign, atol=1e-6)
    assert torch.equal(civil[1], torch.zeros(D))  # single item: no own transitions


def test_neighbour_sampling_reads_at_most_the_sample():
    model = small_model(neighbour_sample=1)
    batch = make_batch([6, 6, 6], seed=4)
    items, mask = model.dense_items(batch)
    removed = model.batch_transitions(items, mask)
    last = model.last_items(items, mask)
    table = torch.randn(NUM_ITEMS + 1, D)
    graph = model.transition
    _, foreign = model.neighbour_readout(last, removed, table)
    for b, v in enumerate(last.tolist()):
        rows = ((graph.target == v) & ~removed).nonzero().squeeze(1)
        options = table[graph.source[rows]]
        assert bool(((options - foreign[b]).abs().max(dim=1).values < 1e-6).any())


def conformity_reference(model, items, mask, adj_view):
    """The authors' _subgraph_agreement, one sequence at a time (no sampling)."""
    removed = model.batch_transitions(items, mask)
    aug = model.graph_encoder(model.item_emb.weight, model.transition, removed)
    last = model.last_items(items, mask)
    civil, foreign = neighbour_reference(model, last, removed, adj_view)
    agreement = []
    for b, v in enumerate(last.tolist()):
        cos = [F.cosine_similarity(adj_view[v], aug[v], dim=0, eps=1e-12),
               F.cosine_similarity(adj_view[v], foreign[b], dim=0, eps=1e-12),
               F.cosine_similarity(civil[b], foreign[b], dim=0, eps=1e-12)]
        agreement.append(torch.sigmoid(sum(cos) / 3))
    agreement = torch.stack(agreement)
    scaled = (agreement - agreement.min()) / (agreement.max() - agreement.min())
    weights = model.weight_mean / scaled.mean() * scaled
    for b in range(len(weights)):
        if int(mask[b].sum()) == 1:
            weights[b] = model.weight_mean
    return weights


@torch.no_grad()
def test_conformity_weights_match_the_reference_and_their_mean():
    model = small_model(neighbour_sample=None, weight_mean=0.4).eval()
    batch = make_batch([5, 1, 8, 3, 6, 2], seed=5)
    items, mask = model.dense_items(batch)
    adj_view, _ = model.graph_views()
    removed = model.batch_transitions(items, mask)
    weights = model.conformity_weights(items, mask, adj_view, removed)
    assert torch.allclose(weights, conformity_reference(model, items, mask, adj_view),
                          atol=1e-5)
    assert float(weights[1]) == pytest.approx(0.4)
    # without single items the mean is weight_mean and the weights span [0, max]
    batch = make_batch([5, 4, 8, 3], seed=6)
    items, mask = model.dense_items(batch)
    removed = model.batch_transitions(items, mask)
    weights = model.conformity_weights(items, mask, adj_view, removed)
    assert float(weights.mean()) == pytest.approx(0.4, abs=1e-6)
    assert float(weights.min()) == pytest.approx(0.0, abs=1e-6)


def test_all_equal_agreements_give_weight_mean():
    model = small_model().eval()
    batch = make_batch([4])  # one sequence: max == min
    items, mask = model.dense_items(batch)
    adj_view, _ = model.graph_views()
    weights = model.conformity_weights(items, mask, adj_view,
                                       model.batch_transitions(items, mask))
    assert torch.allclose(weights, torch.tensor([model.weight_mean]))


@pytest.mark.parametrize("loss", ["bce", "sampled_softmax"])
def test_loss_is_the_candidate_loss_plus_weighted_cl_and_kl(loss):
    model = small_model(dropout=0.0, graph_dropout=0.0, loss=loss)
    batch = make_batch([5, 3, 7, 2])
    main = candidate_loss(model.score_candidates(batch), batch.labels, loss)
    torch.manual_seed(1)
    total = model.loss(batch)
    items, mask = model.dense_items(batch)
    adj_view, sim_view = model.graph_views()
    torch.manual_seed(1)
    cl, kl = model.auxiliary_losses(items, mask, adj_view, sim_view)
    assert torch.isclose(total, main + cl + kl, atol=1e-6)
    assert float(cl.detach()) > 0
    off = small_model(dropout=0.0, graph_dropout=0.0, cl_weight=0.0, kl_weight=0.0, loss=loss)
    assert torch.isclose(off.loss(batch), main, atol=1e-6)
    double = small_model(dropout=0.0, graph_dropout=0.0, cl_weight=0.2, kl_weight=0.02)
    torch.manual_seed(1)
    cl2, kl2 = double.auxiliary_losses(items, mask, adj_view, sim_view)
    assert torch.isclose(cl2, 2 * cl, atol=1e-6) and torch.isclose(kl2, 2 * kl, atol=1e-6)


def test_candidate_loss_kinds():
    batch = make_batch([5, 3, 7, 2])
    logits = small_model(dropout=0.0, graph_dropout=0.0).score_candidates(batch)
    bce = small_model(dropout=0.0, graph_dropout=0.0, cl_weight=0.0, kl_weight=0.0, loss="bce")
    assert small_model().candidate_loss_kind == "sampled_softmax"
    assert torch.isclose(bce.loss(batch),
                         F.binary_cross_entropy_with_logits(logits, batch.labels), atol=1e-6)
    softmax = small_model(dropout=0.0, graph_dropout=0.0, cl_weight=0.0, kl_weight=0.0,
                          loss="sampled_softmax")
    ref = reference_sampled_softmax(logits, batch.labels)
    assert torch.isclose(softmax.loss(batch), ref, atol=1e-6)
    assert "loss='sampled_softmax'" in repr(softmax)
    with pytest.raises(ValueError, match="unknown candidate loss"):
        small_model(loss="softmax")


# ---------------------------------------------------------------- the model
def test_shapes_and_score_all_agrees_with_candidates():
    model = small_model().eval()
    batch = make_batch([5, 1, 12, 3])
    cand = model.score_candidates(batch)
    assert cand.shape == (4, 6)
    for chunk in (7, 8192):
        full = model.score_all(batch, chunk_size=chunk)
        assert full.shape == (4, NUM_ITEMS + 1)
        assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-5)


def test_batched_scores_equal_each_sequence_alone():
    model = small_model().eval()
    batch = make_batch([5, 1, 9, 3, 3], seed=7)
    together = model.score_candidates(batch)
    for g, data in enumerate(batch.to_data_list()):
        alone = model.score_candidates(Batch.from_data_list([data]))
        assert torch.allclose(alone[0], together[g], atol=1e-5)


def test_fusion_off_scores_with_the_sequence_view():
    model = small_model(fusion=False).eval()
    batch = make_batch([4, 2])
    items, mask = model.dense_items(batch)
    assert torch.allclose(model.user_vectors(batch), model.encode(items, mask))


def test_the_last_position_sees_the_whole_history_in_both_modes():
    for causal in (False, True):
        model = small_model(causal=causal).eval()
        a = make_batch([1], items=[torch.tensor([3, 4, 5])])
        b = make_batch([1], items=[torch.tensor([9, 4, 5])])
        assert not torch.allclose(model.user_vectors(a), model.user_vectors(b))
    model = small_model(causal=False).eval()
    items = torch.tensor([[3, 4, 5]])
    mask = torch.ones_like(items, dtype=torch.bool)
    h = model.dropout(model.input_norm(model.item_emb(items) + model.pos_emb(torch.arange(3))))
    for layer in model.layers:
        h = layer(h, src_key_padding_mask=~mask)
    assert torch.allclose(model.encode(items, mask), h[:, -1], atol=1e-6)


def test_padding_and_duplicates_and_single_items():
    model = small_model()
    batch = make_batch([1, 1, 4], items=[torch.tensor([3]), torch.tensor([3]),
                                         torch.tensor([2, 2, 2, 2])])
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    model.eval()
    scores = model.score_candidates(batch)
    assert torch.isfinite(scores).all()
    users = model.user_vectors(batch)
    assert torch.allclose(users[0], users[1])


def test_all_single_item_batch_trains():
    model = small_model()
    batch = make_batch([1, 1, 1], seed=3)
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()


def test_long_sequences_are_cut_to_the_most_recent_items():
    model = small_model(max_len=4).eval()
    long = torch.tensor([7, 8, 9, 1, 2, 3, 4])
    a = make_batch([1], items=[long])
    b = make_batch([1], items=[long[-4:]])
    b.candidates = a.candidates
    assert torch.allclose(model.score_candidates(a), model.score_candidates(b), atol=1e-6)


def test_gradients_reach_every_parameter():
    model = small_model()
    model.loss(make_batch([5, 3, 9, 1, 4])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_same_seed_identical_and_other_seed_differs():
    batch = make_batch([5, 3, 9, 2])

    def run(seed):
        model = small_model(seed=0)
        torch.manual_seed(seed)
        return model.loss(batch)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    a, b = small_model(seed=4), small_model(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_repr_and_bad_arguments():
    model = small_model()
    assert repr(model).startswith("DCRec(num_items=30, max_len=10, dim=16")
    assert "LightGraphEncoder(layers=2" in repr(model.graph_encoder)
    assert repr(model.transition).startswith("ItemGraph(num_nodes=31")
    bad = [dict(dim=0), dict(heads=3), dict(dropout=1.0), dict(num_blocks=0),
           dict(max_len=0), dict(cl_weight=-1.0), dict(kl_weight=-0.1),
           dict(weight_mean=0.0), dict(weight_mean=1.5), dict(temperature=0.0),
           dict(neighbour_sample=0), dict(graph_dropout=1.0), dict(graph_layers=0)]
    for kwargs in bad:
        with pytest.raises(ValueError):
            small_model(**kwargs)
    batch = make_batch([3])
    batch.candidates = None
    with pytest.raises(ValueError, match="candidates"):
        model.score_candidates(batch)
    batch = make_batch([3])
    batch.x = torch.tensor([1, 2, NUM_ITEMS + 1])
    with pytest.raises(ValueError, match="item ids"):
        model.score_all(batch)


# ---------------------------------------------------------------- data and training
def training_pairs(prepared):
    user, item = prepared.training_interactions()
    same = user[1:] == user[:-1]
    return {(int(a), int(b)) for a, b in zip(item[:-1][same], item[1:][same], strict=True)}


def graph_pairs(model):
    graph = model.transition
    return {(int(s), int(t)) for s, t in zip(graph.source, graph.target, strict=True)
            if s != t}


def test_paper_graph_is_built_from_training_windows_only(paper_data):
    model = DCRec.from_prepared(paper_data, max_len=history_length(paper_data), dim=D)
    train = training_pairs(paper_data)
    undirected = {p for a, b in train if a != b for p in ((a, b), (b, a))}
    assert graph_pairs(model) == undirected
    a = paper_data.arrays
    test_rows = np.flatnonzero(a["window_split"] == 2)
    leaked = [(int(x), int(y)) for r in test_rows
              for x, y in zip(a["targets"][r][:-1], a["targets"][r][1:], strict=True)
              if x != y and (int(x), int(y)) not in undirected]
    assert leaked  # test-target transitions exist that training never saw ...
    assert not set(leaked) & graph_pairs(model)  # ... and none is in the graph


def test_loo_graph_leaves_out_valid_and_test_targets(loo_data):
    model = DCRec.from_prepared(loo_data, max_len=history_length(loo_data), dim=D)
    train = training_pairs(loo_data)
    undirected = {p for a, b in train if a != b for p in ((a, b), (b, a))}
    assert graph_pairs(model) == undirected
    ptr, seq = loo_data.arrays["seq_ptr"], loo_data.arrays["seq_items"]
    last = [(int(seq[e - 2]), int(seq[e - 1])) for e in ptr[1:]]
    leaked = [p for p in last if p[0] != p[1] and p not in undirected]
    assert leaked
    assert not set(leaked) & graph_pairs(model)


@pytest.mark.parametrize("fixture", ["paper_data", "loo_data"])
def test_fit_and_evaluate_on_both_protocols(fixture, request):
    prepared = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    model = DCRec.from_prepared(prepared, max_len=history_length(prepared), dim=D)
    config = TrainConfig(epochs=1, patience=9, batch_size=32, lr=5e-3, progress=False)
    result = fit(model, prepared, config, log=None)
    assert result.epochs == 1
    metrics = evaluate(model, prepared, "test")
    assert metrics and all(math.isfinite(v) for v in metrics.values())
