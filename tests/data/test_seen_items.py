"""PreparedDataset.seen_items: the one definition of what each example has already seen,
used by the evaluation's seen-item mask and by retrieval's history exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdgr_graph import retrieval
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.data.protocols import SPLIT_NAMES, ragged_ranges
from mdgr_graph.train import _seen_mask

SPLITS = ("train", "valid", "test")


# the code seen_items replaced, kept here as the reference it must equal bit for bit
def old_seen_mask(prepared, rows, prefix_end):
    ptr = prepared.arrays["seq_ptr"]
    users = rows.cpu().numpy()
    start, end = ptr[users], prefix_end[users]
    row_of, index = ragged_ranges(start, end)
    items = prepared.arrays["seq_items"][index]
    mask = torch.zeros(len(users), prepared.num_items + 1, dtype=torch.bool)
    mask[torch.from_numpy(row_of), torch.from_numpy(items)] = True
    return mask


def old_history_items(prepared, split):
    a = prepared.arrays
    if prepared.protocol == "paper":
        rows = np.flatnonzero(a["window_split"] == SPLIT_NAMES.index(split))
        hist = a["hist_items"][rows]
        ptr = np.arange(len(rows) + 1) * hist.shape[1]
        return torch.from_numpy(ptr).long(), torch.from_numpy(hist.reshape(-1)).long()
    start = a["seq_ptr"][:-1]
    end = prepared.loo_example(split)["prefix_end"]
    items = a["seq_items"][ragged_ranges(start, end)[1]]
    ptr = np.concatenate([[0], np.cumsum(end - start)])
    return torch.from_numpy(ptr).long(), torch.from_numpy(items).long()


@pytest.mark.parametrize("split", SPLITS)
def test_seen_mask_equals_the_old_mask(loo_data, split):
    prefix_end = loo_data.loo_example(split)["prefix_end"]
    seen = loo_data.seen_items(split)
    gen = torch.Generator().manual_seed(0)
    for rows in (torch.arange(loo_data.num_users), torch.tensor([7, 0, 3, 3]),
                 torch.randperm(loo_data.num_users, generator=gen)[:25],
                 torch.tensor([], dtype=torch.long)):
        new = _seen_mask(seen, rows, loo_data.num_items)
        assert new.dtype == torch.bool
        assert torch.equal(new, old_seen_mask(loo_data, rows, prefix_end))


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("protocol", ["loo", "paper"])
def test_history_items_equal_the_old_ones(loo_data, paper_data, protocol, split):
    prepared = loo_data if protocol == "loo" else paper_data
    ptr, items = retrieval.history_items(prepared, split)
    old_ptr, old_items = old_history_items(prepared, split)
    assert ptr.dtype == items.dtype == torch.long
    assert torch.equal(ptr, old_ptr) and torch.equal(items, old_items)


def test_loo_rows_are_users_and_hold_the_sequence_before_the_target(loo_data):
    ptr, items = loo_data.seen_items("valid")
    seq_ptr, seq_items = loo_data.arrays["seq_ptr"], loo_data.arrays["seq_items"]
    assert len(ptr) == loo_data.num_users + 1 == len(SequenceDataset(loo_data, "valid")) + 1
    for u in (0, 5, loo_data.num_users - 1):
        # valid target: the second last item; everything before it, not cut to max_len
        np.testing.assert_array_equal(items[ptr[u] : ptr[u + 1]],
                                      seq_items[seq_ptr[u] : seq_ptr[u + 1] - 2])
    test_ptr, _ = loo_data.seen_items("test")
    assert np.array_equal(np.diff(test_ptr), np.diff(ptr) + 1)


def test_paper_rows_are_the_window_histories(paper_data):
    ptr, items = paper_data.seen_items("test")
    dataset = SequenceDataset(paper_data, "test")
    assert len(ptr) == len(dataset) + 1
    for r in (0, len(dataset) - 1):
        assert torch.equal(torch.from_numpy(items[ptr[r] : ptr[r + 1]]).long(), dataset[r].x)


def test_an_unknown_split_is_refused(loo_data, paper_data):
    for prepared in (loo_data, paper_data):
        with pytest.raises(ValueError, match="unknown split 'tset'; choose from train, valid"):
            prepared.seen_items("tset")
