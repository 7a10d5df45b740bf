r"""PinText2: category-grouped multi-interest baseline after Pinterest's PinText.

Reference [41] of the MDGR paper: Jinfeng Zhuang and Yu Liu, "PinText: A multitask text
embedding system in Pinterest", KDD 2019. The MDGR paper calls the baseline *PinText2*
(PinText 2, Zhuang et al., "Attentive Bag of Annotations Embedding", is the follow-up that
pools a pin's annotation embeddings with attention instead of averaging them) and describes
it (Introduction) as a multi-interest model that "first clusters the items by category
labels and computes a representation embedding per cluster" (Table 2: multi-interest,
cluster). PinText itself learns word vectors by multitask training on engagement pairs
(home feed, related pins, search), asking that the similarity of a positive engagement pair
exceed that of a randomly sampled background pair; a pin (or query, or user) is embedded by
pooling the vectors of its words.

What is implemented here (:class:`PinText2`):

1. **Item embedding** :math:`e_i = M_i + t_i`: a learned id embedding plus, where the
   dataset has titles (MovieLens ``movies.dat``), the attentive bag of the item's title
   words (PinText 2): :math:`t_i = \sum_{w \in T_i} \mathrm{softmax}_{w \in T_i}
   (a^\top \tanh(W_t x_w))\, x_w` with learned word vectors :math:`x_w`.
2. **Interests by category.** Every item carries a fixed set of category labels
   (MovieLens genres, multi-label; elsewhere a clustering of the training co-occurrence;
   items without a label share one "unknown" category). The history of a user is split
   into one group per (sequence, category) pair present, an item going to each of its
   categories, and each group is pooled into one interest vector (attention or mean).
3. **Score**: the best-matching interest, :math:`r(i) = \max_g \langle v_g, e_i \rangle`.
4. **Objective**: a ranking loss on the candidates (the "home feed" task: user vs. item),
   by default the sampled softmax of each positive against its row's negatives (``loss=``;
   ``"bce"`` gives the project's Eq. 17), plus PinText's pair-ranking loss on the
   related-item task, consecutive history items as positive pairs against uniformly
   sampled background items, weighted by ``pair_weight``.

Everything is vectorised over the batch: the (node, category) pairs come from a CSR
expansion, groups from one :func:`torch.unique`, pooling from
:func:`torch_geometric.utils.softmax` and :func:`torch_geometric.utils.scatter`, and the
interests of a batch from :func:`~torch_geometric.utils.to_dense_batch`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter, softmax, to_dense_batch

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import (
    SequentialRecommender,
    check_positive,
)
from mdgr_graph.models.baselines.sasrec import dense_recent
from mdgr_graph.nn.cluster import batched_kmeans
from mdgr_graph.nn.interest import InterestQueries

#: How a group of history items becomes one interest vector.
POOLINGS = ("attention", "mean")

#: Where :meth:`PinText2.from_prepared` takes the item categories from.
CATEGORY_SOURCES = ("auto", "labels", "cluster", "none")

#: Movie file names looked for beside a MovieLens ratings file.
MOVIE_FILES = ("movies.dat", "movies.dat.gz")

LabelTable = Tensor | tuple[Tensor, Tensor] | None


# ---------------------------------------------------------------------- CSR helpers
def to_csr(table: LabelTable, num_items: int, name: str) -> tuple[Tensor, Tensor, int]:
    """An item -> labels table as CSR ``(ptr [num_items + 2], index [nnz], num_labels)``.

    Args:
        table: ``None`` (no labels), a LongTensor ``[num_items + 1]`` of one label per
            item (``-1``: none), or a CSR pair ``(ptr [num_items + 2], index [nnz])``
            (labels of item ``i`` are ``index[ptr[i]:ptr[i + 1]]``). Row 0 (padding) is
            ignored. Repeated labels of one item are kept once.
        num_items: number of real items.
        name: argument name for error messages.

    Returns:
        the de-duplicated CSR (row 0 empty, labels sorted within an item) and the number
        of labels ``max + 1`` (0 when there are none).
    """
    rows = num_items + 1
    if table is None:
        return torch.zeros(rows + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long), 0
    if isinstance(table, Tensor):
        if table.dim() != 1 or table.numel() != rows or table.is_floating_point():
            raise ValueError(f"{name} must be an integer tensor [num_items + 1 = {rows}] or a "
                             f"CSR pair (ptr, index), got {table.dtype} {tuple(table.shape)}")
        table = table.long().clone()
        table[0] = -1
        if int(table.min()) < -1:
            raise ValueError(f"{name}: labels must be >= 0 (-1: none)")
        item = torch.nonzero(table >= 0).view(-1)
        label = table[item]
    else:
        if not isinstance(table, (tuple, list)) or len(table) != 2:
            raise ValueError(f"{name} must be a tensor or a CSR pair (ptr, index)")
        ptr, index = (torch.as_tensor(t) for t in table)
        if ptr.dim() != 1 or ptr.numel() != rows + 1 or ptr.is_floating_point():
            raise ValueError(f"{name}: ptr must be an integer tensor [num_items + 2 = "
                             f"{rows + 1}], got {tuple(ptr.shape)}")
        ptr, index = ptr.long(), index.long().view(-1)
        if int(ptr[0]) != 0 or int(ptr[-1]) != index.numel() or bool((ptr.diff() < 0).any()):
            raise ValueError(f"{name}: ptr must start at 0, not decrease and end at "
                             f"len(index) = {index.numel()}")
        if index.numel() and int(index.min()) < 0:
            raise ValueError(f"{name}: labels must be >= 0")
        item = torch.repeat_interleave(torch.arange(rows), ptr.diff())
        keep = item > 0
        item, label = item[keep], index[keep]
    num_labels = int(label.max()) + 1 if label.numel() else 0
    key = torch.unique(item * max(num_labels, 1) + label)  # sorted, duplicates once
    item, label = key // max(num_labels, 1), key % max(num_labels, 1)
    ptr = torch.zeros(rows + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(item, minlength=rows), 0)
    return ptr, label, num_labels


def expand_csr(ptr: Tensor, index: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Every (row, entry) pair of the CSR rows ``rows [N]``.

    Returns:
        ``owner [P]`` (position in ``rows`` of each pair, sorted) and ``entry [P]``.
    """
    counts = ptr[rows + 1] - ptr[rows]
    owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
    first = torch.cumsum(counts, 0) - counts
    offset = torch.arange(owner.numel(), device=rows.device) - first[owner]
    return owner, index[ptr[rows[owner]] + offset]


def with_unknown(ptr: Tensor, index: Tensor, num_labels: int) -> tuple[Tensor, Tensor]:
    """The CSR with label ``num_labels`` ("unknown") given to every real item without one."""
    counts = ptr.diff()
    empty = counts == 0
    empty[0] = False  # padding has no category
    rows = counts.numel()
    item = torch.repeat_interleave(torch.arange(rows), counts)
    item = torch.cat([item, torch.nonzero(empty).view(-1)])
    label = torch.cat([index, torch.full((int(empty.sum()),), num_labels, dtype=torch.long)])
    order = torch.argsort(item * (num_labels + 1) + label)
    new_ptr = torch.zeros(rows + 1, dtype=torch.long)
    new_ptr[1:] = torch.cumsum(torch.bincount(item, minlength=rows), 0)
    return new_ptr, label[order]


# ---------------------------------------------------------------------- global statistics
def training_incidence(user: np.ndarray, item: np.ndarray, num_items: int) -> Tensor:
    """Binary sparse ``X [num_users', num_items + 1]`` of the given interactions.

    Users are renumbered densely (only those present get a row); an interaction seen
    several times counts once. Pass :meth:`PreparedDataset.training_interactions` only.
    """
    user_t = torch.as_tensor(np.asarray(user), dtype=torch.long)
    item_t = torch.as_tensor(np.asarray(item), dtype=torch.long)
    if user_t.shape != item_t.shape or user_t.dim() != 1:
        raise ValueError("user and item must be 1-D of equal length")
    if item_t.numel() and (int(item_t.min()) < 1 or int(item_t.max()) > num_items):
        raise ValueError(f"item ids must lie in 1..{num_items}")
    _, row = torch.unique(user_t, return_inverse=True)
    num_rows = int(row.max()) + 1 if row.numel() else 0
    x = torch.sparse_coo_tensor(torch.stack([row, item_t]), torch.ones(row.numel()),
                                (num_rows, num_items + 1), check_invariants=True).coalesce()
    return torch.sparse_coo_tensor(x.indices(), torch.ones_like(x.values()), x.shape,
                                   check_invariants=True).coalesce()


def cluster_items(
    user: np.ndarray,
    item: np.ndarray,
    num_items: int,
    num_categories: int = 8,
    rank: int = 32,
    seed: int = 0,
    num_iters: int = 25,
) -> Tensor:
    r"""Deterministic categories of the items from training co-occurrence alone.

    A rank-``rank`` truncated SVD :math:`X \approx U S V^\top` of the binary training
    incidence :func:`training_incidence` (:math:`X^\top X` is the item co-occurrence, whose
    leading eigenvectors are :math:`V`), item features :math:`V S` normalised to unit
    length (so popularity does not decide the cluster), then the project's deterministic
    farthest-point k-means (:func:`~mdgr_graph.nn.cluster.batched_kmeans`) into
    ``num_categories`` groups. The randomised SVD runs under a forked generator seeded
    with ``seed``, so the result depends on the arguments only.

    Returns:
        ``[num_items + 1]`` label per item in ``0..num_categories-1``; ``-1`` for padding
        and for items without any training interaction (they get the "unknown" category).
    """
    if num_categories < 1:
        raise ValueError(f"num_categories must be >= 1, got {num_categories}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    x = training_incidence(user, item, num_items)
    labels = torch.full((num_items + 1,), -1, dtype=torch.long)
    active = torch.zeros(num_items + 1, dtype=torch.bool)
    active[x.indices()[1]] = True
    if not bool(active.any()):
        return labels
    q = max(1, min(rank, x.shape[0], num_items + 1))
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        _, s, v = torch.svd_lowrank(x, q=q, niter=4)
    feats = F.normalize((v * s)[active].double(), dim=1)
    labels[active] = batched_kmeans(feats, None, num_categories, num_iters=num_iters)
    return labels


def tokenize(title: str) -> list[str]:
    """Lower-case word tokens of a title (letters and digits; the year is a token)."""
    return re.findall(r"[0-9a-z]+", title.lower())


def find_movie_file(prepared: PreparedDataset) -> Path | None:
    """``movies.dat[.gz]`` beside the MovieLens ratings file ``prepared`` was read from."""
    opts = prepared.meta.get("options", {})
    if opts.get("format") != "movielens" or not opts.get("path"):
        return None
    folder = Path(os.fspath(opts["path"])).parent
    for name in MOVIE_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def movielens_tables(
    item_ids: np.ndarray, path: str | os.PathLike, min_word_count: int = 2
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None, list[str], list[str]]:
    """Genre and title-word CSR tables of the internal items from a ``movies.dat``.

    Args:
        item_ids: ``prepared.arrays["item_ids"]`` (raw id of internal id ``i``; 0 padding).
        path: the movies file.
        min_word_count: keep words used by at least this many items of the catalogue.

    Returns:
        ``(genres, words, genre_names, vocabulary)``: CSR pairs ``(ptr [I + 2], index)``
        with genre and word ids in sorted-name order; ``words`` is ``None`` when no word
        is kept.
    """
    from mdgr_graph.data.titles import read_movielens_titles

    titles = read_movielens_titles(path)
    infos = [titles.get(str(raw)) for raw in item_ids.tolist()]
    infos[0] = None
    genre_names = sorted({g for info in infos if info for g in info.genres})
    genre_id = {g: k for k, g in enumerate(genre_names)}
    tokens = [sorted(set(tokenize(info.title))) if info else [] for info in infos]
    counts: dict[str, int] = {}
    for toks in tokens:
        for t in toks:
            counts[t] = counts.get(t, 0) + 1
    vocabulary = sorted(t for t, c in counts.items() if c >= min_word_count)
    word_id = {t: k for k, t in enumerate(vocabulary)}

    def csr(lists: list[list[int]]) -> tuple[Tensor, Tensor]:
        ptr = torch.tensor([0] + np.cumsum([len(x) for x in lists]).tolist(), dtype=torch.long)
        index = torch.tensor([v for x in lists for v in x], dtype=torch.long)
        return ptr, index

    genres = csr([sorted(genre_id[g] for g in set(info.genres)) if info else []
                  for info in infos])
    words = csr([[word_id[t] for t in toks if t in word_id] for toks in tokens])
    return genres, (words if vocabulary else None), genre_names, vocabulary


# ---------------------------------------------------------------------- the model
class PinText2(SequentialRecommender):
    r"""PinText2 (after Zhuang & Liu, KDD 2019, and PinText 2) as the MDGR paper uses it.

    **Items.** :math:`e_i = M_i + t_i` with the id table :math:`M` and, when
    ``item_words`` is given, the attentive bag of words of the item's title (PinText 2's
    attention over annotations): :math:`t_i = \sum_{w \in T_i} \alpha_{iw} x_w`,
    :math:`\alpha_{iw} = \mathrm{softmax}_{w \in T_i}(a^\top \tanh(W_t x_w + b_t))`;
    :math:`t_i = 0` for an item without words.

    **Interests.** The most recent ``max_len`` history items of a sequence are grouped by
    their category labels (``item_categories``, fixed; an item with several labels joins
    each of its groups, an item with none the "unknown" category, and repeated items count
    as often as they occur). A group :math:`g` of items :math:`h_j` (item embeddings,
    dropout in training) becomes the interest
    :math:`v_g = \sum_{j \in g} \mathrm{softmax}_{j \in g}(u^\top \tanh(W_p h_j + b_p))\,
    h_j` (``pooling="attention"``) or the group mean (``pooling="mean"``). A sequence has
    as many interests as distinct categories in its history.

    **Score.** :math:`r(i) = \max_g \langle v_g, e_i \rangle`: the interest whose category
    best matches the candidate, as a cluster-based retrieval system serves (per-cluster
    nearest neighbours merged by the best match, like ComiRec here). A weighted sum of the
    interests would be a single user vector, :math:`\langle \sum_g w_g v_g, e_i\rangle`,
    i.e. not a multi-interest model.

    **Loss.** A ranking loss over ``batch.candidates`` (the "home feed" user-item task):
    by default the sampled softmax of each positive against the negatives of its row, a
    listwise form of PinText's "engagement pair above background pair" objective
    (``loss="bce"``: the project's Eq. 17, which this score, with no bias and interests
    made of history item vectors, fits poorly), plus ``pair_weight`` times PinText's
    pair-ranking hinge on the related-item task: every two consecutive history items
    :math:`(a, p)` form a positive pair, an item :math:`n` drawn uniformly from
    ``1..num_items`` (torch's global generator) the background pair, and
    :math:`\max(0, \mathrm{margin} - \cos(e_a, e_p) + \cos(e_a, e_n))` is averaged over
    pairs.

    Deviations from PinText (no public code; Pinterest's system is not reproducible):
    word vectors are trained end-to-end with the recommender instead of pre-trained on
    Pinterest's three surfaces; the id embedding is added to the text embedding because
    titles alone cannot tell most movies apart and Amazon Beauty has no text here; users
    are represented by grouping their history by category, as the MDGR paper describes,
    rather than by averaging words; the cluster variant for unlabelled data
    (:func:`cluster_items`) replaces Pinterest's annotation categories; history order and
    time are not used (as in PinText).

    Args:
        num_items: number of real items (ids ``1..num_items``; 0 is padding).
        max_len: longest history read; longer ones keep their most recent items.
        item_categories: item -> category labels, a LongTensor ``[num_items + 1]`` (one
            label, ``-1`` none) or CSR ``(ptr [num_items + 2], index [nnz])``; ``None``
            puts every item in the unknown category (one interest per user).
            (default: :obj:`None`)
        item_words: item -> word ids, CSR ``(ptr [num_items + 2], index [nnz])``, or
            ``None`` for id embeddings only. (default: :obj:`None`)
        num_words: vocabulary size (``None``: largest word id + 1). (default: :obj:`None`)
        dim: embedding width :math:`d`. (default: :obj:`32`)
        pooling: ``"attention"`` or ``"mean"`` pooling of a group. (default:
            :obj:`"attention"`)
        dropout: dropout of the history embeddings before pooling. (default: :obj:`0.1`)
        pair_weight: weight of the pair-ranking loss (0 turns it off). (default:
            :obj:`0.1`)
        margin: hinge margin of the pair-ranking loss. (default: :obj:`0.1`)
        loss: the candidate loss, ``"sampled_softmax"``
            (:func:`~mdgr_graph.models.base.sampled_softmax_loss`, a ranking loss like
            PinText's own) or ``"bce"`` (Eq. 17 of MDGR). (default:
            :obj:`"sampled_softmax"`)

    Shapes:
        - **interests:** ``[B, G, d]`` and mask ``[B, G]`` (``G`` the largest number of
          categories of a sequence in the batch)
        - **score_candidates:** ``[B, C]``; **score_all:** ``[B, num_items + 1]``
    """

    #: Its candidate loss runs on the candidates only (no softmax over the catalogue).
    SUPPORTED_LOSSES: tuple[str, ...] = ("bce", "sampled_softmax", "gbce")

    def __init__(
        self,
        num_items: int,
        max_len: int,
        item_categories: LabelTable = None,
        item_words: tuple[Tensor, Tensor] | None = None,
        num_words: int | None = None,
        dim: int = 32,
        pooling: str = "attention",
        dropout: float = 0.1,
        pair_weight: float = 0.1,
        margin: float = 0.1,
        loss: str = "sampled_softmax",
    ) -> None:
        super().__init__(num_items)
        check_positive(max_len=max_len, dim=dim)
        self.candidate_loss_kind = loss
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if pair_weight < 0:
            raise ValueError(f"pair_weight must be >= 0, got {pair_weight}")
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.max_len, self.dim, self.pooling = max_len, dim, pooling
        self.dropout_p, self.pair_weight, self.margin = dropout, float(pair_weight), margin

        ptr, index, num_labels = to_csr(item_categories, num_items, "item_categories")
        ptr, index = with_unknown(ptr, index, num_labels)
        self.num_labels = num_labels
        self.num_categories = num_labels + 1  # the last one is "unknown"
        # tables from the data (from_prepared rebuilds them), not part of checkpoints
        self.register_buffer("category_ptr", ptr, persistent=False)
        self.register_buffer("category_index", index, persistent=False)

        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.pool_att = (nn.Sequential(nn.Linear(dim, dim), nn.Tanh(),
                                       nn.Linear(dim, 1, bias=False))
                         if pooling == "attention" else None)
        if item_words is None:
            if num_words is not None:
                raise ValueError("num_words needs item_words")
            self.num_words = 0
            self.word_emb = self.word_att = None
        else:
            wptr, windex, found = to_csr(tuple(item_words), num_items, "item_words")
            words = found if num_words is None else num_words
            if words < max(found, 1):
                raise ValueError(f"num_words={num_words} is smaller than the largest word id "
                                 f"+ 1 = {found}")
            self.num_words = words
            self.register_buffer("word_ptr", wptr, persistent=False)
            self.register_buffer("word_index", windex, persistent=False)
            self.word_emb = nn.Embedding(words, dim)
            self.word_att = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(),
                                          nn.Linear(dim, 1, bias=False))
        self.reset_parameters()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # saved by earlier versions; rebuilt from the data now
        for key in ("category_ptr", "category_index", "word_ptr", "word_index"):
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for att in (self.pool_att, self.word_att):
            if att is not None:
                nn.init.xavier_uniform_(att[0].weight)
                nn.init.zeros_(att[0].bias)
                nn.init.xavier_uniform_(att[2].weight)
        if self.word_emb is not None:
            nn.init.xavier_normal_(self.word_emb.weight)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_prepared(
        cls,
        prepared: PreparedDataset,
        max_len: int,
        categories: str = "auto",
        num_categories: int = 8,
        cluster_rank: int = 32,
        text: bool = True,
        min_word_count: int = 2,
        movies_path: str | os.PathLike | None = None,
        **kwargs: Any,
    ) -> PinText2:
        """Build the model with categories (and title words) read for ``prepared``.

        ``categories``: ``"labels"`` takes MovieLens genres from ``movies_path`` or the
        ``movies.dat[.gz]`` beside the ratings file of ``prepared`` (an error when there is
        none); ``"cluster"`` uses :func:`cluster_items` on
        :meth:`~PreparedDataset.training_interactions` with ``num_categories`` and
        ``cluster_rank``; ``"auto"`` (default) takes labels when a movies file is found
        and clusters otherwise; ``"none"`` gives one category (one interest). Title words
        (used by at least ``min_word_count`` items) enter when ``text`` and a movies file
        is found. Other keyword arguments go to the constructor.
        """
        if categories not in CATEGORY_SOURCES:
            raise ValueError(f"unknown categories {categories!r}; choose from "
                             f"{', '.join(CATEGORY_SOURCES)}")
        if min_word_count < 1:
            raise ValueError(f"min_word_count must be >= 1, got {min_word_count}")
        path = Path(movies_path) if movies_path is not None else find_movie_file(prepared)
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"no such movies file: {path}")
        if categories == "labels" and path is None:
            raise ValueError("categories='labels' needs a MovieLens movies.dat beside the "
                             "ratings file (or movies_path)")
        labels: LabelTable = None
        words = None
        if path is not None and (categories in ("auto", "labels") or text):
            genres, words, _, _ = movielens_tables(prepared.arrays["item_ids"], path,
                                                   min_word_count)
            if categories in ("auto", "labels"):
                labels = genres
        if categories == "auto" and labels is None and (
                prepared.meta.get("options", {}).get("format") == "movielens"):
            warnings.warn("no movies.dat beside the MovieLens ratings file: PinText2 clusters "
                          "the items instead of using genres", stacklevel=2)
        if categories == "cluster" or (categories == "auto" and labels is None):
            user, item = prepared.training_interactions()
            labels = cluster_items(user, item, prepared.num_items, num_categories,
                                   rank=cluster_rank, seed=prepared.meta["options"]["seed"])
        if not text:
            words = None
        return cls(prepared.num_items, max_len, item_categories=labels, item_words=words,
                   **kwargs)

    # ------------------------------------------------------------------ items
    def text_embeddings(self) -> Tensor | None:
        """Attentive bag of title words of every item: ``[num_items + 1, d]`` (or None)."""
        if self.word_emb is None:
            return None
        rows = torch.arange(self.num_items + 1, device=self.word_ptr.device)
        item, word = expand_csr(self.word_ptr, self.word_index, rows)
        x = self.word_emb(word)
        alpha = softmax(self.word_att(x).squeeze(-1), item, num_nodes=self.num_items + 1)
        return scatter(alpha.unsqueeze(-1) * x, item, 0, dim_size=self.num_items + 1,
                       reduce="sum")

    def item_table(self) -> Tensor:
        """Item embeddings :math:`e_i = M_i + t_i`: ``[num_items + 1, d]`` (row 0 zero)."""
        text = self.text_embeddings()
        return self.item_emb.weight if text is None else self.item_emb.weight + text

    # ------------------------------------------------------------------ interests
    def groups(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The (sequence, category) groups of the kept history items.

        Returns:
            ``item [P]`` (one entry per (history node, category) pair), ``group [P]``
            (its group, ``0..G_total-1``, groups sorted by sequence then category),
            ``group_seq [G_total]`` and ``group_cat [G_total]``.
        """
        items, mask = self.dense_items(batch)
        seq = torch.arange(items.shape[0], device=items.device).unsqueeze(1).expand_as(items)
        node_item, node_seq = items[mask], seq[mask]
        owner, cat = expand_csr(self.category_ptr, self.category_index, node_item)
        key = node_seq[owner] * self.num_categories + cat
        uniq, group = torch.unique(key, return_inverse=True)
        return node_item[owner], group, uniq // self.num_categories, uniq % self.num_categories

    def interests(self, batch: Batch, table: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One interest per (sequence, category) group: ``[B, G, d]`` and mask ``[B, G]``."""
        table = self.item_table() if table is None else table
        item, group, group_seq, _ = self.groups(batch)
        h = self.dropout(table[item])
        num_groups = group_seq.numel()
        if self.pool_att is None:
            v = scatter(h, group, 0, dim_size=num_groups, reduce="mean")
        else:
            alpha = softmax(self.pool_att(h).squeeze(-1), group, num_nodes=num_groups)
            v = scatter(alpha.unsqueeze(-1) * h, group, 0, dim_size=num_groups, reduce="sum")
        return to_dense_batch(v, group_seq, batch_size=batch.num_graphs)

    def interest_queries(self, batch: Batch) -> InterestQueries:
        r"""The score as inner products for retrieval: one query per (sequence, category)
        group, :math:`q_g = v_g`, offsets 0, ``mask`` marking the groups a sequence has
        (:math:`r(i) = \max_g q_g^\top e_i` over :meth:`item_table`); weights are ones."""
        v, mask = self.interests(batch)
        return InterestQueries(v, torch.zeros(mask.shape, dtype=v.dtype, device=v.device),
                               mask, v, mask.to(v.dtype))

    # ------------------------------------------------------------------ scores
    @staticmethod
    def _best(scores: Tensor, mask: Tensor) -> Tensor:
        """``max_g`` of ``scores [B, G, N]`` over the real interests (``mask [B, G]``)."""
        return scores.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)

    def score_candidates(self, batch: Batch) -> Tensor:
        r"""Logits :math:`\max_g \langle v_g, e_c \rangle` of ``batch.candidates``: ``[B, C]``."""
        self._check_candidates(batch)
        table = self.item_table()
        v, mask = self.interests(batch, table)
        return self._best(torch.einsum("bgd,bcd->bgc", v, table[batch.candidates]), mask)

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` (column 0 included), in item chunks."""
        table = self.item_table()
        v, mask = self.interests(batch, table)
        return self.score_item_chunks(
            lambda chunk: self._best(torch.einsum("bgd,nd->bgn", v, chunk), mask),
            table, chunk_size,
        )

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch) -> Tensor:
        """Candidate loss (:attr:`candidate_loss_kind`) plus ``pair_weight`` times the
        pair-ranking hinge."""
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        table = self.item_table()
        v, mask = self.interests(batch, table)
        logits = self._best(torch.einsum("bgd,bcd->bgc", v, table[batch.candidates]), mask)
        loss = self.loss_over_candidates(logits, labels)
        if self.pair_weight > 0:
            loss = loss + self.pair_weight * self.pair_loss(batch, table)
        return loss

    def pair_loss(self, batch: Batch, table: Tensor | None = None) -> Tensor:
        r"""PinText's ranking of engagement pairs over background pairs, on the history.

        Consecutive kept items :math:`(a, p)` against :math:`(a, n)`, :math:`n` uniform in
        ``1..num_items``: mean of :math:`\max(0, m - \cos(e_a, e_p) + \cos(e_a, e_n))`;
        0 (with a graph) when no sequence has two items.
        """
        table = self.item_table() if table is None else table
        items, mask = self.dense_items(batch)
        valid = mask[:, 1:] & mask[:, :-1]
        if not bool(valid.any()):
            return table.sum() * 0.0
        anchor, pos = items[:, :-1][valid], items[:, 1:][valid]
        neg = torch.randint(1, self.num_items + 1, pos.shape, device=pos.device)
        a = table[anchor]
        margin = self.margin - F.cosine_similarity(a, table[pos], dim=-1)
        return F.relu(margin + F.cosine_similarity(a, table[neg], dim=-1)).mean()

    # ------------------------------------------------------------------ checks
    def dense_items(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Right-padded kept history ``items [B, L]`` and ``mask [B, L]`` (checked)."""
        self._check_batch(batch)
        return dense_recent(batch.x, batch.batch, batch.num_graphs, self.max_len)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, categories={self.num_categories}, words={self.num_words}, "
            f"pooling={self.pooling!r}, dropout={self.dropout_p}, "
            f"pair_weight={self.pair_weight}, margin={self.margin}, "
            f"loss={self.candidate_loss_kind!r})"
        )


__all__ = [
    "CATEGORY_SOURCES",
    "POOLINGS",
    "PinText2",
    "cluster_items",
    "expand_csr",
    "find_movie_file",
    "movielens_tables",
    "to_csr",
    "tokenize",
    "training_incidence",
    "with_unknown",
]
