"""The message-passing path (``sparse=True``) against the dense path and the per-graph
reference, and the layer at extreme magnitudes."""

import copy

import pytest
import torch
from torch_geometric.data import Batch, Data

from mdgr_graph.nn import DynamicClusterConv
from mdgr_graph.nn.dynamic_cluster_conv import candidate_graphs

from .reference_conv import dynamic_cluster_conv_reference

D = 16


def mixed_batch(seed=0):
    """Graphs of sizes 1, 3, 7, 20, 50, five identical rows (one distinct row, fewer than
    k), ten rows from three items (duplicates), two nodes and one more single node."""
    gen = torch.Generator().manual_seed(seed)
    item = torch.randn(3, D, generator=gen)
    parts = [torch.randn(n, D, generator=gen) for n in (1, 3, 7, 20, 50)]
    parts += [item[0].repeat(5, 1), item[torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])],
              torch.randn(2, D, generator=gen), torch.randn(1, D, generator=gen)]
    x = torch.cat(parts)
    batch = torch.cat([torch.full((p.size(0),), g) for g, p in enumerate(parts)])
    num_graphs = len(parts)
    return {
        "x": x,
        "batch": batch,
        "query": torch.randn(num_graphs, D, generator=gen),
        "queries": torch.randn(num_graphs, 3, D, generator=gen),
        "graph_x": torch.randn(x.shape, generator=gen),
        "cluster": torch.randint(0, 3, (x.size(0),), generator=gen),
    }


def dense_and_sparse(**kwargs):
    torch.manual_seed(0)
    dense = DynamicClusterConv(D, **kwargs).eval()
    sparse = copy.deepcopy(dense)
    sparse.sparse = True
    return dense, sparse


def partition(cluster, batch):
    """Which pairs of nodes share a cluster (labels up to renaming)."""
    same = cluster.unsqueeze(0) == cluster.unsqueeze(1)
    return same & (batch.unsqueeze(0) == batch.unsqueeze(1))


def canonical(edge_index, edge_weight, num_nodes):
    perm = (edge_index[1] * num_nodes + edge_index[0]).argsort()
    return edge_index[:, perm], edge_weight[perm]


def assert_same(a, b, atol=1e-5):
    out_a, ei_a, ew_a, c_a = a
    out_b, ei_b, ew_b, c_b = b
    assert torch.equal(c_a, c_b)
    assert torch.equal(ei_a, ei_b)  # the same edges in the same order
    assert torch.allclose(ew_a, ew_b, atol=1e-6)
    assert torch.allclose(out_a, out_b, atol=atol)


def assert_matches_reference(out, ref, x, batch):
    """``out`` of ``forward(..., return_graph=True)`` against the per-graph reference.

    Identical rows tie exactly in :math:`L`; the layer's batched matrix product and the
    reference's per-graph one round them differently (the rounding of a row can depend on
    its position), so which of the tied pairs is kept is decided by rounding, and the two
    differed on some graphs with repeated rows in 70 of 160 (seed, k, gamma) draws tried.
    Such graphs are compared on what the values decide: the number of edges and the
    weights kept. Every other graph is compared edge for edge and row for row.
    """
    assert torch.equal(out[3], ref[3])  # labels
    for g in range(int(batch.max()) + 1):
        rows = (batch == g).nonzero().view(-1)
        mine, theirs = batch[out[1][1]] == g, batch[ref[1][1]] == g
        w_mine, w_theirs = out[2][mine].sort().values, ref[2][theirs].sort().values
        assert w_mine.shape == w_theirs.shape
        assert torch.allclose(w_mine, w_theirs, atol=1e-6)
        if torch.unique(x[rows], dim=0).size(0) < rows.numel():
            continue
        ei, _ = canonical(out[1][:, mine], out[2][mine], x.size(0))
        ref_ei, _ = canonical(ref[1][:, theirs], ref[2][theirs], x.size(0))
        assert torch.equal(ei, ref_ei)
        assert torch.allclose(out[0][rows], ref[0][rows], atol=1e-5)


def test_repr():
    assert str(DynamicClusterConv(8, sparse=True)) == (
        "DynamicClusterConv(8, k=8, gamma=0.1, delta=4, heads=2, cluster='kmeans', "
        "sparse=True)"
    )


@pytest.mark.parametrize("use_query", [False, True])
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("gamma", [0.08, 0.5])
@pytest.mark.parametrize("k", [3, 8])
def test_sparse_equals_dense_and_reference(use_query, binary, gamma, k):
    data = mixed_batch(seed=1)
    x, batch = data["x"], data["batch"]
    query = data["query"] if use_query else None
    dense, sparse = dense_and_sparse(k=k, gamma=gamma, binary=binary)
    out = sparse(x, batch, query, return_graph=True)
    assert out[1].size(1) > 0
    assert_same(out, dense(x, batch, query, return_graph=True))

    assert_matches_reference(out, dynamic_cluster_conv_reference(sparse, x, batch, query),
                             x, batch)


@pytest.mark.parametrize("use_query", [False, True])
def test_repeated_rows_without_tie_decisions_equal_reference(use_query):
    # gamma = 1 keeps every candidate pair: nothing is left to the rounding of ties, and
    # the graphs with identical and repeated rows are compared edge for edge as well
    data = mixed_batch(seed=0)
    x, batch = data["x"], data["batch"]
    query = data["query"] if use_query else None
    dense, sparse = dense_and_sparse(k=3, gamma=1.0)
    out = sparse(x, batch, query, return_graph=True)
    assert_same(out, dense(x, batch, query, return_graph=True))
    ref = dynamic_cluster_conv_reference(sparse, x, batch, query)
    ei, ew = canonical(out[1], out[2], x.size(0))
    ref_ei, ref_ew = canonical(ref[1], ref[2], x.size(0))
    assert torch.equal(ei, ref_ei) and torch.allclose(ew, ref_ew, atol=1e-6)
    assert torch.allclose(out[0], ref[0], atol=1e-5)


@pytest.mark.parametrize("residual,norm", [(True, True), (False, False), (False, True)])
@pytest.mark.parametrize("cluster_given", [False, True])
@pytest.mark.parametrize("use_graph_x", [False, True])
def test_sparse_equals_dense_options(residual, norm, cluster_given, use_graph_x):
    data = mixed_batch(seed=2)
    x, batch, query = data["x"], data["batch"], data["query"]
    cluster = data["cluster"] if cluster_given else None
    graph_x = data["graph_x"] if use_graph_x else None
    dense, sparse = dense_and_sparse(k=3, gamma=0.2, residual=residual, norm=norm)
    out = sparse(x, batch, query, cluster, return_graph=True, graph_x=graph_x)
    assert_same(out, dense(x, batch, query, cluster, return_graph=True, graph_x=graph_x))
    ref = dynamic_cluster_conv_reference(sparse, x, batch, query, cluster, graph_x=graph_x)
    assert_matches_reference(out, ref, x if graph_x is None else graph_x, batch)


@pytest.mark.parametrize("use_graph_x", [False, True])
def test_sparse_candidate_mode_equals_dense(use_graph_x):
    data = mixed_batch(seed=3)
    x, batch, queries = data["x"], data["batch"], data["queries"]
    graph_x = data["graph_x"] if use_graph_x else None
    dense, sparse = dense_and_sparse(k=3, gamma=0.2)
    out = sparse(x, batch, queries, return_graph=True, graph_x=graph_x)
    assert out[0].shape == (3 * x.size(0), D)
    assert_same(out, dense(x, batch, queries, return_graph=True, graph_x=graph_x))
    # and each candidate's copies are the one-query result
    _, new_batch = candidate_graphs(batch, queries.size(0), 3)
    for c in range(3):
        one = sparse(x, batch, queries[:, c], graph_x=graph_x)
        assert torch.allclose(out[0][new_batch % 3 == c], one, atol=1e-5)


@pytest.mark.parametrize("use_query", ["none", "one", "candidates"])
def test_sparse_gradients_equal_dense(use_query):
    data = mixed_batch(seed=4)
    batch = data["batch"]
    dense, sparse = dense_and_sparse(k=3, gamma=0.3)
    dense.train()  # dropout is 0: training mode changes nothing else
    sparse.train()

    def grads(conv):
        conv.zero_grad()
        x = data["x"].clone().requires_grad_()
        graph_x = data["graph_x"].clone().requires_grad_()
        query = {"none": None, "one": data["query"],
                 "candidates": data["queries"]}[use_query]
        query = None if query is None else query.clone().requires_grad_()
        out = conv(x, batch, query, graph_x=graph_x)
        proj = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        (out * proj).sum().backward()
        extra = [] if query is None else [query.grad]
        return [x.grad, graph_x.grad, *extra] + [p.grad for p in conv.parameters()]

    fast, msg = grads(dense), grads(sparse)
    assert msg[1].abs().sum() > 0  # L_ij of graph_x weighs the messages
    # without a query W_q and MLP_q (5 tensors) get no gradient, on either path
    assert sum(g is None for g in msg) == (5 if use_query == "none" else 0)
    for a, b in zip(fast, msg, strict=True):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, atol=1e-4)


def test_sparse_path_passes_messages():
    data = mixed_batch(seed=6)
    _, sparse = dense_and_sparse(k=3, gamma=0.2, heads=2)
    seen = []
    sparse.register_message_forward_hook(lambda module, inputs, out: seen.append(out.shape))
    _, edge_index, _, _ = sparse(data["x"], data["batch"], data["queries"], return_graph=True)
    assert seen == [(edge_index.size(1), 3, 2, D)]  # [E, C, H, d]: one propagate call


def test_sparse_on_a_pyg_batch():
    gen = torch.Generator().manual_seed(7)
    graphs = [Data(x=torch.randn(n, D, generator=gen)) for n in (4, 1, 12, 2, 30)]
    data = Batch.from_data_list(graphs)
    dense, sparse = dense_and_sparse(k=4, gamma=0.2)
    assert_same(sparse(data.x, data.batch, return_graph=True),
                dense(data.x, data.batch, return_graph=True))
    # one graph at a time gives the same rows
    out = sparse(data.x, data.batch)
    for g, graph in enumerate(graphs):
        assert torch.allclose(out[data.batch == g], sparse(graph.x), atol=1e-5)


def test_sparse_without_edges_and_with_empty_graphs():
    x = torch.randn(3, D)
    dense, sparse = dense_and_sparse(k=2, residual=True, norm=False)
    out, edge_index, edge_weight, _ = sparse(x, torch.arange(3), return_graph=True)
    assert edge_index.shape == (2, 0) and edge_weight.shape == (0,)
    assert torch.allclose(out, x)  # isolated nodes aggregate 0
    # trailing graphs without nodes (more query rows than graphs in 'batch')
    data = mixed_batch(seed=8)
    query = torch.cat([data["query"], torch.randn(2, D)])
    queries = torch.cat([data["queries"], torch.randn(2, 3, D)])
    for q in (query, queries):
        assert_same(sparse(data["x"], data["batch"], q, return_graph=True),
                    dense(data["x"], data["batch"], q, return_graph=True))


def test_sparse_dropout_and_fixed_layer():
    data = mixed_batch(seed=9)
    torch.manual_seed(0)
    conv = DynamicClusterConv(D, k=3, gamma=0.2, dropout=0.5, sparse=True)
    train = conv(data["x"], data["batch"], data["query"])
    conv.eval()
    assert torch.isfinite(train).all()
    assert not torch.allclose(train, conv(data["x"], data["batch"], data["query"]))
    conv.register_parameter("metric_weight", None)
    with pytest.raises(ValueError, match="no metric weights"):
        conv(data["x"], data["batch"])


def test_fixed_edges_equal_the_metric_graph():
    # forward_fixed passes messages with the same propagate: given the layer's own
    # edges, weights and labels it gives the layer's output
    data = mixed_batch(seed=10)
    x, batch, query = data["x"], data["batch"], data["query"]
    for binary in (False, True):
        dense, _ = dense_and_sparse(k=3, gamma=0.2, binary=binary)
        out, edge_index, edge_weight, cluster = dense(x, batch, query, return_graph=True)
        fixed = dense(x, batch, query, cluster, edge_index=edge_index,
                      edge_weight=edge_weight)
        assert torch.allclose(fixed, out, atol=1e-5)


# ---------------------------------------------------------------------- magnitudes
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("scale", [2.0**100, 2.0**-100])
def test_graph_is_exactly_scale_invariant(sparse, scale):
    # clustering and metric graph depend on directions only; powers of two are exact
    data = mixed_batch(seed=11)
    x, batch = data["x"], data["batch"]
    conv = dense_and_sparse(k=3, gamma=0.2)[int(sparse)]
    _, ei, ew, c = conv(x, batch, return_graph=True)
    _, ei_s, ew_s, c_s = conv(x * scale, batch, return_graph=True)
    assert torch.equal(c_s, c) and torch.equal(ei_s, ei) and torch.equal(ew_s, ew)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e36, 1e-38])
@pytest.mark.parametrize("residual,norm", [(True, True), (False, False), (True, False)])
def test_finite_at_extreme_magnitudes(sparse, scale, residual, norm):
    data = mixed_batch(seed=12)
    batch = data["batch"]
    conv = dense_and_sparse(k=3, gamma=0.2, residual=residual, norm=norm)[int(sparse)]
    conv.train()
    _, ei_ref, _, c_ref = conv(data["x"], batch, return_graph=True)
    for x, query in [
        (data["x"] * scale, data["query"] * scale),  # every feature and query huge/tiny
        (data["x"].index_fill(0, torch.tensor([9, 40]), scale), data["query"]),  # two rows
    ]:
        x = x.clone().requires_grad_()
        for q in (query, data["queries"] * scale):
            conv.zero_grad()
            out, ei, ew, c = conv(x, batch, q, return_graph=True)
            assert torch.isfinite(out).all() and torch.isfinite(ew).all()
            out.sum().backward()
            assert torch.isfinite(x.grad).all()
            assert all(torch.isfinite(p.grad).all() for p in conv.parameters()
                       if p.grad is not None)
            x.grad = None
    # scaling all features changes neither the clusters nor the number of edges (the
    # labels of a cluster may be renamed, as a tie decides which of two equidistant nodes
    # seeds a cluster; exact invariance is tested with powers of two above)
    _, ei, _, c = conv(data["x"] * scale, batch, return_graph=True)
    assert torch.equal(partition(c, batch), partition(c_ref, batch))
    assert torch.equal(torch.bincount(batch[ei[1]]), torch.bincount(batch[ei_ref[1]]))


def test_extreme_magnitudes_keep_dense_equal_sparse():
    data = mixed_batch(seed=13)
    dense, sparse = dense_and_sparse(k=3, gamma=0.2)
    for scale in (1e30, 1e-30):
        x, query = data["x"] * scale, data["query"] * scale
        assert_same(sparse(x, data["batch"], query, return_graph=True),
                    dense(x, data["batch"], query, return_graph=True), atol=1e-4)
