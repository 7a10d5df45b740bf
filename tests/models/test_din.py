"""TargetAttentionRec: DIN-style target attention without a graph (``--model din``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models import MODELS, NEURAL_BASELINES, build_model
from mdgr_graph.models.base import candidate_loss
from mdgr_graph.models.baselines.din import TargetAttentionRec
from mdgr_graph.train import TrainConfig, evaluate, fit

NUM_ITEMS = 40
D = 16

pytestmark = pytest.mark.usefixtures("one_thread")


def make_batch(lengths, num_candidates=6, seed=0, items=None, positives=None):
    gen = torch.Generator().manual_seed(seed)
    positives = num_candidates // 2 if positives is None else positives
    graphs = []
    for g, n in enumerate(lengths):
        x = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) if items is None else items[g]
        days = torch.rand(n, generator=gen).cumsum(0)
        days = days - days[0]
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < positives).float()
        graphs.append(make_sequence_graph(x, days, candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


def small_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    opts = dict(max_len=12, dim=D, mlp_hidden=8, att_hidden=8, train_negatives=3)
    opts.update(kwargs)
    return TargetAttentionRec(NUM_ITEMS, **opts)


def concat_reference(model, states, mask, items):
    """The activation unit literally on ``[h, e, h - e, h * e]``, one pair at a time."""
    num_seq, num_cand = items.shape[:2]
    logits = torch.empty(num_seq, num_cand, states.size(1))
    for b in range(num_seq):
        for c in range(num_cand):
            for j in range(states.size(1)):
                h, e = states[b, j], items[b, c]
                unit = model.att_act(model.att_in(torch.cat([h, e, h - e, h * e])))
                logits[b, c, j] = model.att_out(unit)[0]
    if model.normalise == "softmax":
        att = torch.softmax(logits.masked_fill(~mask.unsqueeze(1), float("-inf")), -1)
    else:
        att = logits * mask.unsqueeze(1)
    user = att @ states
    hidden = F.relu(model.mlp_hidden(torch.cat([user, items, user * items], -1)))
    return logits, model.mlp_out(hidden).squeeze(-1)


# ---------------------------------------------------------------- the computation
@pytest.mark.parametrize("normalise", ["softmax", "none"])
def test_split_first_layer_equals_the_concatenation(normalise):
    model = small_model(normalise=normalise).eval()
    batch = make_batch([5, 1, 8])
    with torch.no_grad():
        history = model.history(batch)
        items = model.item_emb(batch.candidates)
        fast = model.attention_logits(history, items)
        ref_logits, ref_scores = concat_reference(model, history.states, history.mask, items)
        mask = history.mask.unsqueeze(1).expand_as(fast)
        assert torch.allclose(fast[mask], ref_logits[mask], atol=1e-5)
        assert torch.allclose(model.score_candidates(batch), ref_scores, atol=1e-5)


@pytest.mark.parametrize("encoder", [True, False])
def test_shapes_and_score_all_matches_score_candidates(encoder):
    model = small_model(encoder=encoder, candidate_chunk=7).eval()
    batch = make_batch([6, 9, 4, 1])
    with torch.no_grad():
        cand = model.score_candidates(batch)
        full = model.score_all(batch, chunk_size=11)  # chunks of min(11, 7) items
    assert cand.shape == (4, 6) and full.shape == (4, NUM_ITEMS + 1)
    assert torch.isfinite(cand).all() and torch.isfinite(full).all()
    assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-5)


def test_encoder_false_reads_raw_item_embeddings():
    model = small_model(encoder=False).eval()
    assert model.encoder is None
    batch = make_batch([5, 3])
    states, mask = model.history_states(batch)
    assert torch.equal(states[0, :5], model.item_emb(batch.x[:5]))
    assert torch.equal(states[1, :3], model.item_emb(batch.x[5:]))
    assert not mask[1, 3:].any() and torch.all(states[1, 3:] == 0)
    # order does not matter without an encoder: attention pooling is a set function
    perm = make_batch([5, 3], items=[batch.x[:5].flip(0), batch.x[5:].flip(0)])
    perm.candidates = batch.candidates
    with torch.no_grad():
        assert torch.allclose(model.score_candidates(batch), model.score_candidates(perm),
                              atol=1e-5)


def test_encoder_is_mdgrs_sequence_encoder():
    from mdgr_graph.models.mdgr import SequenceEncoder

    model = small_model().eval()
    assert type(model.encoder) is SequenceEncoder
    batch = make_batch([4, 7])
    with torch.no_grad():
        states, mask = model.history_states(batch)
        direct = model.encoder(model.item_emb(batch.x), batch.t, batch.pos, batch.batch, 2)
    assert torch.allclose(states[mask], direct, atol=1e-6)


def test_normalise_modes():
    batch = make_batch([5, 2])
    soft, raw = small_model().eval(), small_model(normalise="none").eval()
    assert soft.att_out.bias is None and raw.att_out.bias is not None
    with torch.no_grad():
        items = soft.item_emb(batch.candidates)
        att = soft.attention(soft.history(batch), items)
        assert torch.allclose(att.sum(-1), torch.ones(2, 6), atol=1e-6)
        assert torch.all(att[1, :, 2:] == 0)
        raw.att_out.bias.fill_(0.7)  # the unnormalised sum feels a shift of the logits
        history = raw.history(batch)
        att = raw.attention(history, items)
        logits = raw.attention_logits(history, items)
        assert torch.equal(att[0], logits[0]) and torch.all(att[1, :, 2:] == 0)
        assert not torch.allclose(att.sum(-1), torch.ones(2, 6))


def test_padding_does_not_leak():
    model = small_model().eval()
    batch = make_batch([4, 11, 1])
    with torch.no_grad():
        together = model.score_candidates(batch)
        full = model.score_all(batch)
        for g in range(3):
            one = Batch.from_data_list([batch.get_example(g)])
            assert torch.allclose(model.score_candidates(one)[0], together[g], atol=1e-5), g
            assert torch.allclose(model.score_all(one)[0], full[g], atol=1e-5), g


@pytest.mark.parametrize("encoder", [True, False])
def test_single_item_history(encoder):
    model = small_model(encoder=encoder)
    batch = make_batch([1], items=[torch.tensor([7])])
    model.eval()
    with torch.no_grad():
        att = model.attention(model.history(batch), model.item_emb(batch.candidates))
        scores = model.score_candidates(batch)
    assert torch.allclose(att, torch.ones(1, 6, 1))
    assert scores.shape == (1, 6) and torch.isfinite(scores).all()
    model.train()
    model.loss(batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_long_sequences_are_cut_to_the_most_recent_items():
    model = small_model(max_len=5).eval()
    batch = make_batch([9, 3])
    kept_days = batch.t[4:9] - batch.t[4]
    short = Batch.from_data_list([
        make_sequence_graph(batch.x[4:9], kept_days),
        make_sequence_graph(batch.x[9:], batch.t[9:]),
    ])
    short.candidates = batch.candidates
    with torch.no_grad():
        assert torch.allclose(model.score_candidates(batch), model.score_candidates(short),
                              atol=1e-5)


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("encoder", [True, False])
def test_gradients_reach_every_parameter(encoder):
    for normalise in ("softmax", "none"):
        model = small_model(encoder=encoder, normalise=normalise).train()
        model.loss(make_batch([6, 9, 4, 7, 1])).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (normalise, name)
        assert torch.all(model.item_emb.weight.grad[0] == 0)  # padding row


def test_same_seed_identical_and_other_seed_differs():
    batch = make_batch([6, 9, 4])
    a, b = small_model().eval(), small_model().eval()
    with torch.no_grad():
        assert torch.equal(a.score_candidates(batch), b.score_candidates(batch))
        c = small_model(seed=1).eval()
        assert not torch.allclose(a.score_candidates(batch), c.score_candidates(batch))
    torch.manual_seed(5)
    loss_a = a.train().loss(batch)
    torch.manual_seed(5)
    assert torch.equal(loss_a, b.train().loss(batch))  # same draw, same dropout
    with torch.no_grad():
        a.reset_parameters()
    assert torch.all(a.item_emb.weight[0] == 0)


def _count_scored(model, batch):
    """Candidates per row the loss scores (read at the prediction MLP)."""
    seen = []
    handle = model.mlp_hidden.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        loss = model.loss(batch)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0][1], loss


def test_loss_scores_only_the_sampled_candidates():
    batch = make_batch([6, 9, 4], num_candidates=10, positives=3)
    model = small_model(train_positives=2, train_negatives=3).train()
    count, loss = _count_scored(model, batch)
    assert count == 5 and torch.isfinite(loss)
    # the drawn candidates: P positives then N negatives of every row
    from mdgr_graph.models.base import sample_candidates

    torch.manual_seed(3)
    model.eval()  # no dropout: the loss is a function of the drawn candidates alone
    with torch.no_grad():
        loss = model.loss(batch)
        torch.manual_seed(3)
        cand, labels = sample_candidates(batch.candidates, batch.labels, 2, 3)
        assert torch.equal(labels, torch.tensor([[1.0, 1, 0, 0, 0]] * 3))
        drawn = batch.clone()
        drawn.candidates, drawn.labels = cand, labels
        expected = candidate_loss(model.score_candidates(drawn), labels, "bce")
    assert torch.allclose(loss, expected, atol=1e-6)
    # both None: every candidate
    every = small_model(train_positives=None, train_negatives=None).train()
    count, _ = _count_scored(every, batch)
    assert count == 10
    every.eval()
    with torch.no_grad():
        assert torch.allclose(every.loss(batch),
                              candidate_loss(every.score_candidates(batch), batch.labels))
    # the loss kind is honoured
    every.candidate_loss_kind = "sampled_softmax"
    with torch.no_grad():
        assert torch.allclose(every.loss(batch), candidate_loss(
            every.score_candidates(batch), batch.labels, "sampled_softmax"))


def test_loss_needs_enough_positives_and_negatives():
    model = small_model(train_positives=2, train_negatives=1)
    with pytest.raises(ValueError, match="row 0 has 1 positives.*train_positives=2"):
        model.loss(make_batch([3, 4], positives=1))
    model = small_model(train_positives=1, train_negatives=6)
    with pytest.raises(ValueError, match="negatives"):
        model.loss(make_batch([3, 4], positives=1))


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs, match", [
    ({"normalise": "sigmoid"}, "normalise"),
    ({"dim": 0}, "dim"),
    ({"max_len": 0}, "max_len"),
    ({"att_hidden": 0}, "att_hidden"),
    ({"mlp_hidden": 0}, "mlp_hidden"),
    ({"candidate_chunk": 0}, "candidate_chunk"),
    ({"train_positives": None}, "both"),
    ({"train_negatives": None}, "both"),
    ({"train_positives": -1}, "train_positives"),
    ({"train_negatives": 1.5}, "train_negatives"),
    ({"train_positives": 0, "train_negatives": 0}, "> 0"),
    ({"time_dim": 7}, "time_dim"),
    ({"attn_heads": 3}, "attn_heads"),
    ({"dropout": 1.0}, "dropout"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TargetAttentionRec(NUM_ITEMS, **{"dim": D, **kwargs})


def test_bad_batches():
    model = small_model()
    batch = make_batch([3, 4])
    batch.candidates = batch.candidates.reshape(-1)
    with pytest.raises(ValueError, match="candidates"):
        model.score_candidates(batch)
    bad = make_batch([3], items=[torch.tensor([1, 2, NUM_ITEMS + 1])])
    with pytest.raises(ValueError, match="item ids"):
        model.score_all(bad)


def test_repr_names_every_option_that_changes_the_result():
    text = repr(small_model(encoder=False, normalise="none", train_positives=None,
                            train_negatives=None))
    assert text == ("TargetAttentionRec(num_items=40, max_len=12, dim=16, encoder=False, "
                    "att_hidden=8, mlp_hidden=8, normalise='none', train_positives=None, "
                    "train_negatives=None, loss='bce')")
    assert "encoder=True, time_dim=16, pos_dim=16, attn_heads=2, dropout=0.1" in repr(
        small_model())


# ---------------------------------------------------------------- registry and fit
def test_registered_and_built(paper_data):
    assert "din" in MODELS and NEURAL_BASELINES["din"] is TargetAttentionRec
    torch.manual_seed(0)
    model = build_model("din", paper_data, dim=D)
    assert type(model) is TargetAttentionRec and model.max_len == 20


def test_fit_paper_protocol(paper_data):
    torch.manual_seed(0)
    model = build_model("din", paper_data, dim=D)
    config = TrainConfig(epochs=2, patience=9, batch_size=32, lr=5e-3, progress=False)
    result = fit(model, paper_data, config, log=None)
    assert result.epochs == 2 and "auc/sampled" in result.best_valid
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in result.history)
    metrics = evaluate(model, paper_data, "test")
    assert metrics and all(0.0 <= value <= 1.0 for value in metrics.values())
