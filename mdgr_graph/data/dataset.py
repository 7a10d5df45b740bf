"""One user sequence = one PyG graph.

:class:`SequenceData` holds a sequence's nodes (one per interaction of the history) and
its per-graph fields; :class:`SequenceDataset` serves a split of a
:class:`~mdgr_graph.data.prepare.PreparedDataset` as such graphs, for
``torch_geometric.loader.DataLoader``. :class:`SequenceLoader` gives the same batches,
built a whole batch at a time (:meth:`SequenceDataset.collate`) instead of one
``Data`` per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, RandomSampler, Sampler, SequentialSampler
from torch.utils.data import DataLoader as TorchDataLoader
from torch_geometric.data import Batch, Data, Dataset
from torch_geometric.utils import cumsum

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.data.protocols import SPLIT_NAMES, ragged_ranges, relative_days

#: Per-graph fields: stacked into ``[B, ...]`` by the loader, never concatenated.
GRAPH_FIELDS = ("candidates", "labels", "target", "user", "sample")


class SequenceData(Data):
    """A user sequence as a graph without edges (edges are built by the model).

    Node fields (``n`` nodes): ``x`` item ids ``[n]``, ``t`` days since the first item
    ``[n]``, ``pos`` position ``0..n-1`` ``[n]``.
    Graph fields, stacked by the loader: ``candidates [C]`` and ``labels [C]`` (items to
    score and their 0/1 labels), ``target []`` (leave-one-out target item), ``user []``
    (internal user id), ``sample []`` (row of the example in its split).
    """

    def __cat_dim__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key in GRAPH_FIELDS:
            return None
        return super().__cat_dim__(key, value, *args, **kwargs)


def make_sequence_graph(
    items: Tensor, days: Tensor, **graph_fields: Tensor
) -> SequenceData:
    """Build the graph of one sequence.

    Args:
        items: ``[n]`` item ids (no padding).
        days: ``[n]`` days since the first interaction.
        **graph_fields: per-graph tensors (see :class:`SequenceData`).
    """
    if items.dim() != 1 or items.shape != days.shape:
        raise ValueError(
            f"items and days must be 1-D of equal length, got {tuple(items.shape)} "
            f"and {tuple(days.shape)}"
        )
    if items.numel() == 0:
        raise ValueError("a sequence needs at least one interaction")
    n = items.numel()
    return SequenceData(
        x=items.long(),
        t=days.float(),
        pos=torch.arange(n),
        num_nodes=n,
        **graph_fields,
    )


#: How leave-one-out training picks its targets (see :class:`SequenceDataset`).
LOO_TRAIN_TARGETS: tuple[str, ...] = ("last", "random", "all")


class SequenceDataset(Dataset):
    """The examples of one split as :class:`SequenceData` graphs.

    Paper protocol: one graph per window; ``candidates`` are the window's positives then
    its negatives, ``labels`` 1 then 0. Training windows take the negatives of
    :meth:`set_epoch` (fresh each epoch); valid/test windows keep their fixed ones.

    Leave-one-out: one graph per user; ``target`` is the held-out item, and
    ``candidates`` = target followed by negatives (training: redrawn each epoch;
    valid/test: the fixed sampled negatives). Training targets follow
    ``loo_train_targets``: ``"last"`` (default) always takes the third-last item;
    ``"random"`` draws each user's cut point anew every epoch and
    takes the ``loo_train_positives`` items after it, before the validation target, as
    positives (:meth:`~mdgr_graph.data.prepare.PreparedDataset.draw_loo_train_targets`;
    with 1 positive, ComiRec's random cut point); ``"all"`` makes every item but the first
    before the validation target a training example each epoch, its history the items
    before it (:meth:`~mdgr_graph.data.prepare.PreparedDataset.loo_train_prefixes`, the
    prefix examples of RecBole and GRU4Rec; about ``mean length`` times more examples per
    epoch). ``target`` of a training graph is its first positive.

    Args:
        prepared: the prepared dataset.
        split: ``train``, ``valid`` or ``test``.
        transform: optional PyG transform applied to each graph.
        loo_train_targets: ``"last"`` or ``"random"`` (leave-one-out training only).
        loo_train_positives: positives per training example under ``"random"``.
    """

    def __init__(self, prepared: PreparedDataset, split: str, transform=None,
                 loo_train_targets: str = "last", loo_train_positives: int = 1) -> None:
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_NAMES)}")
        if loo_train_targets not in LOO_TRAIN_TARGETS:
            raise ValueError(f"unknown loo_train_targets {loo_train_targets!r}; choose from "
                             f"{', '.join(LOO_TRAIN_TARGETS)}")
        if loo_train_positives < 1 or (loo_train_targets != "random" and loo_train_positives > 1):
            raise ValueError("loo_train_positives must be >= 1, and 1 unless "
                             f"loo_train_targets='random', got {loo_train_positives}")
        self.random_targets = (prepared.protocol == "loo" and split == "train"
                               and loo_train_targets == "random")
        self.loo_train_positives = loo_train_positives
        self._prefixes = None
        if prepared.protocol == "loo" and split == "train" and loo_train_targets == "all":
            self._prefixes = prepared.loo_train_prefixes()
        super().__init__(root=None, transform=transform)
        self.prepared = prepared
        self.split = split
        code = SPLIT_NAMES.index(split)
        a = prepared.arrays
        if prepared.protocol == "paper":
            rows = np.flatnonzero(a["window_split"] == code)
            self._items = torch.from_numpy(a["hist_items"][rows])
            self._days = torch.from_numpy(a["hist_time"][rows])
            self._length = torch.full((len(rows),), a["hist_items"].shape[1])
            self._positives = torch.from_numpy(a["targets"][rows])
            self._negatives = torch.from_numpy(a["negatives"][rows])
            self._user = torch.from_numpy(a["window_user"][rows])
            self._target = None
        else:
            ex = prepared.loo_example(split)
            self._items = torch.from_numpy(ex["items"])
            self._days = torch.from_numpy(ex["time"])
            self._length = torch.from_numpy(ex["length"])
            self._target = torch.from_numpy(ex["target"])
            self._positives = self._target[:, None]
            self._user = torch.arange(prepared.num_users)
            if split != "train":
                self._negatives = torch.from_numpy(a["loo_negatives"][code - 1])
        self.epoch = 0
        if split == "train":
            self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the training negatives (and random loo targets) of ``epoch`` (no-op for
        valid/test)."""
        self.epoch = epoch
        if self.split != "train":
            return
        if self._prefixes is not None:
            self._negatives = torch.from_numpy(
                self.prepared.draw_prefix_negatives(self._prefixes[0], epoch))
            return
        self._negatives = torch.from_numpy(self.prepared.draw_train_negatives(epoch))
        if self.random_targets:
            targets = self.prepared.draw_loo_train_targets(epoch, self.loo_train_positives)
            ex = self.prepared.loo_rows(targets[:, 0])
            self._items = torch.from_numpy(ex["items"])
            self._days = torch.from_numpy(ex["time"])
            self._length = torch.from_numpy(ex["length"])
            self._target = torch.from_numpy(ex["target"])
            self._positives = torch.from_numpy(self.prepared.arrays["seq_items"][targets])

    def len(self) -> int:
        return len(self._prefixes[0]) if self._prefixes is not None else self._items.shape[0]

    def get(self, idx: int) -> SequenceData:
        if self._prefixes is not None:
            return self._prefix_graph(idx)
        n = int(self._length[idx])
        pos, neg = self._positives[idx], self._negatives[idx]
        fields = {
            "candidates": torch.cat([pos, neg]),
            "labels": torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]),
            "user": self._user[idx],
            "sample": torch.tensor(idx),
        }
        if self._target is not None:
            fields["target"] = self._target[idx]
        return make_sequence_graph(self._items[idx, :n], self._days[idx, :n], **fields)

    def _prefix_graph(self, idx: int) -> SequenceData:
        """Training example ``idx`` of ``loo_train_targets="all"``, cut from the sequence."""
        a = self.prepared.arrays
        user, target = (int(v[idx]) for v in self._prefixes)
        start = max(int(a["seq_ptr"][user]), target - self.prepared.meta["options"]["max_len"])
        items = torch.from_numpy(a["seq_items"][start:target])
        days = torch.from_numpy(relative_days(a["seq_time"][None, start:target])[0])
        target_item = torch.tensor(int(a["seq_items"][target]))
        neg = self._negatives[idx]
        return make_sequence_graph(
            items, days, candidates=torch.cat([target_item[None], neg.long()]),
            labels=torch.cat([torch.ones(1), torch.zeros(len(neg))]),
            user=torch.tensor(user), sample=torch.tensor(idx), target=target_item,
        )

    def collate(self, indices: Sequence[int] | Tensor) -> Batch:
        """The examples at ``indices`` (positions in this dataset) as one batch, built at
        once: equal to ``Batch.from_data_list([self[i] for i in indices])``, every field,
        dtype and slice (``tests/data/test_dataset.py`` compares them), without one
        ``Data`` per example. With a ``transform`` it takes that per-example path."""
        positions = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        if positions.numel() == 0:
            raise ValueError("a batch needs at least one example")
        size = len(self)
        if bool(((positions < -size) | (positions >= size)).any()):
            raise IndexError(f"positions must lie in [-{size}, {size}) for a dataset of "
                             f"{size} examples")
        positions = positions.remainder(size)  # negative positions count from the end
        if self.transform is not None:
            return Batch.from_data_list([self[int(i)] for i in positions])
        rows = positions if self._indices is None else torch.as_tensor(
            self.indices(), dtype=torch.long)[positions]
        if self._prefixes is not None:
            return self._collate_prefixes(rows)
        lengths = self._length[rows]
        if bool((lengths < 1).any()):
            raise ValueError("a sequence needs at least one interaction")
        keep = torch.arange(self._items.shape[1]) < lengths.unsqueeze(1)
        pos, neg = self._positives[rows], self._negatives[rows]
        fields = {
            "candidates": torch.cat([pos, neg], dim=1),
            "labels": torch.cat([torch.ones(pos.shape), torch.zeros(neg.shape)], dim=1),
            "user": self._user[rows],
            "sample": rows,
        }
        if self._target is not None:
            fields["target"] = self._target[rows]
        return _sequence_batch(self._items[rows][keep].long(), self._days[rows][keep].float(),
                               lengths, fields)

    def _collate_prefixes(self, rows: Tensor) -> Batch:
        """:meth:`collate` for ``loo_train_targets="all"``: the prefixes cut at once."""
        a = self.prepared.arrays
        picked = rows.numpy()
        user, target = (v[picked] for v in self._prefixes)
        start = np.maximum(a["seq_ptr"][user], target - self.prepared.meta["options"]["max_len"])
        row, index = ragged_ranges(start, target)
        seq_time = a["seq_time"]
        # relative_days per prefix, elementwise the same operations (bit-identical).
        days = ((seq_time[index] - seq_time[start][row]) / 86400.0).astype(np.float32)
        target_item = torch.from_numpy(a["seq_items"][target]).long()
        neg = self._negatives[rows].long()
        fields = {
            "candidates": torch.cat([target_item.unsqueeze(1), neg], dim=1),
            "labels": torch.cat([torch.ones(len(rows), 1), torch.zeros(neg.shape)], dim=1),
            "user": torch.from_numpy(user).long(),
            "sample": rows,
            "target": target_item,
        }
        return _sequence_batch(torch.from_numpy(a["seq_items"][index]).long(),
                               torch.from_numpy(days), torch.from_numpy(target - start), fields)


def _sequence_batch(items: Tensor, days: Tensor, lengths: Tensor,
                    graph_fields: dict[str, Tensor]) -> Batch:
    """The :class:`~torch_geometric.data.Batch` that PyG's collate makes of
    :class:`SequenceData` graphs, from their concatenated nodes: ``items``/``days``
    ``[N]``, ``lengths [B]`` (every one at least 1), ``graph_fields`` ``[B, ...]``."""
    num_graphs = lengths.numel()
    lengths = lengths.long()
    ptr = cumsum(lengths)
    batch_vector = torch.repeat_interleave(torch.arange(num_graphs), lengths)
    out = Batch(_base_cls=SequenceData)
    out.x = items
    out.pos = torch.arange(items.numel()) - ptr[:-1][batch_vector]
    out.t = days
    out._store._num_nodes = lengths.tolist()
    out.num_nodes = items.numel()
    for key, value in graph_fields.items():
        out[key] = value
    out.batch = batch_vector
    out.ptr = ptr
    graph_slices = torch.arange(num_graphs + 1)
    out._num_graphs = num_graphs
    # Separate tensors, as PyG's collate makes them: editing one must not change another.
    out._slice_dict = {key: ptr.clone() for key in ("x", "pos", "t")}
    out._slice_dict.update({key: graph_slices.clone() for key in graph_fields})
    out._inc_dict = {key: torch.zeros(num_graphs, dtype=torch.long)
                     for key in out._slice_dict}
    return out


def _collate_view(examples: SequenceDataset) -> Batch:
    """The batch of a :class:`SequenceDataset` view (what indexing it with a list of
    positions returns), built by :meth:`SequenceDataset.collate`."""
    return examples.collate(range(len(examples)))


class SequenceLoader(TorchDataLoader):
    """Mini-batches of a :class:`SequenceDataset`, each built at once by
    :meth:`SequenceDataset.collate`.

    A drop-in for ``torch_geometric.loader.DataLoader(dataset, batch_size, shuffle,
    generator=..., sampler=...)``: the same batches in the same order, drawing the same
    random numbers (the index sampler and the iterator's base seed come from
    ``generator``, or the global generator, as there), without building one ``Data``
    per example (loading alone 20-35x faster, SASRec's evaluation about 1.9x; docs/speed.md).
    ``loader.dataset`` is the dataset given.

    Args:
        dataset: the examples.
        batch_size: examples per batch (the last one may be smaller).
        shuffle: draw a random order (from ``generator``) each iteration.
        generator: random source of the order and the base seed.
        sampler: an index sampler instead of ``shuffle`` (e.g. a ``DistributedSampler``).
    """

    def __init__(self, dataset: SequenceDataset, batch_size: int = 1, shuffle: bool = False,
                 generator: torch.Generator | None = None,
                 sampler: Sampler[int] | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        if sampler is not None and shuffle:
            raise ValueError("give either a sampler or shuffle=True, not both")
        if sampler is None:
            sampler = (RandomSampler(dataset, generator=generator) if shuffle
                       else SequentialSampler(dataset))
        # batch_size=None with a batch sampler: the dataset is indexed with a list of
        # positions per batch (a view of those examples), which _collate_view builds.
        super().__init__(dataset, batch_size=None,
                         sampler=BatchSampler(sampler, batch_size, drop_last=False),
                         collate_fn=_collate_view, generator=generator)
