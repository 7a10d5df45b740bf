import math

import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models import MDGR, VARIANTS
from mdgr_graph.nn.encoding import SinusoidalEncoding, sinusoidal_encoding
from mdgr_graph.nn.interest import InterestPooling, InterestScore, InterestWeight

NUM_ITEMS = 40


def make_batch(lengths, num_candidates=6, seed=0, items=None):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for i, n in enumerate(lengths):
        x = items[i] if items is not None else torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
        days = torch.rand(n, generator=gen).cumsum(0)
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(x, days, candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


def small_model(**kwargs):
    torch.manual_seed(0)
    opts = dict(dim=16, k=3, m=2, max_len=12, time_dim=8, pos_dim=8)
    opts.update(kwargs)
    return MDGR(NUM_ITEMS, **opts)


def test_sinusoidal_encoding_matches_formula():
    values = torch.tensor([0.0, 1.0, 7.5])
    enc = sinusoidal_encoding(values, 6)
    for i in range(3):
        freq = 1.0 / 10000 ** (2 * i / 6)
        assert torch.allclose(enc[:, 2 * i], torch.sin(values * freq))
        assert torch.allclose(enc[:, 2 * i + 1], torch.cos(values * freq))
    assert repr(SinusoidalEncoding(6)) == "SinusoidalEncoding(6)"
    with pytest.raises(ValueError, match="even"):
        sinusoidal_encoding(values, 5)


def test_interest_pooling_last_and_mean():
    x = torch.arange(12, dtype=torch.float).view(6, 2)
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    cluster = torch.tensor([0, 1, 0, 2, 2, 2])
    pos = torch.tensor([0, 1, 2, 0, 1, 2])
    z, mask = InterestPooling(2, k=3, pool="last")(x, batch, cluster, pos, 2)
    assert mask.tolist() == [[True, True, False], [False, False, True]]
    assert torch.equal(z[0, 0], x[2]) and torch.equal(z[0, 1], x[1])
    assert torch.equal(z[1, 2], x[5]) and torch.equal(z[0, 2], torch.zeros(2))
    z, _ = InterestPooling(2, k=3, pool="mean")(x, batch, cluster, pos, 2)
    assert torch.allclose(z[0, 0], (x[0] + x[2]) / 2)
    z, _ = InterestPooling(2, k=3, pool="attention")(x, batch, cluster, pos, 2)
    # attention weights are convex: the pooled vector lies between its members
    assert torch.all(z[1, 2] >= x[3] - 1e-6) and torch.all(z[1, 2] <= x[5] + 1e-6)
    assert repr(InterestPooling(2, k=3)) == "InterestPooling(2, k=3, pool='attention')"


def _pool_by_hand(pooling, x, values, batch, cluster, pos, batch_size):
    """Reference for ``values``: one group at a time, weights read from the states."""
    k = pooling.k
    z = torch.zeros(batch_size, k, values.size(1))
    for b in range(batch_size):
        for j in range(k):
            members = torch.nonzero((batch == b) & (cluster == j)).flatten()
            if members.numel() == 0:
                continue
            last = members[pos[members].argmax()]
            if pooling.pool == "last":
                z[b, j] = values[last]
            elif pooling.pool == "mean":
                z[b, j] = values[members].mean(0)
            else:
                q = pooling.query(x[last])
                logit = pooling.key(x[members]) @ q / pooling.channels ** 0.5
                z[b, j] = torch.softmax(logit, 0) @ values[members]
    return z


@pytest.mark.parametrize("pool", ["attention", "last", "mean"])
def test_interest_pooling_of_other_values_equals_reference(pool):
    gen = torch.Generator().manual_seed(3)
    x, values = torch.randn(9, 4, generator=gen), torch.randn(9, 3, generator=gen)
    batch = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    cluster = torch.tensor([0, 1, 0, 1, 2, 2, 0, 0, 0])
    pos = torch.tensor([0, 1, 2, 3, 0, 1, 0, 1, 2])
    torch.manual_seed(0)
    pooling = InterestPooling(4, k=3, pool=pool)
    with torch.no_grad():
        z, mask = pooling(x, batch, cluster, pos, 3, values)
        assert z.shape == (3, 3, 3)
        assert torch.allclose(z, _pool_by_hand(pooling, x, values, batch, cluster, pos, 3),
                              atol=1e-6)
        # the default values are the states themselves
        assert torch.equal(pooling(x, batch, cluster, pos, 3, x)[0],
                           pooling(x, batch, cluster, pos, 3)[0])
    with pytest.raises(ValueError, match="values must be"):
        pooling(x, batch, cluster, pos, 3, values[:5])


def test_item_valued_interests_of_singletons_are_item_embeddings():
    """With every node its own cluster the interests are exactly the items' embeddings, and
    the embeddings get a gradient through the pooling."""
    model = small_model(k=12, pool_values="item")
    assert "pool_values='item'" in repr(model) and "pool_values" not in repr(small_model())
    batch = make_batch([4, 7], seed=6, items=[torch.tensor([3, 5, 8, 13]),
                                              torch.tensor([1, 2, 4, 6, 9, 10, 11])])
    z, weight, mask, cluster = model.interests(batch)
    assert mask.sum().item() == 11
    for b in range(2):
        nodes = torch.nonzero(batch.batch == b).flatten()
        got = z[b, cluster[nodes]]
        assert torch.allclose(got, model.item_emb(batch.x[nodes]), atol=1e-6)
    model.score_candidates(batch).sum().backward()
    assert model.item_emb.weight.grad[batch.x].abs().sum() > 0
    with pytest.raises(ValueError, match="pool_values"):
        small_model(pool_values="items")
    for pool in ("last", "mean"):  # the encoder would get no gradient
        with pytest.raises(ValueError, match="needs pool='attention'"):
            small_model(pool=pool, pool_values="item")
    # every parameter but the unused position-slot rows learns
    model.zero_grad()
    model.loss(batch).backward()
    assert all(p.grad is not None for n, p in model.named_parameters()
               if n.startswith(("encoder.", "convs.", "pooling.")))


def test_interest_weight_equals_explicit_concatenation():
    torch.manual_seed(0)
    head = InterestWeight(4, time_channels=2, max_len=3, hidden=5)
    z = torch.randn(2, 2, 4)
    time_enc = torch.randn(5, 2)
    batch = torch.tensor([0, 0, 0, 1, 1])
    cluster = torch.tensor([1, 0, 1, 0, 0])
    slot = torch.tensor([0, 1, 2, 0, 1])
    out = head(z, time_enc, batch * 2 + cluster, slot)
    assert out.shape == (2, 2) and torch.all(out >= 0)
    # Eq. 15 literally: [z_j ; 1[c_1=j] tau_1 ; ... ; 1[c_l=j] tau_l] through W_1
    w1 = torch.cat([head.lin_z.weight, head.time_weight.reshape(3 * 2, 5).t()], dim=1)
    for b in range(2):
        for j in range(2):
            slots = torch.zeros(3, 2)
            for node in range(5):
                if batch[node] == b and cluster[node] == j:
                    slots[slot[node]] = time_enc[node]
            inp = torch.cat([z[b, j], slots.flatten()])
            hidden = torch.sigmoid(w1 @ inp + head.lin_z.bias)
            expect = torch.nn.functional.softplus(head.lin_out(hidden))
            assert torch.allclose(out[b, j], expect.squeeze(), atol=1e-6)
    with pytest.raises(ValueError, match="max_len=3"):
        head(z, time_enc, batch * 2 + cluster, slot + 1)


@pytest.mark.parametrize("uneven", [False, True])
def test_interest_weight_node_terms_equal_a_per_node_gather(uneven):
    """The per-slot product (nodes sorted and padded by slot) is the per-node projection
    tau_i @ W[slot_i], values and gradients; very uneven slots take the gather itself."""
    torch.manual_seed(0)
    head = InterestWeight(4, time_channels=3, max_len=6, hidden=5)
    lengths = [6, 2, 5, 1, 6]
    slot = torch.cat([torch.arange(n) for n in lengths])
    if uneven:
        slot = torch.zeros(40, dtype=torch.long)
    time_enc = torch.randn(slot.numel(), 3, requires_grad=True)
    got = head.node_terms(time_enc, slot)
    want = torch.stack([time_enc[i] @ head.time_weight[slot[i]] for i in range(slot.numel())])
    assert torch.allclose(got, want, atol=1e-6)
    grad = torch.randn_like(want)
    g_got = torch.autograd.grad(got, [time_enc, head.time_weight], grad)
    g_want = torch.autograd.grad(want, [time_enc, head.time_weight], grad)
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    empty = head.node_terms(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0, 5)


def test_interest_score_is_max_over_nonempty_interests():
    torch.manual_seed(0)
    scorer = InterestScore(3)
    z = torch.randn(1, 3, 3)
    weight = torch.tensor([[1.0, 2.0, 0.5]])
    mask = torch.tensor([[True, False, True]])
    items = torch.randn(4, 3)
    out = scorer(z, weight, mask, items)
    per = torch.stack([weight[0, j] * scorer.lin(z[0, j] * items).squeeze(-1) for j in (0, 2)])
    assert torch.allclose(out[0], per.max(0).values, atol=1e-6)
    assert torch.allclose(scorer(z, weight, mask, items.unsqueeze(0)), out)


def test_log_weighting_adds_log_weights_and_never_penalises_weight():
    torch.manual_seed(0)
    scorer = InterestScore(3, weighting="log")
    z = torch.randn(1, 3, 3)
    weight = torch.tensor([[1.0, 2.0, 0.5]])
    mask = torch.tensor([[True, False, True]])
    items = torch.randn(4, 3)
    out = scorer(z, weight, mask, items)
    per = torch.stack([scorer.lin(z[0, j] * items).squeeze(-1) + weight[0, j].log()
                       for j in (0, 2)])
    assert torch.allclose(out[0], per.max(0).values, atol=1e-6)
    # more weight on any interest never lowers any score (Eq. 16's product can)
    assert (scorer(z, weight * torch.tensor([[3.0, 1.0, 1.0]]), mask, items) >= out).all()
    with pytest.raises(ValueError, match="weighting"):
        InterestScore(3, weighting="sum")


@pytest.mark.parametrize("weighting", ["paper", "log"])
@pytest.mark.parametrize("per_row", [False, True])
def test_interest_score_paths_match_eq16(weighting, per_row):
    # no autograd: Eq. 16 as written, in place, bit for bit; with autograd: the
    # inner-product form, equal up to rounding, values and gradients
    torch.manual_seed(0)
    scorer = InterestScore(8, weighting=weighting)
    z = torch.randn(5, 4, 8) * 3
    weight = torch.rand(5, 4) + 0.05
    mask = torch.rand(5, 4) > 0.4
    mask[:, 1] = True
    mask[2] = False  # a row without interests scores -inf everywhere
    items = torch.randn(5, 7, 8) if per_row else torch.randn(7, 8)

    def eq16(z, weight, items):
        pair = "bkd,bcd->bkc" if per_row else "bkd,cd->bkc"
        raw = torch.einsum(pair, z * scorer.lin.weight.view(1, 1, -1), items) + scorer.lin.bias
        if weighting == "paper":
            logit = weight.unsqueeze(-1) * raw
        else:
            logit = raw + torch.log(weight.clamp_min(1e-12)).unsqueeze(-1)
        return logit.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)

    with torch.no_grad():
        fast = scorer(z, weight, mask, items)
        assert torch.equal(fast, eq16(z, weight, items))
    assert torch.isneginf(fast[2]).all()
    inputs = [t.clone().requires_grad_() for t in (z, weight, items)]
    got = scorer(*inputs[:2], mask, inputs[2])
    want = eq16(*inputs)
    assert got.requires_grad and not fast.requires_grad
    assert torch.isneginf(got[2]).all()
    finite = torch.isfinite(want)
    assert torch.allclose(got[finite], want[finite], atol=1e-5)
    grad = torch.randn(got.shape).masked_fill(~finite, 0)
    params = list(scorer.parameters())
    g_got = torch.autograd.grad(got.masked_fill(~finite, 0), inputs + params, grad)
    g_want = torch.autograd.grad(want.masked_fill(~finite, 0), inputs + params, grad)
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.isfinite(a).all() and torch.allclose(a, b, atol=1e-4)
    # masked interests get no gradient, even in a row without any interest
    row = torch.autograd.grad(scorer(*inputs[:2], mask, inputs[2])[2].sum(), inputs[:2])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in row)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_shapes_and_finite(variant):
    model = MDGR.from_variant(variant, NUM_ITEMS, dim=16, k=3, m=2, max_len=12,
                              time_dim=8, pos_dim=8).eval()
    batch = make_batch([5, 12, 1, 2])
    logits = model.score_candidates(batch)
    assert logits.shape == (4, 6) and torch.isfinite(logits).all()
    full = model.score_all(batch, chunk_size=7)
    assert full.shape == (4, NUM_ITEMS + 1) and torch.isfinite(full).all()
    assert torch.allclose(full.gather(1, batch.candidates), logits, atol=1e-5)
    loss = model.loss(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_mip_is_mdgr_without_dynamic_graph_clustering(paper_data):
    from mdgr_graph.models import build_model

    torch.manual_seed(0)
    mip = build_model("mip", paper_data, dim=8, k=3)
    torch.manual_seed(0)
    dgc = build_model("mdgr-dgc", paper_data, dim=8, k=3)
    assert not mip.dynamic and mip.cluster == "ward" and len(mip.convs) == 0
    assert all(torch.equal(a, b) for a, b in zip(mip.state_dict().values(),
                                                  dgc.state_dict().values(), strict=True))


def test_gradients_reach_every_part():
    model = small_model()
    model.train()
    model.loss(make_batch([12, 9, 7, 12])).backward()
    missing = [n for n, p in model.named_parameters()
               if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"


def test_edge_cases_single_node_n_less_than_k_repeated_items():
    model = small_model(k=4)
    items = [torch.tensor([3]), torch.tensor([5, 6]), torch.full((10,), 7),
             torch.tensor([1, 2, 1, 2, 1, 2])]
    batch = make_batch([len(i) for i in items], items=items)
    z, weight, mask, cluster = model.interests(batch)
    assert z.shape == (4, 4, 16) and torch.isfinite(z).all() and torch.isfinite(weight).all()
    assert mask[0].sum() == 1  # one node, one interest
    assert mask[1].sum() <= 2
    assert torch.isfinite(model.score_candidates(batch)).all()


def test_graphs_per_iteration_stay_inside_graphs_and_budget():
    model = small_model(gamma=0.2)
    batch = make_batch([12, 3, 8])
    _, graphs = model.node_states(batch, return_graphs=True)
    assert len(graphs) == model.m
    counts = torch.bincount(batch.batch)
    for edge_index, edge_weight, cluster in graphs:
        assert torch.isfinite(edge_weight).all()
        src, dst = edge_index
        assert torch.equal(batch.batch[src], batch.batch[dst])
        assert torch.all(src != dst)
        assert torch.equal(cluster[src], cluster[dst])
        per_graph = torch.bincount(batch.batch[src], minlength=3)
        budget = torch.tensor([math.ceil(0.2 * n * n) for n in counts.tolist()])
        assert torch.all(per_graph <= budget)


def test_deterministic_with_seed_and_batch_invariant():
    batch = make_batch([12, 4, 7])
    a = small_model().eval().score_candidates(batch)
    b = small_model().eval().score_candidates(batch)
    assert torch.equal(a, b)
    single = small_model().eval().score_candidates(
        Batch.from_data_list([batch.get_example(1)])
    )
    assert torch.allclose(single[0], a[1], atol=1e-5)


def test_bad_input_errors():
    model = small_model(max_len=4)
    with pytest.raises(ValueError, match="max_len=4"):
        model.score_candidates(make_batch([6]))
    with pytest.raises(ValueError, match="exceeds num_items"):
        model.score_candidates(make_batch([2], items=[torch.tensor([1, NUM_ITEMS + 5])]))
    with pytest.raises(ValueError, match="unknown variant"):
        MDGR.from_variant("mdgr-x", NUM_ITEMS)
    assert "MDGR(num_items=40" in repr(model)


def test_same_result_without_compiled_extensions(request):
    batch = make_batch([12, 5, 9])
    model = small_model().eval()
    with_ext = model.score_candidates(batch)
    request.getfixturevalue("without_extensions")
    import torch_geometric.typing as pyg_typing

    assert not pyg_typing.WITH_TORCH_SCATTER
    without = model.score_candidates(batch)
    assert torch.allclose(with_ext, without, atol=1e-6)
    model.train()
    model.loss(batch).backward()


def test_loss_needs_labels_shaped_like_the_candidates():
    model = small_model()
    batch = make_batch([5, 4])
    batch.labels = batch.labels[:, :-1]
    with pytest.raises(ValueError, match="labels shaped like batch.candidates"):
        model.loss(batch)
    del batch.labels
    with pytest.raises(ValueError, match="labels shaped like batch.candidates"):
        model.loss(batch)


def test_score_all_refuses_an_empty_chunk():
    with pytest.raises(ValueError, match="chunk_size"):
        small_model().eval().score_all(make_batch([3]), chunk_size=0)


@pytest.mark.parametrize("input_norm", ["none", "scale", "layer"])
def test_encoder_input_norm_balances_the_parts(input_norm):
    model = small_model(input_norm=input_norm, time_dim=8, pos_dim=8)
    batch = make_batch([5, 9])
    parts = model.encoder.input_parts(model.item_emb(batch.x), batch.t, batch.pos)
    assert [p.size(1) for p in parts] == [16, 8, 8]
    item, time = parts[0].norm(dim=1).mean(), parts[1].norm(dim=1).mean()
    if input_norm == "none":
        assert item < time  # the imbalance the option exists for (worse for more items)
    elif input_norm == "scale":
        assert torch.allclose(parts[0], model.item_emb(batch.x) * 4.0)  # sqrt(16)
    else:  # unit scale per coordinate: norm sqrt(width)
        assert torch.allclose(item, torch.tensor(4.0), atol=0.05)
        assert torch.allclose(time, torch.tensor(8.0 ** 0.5), atol=0.05)
    scores = model.score_candidates(batch)
    assert torch.isfinite(scores).all()
    assert ("input_norm" in repr(model)) == (input_norm != "none")


def test_encoder_input_norm_rejects_unknown_and_drops_unused_parts():
    with pytest.raises(ValueError, match="input_norm"):
        small_model(input_norm="batch")
    model = small_model(input_norm="layer", use_time=False)
    assert len(model.encoder.part_norms) == 2


@pytest.mark.parametrize("m", [0, 2])
def test_cluster_on_item_depends_on_the_items_only(m):
    items = [torch.tensor([3, 7, 3, 9, 7, 12, 3, 9]), torch.tensor([5, 5, 2])]
    model = small_model(m=m, cluster_on="item").eval()
    batch = make_batch([8, 3], items=items, seed=0)
    other_times = make_batch([8, 3], items=items, seed=5)  # same items, other days
    assert not torch.equal(batch.t, other_times.t)
    with torch.no_grad():
        labels = model.interests(batch)[3]
        assert torch.equal(model.interests(other_times)[3], labels)
    # duplicate items share a cluster
    x = batch.x
    for i in range(x.numel()):
        for j in range(x.numel()):
            if batch.batch[i] == batch.batch[j] and x[i] == x[j]:
                assert labels[i] == labels[j]
    if m > 0:  # the edges of every iteration are those of the item embeddings
        _, graphs = model.node_states(batch, return_graphs=True)
        _, graphs_other = model.node_states(other_times, return_graphs=True)
        for (ei, _, c), (ei_o, _, c_o) in zip(graphs, graphs_other, strict=True):
            assert torch.equal(ei, ei_o) and torch.equal(c, labels) and torch.equal(c_o, labels)
    assert "cluster_on='item'" in repr(model)


def test_cluster_on_item_trains_the_item_embeddings_through_the_metric():
    model = small_model(m=1, cluster_on="item")
    batch = make_batch([6, 9], seed=2)
    model.loss(batch).backward()
    assert model.convs[0].metric_weight.grad.abs().sum() > 0
    assert torch.isfinite(model.item_emb.weight.grad).all()


def test_cluster_on_rejects_unknown_values():
    from mdgr_graph.models import StaticGraphRec

    with pytest.raises(ValueError, match="cluster_on"):
        small_model(cluster_on="time")
    with pytest.raises(ValueError, match="cluster_on"):
        StaticGraphRec(NUM_ITEMS, dim=16, k=3, m=1, max_len=12, cluster_on="item")


def test_conv_residual_and_norm_switches_reach_every_iteration():
    model = small_model(m=2, conv_residual=False, conv_norm=False)
    assert all(not conv.residual and conv.norm is None for conv in model.convs)
    batch = make_batch([4, 7])
    model.loss(batch).backward()
    assert torch.isfinite(model.item_emb.weight.grad).all()
    default = small_model(m=2)
    assert all(conv.residual and conv.norm is not None for conv in default.convs)


@pytest.mark.parametrize("cluster_on", ["state", "item"])
def test_node_states_are_the_same_with_and_without_the_graphs(cluster_on):
    model = small_model(m=3, cluster_on=cluster_on).eval()
    batch = make_batch([5, 9, 12], seed=3)
    with torch.no_grad():
        plain = model.node_states(batch)
        traced, graphs = model.node_states(batch, return_graphs=True)
    assert len(graphs) == 3
    assert torch.equal(plain, traced)


def test_encoder_in_evaluation_computes_what_training_computes_without_dropout():
    # MultiheadAttention's fused inference path would round differently (and is slower)
    model = small_model(dim=16, dropout=0.0)
    batch = make_batch([5, 12, 1, 8])
    with torch.no_grad():
        evaluated = model.eval().encode(batch)
    trained = model.train().encode(batch)
    assert torch.equal(evaluated, trained.detach())


def dense_encoder_reference(encoder, item_emb, t, pos, batch, batch_size):
    """The encoder as first written: every step on the padded [B, L, d] batch, with
    nn.MultiheadAttention itself (its composite path)."""
    from torch_geometric.utils import to_dense_batch

    e = encoder.proj(torch.cat(encoder.input_parts(item_emb, t, pos), dim=-1))
    dense, mask = to_dense_batch(e, batch, batch_size=batch_size)
    attended, _ = encoder.attn(dense, dense, dense.view_as(dense), key_padding_mask=~mask,
                               need_weights=False)
    h = encoder.norm1(dense + encoder.dropout(attended))
    h = encoder.norm2(h + encoder.dropout(encoder.ffn(h)))
    return h[mask]


@pytest.mark.parametrize("lengths", [[5, 12, 1, 8], [1], [3, 3, 3]])
def test_encoder_packed_attention_equals_the_padded_multihead_attention(lengths):
    torch.manual_seed(0)
    model = small_model(dim=16).eval()
    batch = make_batch(lengths, seed=2)
    args = (model.item_emb(batch.x), batch.t, batch.pos, batch.batch, batch.num_graphs)
    got = model.encoder(*args)
    expected = dense_encoder_reference(model.encoder, *args)
    torch.testing.assert_close(got, expected)
    grads = [torch.autograd.grad(out.square().sum(), list(model.encoder.parameters()))
             for out in (model.encoder(*args), dense_encoder_reference(model.encoder, *args))]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_nodes_per_cluster_gives_short_sequences_edges():
    # with k = 8, a 6-item history is 6 singletons and keeps no edge; with s = 2 it is
    # cut into 3 clusters, pairs share one, and the graph has edges; long ones unchanged
    torch.manual_seed(0)
    batch = make_batch([6, 6, 12])
    plain = MDGR(NUM_ITEMS, dim=16, k=8, m=1, max_len=12, time_dim=8, pos_dim=8).eval()
    torch.manual_seed(0)
    capped = MDGR(NUM_ITEMS, dim=16, k=8, m=1, max_len=12, time_dim=8, pos_dim=8,
                  nodes_per_cluster=2).eval()
    assert "nodes_per_cluster=2" in repr(capped) and "nodes_per_cluster" in repr(
        capped.convs[0])
    with torch.no_grad():
        _, graphs_plain = plain.node_states(batch, return_graphs=True)
        _, graphs_capped = capped.node_states(batch, return_graphs=True)
        mask_plain = plain.interests(batch)[2]
        mask = capped.interests(batch)[2]
    edges_plain, edges_capped = graphs_plain[0][0], graphs_capped[0][0]
    first = batch.batch[edges_plain[1]] < 2  # edges of the two short sequences
    assert not first.any()
    assert (batch.batch[edges_capped[1]] < 2).any()
    assert mask_plain[:2].sum(1).tolist() == [6, 6]  # singletons
    assert (mask[:2].sum(1) <= 3).all() and int(mask[2].sum()) <= 6
    loss = capped.train().loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="nodes_per_cluster"):
        MDGR(NUM_ITEMS, nodes_per_cluster=0)
