"""ComiRec-SA and ComiRec-DR on the shared model interface."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models.base import candidate_loss
from mdgr_graph.models.baselines.comirec import ComiRecDR, ComiRecSA, squash
from mdgr_graph.train import TrainConfig, evaluate, fit

NUM_ITEMS = 40
MAX_LEN = 12
DIM = 16
K = 3

MODELS = {
    "sa": lambda **kw: ComiRecSA(NUM_ITEMS, MAX_LEN, **{"dim": DIM, "interests": K, **kw}),
    "dr": lambda **kw: ComiRecDR(NUM_ITEMS, MAX_LEN, **{"dim": DIM, "interests": K, **kw}),
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
    assert model.interests(batch).shape == (3, K, DIM)
    assert model.score_candidates(batch).shape == (3, 6)
    assert model.score_all(batch).shape == (3, NUM_ITEMS + 1)
    assert model.loss(batch).shape == ()
    assert repr(model).startswith(
        f"{type(model).__name__}(num_items={NUM_ITEMS}, max_len=12, dim={DIM}, interests={K}"
    )
    counts = model.num_parameters()
    assert counts["params"] - counts["params_without_item_table"] == (NUM_ITEMS + 1) * DIM
    assert not hasattr(model, "sequence_states") and not hasattr(model, "history_loss")


def test_default_configuration_builds(build):
    cls = type(build())
    model = cls(NUM_ITEMS, MAX_LEN).eval()
    assert model.dim == 32 and model.num_interests == 4
    if cls is ComiRecSA:
        assert model.hidden == 128 and model.dropout_p == 0.1
    else:
        assert model.routing_iters == 3
    assert model.interests(make_batch([4, 2])).shape == (2, 4, 32)
    assert model.score_all(make_batch([4, 2])).shape == (2, NUM_ITEMS + 1)


def test_score_is_the_max_over_interests(build):
    model = build().eval()
    batch = make_batch([5, 3, 8])
    with torch.no_grad():
        v = model.interests(batch)
        expect = torch.einsum("bkd,bcd->bkc", v, model.item_emb(batch.candidates)).amax(1)
        assert torch.allclose(model.score_candidates(batch), expect, atol=1e-6)
        # the interests differ from one another
        assert not torch.allclose(v[:, 0], v[:, 1])


def test_gradients_reach_every_parameter(build):
    model = build().train()
    loss = model.loss(make_batch([5, 3, 8, 1, 12, 7], num_candidates=10))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.all(model.item_emb.weight.grad[0] == 0)  # padding row


def test_same_seed_same_outputs(build):
    batch = make_batch([5, 3, 8])
    a, b = build(seed=3), build(seed=3)
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


def test_padding_does_not_leak(build):
    model = build().eval()
    gen = torch.Generator().manual_seed(2)
    items = [torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) for n in (3, 12, 1, 7)]
    with torch.no_grad():
        together = model.score_all(make_batch(items=items))
        interests = model.interests(make_batch(items=items))
        for i, x in enumerate(items):
            alone = model.score_all(make_batch(items=[x]))
            assert torch.allclose(together[i], alone[0], atol=1e-5), i
            assert torch.allclose(interests[i], model.interests(make_batch(items=[x]))[0],
                                  atol=1e-6), i


@pytest.mark.parametrize("loss", ["sampled_softmax", "bce"])
def test_sequences_of_length_one(build, loss):
    model = build(loss=loss).eval()
    batch = make_batch([1, 1, 1])
    with torch.no_grad():
        assert torch.isfinite(model.score_all(batch)).all()
        logits = model.score_candidates(batch)
        assert torch.allclose(model.loss(batch), candidate_loss(logits, batch.labels, loss))
    model.train().loss(batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


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


def test_bad_batches_and_arguments(build):
    model = build()
    cls = type(model)
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
        model.interests(batch)
    with pytest.raises(ValueError, match="max_len"):
        cls(NUM_ITEMS, 0)
    with pytest.raises(ValueError, match="num_items"):
        cls(0, MAX_LEN)
    with pytest.raises(ValueError, match="dim"):
        cls(NUM_ITEMS, MAX_LEN, dim=0)
    with pytest.raises(ValueError, match="interests"):
        cls(NUM_ITEMS, MAX_LEN, interests=0)
    with pytest.raises(ValueError, match="unknown candidate loss 'softmax'"):
        cls(NUM_ITEMS, MAX_LEN, loss="softmax")


def test_default_loss_is_the_papers_sampled_softmax(build):
    model = build()
    assert model.candidate_loss_kind == "sampled_softmax"
    assert "loss='sampled_softmax'" in repr(model)
    batch = make_batch([4, 2, 6], num_candidates=7)
    model.eval()
    with torch.no_grad():
        logits = model.score_candidates(batch)
        expect = candidate_loss(logits, batch.labels, "sampled_softmax")
        assert torch.allclose(model.loss(batch), expect)
        assert not torch.allclose(expect, candidate_loss(logits, batch.labels, "bce"))


def test_specific_arguments():
    with pytest.raises(ValueError, match="dropout"):
        ComiRecSA(NUM_ITEMS, MAX_LEN, dropout=1.0)
    with pytest.raises(ValueError, match="hidden"):
        ComiRecSA(NUM_ITEMS, MAX_LEN, hidden=0)
    with pytest.raises(ValueError, match="routing_iters"):
        ComiRecDR(NUM_ITEMS, MAX_LEN, routing_iters=0)


def test_sa_interests_are_masked_attention_over_the_history():
    torch.manual_seed(0)
    model = ComiRecSA(NUM_ITEMS, MAX_LEN, dim=DIM, interests=K, hidden=10).eval()
    items = [torch.tensor([3, 7, 1, 9]), torch.tensor([5, 2])]
    with torch.no_grad():
        v = model.interests(make_batch(items=items))
        for b, x in enumerate(items):
            h = model.item_emb.weight[x]  # [n, d]
            hp = h + model.pos_emb.weight[: x.numel()]
            logits = model.att_out.weight @ torch.tanh(
                model.att_hidden.weight @ hp.t() + model.att_hidden.bias[:, None]
            ) + model.att_out.bias[:, None]  # [K, n]
            expect = torch.softmax(logits, dim=1) @ h
            assert torch.allclose(v[b], expect, atol=1e-6), b
        att, _ = model.attention(*model.dense_items(make_batch(items=items)))
        assert torch.allclose(att.sum(-1), torch.ones(2, K)) and torch.all(att[1, :, 2:] == 0)


def reference_routing(model: ComiRecDR, x: torch.Tensor) -> torch.Tensor:
    """Dynamic routing of one unpadded sequence, written out step by step."""
    e = model.item_emb.weight[x]  # [n, d]
    votes = torch.stack([e @ s.t() for s in model.bilinear])  # [K, n, d]
    b = torch.zeros(model.num_interests, x.numel())
    for it in range(model.routing_iters):
        c = torch.softmax(b, dim=0)
        v = squash((c.unsqueeze(-1) * votes).sum(1))  # [K, d]
        if it < model.routing_iters - 1:
            b = b + (votes * v.unsqueeze(1)).sum(-1)
    return v


@pytest.mark.parametrize("iters", [1, 3])
def test_dr_routing_matches_a_direct_computation(iters):
    torch.manual_seed(0)
    model = ComiRecDR(NUM_ITEMS, MAX_LEN, dim=DIM, interests=K, routing_iters=iters)
    items = [torch.tensor([3, 7, 1, 9, 3]), torch.tensor([5]), torch.tensor([2, 8])]
    with torch.no_grad():
        v = model.interests(make_batch(items=items))
        for b, x in enumerate(items):
            assert torch.allclose(v[b], reference_routing(model, x), atol=1e-6), b
    # squashed capsules have norm < 1
    assert torch.all(v.norm(dim=-1) < 1)


def test_dr_routing_logits_are_not_back_propagated():
    torch.manual_seed(0)
    model = ComiRecDR(NUM_ITEMS, MAX_LEN, dim=DIM, interests=K, routing_iters=3)
    batch = make_batch([6, 4])
    items, mask = model.dense_items(batch)
    v = model.interests(batch)
    torch.autograd.backward(v.sum())
    grad = model.bilinear.grad.clone()
    model.zero_grad()
    # the same capsules with the coupling coefficients held constant
    votes = model.votes(items, mask)
    with torch.no_grad():
        _, coupling = model.route(votes, mask)
    fixed = squash(torch.einsum("bkl,bkld->bkd", coupling, votes))
    assert torch.allclose(fixed, v, atol=1e-6)
    fixed.sum().backward()
    assert torch.allclose(model.bilinear.grad, grad, atol=1e-6)


def test_fit_lowers_the_loss(build, paper_data):
    torch.manual_seed(0)
    model = type(build())(paper_data.num_items, 20, dim=DIM, interests=K)
    config = TrainConfig(epochs=4, patience=99, batch_size=32, lr=5e-3, progress=False)
    result = fit(model, paper_data, config, log=None)
    losses = [row["loss"] for row in result.history]
    assert losses[-1] < losses[0], losses
    assert 0.0 <= result.best_valid["auc/sampled"] <= 1.0


def test_fit_and_evaluate_leave_one_out(build, loo_data):
    torch.manual_seed(0)
    model = type(build())(loo_data.num_items, 20, dim=DIM, interests=K)
    config = TrainConfig(epochs=2, patience=99, batch_size=32, lr=5e-3, progress=False)
    result = fit(model, loo_data, config, log=None)
    assert result.epochs == 2
    metrics = evaluate(model, loo_data, "test")
    assert {"hr@10/full", "ndcg@10/full", "mrr/full", "auc/sampled"} <= set(metrics)
    assert all(0.0 <= value <= 1.0 for value in metrics.values())
