"""SequenceDataset and PyG batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from mdgr_graph.data.dataset import SequenceData, SequenceDataset, make_sequence_graph
from mdgr_graph.data.prepare import DataOptions, PreparedDataset, prepare_dataset
from mdgr_graph.data.protocols import TRAIN, VALID

SYNTH = {"num_users": 40, "num_items": 300, "num_topics": 5}


@pytest.fixture(scope="module")
def paper() -> PreparedDataset:
    options = DataOptions(
        protocol="paper", min_item_count=1, window=20, history=8, negatives=6,
        valid_frac=0.2, test_frac=0.2, synthetic=SYNTH,
    )  # fmt: skip
    return prepare_dataset(options, cache_dir=None)


@pytest.fixture(scope="module")
def loo() -> PreparedDataset:
    options = DataOptions(protocol="loo", max_len=10, negatives=7, synthetic=SYNTH)
    return prepare_dataset(options, cache_dir=None)


# ---------------------------------------------------------------------- single graphs
def test_make_sequence_graph():
    g = make_sequence_graph(
        torch.tensor([4, 2, 9]), torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64),
        candidates=torch.tensor([1, 2]), labels=torch.tensor([1.0, 0.0]),
    )  # fmt: skip
    assert isinstance(g, SequenceData)
    assert g.num_nodes == 3
    assert g.x.dtype == torch.long and g.t.dtype == torch.float32
    assert g.pos.tolist() == [0, 1, 2]
    assert g.edge_index is None
    assert g.candidates.tolist() == [1, 2]


@pytest.mark.parametrize(
    "items,days,match",
    [
        (torch.tensor([1, 2, 3]), torch.tensor([0.0, 1.0]), "equal length"),
        (torch.tensor([[1, 2]]), torch.tensor([[0.0, 1.0]]), "1-D"),
        (torch.tensor(1), torch.tensor(0.0), "1-D"),
        (torch.tensor([], dtype=torch.long), torch.tensor([]), "at least one interaction"),
    ],
)
def test_make_sequence_graph_errors(items, days, match):
    with pytest.raises(ValueError, match=match):
        make_sequence_graph(items, days)


def test_unknown_split(paper):
    with pytest.raises(ValueError, match="unknown split"):
        SequenceDataset(paper, "dev")


# ---------------------------------------------------------------------- paper
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_paper_graphs(paper, split):
    ds = SequenceDataset(paper, split)
    a = paper.arrays
    rows = np.flatnonzero(a["window_split"] == ["train", "valid", "test"].index(split))
    assert len(ds) == len(rows) == paper.split_size(split) > 0
    for i in (0, len(ds) - 1):
        g, r = ds[i], rows[i]
        assert g.num_nodes == 8
        assert g.x.tolist() == a["hist_items"][r].tolist()
        assert torch.allclose(g.t, torch.from_numpy(a["hist_time"][r]))
        assert g.pos.tolist() == list(range(8))
        negatives = ds._negatives[i].tolist()
        if split != "train":
            assert negatives == a["negatives"][r].tolist()
        # candidates: the window's positives, then its negatives
        assert g.candidates.tolist() == a["targets"][r].tolist() + negatives
        assert g.labels.tolist() == [1.0] * 12 + [0.0] * 6
        assert int(g.user) == a["window_user"][r] and int(g.sample) == i
        assert "target" not in g


def test_paper_batches(paper):
    ds = SequenceDataset(paper, "train")
    loader = DataLoader(ds, batch_size=5, shuffle=False)
    batch = next(iter(loader))
    assert batch.num_graphs == 5
    assert batch.x.shape == (40,) and batch.t.shape == (40,) and batch.pos.shape == (40,)
    assert batch.batch.tolist() == [g for g in range(5) for _ in range(8)]
    assert batch.ptr.tolist() == [0, 8, 16, 24, 32, 40]
    assert batch.pos.tolist() == list(range(8)) * 5  # positions are not shifted
    assert batch.candidates.shape == (5, 18) and batch.labels.shape == (5, 18)
    assert batch.user.shape == (5,) and batch.sample.tolist() == [0, 1, 2, 3, 4]
    # item ids are not shifted by the loader either
    assert batch.x.tolist() == np.concatenate(paper.arrays["hist_items"][
        np.flatnonzero(paper.arrays["window_split"] == TRAIN)[:5]
    ]).tolist()
    assert torch.equal(batch.candidates[2], ds[2].candidates)
    total = sum(b.num_graphs for b in loader)
    assert total == len(ds)


def test_set_epoch_redraws_training_negatives_only(paper):
    train, valid = SequenceDataset(paper, "train"), SequenceDataset(paper, "valid")
    t0, v0 = train[0].candidates.clone(), valid[0].candidates.clone()
    train.set_epoch(1)
    valid.set_epoch(1)
    t1, v1 = train[0].candidates, valid[0].candidates
    assert torch.equal(t0[:12], t1[:12])  # same positives
    assert not torch.equal(train._negatives, torch.from_numpy(paper.draw_train_negatives(0)))
    assert torch.equal(train._negatives, torch.from_numpy(paper.draw_train_negatives(1)))
    assert torch.equal(v0, v1)
    rows = np.flatnonzero(paper.arrays["window_split"] == VALID)
    assert torch.equal(valid._negatives, torch.from_numpy(paper.arrays["negatives"][rows]))
    train.set_epoch(0)
    assert torch.equal(train[0].candidates, t0)
    assert train.epoch == 0 and valid.epoch == 1


# ---------------------------------------------------------------------- leave-one-out
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_loo_graphs(loo, split):
    ds = SequenceDataset(loo, split, loo_train_targets="last")
    ex = loo.loo_example(split)
    assert len(ds) == loo.num_users
    for u in (0, 7, loo.num_users - 1):
        g = ds[u]
        n = int(ex["length"][u])
        assert g.num_nodes == n == 10
        assert g.x.tolist() == ex["items"][u, :n].tolist()
        assert int(g.target) == ex["target"][u]
        assert g.candidates[0] == g.target and g.candidates.shape == (8,)
        assert g.labels.tolist() == [1.0] + [0.0] * 7
        assert int(g.user) == u
        if split != "train":
            code = 1 if split == "valid" else 2
            assert g.candidates[1:].tolist() == loo.arrays["loo_negatives"][code - 1, u].tolist()


def test_loo_random_training_targets(loo):
    ptr, items = loo.arrays["seq_ptr"], loo.arrays["seq_items"]
    max_len = loo.meta["options"]["max_len"]
    ds = SequenceDataset(loo, "train", loo_train_targets="random")
    seen_positions = set()
    firsts = []
    for epoch in range(40):
        ds.set_epoch(epoch)
        pos = loo.draw_loo_train_targets(epoch)[:, 0]
        assert np.all(pos >= ptr[:-1] + 1) and np.all(pos <= ptr[1:] - 3)
        seen_positions.update(pos.tolist())
        for u in (0, 5, loo.num_users - 1):
            g = ds[u]
            start = max(ptr[u], pos[u] - max_len)
            assert int(g.target) == items[pos[u]] and g.candidates[0] == g.target
            assert g.x.tolist() == items[start:pos[u]].tolist()
            assert float(g.t[0]) == 0.0
        firsts.append(int(ds[0].target))
    every = {p for u in range(loo.num_users) for p in range(ptr[u] + 1, ptr[u + 1] - 2)}
    assert seen_positions <= every and len(set(firsts)) > 1
    again = SequenceDataset(loo, "train", loo_train_targets="random")
    again.set_epoch(7)
    ds.set_epoch(7)
    assert torch.equal(again[3].x, ds[3].x) and torch.equal(again[3].candidates, ds[3].candidates)


def test_loo_random_targets_with_several_positives(write_csv):
    # users of 4..9 interactions: training parts (before the validation target) of 2..7
    rows = [(u, 10 * u + k, 60 * k) for u in range(6) for k in range(4 + u)]
    options = DataOptions(
        format="csv", path=str(write_csv(rows)), protocol="loo", min_item_count=1,
        min_user_len=4, max_len=4, negatives=2,
    )  # fmt: skip
    prepared = prepare_dataset(options, cache_dir=None)
    raw = prepared.arrays["item_ids"]
    ds = SequenceDataset(prepared, "train", loo_train_targets="random", loo_train_positives=3)
    cuts = {u: set() for u in range(6)}
    for epoch in range(60):
        ds.set_epoch(epoch)
        for u in range(6):
            g = ds[u]
            k = int(raw[int(g.x[-1])]) - 10 * u + 1  # the cut: first position after history
            cuts[u].add(k)
            n_train = 2 + u
            future = [10 * u + j for j in range(k, min(k + 3, n_train))]
            expected = [future[j % len(future)] for j in range(3)]
            assert [int(raw[i]) for i in g.candidates[:3]] == expected
            assert g.labels.tolist() == [1.0] * 3 + [0.0] * 2
            assert int(g.target) == g.candidates[0]
            assert [int(raw[i]) for i in g.x] == [10 * u + j for j in range(max(0, k - 4), k)]
    # the cut leaves 3 positives when the training part allows it (never position 0)
    assert [sorted(cuts[u]) for u in range(6)] == [[1], [1], [1], [1, 2], [1, 2, 3],
                                                    [1, 2, 3, 4]]
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert batch.candidates.shape == (6, 5)


def test_loo_all_prefixes(write_csv):
    # users of 4..9 interactions: training targets at positions 1..n-3
    rows = [(u, 10 * u + k, 60 * k) for u in range(6) for k in range(4 + u)]
    options = DataOptions(
        format="csv", path=str(write_csv(rows)), protocol="loo", min_item_count=1,
        min_user_len=4, max_len=4, negatives=2,
    )  # fmt: skip
    prepared = prepare_dataset(options, cache_dir=None)
    raw = prepared.arrays["item_ids"]
    ds = SequenceDataset(prepared, "train", loo_train_targets="all")
    assert len(ds) == sum(1 + u for u in range(6))
    examples = []
    for idx in range(len(ds)):
        g = ds[idx]
        u, k = int(g.user), int(raw[int(g.target)]) - 10 * int(g.user)
        examples.append((u, k))
        assert [int(raw[i]) for i in g.x] == [10 * u + j for j in range(max(0, k - 4), k)]
        assert float(g.t[0]) == 0.0
        assert float(g.t[-1]) == pytest.approx((min(k, 4) - 1) * 60 / 86400)
        assert g.candidates[0] == g.target and g.labels.tolist() == [1.0, 0.0, 0.0]
        seen = {10 * u + j for j in range(4 + u)}
        assert not {int(raw[i]) for i in g.candidates[1:]} & seen
    assert examples == [(u, k) for u in range(6) for k in range(1, 2 + u)]
    first = ds[5].candidates.clone()
    ds.set_epoch(1)
    assert ds[5].target == first[0] and not torch.equal(ds[5].candidates, first)
    ds.set_epoch(0)
    assert torch.equal(ds[5].candidates, first)
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch.candidates.shape == (8, 3) and batch.target.shape == (8,)
    with pytest.raises(ValueError, match="loo_train_positives"):
        SequenceDataset(prepared, "train", loo_train_targets="all", loo_train_positives=2)


def test_loo_train_targets_default_is_the_third_last_item(loo):
    ds = SequenceDataset(loo, "train")
    ds.set_epoch(3)
    assert ds[2].target == loo.loo_example("train")["target"][2]


def test_loo_train_targets_checked(loo, paper):
    with pytest.raises(ValueError, match="loo_train_positives"):
        SequenceDataset(loo, "train", loo_train_positives=0)
    with pytest.raises(ValueError, match="loo_train_positives"):
        SequenceDataset(loo, "train", loo_train_targets="last", loo_train_positives=2)
    with pytest.raises(ValueError, match="positives must be"):
        loo.draw_loo_train_targets(0, positives=0)
    with pytest.raises(ValueError, match="loo_train_targets"):
        SequenceDataset(loo, "train", loo_train_targets="first")
    ptr = loo.arrays["seq_ptr"]
    with pytest.raises(ValueError, match="after the user's first item"):
        loo.loo_rows(ptr[:-1])
    with pytest.raises(ValueError, match="one offset per user"):
        loo.loo_rows(ptr[1:-1] - 1)
    with pytest.raises(ValueError, match="protocol 'loo'"):
        paper.draw_loo_train_targets(0)
    # the option only concerns leave-one-out training
    a, b = (SequenceDataset(paper, "train", loo_train_targets=t) for t in ("random", "last"))
    assert torch.equal(a[0].x, b[0].x) and torch.equal(a[0].candidates, b[0].candidates)
    c, d = (SequenceDataset(loo, "valid", loo_train_targets=t) for t in ("random", "last"))
    assert torch.equal(c[0].x, d[0].x) and torch.equal(c[0].candidates, d[0].candidates)


def test_loo_batches(loo):
    ds = SequenceDataset(loo, "test")
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.num_graphs == 4
    assert batch.x.shape == (40,) and batch.t.shape == (40,) and batch.pos.shape == (40,)
    assert batch.batch.shape == (40,) and batch.batch.max() == 3
    assert batch.candidates.shape == (4, 8) and batch.labels.shape == (4, 8)
    assert batch.user.tolist() == [0, 1, 2, 3]
    assert batch.target.shape == (4,)
    assert torch.equal(batch.candidates[:, 0], batch.target)
    assert batch.target.tolist() == loo.loo_example("test")["target"][:4].tolist()


def test_loo_batches_with_short_histories(write_csv):
    # users of 4..9 interactions: training histories of 1..6 nodes, max_len 4
    rows = [(u, 10 * u + k, 60 * k) for u in range(6) for k in range(4 + u)]
    options = DataOptions(
        format="csv", path=str(write_csv(rows)), protocol="loo", min_item_count=1,
        min_user_len=4, max_len=4, negatives=2,
    )  # fmt: skip
    prepared = prepare_dataset(options, cache_dir=None)
    ds = SequenceDataset(prepared, "train", loo_train_targets="last")
    sizes = [ds[u].num_nodes for u in range(6)]
    assert sizes == [1, 2, 3, 4, 4, 4]
    # random targets: over 60 epochs every item before the validation target but the
    # first is a target, with the history before it (at most max_len items)
    rand = SequenceDataset(prepared, "train", loo_train_targets="random")
    drawn = {u: set() for u in range(6)}
    raw = prepared.arrays["item_ids"]
    for epoch in range(60):
        rand.set_epoch(epoch)
        for u in range(6):
            g = rand[u]
            k = int(raw[int(g.target)]) - 10 * u  # the target's position in the sequence
            drawn[u].add(k)
            assert [int(raw[i]) for i in g.x] == [10 * u + j for j in range(max(0, k - 4), k)]
    assert all(drawn[u] == set(range(1, 2 + u)) for u in range(6))
    batch = next(iter(DataLoader(ds, batch_size=6)))
    assert batch.x.shape == (sum(sizes),)
    assert batch.ptr.tolist() == np.concatenate([[0], np.cumsum(sizes)]).tolist()
    assert batch.pos.tolist() == [p for n in sizes for p in range(n)]
    assert batch.candidates.shape == (6, 3)


def test_loo_set_epoch(loo):
    train, test = SequenceDataset(loo, "train"), SequenceDataset(loo, "test")
    before, fixed = train._negatives.clone(), test._negatives.clone()
    train.set_epoch(3)
    test.set_epoch(3)
    assert not torch.equal(train._negatives, before)
    assert torch.equal(test._negatives, fixed)


def test_transform_is_applied(paper):
    def mark(g):
        g.marked = torch.tensor(1)
        return g

    ds = SequenceDataset(paper, "test", transform=mark)
    assert int(ds[0].marked) == 1


# ------------------------------------------------------- SequenceLoader (fast path)
def _assert_same_batch(fast, ref):
    """Every field, dtype, key order, slice and per-graph size of two batches agree."""
    assert type(fast) is type(ref)
    assert list(fast.keys()) == list(ref.keys())
    for key in ref.keys():
        a, b = fast[key], ref[key]
        if torch.is_tensor(b):
            assert a.dtype == b.dtype and torch.equal(a, b), key
        else:
            assert a == b, key
    assert fast.num_graphs == ref.num_graphs
    assert fast._store._num_nodes == ref._store._num_nodes
    assert fast._slice_dict.keys() == ref._slice_dict.keys()
    for key in ref._slice_dict:
        for a, b in ((fast._slice_dict[key], ref._slice_dict[key]),
                     (torch.as_tensor(fast._inc_dict[key]), torch.as_tensor(ref._inc_dict[key]))):
            assert a.dtype == b.dtype and torch.equal(a, b), key
    for g, h in zip(fast.to_data_list(), ref.to_data_list(), strict=True):
        assert list(g.keys()) == list(h.keys())
        assert all(torch.equal(torch.as_tensor(g[k]), torch.as_tensor(h[k])) for k in h.keys())


def _loaders_agree(ds, batch_size, **kwargs):
    from mdgr_graph.data import SequenceLoader

    seed = kwargs.pop("seed", None)
    gens = [None, None] if seed is None else [torch.Generator().manual_seed(seed)
                                              for _ in range(2)]
    fast = list(SequenceLoader(ds, batch_size=batch_size, generator=gens[0], **kwargs))
    ref = list(DataLoader(ds, batch_size=batch_size, generator=gens[1], **kwargs))
    assert len(fast) == len(ref) > 0
    for a, b in zip(fast, ref, strict=True):
        _assert_same_batch(a, b)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_sequence_loader_equals_pyg_paper(paper, split):
    _loaders_agree(SequenceDataset(paper, split), 7)


@pytest.mark.parametrize("split,targets,positives", [
    ("train", "last", 1), ("train", "random", 1), ("train", "random", 3), ("train", "all", 1),
    ("valid", "last", 1), ("test", "last", 1)])
def test_sequence_loader_equals_pyg_loo(loo, split, targets, positives):
    ds = SequenceDataset(loo, split, loo_train_targets=targets, loo_train_positives=positives)
    ds.set_epoch(2)
    _loaders_agree(ds, 6)
    _loaders_agree(ds[3:17], 5)  # a slice view


def test_sequence_loader_short_histories_shuffled_and_subsets(write_csv):
    # histories of 1..6 nodes (max_len 4): ragged batches, the prefix path, a shuffled
    # order drawn from the same generator, and a subset view (index_select)
    rows = [(u, 10 * u + k, 3600 * k * (u + 1)) for u in range(6) for k in range(4 + u)]
    options = DataOptions(
        format="csv", path=str(write_csv(rows)), protocol="loo", min_item_count=1,
        min_user_len=4, max_len=4, negatives=2,
    )  # fmt: skip
    prepared = prepare_dataset(options, cache_dir=None)
    for targets in ("last", "all"):
        ds = SequenceDataset(prepared, "train", loo_train_targets=targets)
        _loaders_agree(ds, 4)
        _loaders_agree(ds, 5, shuffle=True, seed=3)
        _loaders_agree(ds.index_select(torch.tensor([5, 0, 3, 2])), 3)
    from torch.utils.data.distributed import DistributedSampler

    ds = SequenceDataset(prepared, "train", loo_train_targets="all")
    for rank in range(2):
        samplers = [DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=1)
                    for _ in range(2)]
        from mdgr_graph.data import SequenceLoader

        fast = list(SequenceLoader(ds, batch_size=3, sampler=samplers[0]))
        ref = list(DataLoader(ds, batch_size=3, sampler=samplers[1]))
        for a, b in zip(fast, ref, strict=True):
            _assert_same_batch(a, b)


def test_sequence_loader_draws_the_same_random_numbers(loo):
    """The same generator and global-RNG draws as PyG's loader, so seeded training and its
    resume reproduce."""
    from mdgr_graph.data import SequenceLoader

    ds = SequenceDataset(loo, "train")
    states = []
    for make in (SequenceLoader, DataLoader):
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(5)
        order = [b.sample.tolist() for b in make(ds, batch_size=9, shuffle=True, generator=gen)]
        states.append((order, gen.get_state(), torch.get_rng_state()))
        list(make(ds, batch_size=9))  # unshuffled: draws the base seed from the global RNG
        states.append(torch.get_rng_state())
    assert states[0][0] == states[2][0]
    assert torch.equal(states[0][1], states[2][1]) and torch.equal(states[0][2], states[2][2])
    assert torch.equal(states[1], states[3])


def test_sequence_loader_with_transform_and_errors(paper):
    from mdgr_graph.data import SequenceLoader

    def mark(g):
        g.marked = torch.tensor(1)
        return g

    ds = SequenceDataset(paper, "test", transform=mark)
    _loaders_agree(ds, 3)
    batch = next(iter(SequenceLoader(ds, batch_size=3)))
    assert batch.marked.tolist() == [1, 1, 1]
    plain = SequenceDataset(paper, "test")
    loader = SequenceLoader(plain, batch_size=4)
    assert loader.dataset is plain and len(loader) == -(-len(plain) // 4)
    # negative positions count from the end, as ds[-1] does; out of range is an error
    _assert_same_batch(plain.collate([-1, 0]), Batch.from_data_list([plain[-1], plain[0]]))
    with pytest.raises(IndexError, match="positions must lie in"):
        plain.collate([len(plain)])
    with pytest.raises(ValueError, match="at least one example"):
        plain.collate([])
    with pytest.raises(ValueError, match="batch_size"):
        SequenceLoader(plain, batch_size=0)
    with pytest.raises(ValueError, match="sampler or shuffle"):
        from torch.utils.data import SequentialSampler

        SequenceLoader(plain, batch_size=2, shuffle=True, sampler=SequentialSampler(plain))


@pytest.mark.realdata
def test_sequence_loader_equals_pyg_on_ml100k(shared_data, tmp_path):
    """The fast loader on a real log: every-prefix training batches (shuffled) and the
    loo test split, against PyG's loader."""
    path = shared_data / "ml-100k" / "u.data.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    prepared = prepare_dataset(DataOptions(format="movielens", path=str(path), protocol="loo"),
                               cache_dir=tmp_path)
    train = SequenceDataset(prepared, "train", loo_train_targets="all")
    _loaders_agree(train[:4096], 128, shuffle=True, seed=7)
    _loaders_agree(SequenceDataset(prepared, "test"), 256)
