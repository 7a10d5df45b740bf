"""The losses of models.base: binary cross-entropy, sampled softmax over the candidates,
and the softmax over the whole catalogue (``"ce"``, issue 27)."""

from __future__ import annotations

import math

import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models import MDGR, SURGE, BERT4Rec, ComiRecSA, DCRec, GRU4Rec, SASRec
from mdgr_graph.models.base import (
    CANDIDATE_LOSSES,
    SequentialRecommender,
    candidate_loss,
    catalogue_softmax_loss,
    gbce_loss,
    max_interest_logsumexp,
    sampled_softmax_loss,
)


def reference_sampled_softmax(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One cross-entropy per positive, over that positive and its row's negatives."""
    terms = []
    for row, lab in zip(logits, labels.bool(), strict=True):
        for p in lab.nonzero().flatten():
            scores = torch.cat([row[p].view(1), row[~lab]])
            terms.append(torch.nn.functional.cross_entropy(scores.view(1, -1),
                                                           torch.zeros(1, dtype=torch.long)))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("positives", [1, 3])
def test_sampled_softmax_matches_one_cross_entropy_per_positive(positives):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 9, generator=gen, requires_grad=True)
    labels = torch.zeros(5, 9)
    labels[:, :positives] = 1
    labels[2] = labels[2].flip(0)  # positives need not come first
    loss = sampled_softmax_loss(logits, labels)
    assert torch.allclose(loss, reference_sampled_softmax(logits, labels), atol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_sampled_softmax_ignores_a_shift_of_a_row_and_bce_does_not():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=gen)
    labels = (torch.arange(6) < 2).float().expand(4, 6)
    shift = torch.randn(4, 1, generator=gen) * 5
    assert torch.allclose(sampled_softmax_loss(logits + shift, labels),
                          sampled_softmax_loss(logits, labels), atol=1e-5)
    assert not torch.allclose(candidate_loss(logits + shift, labels, "bce"),
                              candidate_loss(logits, labels, "bce"))


def test_edge_cases_and_errors():
    logits = torch.randn(2, 3, requires_grad=True)
    # a row without negatives: the positive is the whole softmax, loss 0
    assert sampled_softmax_loss(logits, torch.ones(2, 3)).item() == 0.0
    none = sampled_softmax_loss(logits, torch.zeros(2, 3))  # no positive: 0 with a graph
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match=r"must both be \[B, C\]"):
        sampled_softmax_loss(logits, torch.ones(2, 4))
    with pytest.raises(ValueError, match="unknown candidate loss 'hinge'"):
        candidate_loss(logits, torch.ones(2, 3), "hinge")
    assert CANDIDATE_LOSSES == ("bce", "sampled_softmax", "ce", "gbce")
    with pytest.raises(ValueError, match="softmax over the catalogue"):
        candidate_loss(logits, torch.ones(2, 3), "ce")
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0]])
    assert torch.allclose(candidate_loss(logits, labels),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits, labels))


def test_candidate_loss_kind_is_checked_when_set():
    model = SequentialRecommender(5)
    assert model.candidate_loss_kind == "bce"
    model.candidate_loss_kind = "sampled_softmax"
    assert model.candidate_loss_kind == "sampled_softmax"
    with pytest.raises(ValueError, match="unknown candidate loss 'hinge'"):
        model.candidate_loss_kind = "hinge"
    assert model.candidate_loss_kind == "sampled_softmax"
    assert SequentialRecommender(5).candidate_loss_kind == "bce"  # per instance


def test_catalogue_softmax_is_cross_entropy_over_the_real_items():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 11, generator=gen, requires_grad=True)
    rows, targets = torch.tensor([0, 1, 1, 3]), torch.tensor([3, 1, 10, 7])
    loss = catalogue_softmax_loss(logits, rows, targets)
    expected = torch.nn.functional.cross_entropy(logits[rows, 1:], targets - 1)
    assert torch.allclose(loss, expected, atol=1e-6)
    # padding column 0 takes no part: changing it changes nothing
    shifted = logits.detach().clone()
    shifted[:, 0] = 100.0
    assert torch.allclose(catalogue_softmax_loss(shifted, rows, targets), expected, atol=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    # chunked and checkpointed: the same value and gradient
    chunked = catalogue_softmax_loss(lambda r: logits[r], rows, targets, chunk_size=3)
    assert torch.allclose(chunked, loss, atol=1e-6)
    (chunk_grad,) = torch.autograd.grad(chunked, logits)
    assert torch.allclose(chunk_grad, grad, atol=1e-6)
    with pytest.raises(ValueError, match="at least one positive"):
        catalogue_softmax_loss(logits, rows[:0], targets[:0])


NUM_ITEMS = 25


def _batch(num_graphs=3, length=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for _ in range(num_graphs):
        x = torch.randint(1, NUM_ITEMS + 1, (length,), generator=gen)
        cand = torch.randint(1, NUM_ITEMS + 1, (4,), generator=gen)
        graphs.append(make_sequence_graph(x, torch.arange(length, dtype=torch.float),
                                          candidates=cand,
                                          labels=torch.tensor([1.0, 0, 0, 0])))
    return Batch.from_data_list(graphs)


#: Models whose whole loss is the candidate (or catalogue) loss, without extra terms.
ONLY_CANDIDATE_LOSS = {
    "sasrec": lambda: SASRec(NUM_ITEMS, max_len=8, dim=8),
    "gru4rec": lambda: GRU4Rec(NUM_ITEMS, max_len=8, dim=8),
    "bert4rec": lambda: BERT4Rec(NUM_ITEMS, max_len=8, dim=8, cloze_weight=0.0),
    "mdgr": lambda: MDGR(NUM_ITEMS, dim=8, k=2, m=1, max_len=8, time_dim=4, pos_dim=4),
    "surge": lambda: SURGE(NUM_ITEMS, max_len=8, dim=8, lambda_m=0.0, lambda_a=0.0,
                           lambda_p=0.0),
    "mip": lambda: MDGR.from_variant("mdgr-dgc", NUM_ITEMS, dim=8, k=2, max_len=8,
                                     time_dim=4, pos_dim=4),
    "mdgr-log-m2": lambda: MDGR(NUM_ITEMS, dim=8, k=3, m=2, max_len=8, time_dim=4, pos_dim=4,
                                weighting="log"),
    "comirec-sa": lambda: ComiRecSA(NUM_ITEMS, max_len=8, dim=8, interests=3),
    "mdgr-item-values": lambda: MDGR(NUM_ITEMS, dim=8, k=2, m=1, max_len=8, time_dim=4,
                                     pos_dim=4, pool_values="item"),
}


@pytest.mark.parametrize("make", list(ONLY_CANDIDATE_LOSS.values()),
                         ids=list(ONLY_CANDIDATE_LOSS))
def test_ce_loss_is_the_catalogue_softmax_of_score_all(make):
    torch.manual_seed(0)
    model = make()
    model.eval()  # no dropout: the loss and score_all see the same network
    model.candidate_loss_kind = "ce"
    batch = _batch()
    loss = model.loss(batch)
    targets = batch.candidates.view(3, -1)[:, 0]
    every = model.score_all(batch)
    expected = torch.nn.functional.cross_entropy(every[:, 1:], targets - 1)
    assert torch.allclose(loss, expected, atol=1e-5)
    loss.backward()
    assert model.item_emb.weight.grad.abs().sum() > 0


def reference_max_interest_lse(queries, offsets, items):
    """Autograd through the whole ``[B, k, I]`` scores, the max and the logsumexp."""
    scores = queries @ items.t() + offsets.unsqueeze(-1)
    return torch.logsumexp(scores.amax(dim=1), dim=1)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
def test_max_interest_logsumexp_matches_autograd_of_the_max(chunk_size):
    gen = torch.Generator().manual_seed(1)
    queries = torch.randn(5, 3, 6, generator=gen)
    offsets = torch.randn(5, 3, generator=gen)
    items = torch.randn(23, 6, generator=gen)
    # masked interests as the models pass them: zero query, offset -inf
    mask = torch.rand(5, 3, generator=gen) > 0.4
    mask[:, 0] = True
    queries = queries.masked_fill(~mask.unsqueeze(-1), 0.0)
    offsets = offsets.masked_fill(~mask, float("-inf"))
    # exact ties: row 1's only interests, 1 and 2, score every item 0.5 (a zero query
    # keeps the products exact), so they share each item's gradient
    queries[1], offsets[1], mask[1] = 0.0, float("-inf"), torch.tensor([False, True, True])
    offsets[1, 1:] = 0.5
    weights = torch.rand(5, generator=gen)
    got, expected = [], []
    for fn, out in ((lambda q, c, p: max_interest_logsumexp(q, c, p, chunk_size), got),
                    (reference_max_interest_lse, expected)):
        q, c, p = (t.clone().requires_grad_() for t in (queries, offsets, items))
        value = fn(q, c, p)
        out.extend([value, *torch.autograd.grad((value * weights).sum(), (q, c, p))])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert got[2][~mask].abs().sum() == 0  # nothing reaches a masked interest
    assert got[1][1, 1].abs().sum() > 0
    torch.testing.assert_close(got[1][1, 1], got[1][1, 2])


def test_interest_catalogue_loss_rows_without_positive_and_padding_targets():
    from mdgr_graph.nn.interest import InterestQueries

    gen = torch.Generator().manual_seed(4)
    table = torch.randn(9, 5, generator=gen, requires_grad=True)
    queries = torch.randn(3, 2, 5, generator=gen)
    mask = torch.tensor([[True, False], [False, False], [True, True]])  # row 1: all masked
    q = InterestQueries(queries, torch.zeros(3, 2), mask, queries, torch.ones(3, 2))
    candidates = torch.tensor([[3, 4], [5, 6], [7, 8]])
    labels = torch.tensor([[1, 0], [0, 0], [0, 1]])  # row 1 has no positive
    loss = SequentialRecommender.interest_catalogue_loss(q, table, labels, candidates)
    (grad,) = torch.autograd.grad(loss, table)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    logits = torch.stack([torch.cat([table.new_zeros(1),
                                     (table[1:] @ queries[r][mask[r]].t()).amax(1)])
                          for r in (0, 2)])
    expected = catalogue_softmax_loss(logits, torch.tensor([0, 1]), torch.tensor([3, 8]))
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="padding id 0"):
        SequentialRecommender.interest_catalogue_loss(q, table, labels,
                                                      candidates.masked_fill(labels.bool(), 0))
    q2 = torch.randn(2, 2, 5, requires_grad=True)
    out = max_interest_logsumexp(q2, torch.zeros(2, 2), table.detach()[1:])
    (g,) = torch.autograd.grad(out.sum(), q2, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_max_interest_logsumexp_skips_masked_interests_anywhere_in_a_row(seed):
    """Rows with 1..k interests, masked at any position (not only the last ones), in
    unsorted order: the packed computation returns each row's own value and gradient."""
    gen = torch.Generator().manual_seed(seed)
    batch, k, dim = 9, 5, 4
    mask = torch.rand(batch, k, generator=gen) > 0.5
    mask[torch.arange(batch), torch.randint(k, (batch,), generator=gen)] = True
    mask[3] = False
    mask[3, k - 1] = True  # one interest only, the last one
    mask[5] = True  # every interest
    queries = torch.randn(batch, k, dim, generator=gen).masked_fill(~mask.unsqueeze(-1), 0.0)
    offsets = torch.randn(batch, k, generator=gen).masked_fill(~mask, float("-inf"))
    items = torch.randn(11, dim, generator=gen)
    weights = torch.rand(batch, generator=gen)
    results = []
    for fn in (lambda q, c, p: max_interest_logsumexp(q, c, p, 3), reference_max_interest_lse):
        q, c, p = (t.clone().requires_grad_() for t in (queries, offsets, items))
        value = fn(q, c, p)
        results.append([value, *torch.autograd.grad((value * weights).sum(), (q, c, p))])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
    # each row alone gives the same value: rows do not leak into each other
    for row in range(batch):
        alone = max_interest_logsumexp(queries[row:row + 1], offsets[row:row + 1], items, 3)
        torch.testing.assert_close(alone[0], results[0][0][row])


def test_max_interest_logsumexp_errors():
    q, c, p = torch.zeros(2, 3, 4), torch.zeros(2, 3), torch.zeros(5, 4)
    for args in ((q[0], c, p), (q, c[:, :2], p), (q, c, p[:, :3]), (q, c, p[0])):
        with pytest.raises(ValueError, match="need queries"):
            max_interest_logsumexp(*args)
    with pytest.raises(ValueError, match="chunk_size"):
        max_interest_logsumexp(q, c, p, chunk_size=0)
    with pytest.raises(ValueError, match="row 1 has every interest masked"):
        max_interest_logsumexp(q, c.index_fill(0, torch.tensor([1]), float("-inf")), p)
    with pytest.raises(ValueError, match="at least one row"):
        max_interest_logsumexp(q[:0], c[:0], p)


@pytest.mark.parametrize("name", ["mdgr", "mip", "mdgr-log-m2", "comirec-sa",
                                  "mdgr-item-values"])
def test_interest_catalogue_loss_equals_the_generic_path_with_its_gradient(name):
    torch.manual_seed(0)
    model = ONLY_CANDIDATE_LOSS[name]()
    model.eval()
    model.candidate_loss_kind = "ce"
    assert model.catalogue_by_interests  # model.loss takes the fused path
    batch = _batch(num_graphs=4, seed=3)
    batch.labels[1, 2] = 1.0  # a row with two positives
    grads = []
    for loss_fn in (model.loss,
                    lambda b: model.catalogue_loss(b, b.labels, model.score_all(b))):
        model.zero_grad()
        loss = loss_fn(batch)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()
                                      if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert len(grads[0][1]) == len(grads[1][1]) > 0
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_ce_history_targets_softmax_over_every_position():
    torch.manual_seed(0)
    model = SASRec(NUM_ITEMS, max_len=8, dim=8, history_targets=True)
    model.eval()
    batch = _batch()
    model.candidate_loss_kind = "ce"
    states, mask = model.sequence_states(batch)
    items, _ = model.dense_items(batch)
    logits = states[:, :-1] @ model.item_emb.weight[1:].t()
    history = torch.nn.functional.cross_entropy(logits[mask[:, 1:]], items[:, 1:][mask[:, 1:]] - 1)
    every = model.score_all(batch)
    target = torch.nn.functional.cross_entropy(every[:, 1:], batch.candidates.view(3, -1)[:, 0] - 1)
    assert torch.allclose(model.loss(batch), target + history, atol=1e-5)
    model.HISTORY_CHUNK = 4  # several checkpointed chunks: the same loss
    assert torch.allclose(model.loss(batch), target + history, atol=1e-5)


def test_dcrec_ce_loss_runs_and_build_model_sets_the_kind():
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset
    from mdgr_graph.models import build_model

    synthetic = {"num_users": 30, "num_items": 40, "num_topics": 2, "length": (10, 20),
                 "topics_per_user": (1, 2)}
    prepared = prepare_dataset(DataOptions(protocol="loo", max_len=10, negatives=5,
                                           synthetic=synthetic), cache_dir=None)
    model = build_model("sasrec", prepared, dim=8, loss="ce")
    assert model.candidate_loss_kind == "ce"
    assert build_model("sasrec", prepared, dim=8).candidate_loss_kind == "bce"
    with pytest.raises(ValueError, match="unknown candidate loss"):
        build_model("gru4rec", prepared, dim=8, loss="hinge")
    dcrec = build_model("dcrec", prepared, dim=8, loss="ce")
    assert isinstance(dcrec, DCRec)
    from mdgr_graph.train import TrainConfig, fit

    result = fit(dcrec, prepared, TrainConfig(epochs=1, progress=False, batch_size=16))
    assert math.isfinite(result.history[0]["loss"]) and result.history[0]["loss"] > 0


def test_surge_ce_needs_the_last_item_query():
    model = SURGE(NUM_ITEMS, max_len=8, dim=8, query="candidate")
    with pytest.raises(ValueError, match="SURGE cannot train with loss 'ce'"):
        model.candidate_loss_kind = "ce"
    assert model.candidate_loss_kind == "bce"


# ---------------------------------------------------------------------- gBCE
def reference_gbce(logits, labels, num_items, t):
    """gSASRec's form: the positive's logit transformed so that BCE on it is
    -beta log sigmoid, then the mean BCE over every entry."""
    terms = []
    for row, lab in zip(logits.double(), labels.bool(), strict=True):
        alpha = min(1.0, int((~lab).sum()) / (num_items - 1))
        beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
        for s, positive in zip(row, lab, strict=True):
            if positive:
                transformed = torch.log(1 / (torch.sigmoid(s) ** -beta - 1))
                terms.append(torch.nn.functional.binary_cross_entropy_with_logits(
                    transformed, torch.tensor(1.0, dtype=torch.float64)))
            else:
                terms.append(torch.nn.functional.softplus(s))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("t", [0.0, 0.5, 0.75, 1.0])
def test_gbce_matches_gsasrecs_transformed_logit(t):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 7, generator=gen, requires_grad=True)
    labels = torch.zeros(4, 7)
    labels[:, 0] = 1
    labels[1, 3] = 1  # a row with two positives has one negative fewer
    loss = gbce_loss(logits, labels, num_items=40, t=t)
    assert torch.allclose(loss.double(), reference_gbce(logits.detach(), labels, 40, t),
                          atol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.allclose(candidate_loss(logits, labels, "gbce", num_items=40, gbce_t=t), loss)


def test_gbce_at_t0_is_bce_and_at_t1_scales_the_positives_by_alpha():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, generator=gen)
    labels = (torch.arange(5) == 0).float().expand(3, 5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
    assert torch.allclose(gbce_loss(logits, labels, num_items=100, t=0.0), bce)
    alpha = 4 / 99
    scaled = torch.where(labels.bool(), alpha * torch.nn.functional.softplus(-logits),
                         torch.nn.functional.softplus(logits)).mean()
    assert torch.allclose(gbce_loss(logits, labels, num_items=100, t=1.0), scaled)
    # more negatives than other items: the rate is capped at 1 (plain BCE)
    assert torch.allclose(gbce_loss(logits, labels, num_items=3, t=1.0), bce)


def test_gbce_errors():
    logits, labels = torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    with pytest.raises(ValueError, match="t must lie in"):
        gbce_loss(logits, labels, 10, t=1.5)
    with pytest.raises(ValueError, match="at least 2 items"):
        gbce_loss(logits, labels, 1)
    with pytest.raises(ValueError, match="needs num_items"):
        candidate_loss(logits, labels, "gbce")
    with pytest.raises(ValueError, match=r"must both be \[B, C\]"):
        gbce_loss(logits, labels[:, :2], 10)


# ------------------------------------------------- every model honours its loss kind
@pytest.mark.parametrize("make", list(ONLY_CANDIDATE_LOSS.values()),
                         ids=list(ONLY_CANDIDATE_LOSS))
@pytest.mark.parametrize("kind", ["bce", "sampled_softmax", "gbce"])
def test_candidate_loss_kinds_are_the_loss_of_score_candidates(make, kind):
    # SASRec, GRU4Rec, BERT4Rec and SURGE once trained with BCE whatever the kind
    torch.manual_seed(0)
    model = make()
    model.eval()
    model.candidate_loss_kind = kind
    model.gbce_t = 0.5
    batch = _batch()
    expected = candidate_loss(model.score_candidates(batch), batch.labels.view(3, -1), kind,
                              NUM_ITEMS, 0.5)
    assert torch.allclose(model.loss(batch), expected, atol=1e-6)


def test_every_neural_model_trains_with_the_loss_it_is_given():
    """With the same weights and draws, a model's loss under each kind it supports is
    that kind's: no two kinds give the same value, and an unsupported kind is refused
    when set (never trained as another)."""
    from torch_geometric.loader import DataLoader

    from mdgr_graph.data.dataset import SequenceDataset
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset
    from mdgr_graph.models import CLOSED_FORM, MODELS, build_model

    synthetic = {"num_users": 30, "num_items": 40, "num_topics": 2, "length": (10, 20),
                 "topics_per_user": (1, 2)}
    prepared = prepare_dataset(DataOptions(protocol="loo", max_len=10, negatives=5,
                                           synthetic=synthetic), cache_dir=None)
    batch = next(iter(DataLoader(SequenceDataset(prepared, "valid"), batch_size=8)))
    for name in MODELS:
        if name in CLOSED_FORM:
            continue
        torch.manual_seed(0)
        model = build_model(name, prepared, dim=8)
        model.eval()
        values = {}
        for kind in CANDIDATE_LOSSES:
            if kind not in model.supported_losses:
                with pytest.raises(ValueError, match="cannot train with loss"):
                    model.candidate_loss_kind = kind
                continue
            model.candidate_loss_kind = kind
            torch.manual_seed(1)
            values[kind] = float(model.loss(batch).detach())
        assert len(values) >= 1, name
        distinct = {round(v, 6) for v in values.values()}
        assert len(distinct) == len(values), f"{name}: {values}"


def test_build_model_sets_gbce_t_and_refuses_it_without_gbce():
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset
    from mdgr_graph.models import build_model

    synthetic = {"num_users": 20, "num_items": 30, "num_topics": 2, "length": (8, 12),
                 "topics_per_user": (1, 2)}
    prepared = prepare_dataset(DataOptions(protocol="loo", max_len=8, negatives=5,
                                           synthetic=synthetic), cache_dir=None)
    model = build_model("sasrec", prepared, dim=8, loss="gbce", gbce_t=0.25)
    assert model.candidate_loss_kind == "gbce" and model.gbce_t == 0.25
    assert build_model("sasrec", prepared, dim=8, loss="gbce").gbce_t == 0.75
    with pytest.raises(ValueError, match="needs loss='gbce'"):
        build_model("sasrec", prepared, dim=8, gbce_t=0.5)
    with pytest.raises(ValueError, match="must lie in"):
        build_model("sasrec", prepared, dim=8, loss="gbce", gbce_t=-0.1)
    with pytest.raises(ValueError, match="BIGCF cannot train with loss 'ce'"):
        build_model("bigcf", prepared, dim=8, loss="ce")
    for name in ("mdgr", "surge"):  # the candidate as the query: no catalogue softmax
        with pytest.raises(ValueError, match="cannot train with loss 'ce'"):
            build_model(name, prepared, dim=8, query="candidate", loss="ce")
        assert build_model(name, prepared, dim=8, loss="ce").candidate_loss_kind == "ce"
