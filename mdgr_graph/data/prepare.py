"""Prepare a dataset under a protocol, with an on-disk cache.

``prepare_dataset(DataOptions(...))`` reads a log (or generates the synthetic one),
preprocesses it, applies the protocol and returns a :class:`PreparedDataset`. The result
is cached under ``cache_dir`` keyed by the content of the input file and every option, so
a changed option or file makes a new entry; entries are written atomically and carry a
checksum. An entry that cannot be read, fails its checksum or breaks the arrays' invariants
is reported (a :class:`CacheRepairWarning` naming the file), deleted and rebuilt, never
loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdgr_graph.data.chunked import CHUNKED_FORMATS, import_pyarrow, read_chunked
from mdgr_graph.data.preprocess import Sequences, build_sequences
from mdgr_graph.data.protocols import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VALID,
    SeenItems,
    paper_windows,
    ragged_ranges,
    relative_days,
    sample_negatives,
    split_users,
)
from mdgr_graph.data.readers import read_interactions
from mdgr_graph.data.synthetic import generate_synthetic
from mdgr_graph.io import atomic_write_bytes

FORMATS = ("movielens", "amazon", "taobao", "csv", "synthetic")
PROTOCOLS = ("paper", "loo")
CACHE_VERSION = 2  # bump when preparation changes what it produces
DEFAULT_CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mdgr_graph"

#: Arrays every entry holds, and those of each protocol.
COMMON_ARRAYS = ("seq_ptr", "seq_items", "seq_time", "user_ids", "item_ids")
PROTOCOL_ARRAYS = {
    "paper": ("window_user", "window_split", "window_start", "hist_items", "hist_time",
              "targets", "negatives"),
    "loo": ("loo_negatives",),
}
_CHECKSUM = "__sha256__"  # npz member holding the entry's checksum (beside ``__meta__``)


class DamagedCacheEntry(ValueError):
    """A cache entry that cannot be trusted; the message reads ``'<path>: <reason>'``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.reason)


class CacheRepairWarning(UserWarning):
    """A damaged cache entry was deleted and is being rebuilt."""


# Filter defaults per protocol: the paper's 10-core/100-interaction rule, and the
# common 5-core rule of leave-one-out studies.
PROTOCOL_DEFAULTS = {
    "paper": {"min_item_count": 10, "min_user_len": 100},
    "loo": {"min_item_count": 5, "min_user_len": 5},
}


@dataclass(frozen=True)
class DataOptions:
    """Everything that decides what a prepared dataset contains.

    Attributes:
        format: one of ``movielens``, ``amazon``, ``taobao``, ``csv``, ``synthetic``.
        path: the log file (unused for ``synthetic``).
        protocol: ``paper`` (windows, sampled candidates) or ``loo`` (leave-one-out).
        min_item_count: drop items with fewer interactions (default: 10 paper, 5 loo).
        min_user_len: drop users with fewer interactions (default: 100 paper, 5 loo).
        window: paper window length.
        history: paper history length (the rest of the window are positives).
        train_stride: paper: offset between the windows of *training* users (``None``:
            the window length, i.e. non-overlapping windows as in the paper). A smaller
            stride adds overlapping training windows; validation and test windows, their
            users and their fixed negatives are unchanged.
        negatives: negatives per window (paper) or per sampled evaluation row (loo).
        max_len: loo history length (most recent items kept).
        valid_frac: paper: fraction of users held out for validation.
        test_frac: paper: fraction of users held out for test.
        seed: seed of splits and fixed negatives.
        behaviors: taobao behaviour filter (None keeps all).
        user_col, item_col, time_col, sep: csv column names and separator.
        synthetic: keyword arguments of :func:`generate_synthetic`.
        chunk_rows: read the file in chunks of this many lines with pyarrow
            (:mod:`mdgr_graph.data.chunked`, formats ``taobao`` and ``csv``), for logs
            larger than memory; ``None`` reads it whole. It decides how the file is read,
            not what is prepared (the result is identical), so it is left out of
            :meth:`to_json`, hence of the cache key and the metadata.
    """

    format: str = "synthetic"
    path: str | None = None
    protocol: str = "paper"
    min_item_count: int | None = None
    min_user_len: int | None = None
    window: int = 100
    history: int = 50
    train_stride: int | None = None
    negatives: int = 50
    max_len: int = 50
    valid_frac: float = 0.1
    test_frac: float = 0.1
    seed: int = 0
    behaviors: tuple[str, ...] | None = None
    user_col: str = "user"
    item_col: str = "item"
    time_col: str = "timestamp"
    sep: str | None = None
    synthetic: dict[str, Any] = field(default_factory=dict)
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose from {', '.join(FORMATS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}"
            )
        if self.format != "synthetic" and not self.path:
            raise ValueError(f"format {self.format!r} needs a path")
        if self.path is not None:  # a pathlib.Path would break the JSON cache key
            object.__setattr__(self, "path", os.fspath(self.path))
        if not 0 < self.history < self.window:
            raise ValueError(f"need 0 < history < window, got {self.history} and {self.window}")
        if self.train_stride is not None and not 1 <= self.train_stride <= self.window:
            raise ValueError(
                f"train_stride must be in 1..{self.window} (the window), got {self.train_stride}"
            )
        if self.negatives < 1 or self.max_len < 1:
            raise ValueError("negatives and max_len must be >= 1")
        defaults = PROTOCOL_DEFAULTS[self.protocol]
        for name in ("min_item_count", "min_user_len"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        if self.protocol == "loo" and self.min_user_len < 4:
            raise ValueError("loo needs min_user_len >= 4 (train, valid and test targets)")
        if self.chunk_rows is not None:
            if self.format not in CHUNKED_FORMATS:
                raise ValueError(
                    f"chunk_rows works with formats {', '.join(CHUNKED_FORMATS)}, "
                    f"not {self.format!r}"
                )
            if isinstance(self.chunk_rows, bool) or not isinstance(self.chunk_rows, int) or (
                self.chunk_rows < 1
            ):
                raise ValueError(f"chunk_rows must be a positive integer, got {self.chunk_rows!r}")

    def to_json(self) -> dict[str, Any]:
        """The options that decide the prepared data (``chunk_rows`` does not)."""
        out = dataclasses.asdict(self)
        out.pop("chunk_rows")
        out["behaviors"] = list(self.behaviors) if self.behaviors else None
        return out


class PreparedDataset:
    """A preprocessed log under one protocol: numpy arrays plus metadata.

    Paper protocol arrays (``W`` windows, ``H`` history, ``T`` positives, ``N`` negatives):
    ``window_user [W]``, ``window_split [W]`` (0 train, 1 valid, 2 test),
    ``window_start [W]`` (offset of the window's first item in ``seq_items``),
    ``hist_items [W, H]``, ``hist_time [W, H]`` (days since the window's first item),
    ``targets [W, T]``, ``negatives [W, N]`` (fixed for valid/test; train rows are
    redrawn every epoch by :meth:`draw_train_negatives`).

    Leave-one-out arrays (``U`` users): ``loo_negatives [2, U, N]`` fixed sampled
    negatives for valid and test; histories and targets are cut from the sequences.

    Both keep the sequences (``seq_ptr``, ``seq_items``, ``seq_time``) and the raw ids.
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.arrays = arrays
        self.meta = meta
        self._seen: SeenItems | None = None

    # ------------------------------------------------------------------ basic facts
    @property
    def protocol(self) -> str:
        return self.meta["options"]["protocol"]

    @property
    def num_items(self) -> int:
        """Real items; ids run ``1..num_items`` and ``0`` is padding."""
        return len(self.arrays["item_ids"]) - 1

    @property
    def num_users(self) -> int:
        return len(self.arrays["seq_ptr"]) - 1

    @property
    def seen(self) -> SeenItems:
        """Items each user ever interacted with (after filtering)."""
        if self._seen is None:
            ptr = self.arrays["seq_ptr"]
            user = np.repeat(np.arange(self.num_users), np.diff(ptr))
            self._seen = SeenItems(user, self.arrays["seq_items"], self.num_items)
        return self._seen

    def seen_items(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """Items each example of ``split`` has already seen, ragged: ``(ptr [R + 1],
        items [M])``, example ``r`` holding ``items[ptr[r]:ptr[r + 1]]`` in time order
        (repeats kept).

        Paper protocol: the window's history (the model's input). Leave-one-out: the
        user's whole sequence before the split's target, not cut to ``max_len`` (what the
        full ranking excludes, and retrieval by default). Rows follow
        :class:`~mdgr_graph.data.dataset.SequenceDataset` order, so row ``r`` is the
        ``r``-th window of the split (paper) or user ``r`` (leave-one-out).
        """
        if split not in SPLIT_NAMES:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_NAMES)}")
        a = self.arrays
        if self.protocol == "paper":
            hist = a["hist_items"][a["window_split"] == SPLIT_NAMES.index(split)]
            ptr = np.arange(len(hist) + 1) * hist.shape[1]
            return ptr, hist.reshape(-1)
        start, end = a["seq_ptr"][:-1], self._loo_target_pos(split)
        items = a["seq_items"][ragged_ranges(start, end)[1]]
        return np.concatenate([[0], np.cumsum(end - start)]), items

    def split_size(self, split: str) -> int:
        code = SPLIT_NAMES.index(split)
        if self.protocol == "paper":
            return int((self.arrays["window_split"] == code).sum())
        return self.num_users

    def stats(self) -> dict[str, int]:
        """Counts after filtering; ``sequences`` are windows (paper) or users (loo)."""
        sequences = (
            len(self.arrays["window_user"]) if self.protocol == "paper" else self.num_users
        )
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": int(len(self.arrays["seq_items"])),
            "sequences": int(sequences),
            "train": self.split_size("train"),
            "valid": self.split_size("valid"),
            "test": self.split_size("test"),
        }

    def training_interactions(self) -> tuple[np.ndarray, np.ndarray]:
        """``(user [M], item [M])``: every interaction a model may learn from, once each.

        Paper protocol: the interactions covered by at least one training window (an
        interaction shared by overlapping windows counts once). Leave-one-out: every
        user's sequence without its valid and test targets (its last two items).
        """
        a = self.arrays
        ptr = a["seq_ptr"]
        owner = np.repeat(np.arange(self.num_users), np.diff(ptr))
        if self.protocol == "paper":
            window = self.meta["options"]["window"]
            start = a["window_start"][a["window_split"] == TRAIN]
            depth = np.zeros(len(a["seq_items"]) + 1, dtype=np.int64)
            np.add.at(depth, start, 1)
            np.add.at(depth, start + window, -1)
            keep = np.cumsum(depth[:-1]) > 0
        else:
            keep = np.ones(len(a["seq_items"]), dtype=bool)
            keep[ptr[1:] - 1] = False
            keep[ptr[1:] - 2] = False
        return owner[keep], a["seq_items"][keep]

    # ------------------------------------------------------------------ negatives
    def draw_train_negatives(self, epoch: int) -> np.ndarray:
        """Fresh training negatives for ``epoch``, from a generator seeded by (seed, epoch).

        Returns ``[W_train, N]`` (paper) or ``[U, N]`` (loo), in the order of the train
        split's examples; the same epoch always gives the same draw, so resuming is exact.
        """
        rng = np.random.default_rng([self.meta["options"]["seed"], 1, epoch])
        num = self.meta["options"]["negatives"]
        if self.protocol == "paper":
            users = self.arrays["window_user"][self.arrays["window_split"] == TRAIN]
        else:
            users = np.arange(self.num_users)
        return sample_negatives(users, num, self.seen, rng)

    # ------------------------------------------------------------------ leave-one-out
    def loo_example(self, split: str) -> dict[str, np.ndarray]:
        """Histories and targets of every user for a leave-one-out split.

        The target of ``test`` is the last interaction, of ``valid`` the second last and
        of ``train`` the third last; the history is everything before the target, cut to
        the most recent ``max_len`` items and left-aligned (``-1``-free: use ``length``).

        Returns:
            ``items [U, max_len]`` (0-padded on the right), ``time [U, max_len]`` (days
            since the history's first item), ``length [U]``, ``target [U]``,
            ``prefix_end [U]`` (offset of the target in ``seq_items``).
        """
        self._require_loo("loo_example")
        return self.loo_rows(self._loo_target_pos(split))

    def _loo_target_pos(self, split: str) -> np.ndarray:
        """``[U]`` offset in ``seq_items`` of every user's target of a leave-one-out split."""
        offset = {"train": 3, "valid": 2, "test": 1}[split]
        return self.arrays["seq_ptr"][1:] - offset

    def loo_rows(self, target_pos: np.ndarray) -> dict[str, np.ndarray]:
        """Like :meth:`loo_example`, for user ``u`` the target at offset ``target_pos[u]``
        of ``seq_items`` (inside the user's sequence, after its first item)."""
        self._require_loo("loo_rows")
        max_len = self.meta["options"]["max_len"]
        ptr, seq_items, seq_time = (self.arrays[k] for k in ("seq_ptr", "seq_items", "seq_time"))
        target_pos = np.asarray(target_pos, dtype=np.int64)
        if target_pos.shape != (self.num_users,) or np.any(target_pos <= ptr[:-1]) or np.any(
            target_pos >= ptr[1:]
        ):
            raise ValueError("target_pos must hold one offset per user, after the user's first "
                             "item and inside the user's sequence")
        length = np.minimum(target_pos - ptr[:-1], max_len)
        start = target_pos - length
        cols = np.arange(max_len)
        idx = start[:, None] + cols[None, :]
        valid = cols[None, :] < length[:, None]
        idx = np.where(valid, idx, 0)
        items = np.where(valid, seq_items[idx], 0)
        ts = seq_time[idx]
        days = np.where(valid, relative_days(ts), 0.0).astype(np.float32)
        return {
            "items": items,
            "time": days,
            "length": length,
            "target": seq_items[target_pos],
            "prefix_end": target_pos,
        }

    def draw_loo_train_targets(self, epoch: int, positives: int = 1) -> np.ndarray:
        """Training targets of ``epoch`` under ``loo``: per user a random cut point and the
        ``positives`` items that follow it, from a generator seeded by (seed, epoch).

        The cut point ``c`` is drawn uniformly among the positions that leave ``positives``
        items before the validation target (position 1 when the sequence is too short;
        never position 0, so every history has an item). The targets are the items at
        ``c, c + 1, ...`` up to the validation target, repeated in turn when fewer than
        ``positives`` remain, so every user has the same number of positive slots. With
        ``positives=1`` this is the random cut point of ComiRec's and MIND's training data:
        over the epochs every item of the training part becomes a target, at the cost of one
        example per user per epoch.

        Returns ``[U, positives]`` offsets into ``seq_items``; column 0 is the cut point.
        """
        self._require_loo("draw_loo_train_targets")
        if positives < 1:
            raise ValueError(f"positives must be >= 1, got {positives}")
        rng = np.random.default_rng([self.meta["options"]["seed"], 5, epoch])
        ptr = self.arrays["seq_ptr"]
        first, end = ptr[:-1] + 1, ptr[1:] - 2  # end: the validation target's offset
        choices = np.maximum(end - positives - first + 1, 1)
        cut = first + (rng.random(self.num_users) * choices).astype(np.int64)
        available = end - cut  # >= 1
        return cut[:, None] + np.arange(positives)[None, :] % available[:, None]

    def loo_train_prefixes(self) -> tuple[np.ndarray, np.ndarray]:
        """Every training target under ``loo``: ``(user [R], offset [R])`` of the items at
        positions 1 to n-3 of each user's sequence (all but the first item, the validation
        and the test target), in sequence order; the history of each is every item before
        it (RecBole's and GRU4Rec's prefix examples)."""
        self._require_loo("loo_train_prefixes")
        ptr = self.arrays["seq_ptr"]
        user, offset = ragged_ranges(ptr[:-1] + 1, ptr[1:] - 2)
        return user, offset

    def draw_prefix_negatives(self, user: np.ndarray, epoch: int) -> np.ndarray:
        """``[R, N]`` training negatives of ``epoch`` for rows owned by ``user [R]`` (never
        seen by the row's user), from a generator seeded by (seed, epoch)."""
        rng = np.random.default_rng([self.meta["options"]["seed"], 6, epoch])
        return sample_negatives(user, self.meta["options"]["negatives"], self.seen, rng)

    def _require_loo(self, what: str) -> None:
        if self.protocol != "loo":
            raise ValueError(f"{what} needs a dataset prepared with protocol 'loo'")

    # ------------------------------------------------------------------ subsets
    def subsample_users(self, num_users: int, seed: int = 0) -> PreparedDataset:
        """A copy restricted to ``num_users`` users drawn at random (seeded).

        Item ids and the fixed negatives are unchanged, so results on the subset are
        comparable between models; under ``loo`` the users are renumbered.
        """
        if num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {num_users}")
        rng = np.random.default_rng([seed, 3])
        a = self.arrays
        if self.protocol == "paper":
            owners = np.unique(a["window_user"])
            chosen = np.sort(rng.permutation(owners)[:num_users])
            rows = np.isin(a["window_user"], chosen)
            window_keys = ("window_user", "window_split", "window_start", "hist_items",
                           "hist_time", "targets", "negatives")
            arrays = {k: (v[rows] if k in window_keys else v) for k, v in a.items()}
        else:
            chosen = np.sort(rng.permutation(self.num_users)[:num_users])
            ptr = a["seq_ptr"]
            lengths = ptr[chosen + 1] - ptr[chosen]
            starts = np.repeat(ptr[chosen], lengths)
            offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            idx = starts + offsets
            arrays = dict(a)
            arrays.update(
                seq_ptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                seq_items=a["seq_items"][idx],
                seq_time=a["seq_time"][idx],
                user_ids=a["user_ids"][chosen],
                loo_negatives=a["loo_negatives"][:, chosen],
            )
        meta = {**self.meta, "subsample": {"num_users": int(num_users), "seed": seed}}
        return PreparedDataset(arrays, meta)

    # ------------------------------------------------------------------ persistence
    def digest(self) -> str:
        """SHA-256 of every array (name, dtype, shape and bytes, in name order): equal for
        equal content, whether prepared now or read from the cache."""
        h = hashlib.sha256()
        for name in sorted(self.arrays):
            array = np.ascontiguousarray(self.arrays[name])
            h.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
            h.update(array.data)  # the buffer itself, no copy
        return h.hexdigest()

    def checksum(self) -> str:
        """SHA-256 of the arrays (:meth:`digest`) and the metadata: what a cache entry
        stores beside them and :meth:`load` compares."""
        h = hashlib.sha256(self.digest().encode())
        h.update(json.dumps(self.meta, sort_keys=True).encode())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        """Write atomically (:func:`~mdgr_graph.io.atomic_write_bytes`: a temporary file
        in the same folder, then a rename), with the :meth:`checksum` that :meth:`load`
        verifies."""
        atomic_write_bytes(path, lambda fh: np.savez(
            fh, __meta__=np.array(json.dumps(self.meta)),
            **{_CHECKSUM: np.array(self.checksum())}, **self.arrays))

    @classmethod
    def load(cls, path: Path) -> PreparedDataset:
        """Read an entry written by :meth:`save` and check it.

        Raises:
            DamagedCacheEntry: the file is not a readable ``.npz`` (truncated, bad zip,
                pickled or foreign content), lacks the metadata, the checksum or an array,
                its checksum does not match, or its arrays are inconsistent.
        """
        try:
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise DamagedCacheEntry(path, "not an .npz archive")
            with loaded as npz:
                if "__meta__" not in npz.files:
                    raise DamagedCacheEntry(path, "no metadata ('__meta__')")
                if _CHECKSUM not in npz.files:
                    raise DamagedCacheEntry(
                        path, f"no checksum ({_CHECKSUM!r}): damaged, or written by an "
                        "earlier version")
                arrays = {k: npz[k] for k in npz.files if k not in ("__meta__", _CHECKSUM)}
                meta = json.loads(str(npz["__meta__"]))
                stored = str(npz[_CHECKSUM])
        except DamagedCacheEntry:
            raise
        except Exception as err:  # noqa: BLE001 - whatever breaks the read, the entry is bad
            # truncated or foreign files give BadZipFile, EOFError, ValueError (bad header,
            # short read, pickled data, bad JSON), zlib.error, OSError, ...
            raise DamagedCacheEntry(path, f"unreadable ({type(err).__name__}: {err})") from err
        problem = _entry_problem(arrays, meta)
        if problem is not None:
            raise DamagedCacheEntry(path, problem)
        dataset = cls(arrays, meta)
        if dataset.checksum() != stored:
            raise DamagedCacheEntry(path, "checksum mismatch (the content was changed)")
        return dataset


def _entry_problem(arrays: dict[str, np.ndarray], meta: Any) -> str | None:
    """The first broken invariant of a prepared dataset's arrays and metadata, or None.

    Checks the metadata's shape, that every array of the protocol is there, and that the
    arrays agree: ``seq_ptr`` runs from 0 to ``len(seq_items)`` without decreasing, one
    time per item and one raw id per user and item, item ids in ``1..num_items``, and the
    protocol's arrays sized by the windows (paper) or users (loo) and pointing inside.
    """
    if not isinstance(meta, dict) or not isinstance(meta.get("options"), dict):
        return "metadata without options"
    opts = meta["options"]
    protocol = opts.get("protocol")
    if protocol not in PROTOCOL_ARRAYS:
        return f"metadata names an unknown protocol {protocol!r}"
    missing = [k for k in COMMON_ARRAYS + PROTOCOL_ARRAYS[protocol] if k not in arrays]
    if missing:
        return f"missing arrays {', '.join(missing)}"
    a = arrays
    ptr, items = a["seq_ptr"], a["seq_items"]
    for name in COMMON_ARRAYS:
        if a[name].ndim != 1:
            return f"{name} is not one-dimensional"
    if not np.issubdtype(ptr.dtype, np.integer) or not np.issubdtype(items.dtype, np.integer):
        return "seq_ptr and seq_items must hold integers"
    num_users, num_items = len(ptr) - 1, len(a["item_ids"]) - 1
    if num_users < 0 or ptr[0] != 0 or ptr[-1] != len(items) or np.any(np.diff(ptr) < 0):
        return f"seq_ptr does not index the {len(items)} items of seq_items"
    if len(a["seq_time"]) != len(items):
        return f"seq_time has {len(a['seq_time'])} entries for {len(items)} items"
    if len(a["user_ids"]) != num_users:
        return f"user_ids has {len(a['user_ids'])} entries for {num_users} users"
    if len(items) and (items.min() < 1 or items.max() > num_items):
        return f"seq_items outside 1..{num_items}"
    if protocol == "loo":
        neg = a["loo_negatives"]
        if neg.ndim != 3 or neg.shape[:2] != (2, num_users):
            return f"loo_negatives has shape {neg.shape}, not (2, {num_users}, N)"
        if not np.issubdtype(neg.dtype, np.integer):
            return "loo_negatives must hold integers"
        if neg.size and (neg.min() < 1 or neg.max() > num_items):
            return f"loo_negatives outside 1..{num_items}"
        return None
    window, history = opts.get("window"), opts.get("history")
    if not isinstance(window, int) or not isinstance(history, int):
        return "metadata without the window and history lengths"
    count = len(a["window_user"])
    shapes = {
        "window_user": (count,), "window_split": (count,), "window_start": (count,),
        "hist_items": (count, history), "hist_time": (count, history),
        "targets": (count, window - history),
    }
    for name, shape in shapes.items():
        if a[name].shape != shape:
            return f"{name} has shape {a[name].shape}, expected {shape}"
    if a["negatives"].ndim != 2 or len(a["negatives"]) != count:
        return f"negatives has shape {a['negatives'].shape}, expected ({count}, N)"
    for name in ("window_user", "window_split", "window_start", "hist_items", "targets",
                 "negatives"):
        if not np.issubdtype(a[name].dtype, np.integer):
            return f"{name} must hold integers"
    if count:
        if a["window_user"].min() < 0 or a["window_user"].max() >= num_users:
            return f"window_user outside 0..{num_users - 1}"
        if a["window_split"].min() < 0 or a["window_split"].max() >= len(SPLIT_NAMES):
            return "window_split outside 0..2"
        start, owner = a["window_start"], a["window_user"]
        if np.any(start < ptr[owner]) or np.any(start + window > ptr[owner + 1]):
            return "a window_start lies outside its user's sequence"
        for name in ("hist_items", "targets", "negatives"):
            if a[name].size and (a[name].min() < 1 or a[name].max() > num_items):
                return f"{name} outside 1..{num_items}"
    return None


def _load_cached(entry: Path, options: DataOptions) -> PreparedDataset | None:
    """The dataset of cache ``entry`` for ``options``; None when there is none. A damaged
    entry, or one written for other options, is reported, deleted and treated as absent."""
    if not entry.is_file():
        return None
    try:
        dataset = PreparedDataset.load(entry)
        expected = json.loads(json.dumps(options.to_json()))
        if dataset.meta["options"] != expected or (
            dataset.meta.get("cache_version") != CACHE_VERSION
        ):
            raise DamagedCacheEntry(entry, "written for other options or another version")
        return dataset
    except DamagedCacheEntry as err:
        warnings.warn(f"damaged cache entry {err}; deleted, rebuilding it",
                      CacheRepairWarning, stacklevel=3)
        try:
            entry.unlink()
        except OSError:  # gone already (another process healed it), or not ours to delete:
            pass  # the rebuilt entry replaces it either way
        return None


# ---------------------------------------------------------------------- preparation
def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(options: DataOptions) -> str:
    """Hash of the options, the input file's content and the preparation version."""
    payload = {"version": CACHE_VERSION, "options": options.to_json()}
    if options.format != "synthetic":
        payload["file_sha256"] = _file_digest(options.path)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def _read_sequences(options: DataOptions) -> Sequences:
    if options.format == "synthetic":
        log = generate_synthetic(**{"seed": options.seed, **options.synthetic}).interactions
    else:
        extra: dict[str, Any] = {}
        if options.format == "taobao":
            extra["behaviors"] = options.behaviors
        elif options.format == "csv":
            extra.update(
                user_col=options.user_col,
                item_col=options.item_col,
                time_col=options.time_col,
                sep=options.sep,
            )
        if options.chunk_rows is not None:
            log = read_chunked(options.format, options.path, options.chunk_rows, **extra)
        else:
            log = read_interactions(options.format, options.path, **extra)
    return build_sequences(
        log, min_item_count=options.min_item_count, min_user_len=options.min_user_len
    )


def _paper_arrays(seqs: Sequences, options: DataOptions) -> dict[str, np.ndarray]:
    window_user, window_start = paper_windows(seqs, options.window)
    if len(window_user) == 0:
        raise ValueError(f"no user has a full window of {options.window} interactions")
    rng = np.random.default_rng([options.seed, 0])
    user_split = split_users(seqs.num_users, options.valid_frac, options.test_frac, rng)
    seen = SeenItems(seqs.user_of, seqs.items, seqs.num_items)
    negatives = sample_negatives(window_user, options.negatives, seen, rng)
    stride = options.train_stride or options.window
    if stride < options.window:
        # Extra overlapping windows of training users only, appended after the paper's
        # windows and drawn from their own generator, so everything else is unchanged.
        train_users = np.flatnonzero(user_split == TRAIN)
        extra_user, extra_start = paper_windows(seqs, options.window, stride, train_users)
        new = ~np.isin(extra_start, window_start)
        extra_user, extra_start = extra_user[new], extra_start[new]
        extra_rng = np.random.default_rng([options.seed, 4])
        window_user = np.concatenate([window_user, extra_user])
        window_start = np.concatenate([window_start, extra_start])
        negatives = np.concatenate(
            [negatives, sample_negatives(extra_user, options.negatives, seen, extra_rng)]
        )
    idx = window_start[:, None] + np.arange(options.window)[None, :]
    items = seqs.items[idx]
    return {
        "window_user": window_user,
        "window_split": user_split[window_user],
        "window_start": window_start,
        "hist_items": items[:, : options.history],
        "hist_time": relative_days(seqs.timestamp[idx[:, : options.history]]),
        "targets": items[:, options.history :],
        "negatives": negatives,
    }


def _loo_arrays(seqs: Sequences, options: DataOptions) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([options.seed, 0])
    seen = SeenItems(seqs.user_of, seqs.items, seqs.num_items)
    users = np.arange(seqs.num_users)
    negatives = np.stack([sample_negatives(users, options.negatives, seen, rng) for _ in "vt"])
    return {"loo_negatives": negatives}


def prepare_dataset(
    options: DataOptions, cache_dir: str | Path | None = DEFAULT_CACHE_DIR
) -> PreparedDataset:
    """Prepare (or load from cache) the dataset described by ``options``.

    Args:
        options: what to read and how to cut it.
        cache_dir: where cached entries live; ``None`` disables the cache.
    """
    if options.format != "synthetic" and not Path(options.path).is_file():
        raise FileNotFoundError(f"no such file: {options.path}")
    if options.chunk_rows is not None:
        import_pyarrow()  # fail before hashing a large file
    entry = None
    if cache_dir is not None:
        entry = Path(cache_dir) / f"{options.format}-{options.protocol}-{cache_key(options)}.npz"
        cached = _load_cached(entry, options)
        if cached is not None:
            return cached

    seqs = _read_sequences(options)
    arrays = {
        "seq_ptr": seqs.ptr,
        "seq_items": seqs.items,
        "seq_time": seqs.timestamp,
        "user_ids": seqs.user_ids,
        "item_ids": seqs.item_ids,
    }
    if options.protocol == "paper":
        arrays.update(_paper_arrays(seqs, options))
    else:
        arrays.update(_loo_arrays(seqs, options))
    meta = {"options": options.to_json(), "cache_version": CACHE_VERSION}
    dataset = PreparedDataset(arrays, meta)
    if entry is not None:
        dataset.save(entry)
    return dataset


__all__ = [
    "DataOptions",
    "PreparedDataset",
    "DamagedCacheEntry",
    "CacheRepairWarning",
    "prepare_dataset",
    "cache_key",
    "TRAIN",
    "VALID",
    "TEST",
]
