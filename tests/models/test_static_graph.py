import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.models import MDGR, history_length
from mdgr_graph.models.baselines.static_graph import StaticGraphRec, consecutive_edges
from mdgr_graph.nn import DynamicClusterConv
from mdgr_graph.train import TrainConfig, fit

NUM_ITEMS = 40
D = 16


def make_batch(lengths, num_candidates=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for n in lengths:
        x = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
        days = torch.rand(n, generator=gen).cumsum(0)
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(x, days, candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


def small_model(cls=StaticGraphRec, **kwargs):
    torch.manual_seed(0)
    opts = dict(dim=D, k=3, m=2, max_len=12, time_dim=8, pos_dim=8, kmeans_iters=3)
    opts.update(kwargs)
    return cls(NUM_ITEMS, **opts)


def loop_edges(sizes):
    edges, offset = [], 0
    for n in sizes:
        for i in range(n - 1):
            edges += [(offset + i, offset + i + 1), (offset + i + 1, offset + i)]
        offset += n
    return torch.tensor(edges, dtype=torch.long).view(-1, 2).t()


def layer_inputs(sizes=(1, 4, 7, 2, 1, 9), k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    x = torch.randn(n, D, generator=gen)
    batch = torch.cat([torch.full((s,), g) for g, s in enumerate(sizes)])
    cluster = torch.randint(0, k, (n,), generator=gen)
    query = torch.randn(len(sizes), D, generator=gen)
    return x, batch, cluster, query


# ---------------------------------------------------------------- consecutive_edges
@pytest.mark.parametrize("sizes", [[1], [5], [1, 1, 1], [3, 1, 4, 1, 5], [2, 7, 1]])
def test_consecutive_edges_matches_loop(sizes):
    expected = loop_edges(sizes)
    batch = torch.cat([torch.full((s,), g) for g, s in enumerate(sizes)])
    ptr = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    assert torch.equal(consecutive_edges(batch), expected)
    assert torch.equal(consecutive_edges(ptr=ptr), expected)
    assert expected.size(1) == 2 * (sum(sizes) - len(sizes))


def test_consecutive_edges_empty_graphs_and_errors():
    # an empty graph in the middle (ptr repeats) contributes nothing
    assert torch.equal(consecutive_edges(ptr=torch.tensor([0, 2, 2, 3])), loop_edges([2, 1]))
    assert consecutive_edges(ptr=torch.tensor([0])).shape == (2, 0)
    with pytest.raises(ValueError, match="exactly one"):
        consecutive_edges()
    with pytest.raises(ValueError, match="exactly one"):
        consecutive_edges(torch.zeros(2, dtype=torch.long), ptr=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="sorted"):
        consecutive_edges(torch.tensor([1, 0]))


def test_consecutive_edges_of_a_batch():
    batch = make_batch([3, 1, 5])
    edges = consecutive_edges(ptr=batch.ptr)
    assert torch.equal(edges, consecutive_edges(batch.batch))
    assert torch.equal(edges, loop_edges([3, 1, 5]))


# ---------------------------------------------------------------- the layer, fixed edges
def test_layer_uses_exactly_the_given_edges():
    torch.manual_seed(0)
    conv = DynamicClusterConv(D, k=3, gamma=0.3).eval()
    x, batch, cluster, query = layer_inputs()
    edges = consecutive_edges(batch)
    out, ei, ew, cl = conv(x, batch, query, cluster, return_graph=True, edge_index=edges)
    assert torch.equal(ei, edges)
    assert torch.equal(ew, torch.ones(edges.size(1)))
    assert torch.equal(cl, cluster)
    dyn, dyn_ei, _, _ = conv(x, batch, query, cluster, return_graph=True)
    assert dyn_ei.shape != edges.shape or not torch.equal(dyn_ei, edges)
    assert out.shape == x.shape and not torch.allclose(out, dyn, atol=1e-4)
    # isolated nodes (single-node graphs) aggregate 0, as in the dynamic layer
    isolated = torch.tensor([0, 14])  # the graphs of one node
    assert torch.allclose(out[isolated], conv._output(x[isolated], torch.zeros(2, D)))
    # the weights enter the messages; all-zero weights leave only the residual
    zero = conv(x, batch, query, cluster, edge_index=edges,
                edge_weight=torch.zeros(edges.size(1)))
    assert torch.allclose(zero, conv._output(x, torch.zeros_like(x)))


def test_layer_without_cluster_labels_clusters_itself():
    torch.manual_seed(0)
    conv = DynamicClusterConv(D, k=3, kmeans_iters=3).eval()
    x, batch, _, query = layer_inputs()
    edges = consecutive_edges(batch)
    _, _, _, cl = conv(x, batch, query, return_graph=True, edge_index=edges)
    assert torch.equal(cl, conv.cluster_labels(x, batch, int(batch.max()) + 1))
    out = conv(x, batch, query, cluster=cl, edge_index=edges)
    assert torch.allclose(out, conv(x, batch, query, edge_index=edges))


@pytest.mark.parametrize("binary", [False, True])
def test_given_dynamic_edges_reproduce_the_dynamic_layer(binary):
    torch.manual_seed(0)
    conv = DynamicClusterConv(D, k=3, gamma=0.3, binary=binary).eval()
    x, batch, cluster, query = layer_inputs()
    dyn, ei, ew, _ = conv(x, batch, query, cluster, return_graph=True)
    assert ei.size(1) > 0
    fixed = conv(x, batch, query, cluster, edge_index=ei, edge_weight=ew)
    assert torch.allclose(fixed, dyn, atol=1e-5)


def test_layer_rejects_bad_edges():
    conv = DynamicClusterConv(D, k=3)
    x, batch, cluster, query = layer_inputs(sizes=(3, 4))
    with pytest.raises(ValueError, match="different graphs"):
        conv(x, batch, query, cluster, edge_index=torch.tensor([[2], [3]]))
    with pytest.raises(ValueError, match="outside"):
        conv(x, batch, query, cluster, edge_index=torch.tensor([[0], [7]]))
    with pytest.raises(ValueError, match=r"shape \[2, E\]"):
        conv(x, batch, query, cluster, edge_index=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="edge_weight"):
        conv(x, batch, query, cluster, edge_index=torch.tensor([[0], [1]]),
             edge_weight=torch.ones(2))
    with pytest.raises(ValueError, match="needs 'edge_index'"):
        conv(x, batch, query, cluster, edge_weight=torch.ones(2))


# ---------------------------------------------------------------- the model
def test_model_runs_on_the_consecutive_edges_only():
    model = small_model().eval()
    batch = make_batch([5, 1, 8, 3])
    x, graphs = model.node_states(batch, return_graphs=True)
    assert x.shape == (17, D) and len(graphs) == 2
    for edge_index, edge_weight, cluster in graphs:
        assert torch.equal(edge_index, loop_edges([5, 1, 8, 3]))
        assert torch.equal(edge_weight, torch.ones(edge_index.size(1)))
        assert cluster.shape == (17,)
    assert all(conv.metric_weight is None for conv in model.convs)
    assert "metric_weight" not in "".join(model.state_dict())


def test_model_differs_from_mdgr_with_the_same_weights():
    static, mdgr = small_model().eval(), small_model(MDGR).eval()
    mdgr_state = {k: v for k, v in mdgr.state_dict().items() if "metric_weight" not in k}
    static.load_state_dict(mdgr_state)  # the same parameters, except the unused metric
    batch = make_batch([6, 9, 4])
    assert not torch.allclose(static.score_candidates(batch), mdgr.score_candidates(batch))
    params = static.num_parameters()["params"]
    assert params == mdgr.num_parameters()["params"] - 2 * 4 * D  # m * delta * d


def test_gradients_reach_every_parameter():
    model = small_model().train()
    batch = make_batch([6, 9, 4, 7])
    model.loss(batch).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name != "item_emb.weight":
            assert p.grad.abs().sum() > 0, name


def test_same_seed_identical():
    batch = make_batch([6, 9, 4])
    a, b = small_model().eval(), small_model().eval()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert torch.equal(a.score_candidates(batch), b.score_candidates(batch))


def test_score_all_gathers_score_candidates():
    model = small_model().eval()
    batch = make_batch([6, 9, 4, 1])
    with torch.no_grad():
        cand = model.score_candidates(batch)
        full = model.score_all(batch, chunk_size=7)
    assert full.shape == (4, NUM_ITEMS + 1)
    assert torch.allclose(full.gather(1, batch.candidates.view(4, -1)), cand, atol=1e-5)


def test_constructor_repr_and_variants():
    model = small_model(m=1)
    assert repr(model) == (
        f"StaticGraphRec(num_items={NUM_ITEMS}, dim={D}, k=3, m=1, cluster='kmeans', "
        "graph='consecutive items (static control)', weights=True)"
    )
    assert StaticGraphRec.from_variant("mdgr-w", NUM_ITEMS, dim=D, m=1).weight_head is None
    with pytest.raises(ValueError, match="dynamic"):
        StaticGraphRec(NUM_ITEMS, dynamic=False)
    model.reset_parameters()  # no metric weights to initialise
    batch = make_batch([3, 2])
    assert model.score_candidates(batch).shape == (2, 6)


def test_short_fit_lowers_the_loss():
    opts = DataOptions(format="synthetic", window=40, history=20, negatives=20,
                       min_user_len=40,
                       synthetic={"num_users": 120, "num_items": 80, "num_topics": 4,
                                  "length": (40, 60)})
    prepared = prepare_dataset(opts, cache_dir=None)
    torch.manual_seed(0)
    model = StaticGraphRec(prepared.num_items, max_len=history_length(prepared),
                           dim=16, k=3, m=1, kmeans_iters=3)
    config = TrainConfig(epochs=2, patience=99, batch_size=32, progress=False, seed=0,
                         lr=5e-3)
    result = fit(model, prepared, config, log=None)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 2 and losses[-1] < losses[0]
