"""SASRec and GRU4Rec on the shared model interface."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.models.baselines.gru4rec import GRU4Rec
from mdgr_graph.models.baselines.sasrec import SASRec
from mdgr_graph.train import TrainConfig, evaluate, fit

NUM_ITEMS = 40
MAX_LEN = 12
DIM = 16

MODELS = {
    "sasrec": lambda **kw: SASRec(NUM_ITEMS, MAX_LEN, **{"dim": DIM, "heads": 2, **kw}),
    "gru4rec": lambda **kw: GRU4Rec(NUM_ITEMS, MAX_LEN, **{"dim": DIM, "num_layers": 2, **kw}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=list(MODELS))
def build(request):
    def make(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        return MODELS[request.param](**kwargs)

    make.name = request.param
    return make


def make_batch(lengths=None, num_candidates=6, seed=0, items=None):
    gen = torch.Generator().manual_seed(seed)
    if items is None:
        items = [torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) for n in lengths]
    graphs = []
    for x in items:
        n = x.numel()
        days = torch.rand(n, generator=gen).cumsum(0)
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < num_candidates // 2).float()
        graphs.append(make_sequence_graph(x, days, candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


def test_shapes_repr_and_parameter_count(build):
    model = build().eval()
    batch = make_batch([5, 3, 9])
    assert model.score_candidates(batch).shape == (3, 6)
    assert model.score_all(batch).shape == (3, NUM_ITEMS + 1)
    assert model.user_vectors(batch).shape == (3, DIM)
    states, mask = model.sequence_states(batch)
    assert states.shape == (3, 9, DIM) and mask.sum(1).tolist() == [5, 3, 9]
    assert torch.all(states[~mask] == 0)
    assert model.loss(batch).shape == ()
    assert repr(model).startswith(f"{type(model).__name__}(num_items={NUM_ITEMS}, max_len=12")
    counts = model.num_parameters()
    assert counts["params"] - counts["params_without_item_table"] == (NUM_ITEMS + 1) * DIM


def test_default_configuration_builds(build):
    cls = SASRec if build.name == "sasrec" else GRU4Rec
    model = cls(NUM_ITEMS, MAX_LEN).eval()
    assert model.dim == 32 and model.dropout_p == 0.2 and not model.history_targets
    assert model.score_all(make_batch([4, 2])).shape == (2, NUM_ITEMS + 1)


@pytest.mark.parametrize("history_targets", [False, True])
def test_gradients_reach_every_parameter(build, history_targets):
    model = build(history_targets=history_targets, dropout=0.1).train()
    loss = model.loss(make_batch([5, 3, 8, 1]))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.all(model.item_emb.weight.grad[0] == 0)  # padding row


def test_same_seed_same_outputs(build):
    batch = make_batch([5, 3, 8])
    a, b = build(seed=3, history_targets=True), build(seed=3, history_targets=True)
    with torch.no_grad():
        assert torch.equal(a.eval().score_all(batch), b.eval().score_all(batch))
        torch.manual_seed(7)
        loss_a = a.train().loss(batch)
        torch.manual_seed(7)
        loss_b = b.train().loss(batch)
    assert torch.equal(loss_a, loss_b)
    assert not torch.equal(build(seed=4).eval().score_all(batch), a.eval().score_all(batch))


@pytest.mark.parametrize("chunk_size", [8192, 7])
def test_score_all_matches_candidates(build, chunk_size):
    model = build().eval()
    batch = make_batch([5, 3, 8, 1])
    with torch.no_grad():
        full = model.score_all(batch, chunk_size=chunk_size)
        cand = model.score_candidates(batch)
    assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        model.score_all(batch, chunk_size=0)


def test_states_are_causal(build):
    model = build().eval()
    gen = torch.Generator().manual_seed(1)
    items = torch.randint(1, NUM_ITEMS + 1, (8,), generator=gen)
    changed = items.clone()
    changed[5:] = (changed[5:] % NUM_ITEMS) + 1  # every item after t = 4 differs
    with torch.no_grad():
        s1, _ = model.sequence_states(make_batch(items=[items]))
        s2, _ = model.sequence_states(make_batch(items=[changed]))
        prefix, _ = model.sequence_states(make_batch(items=[items[:5]]))
    assert torch.allclose(s1[0, :5], s2[0, :5], atol=1e-6)
    assert not torch.allclose(s1[0, 5:], s2[0, 5:])
    # a prefix alone gets the states it has inside the full sequence
    assert torch.allclose(prefix[0], s1[0, :5], atol=1e-5)
    # the last item changes the user vector
    last = items.clone()
    last[-1] = last[-1] % NUM_ITEMS + 1
    with torch.no_grad():
        u1 = model.user_vectors(make_batch(items=[items]))
        u2 = model.user_vectors(make_batch(items=[last]))
    assert not torch.allclose(u1, u2)


def test_sequences_of_length_one(build):
    model = build(history_targets=True).eval()
    batch = make_batch([1, 1, 1])
    with torch.no_grad():
        assert torch.isfinite(model.score_all(batch)).all()
        # no position has a next item: the loss is the candidate BCE alone
        logits = model.score_candidates(batch)
        expect = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        assert torch.allclose(model.loss(batch), expect)


def test_padding_does_not_leak(build):
    model = build().eval()
    gen = torch.Generator().manual_seed(2)
    items = [torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) for n in (3, 12, 1, 7)]
    with torch.no_grad():
        together = model.score_all(make_batch(items=items))
        for i, x in enumerate(items):
            alone = model.score_all(make_batch(items=[x]))
            assert torch.allclose(together[i], alone[0], atol=1e-5), i


def test_long_sequences_are_cut_to_the_most_recent_items(build):
    model = build().eval()
    gen = torch.Generator().manual_seed(5)
    long = torch.randint(1, NUM_ITEMS + 1, (MAX_LEN + 8,), generator=gen)
    short = torch.randint(1, NUM_ITEMS + 1, (4,), generator=gen)
    batch = make_batch(items=[long, short])
    with torch.no_grad():
        items, mask = model.dense_items(batch)
        assert items.shape == (2, MAX_LEN) and mask.sum(1).tolist() == [MAX_LEN, 4]
        assert torch.equal(items[0], long[-MAX_LEN:]) and torch.equal(items[1, :4], short)
        scores = model.score_all(batch)
        cut = model.score_all(make_batch(items=[long[-MAX_LEN:], short]))
    assert torch.allclose(scores, cut, atol=1e-6)
    assert batch.x.numel() == MAX_LEN + 12  # the batch itself is untouched


def test_history_targets_add_a_finite_term(build):
    batch = make_batch([6, 4, 9])
    plain = build(seed=0, dropout=0.0).train()
    extra = build(seed=0, dropout=0.0, history_targets=True).train()
    torch.manual_seed(0)
    base = plain.loss(batch)
    torch.manual_seed(0)
    total = extra.loss(batch)
    assert torch.isfinite(total) and total > base
    total.backward()
    assert all(p.grad is not None for p in extra.parameters())
    # the term is the mean over next-item positions of BCE(pos) + BCE(neg)
    states, mask = extra.sequence_states(batch)
    items, _ = extra.dense_items(batch)
    torch.manual_seed(1)
    term = extra.history_loss(states, mask, items)
    torch.manual_seed(1)
    neg = torch.randint(1, NUM_ITEMS + 1, (5 + 3 + 8,))
    h = states[:, :-1][mask[:, 1:]]
    pos = items[:, 1:][mask[:, 1:]]
    emb = extra.item_emb.weight
    manual = -(torch.nn.functional.logsigmoid((h * emb[pos]).sum(-1))
               + torch.nn.functional.logsigmoid(-(h * emb[neg]).sum(-1))).mean()
    assert torch.allclose(term, manual, atol=1e-6)


def test_bad_batches_and_arguments(build):
    model = build()
    with pytest.raises(ValueError, match="item ids"):
        model.score_all(make_batch(items=[torch.tensor([1, NUM_ITEMS + 1])]))
    batch = make_batch([3, 2])
    del batch.candidates
    with pytest.raises(ValueError, match="candidates"):
        model.score_candidates(batch)
    batch = make_batch([3, 2])
    batch.candidates = batch.candidates[:1]
    with pytest.raises(ValueError, match="candidates"):
        model.loss(batch)
    batch = make_batch([3, 2])
    del batch.labels
    with pytest.raises(ValueError, match="labels"):
        model.loss(batch)
    batch = make_batch([3, 2])
    batch.x = batch.x.float()
    with pytest.raises(ValueError, match="integer"):
        model.score_all(batch)
    with pytest.raises(ValueError, match="max_len"):
        type(model)(NUM_ITEMS, 0)
    with pytest.raises(ValueError, match="dropout"):
        type(model)(NUM_ITEMS, MAX_LEN, dropout=1.0)
    with pytest.raises(ValueError, match="num_items"):
        type(model)(0, MAX_LEN)


def test_sasrec_and_gru4rec_specific_arguments():
    with pytest.raises(ValueError, match="heads"):
        SASRec(NUM_ITEMS, MAX_LEN, dim=10, heads=3)
    with pytest.raises(ValueError, match="num_blocks"):
        SASRec(NUM_ITEMS, MAX_LEN, num_blocks=0)
    with pytest.raises(ValueError, match="num_layers"):
        GRU4Rec(NUM_ITEMS, MAX_LEN, num_layers=0)


def test_sasrec_input_is_scaled_embedding_plus_position():
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, MAX_LEN, dim=DIM, num_blocks=1, dropout=0.0).eval()
    captured = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: captured.update(h=args[0]))
    items = torch.tensor([3, 7, 1])
    with torch.no_grad():
        model.sequence_states(make_batch(items=[items]))
        expect = model.item_emb.weight[items] * math.sqrt(DIM) + model.pos_emb.weight[:3]
    assert torch.allclose(captured["h"][0], expect)


TINY = {"num_users": 60, "num_items": 50, "num_topics": 4, "length": (40, 50)}


@pytest.fixture(scope="module")
def paper_data():
    opts = DataOptions(format="synthetic", window=20, history=12, negatives=8,
                       min_user_len=40, synthetic=TINY)
    return prepare_dataset(opts, cache_dir=None)


@pytest.fixture(scope="module")
def loo_data():
    opts = DataOptions(format="synthetic", protocol="loo", max_len=12, negatives=8,
                       synthetic=TINY)
    return prepare_dataset(opts, cache_dir=None)


@pytest.mark.parametrize("history_targets", [False, True])
def test_fit_lowers_the_loss(build, paper_data, history_targets):
    torch.manual_seed(0)
    model = type(build())(paper_data.num_items, 12, dim=DIM, dropout=0.1,
                          history_targets=history_targets)
    config = TrainConfig(epochs=4, patience=99, batch_size=32, lr=5e-3, progress=False)
    result = fit(model, paper_data, config, log=None)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0], losses
    assert 0.0 <= result.best_valid["auc/sampled"] <= 1.0


def test_fit_and_evaluate_leave_one_out(build, loo_data):
    torch.manual_seed(0)
    model = type(build())(loo_data.num_items, 12, dim=DIM, history_targets=True)
    config = TrainConfig(epochs=2, patience=99, batch_size=32, lr=5e-3, progress=False)
    result = fit(model, loo_data, config, log=None)
    assert result.epochs == 2
    metrics = evaluate(model, loo_data, "test")
    assert {"hr@10/full", "ndcg@10/full", "mrr/full", "auc/sampled"} <= set(metrics)
