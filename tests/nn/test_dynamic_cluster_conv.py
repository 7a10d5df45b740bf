import math

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GCNConv, global_mean_pool

from mdgr_graph.nn import DynamicClusterConv, edge_budget
from mdgr_graph.nn.metric import weighted_cosine

from .reference_conv import dynamic_cluster_conv_reference

SIZES = [1, 3, 7, 20, 50]
D = 16


def make_batch(sizes=SIZES, d=D, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, d, generator=gen)
    batch = torch.cat([torch.full((s,), g) for g, s in enumerate(sizes)])
    cluster = torch.randint(0, k, (n,), generator=gen)
    query = torch.randn(len(sizes), d, generator=gen)
    return x, batch, cluster, query


def canonical(edge_index, edge_weight, num_nodes):
    key = edge_index[1] * num_nodes + edge_index[0]
    perm = key.argsort()
    return edge_index[:, perm], edge_weight[perm]


def per_graph_edge_counts(edge_index, batch, num_graphs):
    return torch.bincount(batch[edge_index[1]], minlength=num_graphs)


def test_repr():
    conv = DynamicClusterConv(32)
    assert str(conv) == (
        "DynamicClusterConv(32, k=8, gamma=0.1, delta=4, heads=2, cluster='kmeans')"
    )


def test_edge_budget():
    assert edge_budget(torch.tensor([1, 3, 10, 50]), 0.1).tolist() == [1, 1, 10, 250]
    assert edge_budget(torch.tensor([7]), 0.2).tolist() == [10]
    assert edge_budget(torch.tensor([5]), 0.0).tolist() == [0]


def test_shapes():
    x, batch, cluster, query = make_batch()
    conv = DynamicClusterConv(D, k=4)
    assert conv(x, batch).shape == x.shape
    assert conv(x, batch, query).shape == x.shape
    assert conv(x).shape == x.shape  # one graph, batch omitted
    out, edge_index, edge_weight, labels = conv(x, batch, query, return_graph=True)
    assert out.shape == x.shape
    assert edge_index.dim() == 2 and edge_index.size(0) == 2 and edge_index.dtype == torch.long
    assert edge_weight.shape == (edge_index.size(1),)
    assert labels.shape == (x.size(0),) and int(labels.max()) < 4
    _, _, _, given = conv(x, batch, cluster=cluster, return_graph=True)
    assert given is cluster


@pytest.mark.parametrize("use_query", [False, True])
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("residual,norm", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("gamma", [0.08, 0.5])
def test_matches_reference(use_query, binary, residual, norm, gamma):
    torch.manual_seed(0)
    x, batch, cluster, query = make_batch(seed=1)
    query = query if use_query else None
    conv = DynamicClusterConv(
        D, k=3, gamma=gamma, binary=binary, residual=residual, norm=norm
    ).eval()
    out, ei, ew, _ = conv(x, batch, query, cluster, return_graph=True)
    ref_out, ref_ei, ref_ew, _ = dynamic_cluster_conv_reference(conv, x, batch, query, cluster)

    assert ei.size(1) > 0
    ei, ew = canonical(ei, ew, x.size(0))
    ref_ei, ref_ew = canonical(ref_ei, ref_ew, x.size(0))
    assert torch.equal(ei, ref_ei)
    assert torch.allclose(ew, ref_ew, atol=1e-6)
    assert torch.allclose(out, ref_out, atol=1e-5)


def test_gradients_match_reference():
    torch.manual_seed(0)
    x, batch, cluster, query = make_batch(seed=2)
    conv = DynamicClusterConv(D, k=3, gamma=0.2)
    proj = torch.randn(x.size(0), D)

    def grads(fn):
        conv.zero_grad()
        xg = x.clone().requires_grad_()
        (fn(xg) * proj).sum().backward()
        return [xg.grad] + [p.grad.clone() for p in conv.parameters()]

    fast = grads(lambda xg: conv(xg, batch, query, cluster))
    ref = grads(lambda xg: dynamic_cluster_conv_reference(conv, xg, batch, query, cluster)[0])
    for a, b in zip(fast, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_gradients_reach_all_parameters():
    x, batch, cluster, query = make_batch()
    conv = DynamicClusterConv(D, k=3, gamma=0.2)
    x.requires_grad_()
    out = conv(x, batch, query, cluster)
    (out * torch.randn_like(out)).sum().backward()
    named = dict(conv.named_parameters())
    for name in [
        "metric_weight",
        "lin_c.weight",
        "lin_q.weight",
        "lin_v.weight",
        "att_c.0.weight",
        "att_c.2.weight",
        "att_q.0.weight",
        "att_q.2.weight",
    ]:
        grad = named[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert x.grad is not None and torch.isfinite(x.grad).all()

    # binary edges: the metric weights get no gradient (paper's literal Eq. 9)
    conv = DynamicClusterConv(D, k=3, gamma=0.2, binary=True)
    conv(x, batch, query, cluster).sum().backward()
    assert conv.metric_weight.grad is None or conv.metric_weight.grad.abs().sum() == 0


def test_graph_invariants():
    x, batch, _, query = make_batch()
    gamma = 0.1
    conv = DynamicClusterConv(D, k=4, gamma=gamma)
    _, edge_index, edge_weight, labels = conv(x, batch, query, return_graph=True)
    src, dst = edge_index
    assert torch.equal(batch[src], batch[dst])  # no edge crosses two graphs
    assert bool((src != dst).all())  # no self loops
    assert torch.equal(labels[src], labels[dst])  # edges only within a cluster
    assert edge_weight.abs().max() <= 1.0 + 1e-6  # cosine values
    counts = per_graph_edge_counts(edge_index, batch, len(SIZES))
    for g, n in enumerate(SIZES):
        same = labels[batch == g].unsqueeze(0) == labels[batch == g].unsqueeze(1)
        candidates = int(same.sum()) - n
        assert counts[g] <= math.ceil(gamma * n * n)
        assert counts[g] == min(candidates, int(edge_budget(torch.tensor([n]), gamma)))
    assert counts[0] == 0  # a 1-node graph has no edges

    # the kept edges of a graph are its largest candidate entries of L
    for g in (3, 4):
        nodes = (batch == g).nonzero().view(-1)
        local = labels[nodes]
        sim = weighted_cosine(x[nodes], conv.metric_weight).detach()
        cand = (local.unsqueeze(0) == local.unsqueeze(1)) & ~torch.eye(len(nodes), dtype=bool)
        kept = torch.zeros_like(cand)
        mask = batch[dst] == g
        kept[dst[mask] - nodes[0], src[mask] - nodes[0]] = True
        assert sim[kept].min() >= sim[cand & ~kept].max()
        assert torch.allclose(edge_weight[mask], sim[dst[mask] - nodes[0], src[mask] - nodes[0]])


def test_symmetric_ties_go_to_lower_position():
    # L is symmetric, so (i, j) and (j, i) always tie; with a budget of 1 edge
    # (ceil(0.1 * 3^2) = 1) the kept entry is the row-major first of the best pair.
    gen = torch.Generator().manual_seed(6)
    for _ in range(5):
        x = torch.randn(3, D, generator=gen)
        conv = DynamicClusterConv(D, gamma=0.1)
        _, edge_index, _, _ = conv(x, cluster=torch.zeros(3, dtype=torch.long), return_graph=True)
        assert edge_index.size(1) == 1
        src, dst = edge_index[:, 0].tolist()
        assert dst < src  # target i = row, source j = column, i < j


@pytest.mark.parametrize("cluster", ["kmeans", "ward", "sklearn-kmeans", "birch"])
def test_degenerate_inputs(cluster):
    # 1-node graph, n < k, identical rows and repeated items, clustered by the layer
    gen = torch.Generator().manual_seed(5)
    item = torch.randn(3, D, generator=gen)
    x = torch.cat(
        [
            torch.randn(1, D, generator=gen),
            torch.randn(3, D, generator=gen),
            item[0].repeat(5, 1),
            item[torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])],
        ]
    ).requires_grad_()
    batch = torch.tensor([0] + [1] * 3 + [2] * 5 + [3] * 10)
    query = torch.randn(4, D, generator=gen)
    conv = DynamicClusterConv(D, k=8, gamma=0.3, cluster=cluster)
    out, edge_index, edge_weight, labels = conv(x, batch, query, return_graph=True)
    assert torch.isfinite(out).all() and torch.isfinite(edge_weight).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in conv.parameters() if p.grad is not None)
    assert labels[batch == 2].unique().numel() == 1
    assert labels[batch == 3].unique().numel() == 3
    assert not bool((batch[edge_index[1]] == 0).any())


def test_single_node_graphs_only():
    x = torch.randn(4, D)
    batch = torch.arange(4)
    conv = DynamicClusterConv(D, residual=True, norm=False)
    out, edge_index, edge_weight, _ = conv(x, batch, return_graph=True)
    assert edge_index.shape == (2, 0) and edge_weight.shape == (0,)
    assert torch.allclose(out, x)  # isolated nodes aggregate 0
    conv = DynamicClusterConv(D, residual=False, norm=False)
    assert torch.equal(conv(x, batch), torch.zeros_like(x))


def test_deterministic():
    x, batch, _, query = make_batch()
    conv = DynamicClusterConv(D, k=4)
    a = conv(x, batch, query, return_graph=True)
    b = conv(x.clone(), batch, query, return_graph=True)
    for s, t in zip(a, b, strict=True):
        assert torch.equal(s, t)


def test_graph_permutation():
    x, batch, _, query = make_batch()
    conv = DynamicClusterConv(D, k=4, gamma=0.15)
    out = conv(x, batch, query)

    perm = [3, 0, 4, 2, 1]
    parts = [(batch == g).nonzero().view(-1) for g in range(len(SIZES))]
    node_perm = torch.cat([parts[g] for g in perm])
    new_batch = torch.cat([torch.full((SIZES[g],), i) for i, g in enumerate(perm)])
    out_perm = conv(x[node_perm], new_batch, query[perm])
    assert torch.allclose(out_perm, out[node_perm], atol=1e-5)


def test_reset_parameters_and_dropout():
    torch.manual_seed(0)
    conv = DynamicClusterConv(D, dropout=0.5)
    x, batch, _, query = make_batch()
    before = [p.clone() for p in conv.parameters()]
    conv.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, conv.parameters(), strict=True))
    conv.train()
    assert torch.isfinite(conv(x, batch, query)).all()
    conv.eval()
    assert torch.equal(conv(x, batch, query), conv(x, batch, query))
    with pytest.raises(ValueError, match="does not model dropout"):
        dynamic_cluster_conv_reference(conv.train(), x, batch, query)


def test_input_validation():
    conv = DynamicClusterConv(D)
    x, batch, _, query = make_batch()
    with pytest.raises(ValueError, match="2-D tensor"):
        conv(x[0])
    with pytest.raises(ValueError, match="floating point"):
        conv(x.long())
    with pytest.raises(ValueError, match="channels but the layer expects"):
        conv(x[:, :4])
    with pytest.raises(ValueError, match="'batch' must have shape"):
        conv(x, batch[:-1])
    with pytest.raises(ValueError, match="must be sorted"):
        conv(x, batch.flip(0))
    with pytest.raises(ValueError, match="'query' must have shape"):
        conv(x, batch, query[:, :4])
    with pytest.raises(ValueError, match="'query' has 2 rows"):
        conv(x, batch, query[:2])
    with pytest.raises(ValueError, match="'cluster' must be an integer tensor"):
        conv(x, batch, cluster=torch.zeros(x.size(0)))
    with pytest.raises(ValueError, match="Unknown clustering method"):
        DynamicClusterConv(D, cluster="spectral")
    with pytest.raises(ValueError, match="'gamma' must lie"):
        DynamicClusterConv(D, gamma=1.5)


def test_inside_pyg_model():
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self, num_items, d):
            super().__init__()
            self.emb = torch.nn.Embedding(num_items, d)
            self.gcn = GCNConv(d, d)
            self.dgc = DynamicClusterConv(d, k=3, gamma=0.2)
            self.out = torch.nn.Linear(d, 1)

        def forward(self, data):
            h = self.emb(data.item_id)
            h = self.gcn(h, data.edge_index).relu()
            query = h[data.ptr[1:] - 1]  # last item of each sequence
            h = self.dgc(h, data.batch, query)
            return self.out(global_mean_pool(h, data.batch)).view(-1)

    def sequence(n):
        chain = torch.arange(n - 1)
        edge_index = torch.stack([torch.cat([chain, chain + 1]), torch.cat([chain + 1, chain])])
        return Data(item_id=torch.randint(0, 30, (n,)), edge_index=edge_index, num_nodes=n)

    data = Batch.from_data_list([sequence(n) for n in [2, 5, 9, 12]])
    model = Model(30, D)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.tensor([0.0, 1.0, 0.0, 1.0])
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(data), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert model.gcn.lin.weight.grad.abs().sum() > 0
    assert model.dgc.metric_weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------- candidate mode
from mdgr_graph.nn.dynamic_cluster_conv import candidate_graphs  # noqa: E402


def test_candidate_graphs_layout():
    batch = torch.tensor([0, 0, 1, 1, 1, 3])  # graph 2 is empty
    node, new_batch = candidate_graphs(batch, num_graphs=4, num_candidates=2)
    assert node.tolist() == [0, 1, 0, 1, 2, 3, 4, 2, 3, 4, 5, 5]
    assert new_batch.tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 6, 7]


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("cluster_given", [False, True])
def test_candidate_mode_equals_one_query_at_a_time(binary, cluster_given):
    x, batch, cluster, _ = make_batch(seed=2)
    num_graphs, num_cand = len(SIZES), 5
    queries = torch.randn(num_graphs, num_cand, D, generator=torch.Generator().manual_seed(3))
    conv = DynamicClusterConv(D, k=3, gamma=0.2, binary=binary).eval()
    labels = cluster if cluster_given else None
    out, ei, ew, used = conv(x, batch, queries, labels, return_graph=True)
    node, new_batch = candidate_graphs(batch, num_graphs, num_cand)
    assert out.shape == (num_cand * x.size(0), D)
    for c in range(num_cand):
        one, ei_c, ew_c, used_c = conv(x, batch, queries[:, c], labels, return_graph=True)
        rows = (new_batch % num_cand) == c  # the copies made for candidate c
        assert torch.equal(node[rows], torch.arange(x.size(0)))
        assert torch.allclose(out[rows], one, atol=1e-5)
        assert torch.equal(ei, ei_c) and torch.equal(ew, ew_c) and torch.equal(used, used_c)


def test_candidate_mode_prepare_once_then_chunks():
    x, batch, _, _ = make_batch(seed=4)
    queries = torch.randn(len(SIZES), 6, D, generator=torch.Generator().manual_seed(5))
    conv = DynamicClusterConv(D, k=3, gamma=0.2).eval()
    whole = conv(x, batch, queries)
    shared = conv.prepare(x, batch)
    parts = [conv.update(shared, queries[:, c : c + 4]) for c in (0, 4)]
    # each chunk holds graphs b * C' + c'; regroup into b * 6 + c
    dense_whole = whole.view(-1, D)
    counts = torch.bincount(batch).tolist()
    start_whole, start = 0, [0, 0]
    for n in counts:
        for chunk, width in ((0, 4), (1, 2)):
            flat = parts[chunk]
            for _ in range(width):
                assert torch.allclose(flat[start[chunk] : start[chunk] + n],
                                      dense_whole[start_whole : start_whole + n], atol=1e-6)
                start[chunk] += n
                start_whole += n


def test_candidate_mode_gradients_and_single_candidate():
    x, batch, _, query = make_batch(seed=6)
    x.requires_grad_(True)
    conv = DynamicClusterConv(D, k=3, gamma=0.3)
    queries = torch.randn(len(SIZES), 3, D, requires_grad=True)
    conv(x, batch, queries).square().sum().backward()
    assert x.grad is not None and queries.grad is not None
    assert float(queries.grad.abs().sum()) > 0
    for name, p in conv.named_parameters():
        assert p.grad is not None, name
    conv.eval()
    assert torch.allclose(conv(x, batch, query.unsqueeze(1)), conv(x, batch, query), atol=1e-6)


def test_candidate_mode_without_edges_and_bad_queries():
    x = torch.randn(3, D)
    batch = torch.tensor([0, 1, 2])  # single-node graphs: no edges anywhere
    conv = DynamicClusterConv(D, k=2).eval()
    out = conv(x, batch, torch.randn(3, 4, D))
    assert out.shape == (12, D) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="query"):
        conv(x, batch, torch.randn(3, 4, D + 1))
    with pytest.raises(ValueError, match="C >= 1"):
        conv(x, batch, torch.randn(3, 0, D))
    with pytest.raises(ValueError, match="candidate queries"):
        conv(x, batch, torch.randn(3, 4, D), edge_index=torch.zeros(2, 0, dtype=torch.long))


# ---------------------------------------------------------------------- graph_x
@pytest.mark.parametrize("use_query", [False, True])
@pytest.mark.parametrize("cluster_given", [False, True])
def test_graph_x_matches_reference(use_query, cluster_given):
    x, batch, cluster, query = make_batch(seed=6)
    graph_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    conv = DynamicClusterConv(D, k=3, gamma=0.2).eval()
    query = query if use_query else None
    labels = cluster if cluster_given else None
    out, ei, ew, used = conv(x, batch, query, labels, return_graph=True, graph_x=graph_x)
    ref_out, ref_ei, ref_ew, ref_used = dynamic_cluster_conv_reference(
        conv, x, batch, query, labels, graph_x=graph_x)
    assert torch.equal(ei, ref_ei) and torch.equal(used, ref_used)
    assert torch.allclose(ew, ref_ew, atol=1e-6)
    assert torch.allclose(out, ref_out, atol=1e-5)
    # the graph is the one graph_x alone gives: the same edges whatever x is
    other = conv(torch.randn_like(x), batch, query, labels, return_graph=True,
                 graph_x=graph_x)
    assert torch.equal(other[1], ei) and torch.equal(other[3], used)
    # and graph_x=x is the default
    plain = conv(x, batch, query, labels, return_graph=True)
    same = conv(x, batch, query, labels, return_graph=True, graph_x=x)
    for a, b in zip(plain, same, strict=True):
        assert torch.equal(a, b)


def test_graph_x_gradients_match_reference():
    x, batch, cluster, query = make_batch(seed=8)
    graph_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    conv = DynamicClusterConv(D, k=3, gamma=0.2)
    proj = torch.randn(x.size(0), D)

    def grads(fn):
        conv.zero_grad()
        xg, gg = x.clone().requires_grad_(), graph_x.clone().requires_grad_()
        (fn(xg, gg) * proj).sum().backward()
        return [xg.grad, gg.grad] + [p.grad.clone() for p in conv.parameters()]

    fast = grads(lambda xg, gg: conv(xg, batch, query, cluster, graph_x=gg))
    ref = grads(lambda xg, gg: dynamic_cluster_conv_reference(
        conv, xg, batch, query, cluster, graph_x=gg)[0])
    assert fast[1].abs().sum() > 0  # L_ij of graph_x weighs the messages
    for a, b in zip(fast, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_graph_x_candidate_mode_equals_one_query_at_a_time():
    x, batch, _, _ = make_batch(seed=10)
    graph_x = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    queries = torch.randn(len(SIZES), 3, D, generator=torch.Generator().manual_seed(12))
    conv = DynamicClusterConv(D, k=3, gamma=0.2).eval()
    out = conv(x, batch, queries, graph_x=graph_x)
    _, new_batch = candidate_graphs(batch, len(SIZES), 3)
    shared = conv.prepare(x, batch, graph_x=graph_x)
    assert torch.allclose(conv.update(shared, queries), out, atol=1e-6)
    for c in range(3):
        rows = (new_batch % 3) == c
        one = conv(x, batch, queries[:, c], graph_x=graph_x)
        assert torch.allclose(out[rows], one, atol=1e-5)


def test_graph_x_bad_shapes():
    x, batch, _, _ = make_batch(seed=0)
    conv = DynamicClusterConv(D, k=3)
    with pytest.raises(ValueError, match="graph_x"):
        conv(x, batch, graph_x=x[:-1])
    with pytest.raises(ValueError, match="graph_x"):
        conv.prepare(x, batch, graph_x=x.long())
