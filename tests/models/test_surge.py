import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from mdgr_graph.data.dataset import SequenceDataset, make_sequence_graph
from mdgr_graph.models import MODELS, NEURAL_BASELINES, build_model
from mdgr_graph.models.baselines.surge import (
    AUGRU,
    SURGE,
    InterestFusionConv,
    SoftAssignmentPool,
    interest_graph,
    pair_budget,
    weighted_cosine,
)
from mdgr_graph.train import TrainConfig, evaluate, fit

NUM_ITEMS = 40
D = 16


def make_batch(lengths, num_candidates=6, seed=0, items=None):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for g, n in enumerate(lengths):
        x = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) if items is None else items[g]
        days = torch.rand(n, generator=gen).cumsum(0)
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(x, days, candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


def small_model(**kwargs):
    torch.manual_seed(0)
    opts = dict(max_len=12, dim=D, metric_heads=3, epsilon=0.3, pool_size=4, mlp_hidden=8)
    opts.update(kwargs)
    return SURGE(NUM_ITEMS, **opts)


def dense_inputs(sizes, d=D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = max(sizes)
    x = torch.randn(len(sizes), n, d, generator=gen)
    mask = torch.arange(n).unsqueeze(0) < torch.tensor(sizes).unsqueeze(1)
    return x * mask.unsqueeze(-1), mask


# ---------------------------------------------------------------- interest graph
def graph_reference(sim, mask, epsilon):
    """Per graph: sort the pairs i < j by (-M_ij, i, j), keep the budget, both directions."""
    adj = torch.zeros(sim.shape, dtype=torch.bool)
    for g in range(sim.size(0)):
        n = int(mask[g].sum())
        pairs = sorted((-float(sim[g, i, j]), i, j) for i in range(n) for j in range(i + 1, n))
        budget = min(int(torch.ceil(torch.tensor(epsilon * n * n / 2 - 1e-9))), len(pairs))
        for _, i, j in pairs[:budget]:
            adj[g, i, j] = adj[g, j, i] = True
    return adj


def test_weighted_cosine_is_the_mean_of_head_cosines():
    x, mask = dense_inputs([5, 3])
    w = torch.rand(3, D) + 0.5
    sim = weighted_cosine(x, w)
    for g, n in enumerate([5, 3]):
        for i in range(n):
            for j in range(n):
                ref = torch.stack([F.cosine_similarity(w[h] * x[g, i], w[h] * x[g, j], dim=0)
                                   for h in range(3)]).mean()
                assert torch.allclose(sim[g, i, j], ref, atol=1e-6)
    assert torch.equal(sim, sim.transpose(1, 2))
    assert torch.all(sim[1, 3:] == 0)  # padding


def test_weighted_cosine_is_mdgrs_and_equals_surges_former_copy():
    """SURGE uses the layer's weighted cosine (nn/metric.py); it replaced a copy without
    the power-of-two rescaling and with one product per head. It equals that copy up to
    float rounding (the heads are now summed in one product), gradients too, at the
    magnitudes of embeddings."""
    from mdgr_graph.nn import metric

    assert weighted_cosine is metric.weighted_cosine

    def former(x, weight):
        xh = F.normalize(x.unsqueeze(1) * weight.unsqueeze(0).unsqueeze(2), dim=-1)
        sim = (xh @ xh.transpose(-1, -2)).mean(dim=1)
        return 0.5 * (sim + sim.transpose(-1, -2))

    gen = torch.Generator().manual_seed(3)
    for scale in (1e-3, 0.05, 1.0, 30.0):
        x = (torch.randn(4, 7, D, generator=gen) * scale)
        x[1, 5:] = 0  # padding rows
        w = torch.randn(3, D, generator=gen) * 0.1 + 1.0
        grads = []
        for fn in (weighted_cosine, former):
            xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
            sim = fn(xs, ws)
            (sim * torch.linspace(-1, 1, sim.numel()).view_as(sim)).sum().backward()
            grads.append((sim.detach(), xs.grad, ws.grad))
        for new, old in zip(*grads, strict=True):
            torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_interest_graph_keeps_the_budget_symmetric_and_matches_a_reference(epsilon):
    sizes = [1, 2, 5, 9, 7]
    x, mask = dense_inputs(sizes)
    sim = weighted_cosine(x, torch.ones(2, D))
    adj = interest_graph(sim, mask, epsilon)
    assert torch.equal(adj, graph_reference(sim, mask, epsilon))
    assert torch.equal(adj, adj.transpose(1, 2))
    assert not adj.diagonal(dim1=1, dim2=2).any()
    assert not (adj & ~(mask.unsqueeze(1) & mask.unsqueeze(2))).any()
    n = torch.tensor(sizes)
    expected = 2 * torch.minimum(torch.ceil(epsilon * n * n / 2 - 1e-9).long(), n * (n - 1) // 2)
    assert torch.equal(adj.sum(dim=(1, 2)), expected)
    assert torch.equal(pair_budget(n, epsilon) * 2, expected)


def test_interest_graph_is_a_relative_ranking():
    x, mask = dense_inputs([6, 8, 4])
    sim = weighted_cosine(x, torch.ones(1, D))
    adj = interest_graph(sim, mask, 0.3)
    # a monotone map of M (or a per-graph offset) keeps the same edges: no absolute threshold
    assert torch.equal(interest_graph(3 * sim - 2, mask, 0.3), adj)
    shifted = sim + torch.tensor([5.0, -5.0, 0.0]).view(3, 1, 1)
    assert torch.equal(interest_graph(shifted, mask, 0.3), adj)
    # the kept pairs are the most similar ones of their graph
    for g, n in enumerate([6, 8, 4]):
        upper = torch.ones(n, n, dtype=torch.bool).triu(1)
        kept, dropped = sim[g, :n, :n][adj[g, :n, :n] & upper], sim[g, :n, :n][~adj[g, :n, :n]
                                                                                & upper]
        if len(kept) and len(dropped):
            assert kept.min() >= dropped.max()


def test_interest_graph_duplicate_items_are_linked_first():
    x, mask = dense_inputs([5])
    x[0, 3] = x[0, 1]  # the same item twice: cosine 1, the largest possible
    sim = weighted_cosine(x, torch.rand(2, D) + 0.5)
    adj = interest_graph(sim, mask, 0.1)  # ceil(2.5 / 2) = 2 pairs
    assert adj[0, 1, 3] and adj[0, 3, 1] and adj.sum() == 4


# ---------------------------------------------------------------- fusion layer
def conv_reference(conv, x, edge_index, query, batch, edge_weight):
    """Per node, literally: BFS for the k-hop centre, explicit softmax over in-neighbours."""
    n = x.size(0)
    nbrs = [[] for _ in range(n)]  # in-neighbours j of i with their weight
    for e, (j, i) in enumerate(edge_index.t().tolist()):
        nbrs[i].append((j, e))
    out = []
    for i in range(n):
        seen, frontier = {i}, {i}
        for _ in range(conv.hops):
            frontier = {j for f in frontier for j, _ in nbrs[f]} - seen
            seen |= frontier
        centre = x[sorted(seen)].mean(0)
        q = query[batch[i]]
        xc = conv.lin_c(x[i])
        alpha = conv.att_c(torch.cat([xc, centre, xc * centre]))
        heads = []
        for h in range(conv.heads):
            agg = torch.zeros(conv.channels)
            if nbrs[i]:
                logits, msgs = [], []
                for j, e in nbrs[i]:
                    xq = conv.lin_q(x[j])
                    beta = conv.att_q(torch.cat([xq, q, xq * q]))
                    logits.append(F.leaky_relu(alpha[h] + beta[h], conv.negative_slope))
                    msgs.append(edge_weight[e] * x[j])
                att = torch.softmax(torch.stack(logits), 0)
                agg = (att.unsqueeze(-1) * torch.stack(msgs)).sum(0)
            heads.append(F.leaky_relu(conv.weight_a[h] @ agg + x[i], conv.negative_slope))
        out.append(torch.stack(heads).mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("heads", [1, 2])
def test_fusion_conv_matches_the_per_node_reference(heads):
    torch.manual_seed(0)
    conv = InterestFusionConv(D, heads=heads, hops=2)
    sizes = [1, 4, 7, 3]
    xd, mask = dense_inputs(sizes)
    adj = interest_graph(weighted_cosine(xd, torch.ones(1, D)), mask, 0.3)
    x = xd[mask]
    batch = mask.nonzero()[:, 0]
    node = torch.cumsum(mask.view(-1), 0).view(mask.shape) - 1
    g, i, j = adj.nonzero(as_tuple=True)
    edge_index = torch.stack([node[g, j], node[g, i]])
    query = torch.randn(len(sizes), D)
    weight = torch.rand(edge_index.size(1))
    fast = conv(x, edge_index, query, batch, weight)
    assert fast.shape == (sum(sizes), D)
    with torch.no_grad():
        ref = conv_reference(conv, x, edge_index, query, batch, weight)
    assert torch.allclose(fast, ref, atol=1e-5)
    # isolated node (the graph of one node): LeakyReLU(x)
    assert torch.allclose(fast[0], F.leaky_relu(x[0], 0.2), atol=1e-6)


def test_reprs():
    assert repr(InterestFusionConv(D, heads=2, hops=3)) == "InterestFusionConv(16, heads=2, hops=3)"
    assert repr(SoftAssignmentPool(D, 5)) == "SoftAssignmentPool(16, clusters=5)"
    assert repr(AUGRU(D, 8)) == "AUGRU(16, 8)"
    assert repr(small_model()) == (
        f"SURGE(num_items={NUM_ITEMS}, dim={D}, metric_heads=3, epsilon=0.3, pool_size=4, "
        "query='last', binary=False)"
    )


# ---------------------------------------------------------------- pooling and AUGRU
def test_pooling_and_regularisers_follow_their_definitions():
    torch.manual_seed(0)
    pool = SoftAssignmentPool(D, 3)
    x, mask = dense_inputs([4, 2])
    imp = torch.softmax(torch.randn(2, 4).masked_fill(~mask, float("-inf")), -1)
    adj = interest_graph(weighted_cosine(x, torch.ones(1, D)), mask, 0.5)
    out = pool(x, mask, imp, adj)
    s = out.assignment
    assert s.shape == (2, 4, 3) and torch.all(s[1, 2:] == 0)
    assert torch.allclose(s[mask].sum(-1), torch.ones(6))
    assert torch.allclose(out.nodes, torch.einsum("gnm,gn,gnd->gmd", s, imp, x), atol=1e-6)
    assert torch.allclose(out.readout, (imp.unsqueeze(-1) * x).sum(1), atol=1e-6)
    assert torch.allclose(out.adj, s.transpose(1, 2) @ adj.float() @ s, atol=1e-6)
    lm, la, lp = pool.regularisers(s, adj, mask)
    ref_m, ref_a, ref_p = [], [], []
    for g, n in enumerate([4, 2]):
        sg, ag = s[g, :n], adj[g, :n, :n].float()
        ref_m.append(torch.linalg.norm(ag - sg @ sg.t()) / n)
        ref_a.append(-(sg * sg.log()).sum(-1).mean())
        p = torch.arange(n) / (n - 1)
        centre = (p.unsqueeze(-1) * sg).sum(0) / sg.sum(0)
        ref_p.append(torch.linalg.norm(centre - torch.tensor([0.0, 0.5, 1.0])) / 3 ** 0.5)
    for got, ref in ((lm, ref_m), (la, ref_a), (lp, ref_p)):
        assert torch.allclose(got, torch.stack(ref).mean(), atol=1e-6)


def test_augru_with_full_attention_is_a_gru():
    torch.manual_seed(0)
    cell = AUGRU(D, 8)
    x = torch.randn(3, 5, D)
    gru = torch.nn.GRU(D, 8, batch_first=True)
    # torch: gates (r, z, n), h = (1 - z) n + z h_prev; AUGRU: (u, r, h~),
    # h = (1 - u) h_prev + u h~, so z = 1 - u = sigmoid(-(u's pre-activation))
    with torch.no_grad():
        for lin, w_name, b_name in ((cell.lin_x, "weight_ih_l0", "bias_ih_l0"),
                                    (cell.lin_h, "weight_hh_l0", "bias_hh_l0")):
            (wu, wr, wh), (bu, br, bh) = lin.weight.split(8), lin.bias.split(8)
            getattr(gru, w_name).copy_(torch.cat([wr, -wu, wh]))
            getattr(gru, b_name).copy_(torch.cat([br, -bu, bh]))
        _, ref = gru(x)
        assert torch.allclose(cell(x, torch.ones(3, 5)), ref[0], atol=1e-5)
        # zero attention never updates the state
        assert torch.equal(cell(x, torch.zeros(3, 5)), torch.zeros(3, 8))


# ---------------------------------------------------------------- the model
@pytest.mark.parametrize("query", ["last", "candidate"])
def test_batched_model_equals_each_sequence_alone(query):
    """The vectorised pipeline (padding, expanded graphs) == one sequence at a time."""
    model = small_model(query=query).eval()
    lengths = [5, 1, 12, 3, 8]
    batch = make_batch(lengths)
    with torch.no_grad():
        scores = model.score_candidates(batch)
        for g in range(len(lengths)):
            alone = model.score_candidates(Batch.from_data_list([batch.get_example(g)]))
            assert torch.allclose(scores[g], alone[0], atol=1e-5), g


@pytest.mark.parametrize("split", ["train", "test"])
def test_shapes_on_paper_and_loo_batches(paper_data, loo_data, split):
    for prepared in (paper_data, loo_data):
        torch.manual_seed(0)
        model = build_model("surge", prepared, dim=D, pool_size=4).eval()
        batch = next(iter(DataLoader(SequenceDataset(prepared, split), batch_size=8)))
        with torch.no_grad():
            cand = model.score_candidates(batch)
            full = model.score_all(batch)
        assert cand.shape == batch.candidates.shape
        assert full.shape == (8, prepared.num_items + 1)
        assert torch.isfinite(cand).all() and torch.isfinite(full).all()
        assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-5)


def test_registered():
    assert "surge" in MODELS and NEURAL_BASELINES["surge"] is SURGE


@pytest.mark.parametrize("binary", [False, True])
def test_gradients_reach_every_parameter(binary):
    model = small_model(binary=binary).train()
    model.loss(make_batch([6, 9, 4, 7, 1])).backward()
    for name, p in model.named_parameters():
        if binary and name == "metric_weight":  # Eq. 3 literally: A is not differentiable
            assert p.grad is None or p.grad.abs().sum() == 0
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_regularisers_enter_the_loss():
    batch = make_batch([6, 9, 4])
    plain = small_model(lambda_m=0, lambda_a=0, lambda_p=0)
    bce = F.binary_cross_entropy_with_logits(plain.score_candidates(batch), batch.labels)
    assert torch.allclose(plain.loss(batch), bce)
    assert small_model(lambda_m=1.0, lambda_a=1.0, lambda_p=1.0).loss(batch) > bce


def test_same_seed_identical_and_other_seed_differs():
    batch = make_batch([6, 9, 4])
    a, b = small_model().eval(), small_model().eval()
    assert torch.equal(a.score_candidates(batch), b.score_candidates(batch))
    torch.manual_seed(1)
    c = SURGE(NUM_ITEMS, max_len=12, dim=D, metric_heads=3, epsilon=0.3, pool_size=4,
              mlp_hidden=8).eval()
    assert not torch.allclose(a.score_candidates(batch), c.score_candidates(batch))


@pytest.mark.parametrize("query", ["last", "candidate"])
def test_score_all_gathers_score_candidates(query):
    model = small_model(query=query, candidate_chunk=9).eval()
    batch = make_batch([6, 9, 4, 1])
    with torch.no_grad():
        cand = model.score_candidates(batch)
        full = model.score_all(batch, chunk_size=7)
    assert full.shape == (4, NUM_ITEMS + 1)
    assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-5)


@pytest.mark.parametrize("query", ["last", "candidate"])
def test_the_query_of_each_mode(query):
    """``last``: one graph pass with the last item; ``candidate``: one per candidate."""
    model = small_model(query=query).eval()
    batch = make_batch([7, 5, 1])
    with torch.no_grad():
        scores = model.score_candidates(batch)
        items, mask = model.dense_history(batch)
        cand = model.item_emb(batch.candidates)
        last = model.item_emb(items[torch.arange(3), mask.sum(1) - 1]).unsqueeze(1)
        for c in range(cand.size(1)):
            q = cand[:, c : c + 1] if query == "candidate" else last
            expected = model._logits(model.user_state(items, mask, q), cand[:, c : c + 1])
            assert torch.allclose(scores[:, c], expected[:, 0], atol=1e-5)
        # the user state depends on the query it is given
        state = model.user_state(items, mask, cand[:, :2])
        assert not torch.allclose(state.final[:, 0], state.final[:, 1])


def test_edge_cases_single_items_small_graphs_duplicates():
    model = small_model(pool_size=6).eval()  # pool_size > every sequence length below
    items = [torch.tensor([3]), torch.tensor([5, 5, 5]), torch.tensor([7, 2, 7, 2])]
    batch = make_batch([1, 3, 4], items=items)
    with torch.no_grad():
        scores = model.score_candidates(batch)
        items_d, mask = model.dense_history(batch)
        _, _, adj = model.graph(items_d, mask)
    assert scores.shape == (3, 6) and torch.isfinite(scores).all()
    assert not adj[0].any()  # one node: no edge
    # 3 identical items: all pairs tie at cosine 1, ceil(0.3 * 9 / 2) = 2 pairs kept
    assert adj[1].sum() == 4
    # 7, 2, 7, 2: the duplicate pairs (0, 2) and (1, 3) are the two most similar
    assert adj[2, 0, 2] and adj[2, 1, 3] and adj[2].sum() == 2 * 3
    model.train()
    model.loss(batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_long_sequences_are_cut_to_the_most_recent_items():
    model = small_model(max_len=5).eval()
    batch = make_batch([9, 3])
    keep = torch.cat([torch.arange(4, 9), torch.arange(9, 12)])
    short = make_batch([5, 3], items=[batch.x[keep[:5]], batch.x[keep[5:]]])
    short.candidates = batch.candidates
    with torch.no_grad():
        assert torch.allclose(model.score_candidates(batch), model.score_candidates(short))


def test_bad_arguments_and_batches():
    with pytest.raises(ValueError, match="query"):
        SURGE(NUM_ITEMS, query="target")
    with pytest.raises(ValueError, match="epsilon"):
        SURGE(NUM_ITEMS, epsilon=1.5)
    with pytest.raises(ValueError, match="clusters"):
        SURGE(NUM_ITEMS, pool_size=0)
    model = small_model()
    batch = make_batch([3, 4])
    batch.candidates = batch.candidates[:, :2].reshape(-1)
    with pytest.raises(ValueError, match="candidates"):
        model.score_candidates(batch)
    bad = make_batch([3], items=[torch.tensor([1, 2, NUM_ITEMS + 1])])
    with pytest.raises(ValueError, match="item ids"):
        model.score_all(bad)


# ---------------------------------------------------------------- training
def test_fit_one_epoch_paper_and_loo(paper_data, loo_data):
    for prepared, metric in ((paper_data, "auc/sampled"), (loo_data, "ndcg@10/full")):
        torch.manual_seed(0)
        model = build_model("surge", prepared, dim=D, pool_size=4)
        config = TrainConfig(epochs=1, patience=9, batch_size=32, lr=5e-3, progress=False)
        result = fit(model, prepared, config, log=None)
        assert result.epochs == 1 and metric in result.best_valid
        metrics = evaluate(model, prepared, "test")
        assert all(0.0 <= value <= 1.0 for value in metrics.values())


def test_candidate_mode_chunks_and_training_draw(monkeypatch):
    whole = small_model(query="candidate", candidate_chunk=64).eval()
    chunked = small_model(query="candidate", candidate_chunk=2).eval()
    chunked.load_state_dict(whole.state_dict())
    batch = make_batch([4, 9, 12], num_candidates=7, seed=3)
    with torch.no_grad():
        assert torch.allclose(whole.score_candidates(batch), chunked.score_candidates(batch),
                              atol=1e-5)
    model = small_model(query="candidate", train_positives=1, train_negatives=2)
    seen = []
    original = model._scores_and_state
    monkeypatch.setattr(model, "_scores_and_state",
                        lambda b, c: seen.append(c) or original(b, c))
    assert torch.isfinite(model.loss(batch))
    assert seen[0].shape == (3, 3)
    assert "train_sample=(1, 2)" in repr(model)
    with pytest.raises(ValueError, match="both"):
        small_model(query="candidate", train_positives=None, train_negatives=2)
    # last-item mode trains on every candidate
    last = small_model()
    seen.clear()
    monkeypatch.setattr(last, "_scores_and_state",
                        lambda b, c: seen.append(c) or SURGE._scores_and_state(last, b, c))
    last.loss(batch)
    assert seen[0].shape == (3, 7)


def test_catalogue_logits_equal_the_mlp_on_the_concatenation():
    """The folded first layer (one matrix per sequence) is the paper's MLP over
    ``[h_s, h_g, e, h_g * e]``, in value and in gradient."""
    model = small_model().train()
    batch = make_batch([6, 9, 4, 1])
    items, mask = model.dense_history(batch)
    state = model.user_state(items, mask, model._last_query(items, mask))
    table = model.item_emb.weight
    fast = model._logits(state, table)

    h_s = state.final.expand(-1, table.size(0), -1)
    h_g = state.readout.expand(-1, table.size(0), -1)
    e = table.unsqueeze(0).expand(h_s.size(0), -1, -1)
    literal = model.mlp_out(torch.relu(model.mlp_hidden(
        torch.cat([h_s, h_g, e, h_g * e], dim=-1)))).squeeze(-1)
    assert fast.shape == (4, NUM_ITEMS + 1)
    assert torch.allclose(fast, literal, atol=1e-5)

    weights = torch.randn_like(fast)
    params = [model.mlp_hidden.weight, model.item_emb.weight]
    grad_fast = torch.autograd.grad((fast * weights).sum(), params, retain_graph=True)
    grad_literal = torch.autograd.grad((literal * weights).sum(), params)
    for a, b in zip(grad_fast, grad_literal, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_score_all_in_blocks_of_sequences_is_unchanged(monkeypatch):
    model = small_model().eval()
    batch = make_batch([6, 9, 4, 1, 3])
    with torch.no_grad():
        whole = model.score_all(batch, chunk_size=7)
        monkeypatch.setattr(SURGE, "SCORE_BLOCK_FLOATS", 2 * 7 * 8)  # 2 sequences a block
        blocked = model.score_all(batch, chunk_size=7)
    assert torch.allclose(blocked, whole, atol=1e-6)
