"""TiSASRec and BERT4Rec on the shared model interface."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models import CAUSAL_BASELINES, NEURAL_BASELINES, build_model
from mdgr_graph.models.baselines import BERT4Rec, TiSASRec, time_interval_matrix
from mdgr_graph.models.baselines.tisasrec import TimeIntervalAttention
from mdgr_graph.train import TrainConfig, evaluate, fit

NUM_ITEMS = 40
MAX_LEN = 12
DIM = 16

MODELS = {
    "tisasrec": lambda **kw: TiSASRec(NUM_ITEMS, MAX_LEN, **{"dim": DIM, "heads": 2, **kw}),
    "bert4rec": lambda **kw: BERT4Rec(NUM_ITEMS, MAX_LEN, **{"dim": DIM, "heads": 2, **kw}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=list(MODELS))
def build(request):
    def make(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        return MODELS[request.param](**kwargs)

    make.name = request.param
    return make


def make_batch(lengths=None, num_candidates=6, seed=0, items=None, days=None):
    gen = torch.Generator().manual_seed(seed)
    if items is None:
        items = [torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) for n in lengths]
    graphs = []
    for i, x in enumerate(items):
        n = x.numel()
        t = (torch.rand(n, generator=gen) * 3).cumsum(0) if days is None else days[i]
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(x, t - t[0], candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


# ---------------------------------------------------------------------- shared interface
def test_registered():
    assert NEURAL_BASELINES["tisasrec"] is TiSASRec
    assert NEURAL_BASELINES["bert4rec"] is BERT4Rec
    assert "tisasrec" in CAUSAL_BASELINES and "bert4rec" not in CAUSAL_BASELINES


def test_repr():
    assert repr(TiSASRec(NUM_ITEMS, MAX_LEN)) == (
        "TiSASRec(num_items=40, max_len=12, dim=32, num_blocks=2, heads=1, dropout=0.2, "
        "max_interval=256, history_targets=False)")
    assert repr(BERT4Rec(NUM_ITEMS, MAX_LEN)) == (
        "BERT4Rec(num_items=40, max_len=12, dim=32, num_blocks=2, heads=2, dropout=0.1, "
        "mask_prob=0.2, cloze_weight=1.0)")


def test_shapes_paper_and_loo_batches(build):
    model = build().eval()
    paper = make_batch([5, 3, 9], num_candidates=8)  # positives + negatives per window
    loo = make_batch([12, 1, 7, 2], num_candidates=5)  # target + sampled negatives
    with torch.no_grad():
        assert model.score_candidates(paper).shape == (3, 8)
        assert model.score_all(loo).shape == (4, NUM_ITEMS + 1)
        assert model.user_vectors(loo).shape == (4, DIM)
        assert model.loss(paper).shape == () and torch.isfinite(model.loss(loo))
    counts = model.num_parameters()
    assert counts["params"] - counts["params_without_item_table"] == (NUM_ITEMS + 1) * DIM


def test_gradients_reach_every_parameter(build):
    kwargs = {"history_targets": True} if build.name == "tisasrec" else {}
    model = build(dropout=0.1, **kwargs).train()
    loss = model.loss(make_batch([5, 3, 8, 1]))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.all(model.item_emb.weight.grad[0] == 0)  # padding row


def test_same_seed_same_model_and_loss(build):
    batch = make_batch([5, 3, 8])
    a, b = build(seed=3), build(seed=3)
    with torch.no_grad():
        assert torch.equal(a.eval().score_all(batch), b.eval().score_all(batch))
        torch.manual_seed(7)
        loss_a = a.train().loss(batch)
        torch.manual_seed(7)
        loss_b = b.train().loss(batch)
        assert torch.equal(loss_a, loss_b)
        torch.manual_seed(8)
        assert not torch.equal(a.loss(batch), loss_a)  # dropout / masks follow the seed
        assert not torch.equal(build(seed=4).eval().score_all(batch), a.eval().score_all(batch))


@pytest.mark.parametrize("chunk_size", [8192, 7])
def test_score_all_matches_candidates(build, chunk_size):
    model = build().eval()
    batch = make_batch([5, 3, 8, 1])
    with torch.no_grad():
        full = model.score_all(batch, chunk_size=chunk_size)
        cand = model.score_candidates(batch)
    assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-5)


def test_padding_does_not_leak(build):
    model = build().eval()
    gen = torch.Generator().manual_seed(2)
    items = [torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) for n in (3, 12, 1, 7)]
    days = [(torch.rand(x.numel(), generator=gen) * 5).cumsum(0) for x in items]
    with torch.no_grad():
        together = model.score_all(make_batch(items=items, days=days))
        for i, (x, t) in enumerate(zip(items, days, strict=True)):
            alone = model.score_all(make_batch(items=[x], days=[t]))
            assert torch.allclose(together[i], alone[0], atol=1e-5), i


def test_long_sequences_are_cut_to_the_most_recent_items(build):
    model = build().eval()
    gen = torch.Generator().manual_seed(5)
    long = torch.randint(1, NUM_ITEMS + 1, (MAX_LEN + 8,), generator=gen)
    days = (torch.rand(MAX_LEN + 8, generator=gen) * 4).cumsum(0)
    with torch.no_grad():
        full = model.score_all(make_batch(items=[long], days=[days]))
        cut = model.score_all(make_batch(items=[long[-MAX_LEN:]], days=[days[-MAX_LEN:]]))
    assert torch.allclose(full, cut, atol=1e-5)


def test_bad_arguments(build):
    cls = type(build())
    for kwargs, match in [({"heads": 3, "dim": 10}, "heads"), ({"num_blocks": 0}, "num_blocks"),
                          ({"dropout": 1.0}, "dropout")]:
        with pytest.raises(ValueError, match=match):
            cls(NUM_ITEMS, MAX_LEN, **kwargs)
    with pytest.raises(ValueError, match="max_len"):
        cls(NUM_ITEMS, 0)
    with pytest.raises(ValueError, match="max_interval"):
        TiSASRec(NUM_ITEMS, MAX_LEN, max_interval=0)
    with pytest.raises(ValueError, match="mask_prob"):
        BERT4Rec(NUM_ITEMS, MAX_LEN, mask_prob=0.0)
    batch = make_batch([3, 2])
    del batch.labels
    with pytest.raises(ValueError, match="labels"):
        build().loss(batch)


# ---------------------------------------------------------------------- TiSASRec
def test_interval_matrix_is_personalised_rounded_and_clipped():
    times = torch.tensor([[0.0, 0.5, 0.5, 2.0, 9.0], [0.0, 3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    got = time_interval_matrix(times, mask, max_interval=10)
    # row 0: smallest non-zero gap 0.5 -> steps 0, 1, 1, 4, 18; clipped at 10
    steps = torch.tensor([0, 1, 1, 4, 18])
    assert torch.equal(got[0], (steps[:, None] - steps[None]).abs().clamp(max=10))
    # row 1: one gap of 3 days -> steps 0, 1; padding pairs are 0
    assert got[1, :2, :2].tolist() == [[0, 1], [1, 0]] and got[1, 2:].sum() == 0
    # every gap zero, and a single item: scale 1, all intervals 0
    same = time_interval_matrix(torch.full((1, 4), 7.0), torch.ones(1, 4, dtype=torch.bool), 5)
    assert torch.equal(same, torch.zeros(1, 4, 4, dtype=torch.long))
    one = time_interval_matrix(torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool), 5)
    assert torch.equal(one, torch.zeros(2, 1, 1, dtype=torch.long))


def test_tisasrec_time_intervals_matter():
    torch.manual_seed(0)
    model = TiSASRec(NUM_ITEMS, MAX_LEN, dim=DIM, heads=2).eval()
    items = torch.tensor([3, 7, 1, 9, 4])
    days = torch.tensor([0.0, 1.0, 2.0, 30.0, 31.0])
    with torch.no_grad():
        base = model.score_all(make_batch(items=[items], days=[days]))
        moved = model.score_all(make_batch(items=[items], days=[torch.tensor(
            [0.0, 1.0, 5.0, 6.0, 31.0])]))
        # the personal scale makes a uniform change of time unit irrelevant
        scaled = model.score_all(make_batch(items=[items], days=[days * 24]))
        zero = model.score_all(make_batch(items=[items], days=[torch.zeros(5)]))
        single = model.score_all(make_batch(items=[items[:1], items[:1]],
                                            days=[torch.zeros(1), torch.ones(1)]))
    assert not torch.allclose(base, moved, atol=1e-4)
    assert torch.allclose(base, scaled, atol=1e-5)
    assert torch.isfinite(zero).all() and not torch.allclose(base, zero, atol=1e-4)
    assert torch.isfinite(single).all() and torch.allclose(single[0], single[1])


def test_tisasrec_states_are_causal_in_items_and_use_position_kv():
    torch.manual_seed(1)
    model = TiSASRec(NUM_ITEMS, MAX_LEN, dim=DIM, heads=2).eval()
    items = torch.tensor([3, 7, 1, 9, 4, 2])
    changed = items.clone()
    changed[4:] = torch.tensor([11, 12])
    days = torch.arange(6.0)
    with torch.no_grad():
        s1, _ = model.sequence_states(make_batch(items=[items], days=[days]))
        s2, _ = model.sequence_states(make_batch(items=[changed], days=[days]))
    assert torch.allclose(s1[0, :4], s2[0, :4], atol=1e-6)
    assert not torch.allclose(s1[0, 4:], s2[0, 4:])
    batch = make_batch(items=[items], days=[days])
    with torch.no_grad():
        before = model.score_all(batch)
        model.pos_v.weight.add_(torch.randn_like(model.pos_v.weight))
        assert not torch.allclose(before, model.score_all(batch))


def test_tisasrec_attention_equals_the_per_pair_sums():
    torch.manual_seed(0)
    attn = TimeIntervalAttention(8, heads=2, dropout=0.0)
    q, h = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    pos_k, pos_v, time_k, time_v = torch.randn(5, 8), torch.randn(5, 8), torch.randn(
        4, 8), torch.randn(4, 8)
    interval = torch.randint(0, 4, (2, 5, 5))
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    got = attn(q, h, pos_k, pos_v, time_k, time_v, interval, causal)
    # reference: Eq. 5-6 with the [B, L, L, d] pair embeddings, one head at a time
    Q, K, V = attn.query(q), attn.key(h), attn.value(h)
    rk, rv = time_k[interval], time_v[interval]  # [B, L, L, d]
    outs = []
    for head in (slice(0, 4), slice(4, 8)):
        keys = K[:, None, :, head] + rk[..., head] + pos_k[None, None, :, head]
        vals = V[:, None, :, head] + rv[..., head] + pos_v[None, None, :, head]
        e = (Q[:, :, None, head] * keys).sum(-1) / 2.0
        a = torch.softmax(e.masked_fill(causal, float("-inf")), dim=-1)
        outs.append((a[..., None] * vals).sum(2))
    assert torch.allclose(got, torch.cat(outs, -1), atol=1e-5)


def test_tisasrec_needs_times():
    batch = make_batch([3, 2])
    del batch.t
    with pytest.raises(ValueError, match="batch.t"):
        TiSASRec(NUM_ITEMS, MAX_LEN).score_all(batch)


# ---------------------------------------------------------------------- BERT4Rec
def test_bert4rec_cloze_positions_never_hit_padding():
    model = BERT4Rec(NUM_ITEMS, MAX_LEN, mask_prob=0.3)
    mask = torch.arange(10)[None, :] < torch.tensor([10, 1, 4, 7])[:, None]
    torch.manual_seed(0)
    for _ in range(20):
        masked = model.cloze_positions(mask)
        assert not (masked & ~mask).any()
        assert masked.sum(1).tolist() == [3, 1, 1, 2]  # max(1, round(n * 0.3))
    assert BERT4Rec(NUM_ITEMS, MAX_LEN, mask_prob=1.0).cloze_positions(mask).equal(mask)


def test_bert4rec_appends_one_mask_after_the_history():
    items = torch.tensor([[4, 5, 6], [7, 0, 0]])
    mask = items > 0
    ext, ext_mask, masked = BERT4Rec.append_mask(items, mask)
    assert ext.shape == (2, 4) and masked.sum().item() == 2
    assert masked[0, 3] and masked[1, 1] and ext_mask.sum(1).tolist() == [4, 2]


def test_bert4rec_loss_is_candidate_bce_plus_cloze():
    batch = make_batch([6, 4, 9, 1])
    torch.manual_seed(0)
    model = BERT4Rec(NUM_ITEMS, MAX_LEN, dim=DIM, dropout=0.0).train()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        model.score_candidates(batch), batch.labels)
    items, mask = model.dense_items(batch)
    torch.manual_seed(5)
    cloze = model.cloze_loss(items, mask)
    assert torch.isfinite(cloze) and cloze > 0
    torch.manual_seed(5)
    masked = model.cloze_positions(mask)
    out = model.output(model.encode(items, mask, masked)[masked])
    logits = out @ model.item_emb.weight[1:].t() + model.out_bias[1:]
    manual = torch.nn.functional.cross_entropy(logits, items[masked] - 1)
    assert torch.allclose(cloze, manual, atol=1e-6)
    torch.manual_seed(5)
    assert torch.allclose(model.loss(batch), bce + cloze, atol=1e-6)
    only = BERT4Rec(NUM_ITEMS, MAX_LEN, dim=DIM, dropout=0.0, cloze_weight=0.0)
    only.load_state_dict(model.state_dict())
    assert torch.allclose(only.loss(batch), bce, atol=1e-6)


def test_bert4rec_is_bidirectional_in_the_cloze_pass():
    torch.manual_seed(0)
    model = BERT4Rec(NUM_ITEMS, MAX_LEN, dim=DIM).eval()
    items = torch.tensor([[3, 7, 1, 9]])
    mask = torch.ones_like(items, dtype=torch.bool)
    masked = torch.tensor([[False, True, False, False]])
    later = items.clone()
    later[0, 3] = 20
    with torch.no_grad():
        a = model.encode(items, mask, masked)[0, 1]
        b = model.encode(later, mask, masked)[0, 1]
    assert not torch.allclose(a, b)  # the masked position reads a later item


# ---------------------------------------------------------------------- training loop
def _fit_one_epoch(name, prepared, seed=0):
    torch.manual_seed(seed)
    model = build_model(name, prepared, dim=DIM)
    config = TrainConfig(epochs=1, patience=99, batch_size=32, lr=5e-3, seed=seed,
                         progress=False)
    return model, fit(model, prepared, config, log=None)


@pytest.mark.parametrize("name", ["tisasrec", "bert4rec"])
def test_fit_one_epoch_paper(name, paper_data):
    model, result = _fit_one_epoch(name, paper_data)
    assert result.epochs == 1 and 0.0 <= result.best_valid["auc/sampled"] <= 1.0
    if name == "bert4rec":  # the cloze masks are drawn from the loop's seed
        again, second = _fit_one_epoch(name, paper_data)
        assert second.history[0]["loss"] == result.history[0]["loss"]
        for (k, v), w in zip(model.state_dict().items(), again.state_dict().values(),
                             strict=True):
            assert torch.equal(v, w), k


@pytest.mark.parametrize("name", ["tisasrec", "bert4rec"])
def test_fit_one_epoch_loo(name, loo_data):
    model, result = _fit_one_epoch(name, loo_data)
    assert result.epochs == 1
    metrics = evaluate(model, loo_data, "test")
    assert {"hr@10/full", "ndcg@10/full", "mrr/full", "auc/sampled"} <= set(metrics)
