"""S-POP: occurrences in the input sequence first, training popularity second."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from mdgr_graph.data.dataset import SequenceDataset, make_sequence_graph
from mdgr_graph.models import Popularity, SessionPopularity, build_model
from mdgr_graph.models.baselines import occurrences, popularity_tiebreak
from mdgr_graph.train import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

#: Training counts of items 1..5 (index 0 is padding): 1 is the most popular, 3 and 4 tie.
COUNTS = np.array([0, 5, 1, 3, 3, 0])


def batch_of(sequences: list[list[int]], candidates: list[list[int]]) -> Batch:
    return Batch.from_data_list([make_sequence_graph(
        torch.tensor(s), torch.zeros(len(s)), candidates=torch.tensor(c),
        labels=torch.zeros(len(c))) for s, c in zip(sequences, candidates, strict=True)])


def ranking(scores: torch.Tensor, items: list[int]) -> list[int]:
    """``items`` best first by ``scores`` (one row), ties by item id."""
    return sorted(items, key=lambda i: (-float(scores[items.index(i)]), i))


def test_hand_made_history_ranks_by_occurrences_then_popularity():
    model = SessionPopularity(COUNTS)
    cands = [1, 2, 3, 4, 5]
    batch = batch_of([[2, 4, 2, 1]], [cands])
    scores = model.score_candidates(batch)[0]
    # 2 occurs twice; 1 and 4 once (1 more popular); then the unseen 3 and 5 by popularity
    assert ranking(scores, cands) == [2, 1, 4, 3, 5]
    assert scores[3] - scores[2] == 1.0  # items 4 and 3: equally popular, 4 seen once
    full = model.score_all(batch)[0]
    assert torch.equal(full[cands], scores)


def test_equal_popularity_stays_a_tie_and_an_occurrence_breaks_it():
    model = SessionPopularity(COUNTS)
    scores = model.score_candidates(batch_of([[2], [4]], [[3, 4], [3, 4]]))
    assert scores[0, 0] == scores[0, 1]  # 3 and 4: same training count, neither seen
    assert scores[1, 1] > scores[1, 0]  # 4 is in the second history


def test_a_one_item_history_is_popularity_with_that_item_on_top():
    model, pop = SessionPopularity(COUNTS), Popularity(COUNTS)
    batch = batch_of([[5]], [[1, 2, 3, 4, 5]])
    full = model.score_all(batch)[0, 1:]
    assert int(full.argmax()) + 1 == 5  # the least popular item, but the one seen
    order = ranking(model.score_candidates(batch)[0], [1, 2, 3, 4])
    assert order == ranking(pop.score_candidates(batch)[0, :4], [1, 2, 3, 4]) == [1, 3, 4, 2]


def test_occurrences_match_a_loop():
    gen = torch.Generator().manual_seed(0)
    sequences = [torch.randint(1, 7, (n,), generator=gen).tolist() for n in (1, 5, 9, 3)]
    cands = [torch.randint(0, 9, (6,), generator=gen).tolist() for _ in sequences]
    batch = batch_of(sequences, cands)
    got = occurrences(batch, batch.candidates)
    expected = torch.tensor([[seq.count(c) for c in row] for seq, row in zip(sequences, cands,
                                                                            strict=True)])
    assert torch.equal(got, expected)


def test_tiebreak_keeps_close_large_counts_apart_in_float32():
    counts = np.array([0, 10**7, 10**7 + 1, 10**7 + 1, 3])
    tie = popularity_tiebreak(counts)
    assert tie.dtype == torch.float32 and float(tie.max()) < 1.0 and float(tie.min()) >= 0.0
    score = 50.0 + tie  # an item seen 50 times
    assert score[2] > score[1] > score[4] and score[2] == score[3]


def test_without_repeats_spop_ranks_as_pop(paper_data):
    spop, pop = build_model("spop", paper_data), build_model("pop", paper_data)
    batch = next(iter(DataLoader(SequenceDataset(paper_data, "test"), batch_size=8)))
    unseen = occurrences(batch, batch.candidates) == 0
    a, b = spop.score_candidates(batch), pop.score_candidates(batch)
    for row in range(batch.num_graphs):  # the pairwise order of never-seen candidates
        keep = unseen[row]
        da = torch.sign(a[row, keep, None] - a[row, None, keep])
        db = torch.sign(b[row, keep, None] - b[row, None, keep])
        assert torch.equal(da, db)


@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_both_protocols_candidates_agree_with_full_ranking(protocol, paper_data, loo_data):
    prepared = paper_data if protocol == "paper" else loo_data
    model = build_model("spop", prepared)
    batch = next(iter(DataLoader(SequenceDataset(prepared, "valid"), batch_size=16)))
    full = model.score_all(batch)
    assert full.shape == (batch.num_graphs, prepared.num_items + 1)
    assert torch.equal(full.gather(1, batch.candidates), model.score_candidates(batch))
    seen = torch.zeros_like(full, dtype=torch.bool)
    seen[batch.batch, batch.x] = True
    assert bool((full[seen] >= 1).all()) and bool((full[~seen] < 1).all())


def test_on_a_repeat_heavy_log_spop_beats_pop_on_both_protocols(paper_data, loo_data):
    # the tiny synthetic log repeats items within its topics (Zipf popularity)
    paper = {name: evaluate(build_model(name, paper_data), paper_data, "test")
             for name in ("pop", "spop")}
    assert paper["spop"]["auc/sampled"] > paper["pop"]["auc/sampled"] + 0.05
    loo = {name: evaluate(build_model(name, loo_data), loo_data, "test")
           for name in ("pop", "spop")}
    # full ranking excludes the other seen items, so a repeated target that S-POP finds
    # in the input is ranked first; every other target ranks as under Pop
    assert loo["spop"]["mrr/full"] > loo["pop"]["mrr/full"]
    assert loo["spop"]["hr@10/full"] >= loo["pop"]["hr@10/full"]


def test_spop_takes_no_options(paper_data):
    with pytest.raises(TypeError, match="spop takes no options"):
        build_model("spop", paper_data, l2=1.0)
    assert repr(build_model("spop", paper_data)) == (
        f"SessionPopularity(num_items={paper_data.num_items})")
