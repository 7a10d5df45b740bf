"""The repeat-consumption term (issue 30): evidence against a per-sequence loop, RNG-free
initialisation, and MDGR with ``repeat="gate"`` on repeat-free and repeat-heavy batches."""

import math

import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.models import MDGR
from mdgr_graph.nn.repeat import RepeatScore, check_repeat_mode, interest_summary, steps_to_end

NUM_ITEMS = 30


def evidence_reference(histories, candidates, beta):
    """Slow, obviously-correct evidence: per sequence, per candidate, a loop over the
    history."""
    out = []
    for history, cands in zip(histories, candidates, strict=True):
        n = len(history)
        out.append([math.log1p(sum(math.exp(-beta * (n - 1 - i))
                                   for i, item in enumerate(history) if item == v))
                    for v in cands])
    return torch.tensor(out)


def make_batch(histories, candidates):
    graphs = []
    for history, cands in zip(histories, candidates, strict=True):
        x = torch.tensor(history)
        days = torch.arange(len(history), dtype=torch.float)
        labels = (torch.arange(len(cands)) < len(cands) // 2).float()
        graphs.append(make_sequence_graph(x, days, candidates=torch.tensor(cands),
                                          labels=labels))
    return Batch.from_data_list(graphs)


HISTORIES = [[3, 5, 3, 7, 3], [9], [2, 2, 2, 4, 6, 8, 1, 2], [11, 12]]
CANDIDATES = [[3, 5, 7, 1], [9, 3, 10, 9], [2, 8, 6, 30], [13, 14, 15, 16]]


def test_steps_to_end():
    ptr = torch.tensor([0, 3, 4, 6])
    assert steps_to_end(ptr).tolist() == [2, 1, 0, 0, 1, 0]


@pytest.mark.parametrize("decay", [-3.0, 0.5, 2.0])
def test_evidence_matches_loop_for_candidates_and_catalogue(decay):
    batch = make_batch(HISTORIES, CANDIDATES)
    module = RepeatScore(4)
    with torch.no_grad():
        module.decay.fill_(decay)
    beta = float(torch.nn.functional.softplus(torch.tensor(decay)))
    expected = evidence_reference(HISTORIES, CANDIDATES, beta)
    got = module.evidence(batch.x, batch.ptr, batch.candidates.view(len(HISTORIES), -1))
    assert torch.allclose(got, expected.float(), atol=1e-6)
    every = module.evidence(batch.x, batch.ptr, num_items=NUM_ITEMS)
    assert every.shape == (len(HISTORIES), NUM_ITEMS + 1)
    catalogue = [list(range(NUM_ITEMS + 1))] * len(HISTORIES)
    assert torch.allclose(every, evidence_reference(HISTORIES, catalogue, beta).float(),
                          atol=1e-6)
    # absent items get exactly zero, present ones more for more (and more recent) copies
    assert got[3].eq(0).all() and got[0, 3] == 0
    assert got[0, 0] > got[0, 2] > got[0, 1] > 0
    with pytest.raises(ValueError, match="candidates or num_items"):
        module.evidence(batch.x, batch.ptr)


def test_gradients_reach_gate_and_decay_only_through_repeats():
    batch = make_batch(HISTORIES, CANDIDATES)
    module = RepeatScore(4)
    summary = torch.randn(len(HISTORIES), 4, requires_grad=True)
    evidence = module.evidence(batch.x, batch.ptr, batch.candidates.view(len(HISTORIES), -1))
    module(summary, evidence).sum().backward()
    assert module.decay.grad is not None and module.decay.grad != 0
    assert module.gate_weight.grad.abs().sum() > 0 and module.gate_bias.grad != 0
    module.zero_grad()
    absent = torch.full((len(HISTORIES), 3), 29)  # item 29 is in no history
    out = module(summary, module.evidence(batch.x, batch.ptr, absent))
    assert out.eq(0).all()
    out.sum().backward()
    assert module.decay.grad == 0 and module.gate_weight.grad.eq(0).all()


def test_init_draws_no_random_numbers_and_repr():
    torch.manual_seed(0)
    RepeatScore(8)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)
    assert repr(RepeatScore(8)) == "RepeatScore(8)"
    with pytest.raises(ValueError, match="unknown repeat mode"):
        check_repeat_mode("copy")


def test_interest_summary_ignores_empty_interests():
    z = torch.arange(12, dtype=torch.float).view(1, 3, 4)
    mask = torch.tensor([[True, False, True]])
    assert torch.equal(interest_summary(z, mask), (z[0, 0] + z[0, 2]).unsqueeze(0) / 2)
    assert torch.equal(interest_summary(z, torch.zeros(1, 3, dtype=torch.bool)),
                       torch.zeros(1, 4))


def small_mdgr(**kwargs):
    torch.manual_seed(0)
    return MDGR(NUM_ITEMS, dim=16, k=3, m=1, max_len=12, time_dim=8, pos_dim=8, **kwargs)


def test_mdgr_gate_changes_nothing_without_repeats():
    plain, gated = small_mdgr(), small_mdgr(repeat="gate")
    shared = {k: v for k, v in gated.state_dict().items() if not k.startswith("repeat_score")}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in shared.items())
    assert len(shared) == len(plain.state_dict())
    plain.eval(), gated.eval()
    fresh = [[20, 21, 22, 23]] * 3  # in none of the histories
    batch = make_batch(HISTORIES[:3], fresh)
    with torch.no_grad():
        assert torch.equal(gated.score_candidates(batch), plain.score_candidates(batch))
        all_plain, all_gated = plain.score_all(batch), gated.score_all(batch)
    seen = torch.zeros_like(all_plain, dtype=torch.bool)
    for row, history in enumerate(HISTORIES[:3]):
        seen[row, history] = True
    assert torch.equal(all_gated[~seen], all_plain[~seen])
    assert (all_gated[seen] > all_plain[seen]).all()  # gate starts at log 2 > 0
    assert "repeat='gate'" in repr(gated) and "repeat" not in repr(plain)


@pytest.mark.parametrize("query", ["last", "candidate"])
def test_mdgr_gate_score_all_agrees_with_candidates(query):
    model = small_mdgr(repeat="gate", query=query)
    model.eval()
    batch = make_batch(HISTORIES, CANDIDATES)
    with torch.no_grad():
        cand = model.score_candidates(batch)
        every = model.score_all(batch)
    index = batch.candidates.view(len(HISTORIES), -1)
    assert torch.allclose(every.gather(1, index), cand, atol=1e-5)
    loss = small_mdgr(repeat="gate", query=query, train_positives=1,
                      train_negatives=2).loss(batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_mdgr_gate_learns_repeats():
    """On windows whose positives are history items and negatives are not, the gated
    model separates them after a few steps; its gate and decay moved."""
    gen = torch.Generator().manual_seed(1)
    histories, candidates = [], []
    for _ in range(16):
        history = torch.randint(1, NUM_ITEMS + 1, (10,), generator=gen).tolist()
        unseen = [v for v in range(1, NUM_ITEMS + 1) if v not in history]
        candidates.append(history[-3:] + unseen[:3])
        histories.append(history)
    batch = make_batch(histories, candidates)
    model = small_mdgr(repeat="gate")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        optimizer.zero_grad()
        model.loss(batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model.score_candidates(batch)
    assert (scores[:, :3].min(1).values > scores[:, 3:].max(1).values).float().mean() > 0.9
    assert model.repeat_score.gate_weight.abs().sum() > 0


def test_mdgr_gate_trains_bit_identically_on_a_repeat_free_batch():
    """No candidate is in its window: the gate gets no gradient, Adam leaves it alone, and
    every other parameter follows plain MDGR's trajectory bit for bit (measured on
    ml-1m-subset too: docs/results.md)."""
    batch = make_batch(HISTORIES[:3], [[20, 21, 22, 23]] * 3)
    runs = []
    for repeat in ("none", "gate"):
        model = small_mdgr(repeat=repeat)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        torch.manual_seed(5)  # dropout draws
        for _ in range(4):
            optimizer.zero_grad()
            model.loss(batch).backward()
            optimizer.step()
        runs.append(model.state_dict())
    plain, gated = runs
    assert all(torch.equal(plain[k], gated[k]) for k in plain)
    assert gated["repeat_score.gate_weight"].eq(0).all()
