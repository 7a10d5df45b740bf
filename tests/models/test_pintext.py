import dataclasses
import gzip

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from mdgr_graph.data.dataset import SequenceDataset, make_sequence_graph
from mdgr_graph.data.prepare import DataOptions, PreparedDataset, prepare_dataset
from mdgr_graph.models.base import candidate_loss
from mdgr_graph.models.baselines.pintext import (
    PinText2,
    cluster_items,
    expand_csr,
    movielens_tables,
    to_csr,
    tokenize,
    training_incidence,
    with_unknown,
)
from mdgr_graph.train import TrainConfig, evaluate, fit

from .test_losses import reference_sampled_softmax

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ITEMS = 30
D = 8
#: multi-label categories: items 1..30, some with two labels, items 25..30 with none
LABELS = {i: ([i % 4] if i % 3 else [i % 4, 4]) if i < 25 else [] for i in range(1, 31)}
WORDS = {i: sorted({i % 5, (i * 7) % 11, 11}) if i % 6 else [] for i in range(1, 31)}


def csr(table: dict[int, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lists = [[]] + [table[i] for i in range(1, NUM_ITEMS + 1)]
    ptr = torch.tensor([0] + np.cumsum([len(x) for x in lists]).tolist())
    return ptr, torch.tensor([v for x in lists for v in x], dtype=torch.long)


def make_batch(lengths, num_candidates=7, seed=0, items=None):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for g, n in enumerate(lengths):
        x = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen) if items is None else items[g]
        days = torch.rand(len(x), generator=gen).cumsum(0)
        cand = torch.randint(1, NUM_ITEMS + 1, (num_candidates,), generator=gen)
        labels = (torch.arange(num_candidates) < 2).float()
        graphs.append(make_sequence_graph(x, days, candidates=cand, labels=labels))
    return Batch.from_data_list(graphs)


def small_model(text=True, labels=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    opts = dict(max_len=10, dim=D, item_categories=csr(LABELS) if labels else None,
                item_words=csr(WORDS) if text else None)
    opts.update(kwargs)
    return PinText2(NUM_ITEMS, **opts)


# ---------------------------------------------------------------- slow references
def text_reference(model):
    """Per item: softmax over its words of the attention logits, weighted sum."""
    rows = [torch.zeros(D)]
    for i in range(1, NUM_ITEMS + 1):
        if not WORDS[i]:
            rows.append(torch.zeros(D))
            continue
        x = model.word_emb.weight[WORDS[i]]
        alpha = torch.softmax(model.word_att(x).squeeze(-1), 0)
        rows.append((alpha.unsqueeze(-1) * x).sum(0))
    return torch.stack(rows)


def score_reference(model, batch, labels=LABELS):
    """Per sequence and category, literally: members in history order, pool, max over groups."""
    table = model.item_emb.weight + (text_reference(model) if model.word_emb is not None else 0)
    out = []
    for g in range(batch.num_graphs):
        seq = batch.get_example(g).x.tolist()[-model.max_len:]
        cats = {}
        for item in seq:
            for c in (labels[item] if labels and labels[item] else ["unknown"]):
                cats.setdefault(c, []).append(item)
        interests = []
        for members in cats.values():
            h = table[members]
            if model.pooling == "mean":
                interests.append(h.mean(0))
            else:
                alpha = torch.softmax(model.pool_att(h).squeeze(-1), 0)
                interests.append((alpha.unsqueeze(-1) * h).sum(0))
        v = torch.stack(interests)
        out.append((v @ table[batch.candidates[g]].t()).max(0).values)
    return torch.stack(out)


# ---------------------------------------------------------------- tables
def test_to_csr_formats_deduplication_and_unknown():
    single = torch.tensor([5, 2, -1, 0, 2])
    ptr, index, n = to_csr(single, 4, "t")
    assert n == 3 and ptr.tolist() == [0, 0, 1, 1, 2, 3] and index.tolist() == [2, 0, 2]
    ptr2, index2, n2 = to_csr((torch.tensor([0, 1, 4, 4, 5, 7]),
                               torch.tensor([9, 1, 0, 1, 3, 2, 2])), 4, "t")
    # row 0 (padding) is dropped, the repeated label 1 of item 1 and 2 of item 4 kept once
    assert n2 == 4 and ptr2.tolist() == [0, 0, 2, 2, 3, 4] and index2.tolist() == [0, 1, 3, 2]
    uptr, uindex = with_unknown(ptr2, index2, n2)
    assert uptr.tolist() == [0, 0, 2, 3, 4, 5] and uindex.tolist() == [0, 1, 4, 3, 2]
    owner, entry = expand_csr(uptr, uindex, torch.tensor([4, 1, 1, 2]))
    assert owner.tolist() == [0, 1, 1, 2, 2, 3] and entry.tolist() == [2, 0, 1, 0, 1, 4]
    empty_ptr, empty_index, none = to_csr(None, 3, "t")
    assert none == 0 and empty_ptr.tolist() == [0] * 5 and empty_index.numel() == 0


def test_model_categories_table():
    model = small_model()
    assert model.num_categories == 6  # labels 0..4 and unknown (5)
    for i in range(1, NUM_ITEMS + 1):
        got = model.category_index[model.category_ptr[i]:model.category_ptr[i + 1]].tolist()
        assert got == (sorted(LABELS[i]) or [5]), i
    assert model.category_ptr[1] == 0  # padding has none


def test_tokenize():
    assert tokenize("American President, The (1995)") == ["american", "president", "the",
                                                           "1995"]


# ---------------------------------------------------------------- fast == slow
def test_text_embeddings_match_the_per_item_reference():
    model = small_model()
    with torch.no_grad():
        assert torch.allclose(model.text_embeddings(), text_reference(model), atol=1e-6)
        assert torch.equal(model.item_table()[0], torch.zeros(D))
    assert small_model(text=False).text_embeddings() is None


@pytest.mark.parametrize("pooling", ["attention", "mean"])
@pytest.mark.parametrize("text", [True, False])
def test_scores_match_the_per_sequence_reference(pooling, text):
    model = small_model(text=text, pooling=pooling).eval()
    # single items, duplicates, unlabelled items, multi-label items, a cut history
    items = [torch.tensor([3]), torch.tensor([7, 7, 7]), torch.tensor([25, 26, 3]),
             torch.tensor([6, 12, 6, 1, 27, 2, 9, 30]), torch.arange(1, 15),
             torch.tensor([28])]
    batch = make_batch([0] * len(items), items=items)
    with torch.no_grad():
        fast = model.score_candidates(batch)
        slow = score_reference(model, batch)
    assert torch.allclose(fast, slow, atol=1e-5)


def test_without_categories_one_interest_is_the_pooled_history():
    model = small_model(labels=False, pooling="mean", text=False).eval()
    batch = make_batch([4, 9, 1])
    with torch.no_grad():
        v, mask = model.interests(batch)
        assert v.shape == (3, 1, D) and mask.all()
        for g in range(3):
            ref = model.item_emb(batch.get_example(g).x).mean(0)
            assert torch.allclose(v[g, 0], ref, atol=1e-6)
        assert torch.allclose(model.score_candidates(batch),
                              score_reference(model, batch, labels=None), atol=1e-6)


def test_batched_equals_each_sequence_alone():
    model = small_model().eval()
    batch = make_batch([5, 1, 12, 3, 8])
    with torch.no_grad():
        scores = model.score_candidates(batch)
        for g in range(batch.num_graphs):
            alone = model.score_candidates(Batch.from_data_list([batch.get_example(g)]))
            assert torch.allclose(scores[g], alone[0], atol=1e-5)


def test_interests_one_per_category_present():
    model = small_model(max_len=50).eval()
    batch = make_batch([0, 0], items=[torch.tensor([3, 6, 25]), torch.tensor([4, 8])])
    with torch.no_grad():
        _, _, group_seq, group_cat = model.groups(batch)
        v, mask = model.interests(batch)
    # 3 -> {3, 4}, 6 -> {2, 4}, 25 -> {unknown 5}; 4 -> {0}, 8 -> {0}
    assert group_seq.tolist() == [0, 0, 0, 0, 1] and group_cat.tolist() == [2, 3, 4, 5, 0]
    assert v.shape == (2, 4, D) and mask.sum(1).tolist() == [4, 1]
    assert torch.equal(v[1, 1:], torch.zeros(3, D))  # padding interests


def test_score_all_gathers_score_candidates_and_chunks():
    model = small_model().eval()
    batch = make_batch([6, 9, 4, 1])
    with torch.no_grad():
        cand = model.score_candidates(batch)
        full = model.score_all(batch, chunk_size=7)
        whole = model.score_all(batch)
    assert full.shape == (4, NUM_ITEMS + 1) and torch.allclose(full, whole)
    assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-6)


def test_long_sequences_are_cut_to_the_most_recent_items():
    model = small_model(max_len=5).eval()
    batch = make_batch([9, 3])
    short = make_batch([0, 0], items=[batch.get_example(0).x[-5:], batch.get_example(1).x])
    short.candidates = batch.candidates
    with torch.no_grad():
        assert torch.allclose(model.score_candidates(batch), model.score_candidates(short))


# ---------------------------------------------------------------- loss and training
@pytest.mark.parametrize("loss", ["bce", "sampled_softmax"])
def test_pair_loss_matches_reference_and_enters_the_loss(loss):
    model = small_model(pair_weight=0.5, margin=0.3, loss=loss).eval()
    batch = make_batch([4, 1, 6])
    table = model.item_table()
    torch.manual_seed(3)
    fast = model.pair_loss(batch, table)
    torch.manual_seed(3)
    pairs = [(s[t], s[t + 1]) for s in (batch.get_example(g).x.tolist() for g in range(3))
             for t in range(len(s) - 1)]
    neg = torch.randint(1, NUM_ITEMS + 1, (len(pairs),))
    ref = torch.stack([F.relu(0.3 - F.cosine_similarity(table[a], table[p], dim=0)
                              + F.cosine_similarity(table[a], table[n], dim=0))
                       for (a, p), n in zip(pairs, neg.tolist(), strict=True)]).mean()
    assert torch.allclose(fast, ref, atol=1e-6)
    main = candidate_loss(model.score_candidates(batch), batch.labels, loss)
    torch.manual_seed(3)
    assert torch.allclose(model.loss(batch), main + 0.5 * ref, atol=1e-6)
    plain = small_model(pair_weight=0.0, loss=loss).eval()
    assert torch.allclose(plain.loss(batch),
                          candidate_loss(plain.score_candidates(batch), batch.labels, loss))
    single = make_batch([1, 1])
    assert model.pair_loss(single) == 0 and model.pair_loss(single).requires_grad


def test_candidate_losses():
    batch = make_batch([4, 1, 6])
    bce = small_model(pair_weight=0.0, loss="bce").eval()
    logits = bce.score_candidates(batch)
    assert torch.allclose(bce.loss(batch),
                          F.binary_cross_entropy_with_logits(logits, batch.labels))
    softmax = small_model(pair_weight=0.0, loss="sampled_softmax").eval()
    assert torch.equal(softmax.score_candidates(batch), logits)  # same weights
    # each positive against the negatives of its row: columns 0, 1 positive, 2.. negative
    assert bool((batch.labels[:, :2] == 1).all() and (batch.labels[:, 2:] == 0).all())
    ref = reference_sampled_softmax(logits, batch.labels)
    assert torch.allclose(softmax.loss(batch), ref, atol=1e-6)
    assert PinText2(NUM_ITEMS, 5).candidate_loss_kind == "sampled_softmax"
    with pytest.raises(ValueError, match="unknown candidate loss 'hinge'"):
        PinText2(NUM_ITEMS, 5, loss="hinge")


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_gradients_reach_every_parameter(pooling):
    model = small_model(pooling=pooling).train()
    model.loss(make_batch([6, 9, 4, 7, 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_same_seed_identical_and_other_seed_differs():
    batch = make_batch([6, 9, 4])
    a, b = small_model().eval(), small_model().eval()
    assert torch.equal(a.score_candidates(batch), b.score_candidates(batch))
    c = small_model(seed=1).eval()
    assert not torch.allclose(a.score_candidates(batch), c.score_candidates(batch))
    a.train(), b.train()
    torch.manual_seed(5)
    la = a.loss(batch)
    torch.manual_seed(5)
    assert torch.equal(la, b.loss(batch))


def test_edge_cases_are_finite():
    model = small_model(max_len=3).train()
    items = [torch.tensor([25]), torch.tensor([2, 2, 2, 2, 2]), torch.tensor([30, 29])]
    batch = make_batch([0, 0, 0], items=items)
    loss = model.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_arguments_and_batches():
    for kwargs, match in [({"max_len": 0}, "max_len"), ({"dim": 0}, "dim"),
                          ({"pooling": "max"}, "pooling"), ({"dropout": 1.0}, "dropout"),
                          ({"pair_weight": -1.0}, "pair_weight"), ({"margin": -0.1}, "margin")]:
        with pytest.raises(ValueError, match=match):
            PinText2(NUM_ITEMS, **{"max_len": 5, **kwargs})
    with pytest.raises(ValueError, match="item_categories"):
        PinText2(NUM_ITEMS, 5, item_categories=torch.zeros(NUM_ITEMS, dtype=torch.long))
    with pytest.raises(ValueError, match="item_categories"):
        PinText2(NUM_ITEMS, 5, item_categories=torch.full((NUM_ITEMS + 1,), -2))
    with pytest.raises(ValueError, match="ptr"):
        PinText2(NUM_ITEMS, 5, item_categories=(torch.zeros(3, dtype=torch.long),
                                                torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="num_words"):
        PinText2(NUM_ITEMS, 5, item_words=csr(WORDS), num_words=3)
    with pytest.raises(ValueError, match="num_words"):
        PinText2(NUM_ITEMS, 5, num_words=3)
    with pytest.raises(ValueError, match="num_categories"):
        cluster_items(np.array([0]), np.array([1]), 3, num_categories=0)
    model = small_model()
    batch = make_batch([3, 4])
    batch.candidates = batch.candidates[:, :2].reshape(-1)
    with pytest.raises(ValueError, match="candidates"):
        model.score_candidates(batch)
    with pytest.raises(ValueError, match="item ids"):
        model.score_all(make_batch([0], items=[torch.tensor([1, NUM_ITEMS + 1])]))
    with pytest.raises(ValueError, match="1.."):
        model.score_all(make_batch([0], items=[torch.tensor([1, 0])]))


def test_repr():
    assert repr(small_model()) == (
        f"PinText2(num_items={NUM_ITEMS}, max_len=10, dim={D}, categories=6, words=12, "
        "pooling='attention', dropout=0.1, pair_weight=0.1, margin=0.1, loss='sampled_softmax')")


# ---------------------------------------------------------------- global statistics
def test_cluster_items_deterministic_and_unknown_for_unseen_items():
    user = np.repeat(np.arange(6), 4)
    item = np.array([1, 2, 3, 1, 2, 3, 1, 2, 4, 5, 6, 4, 5, 6, 4, 5, 1, 2, 3, 1, 4, 5, 6, 4])
    a = cluster_items(user, item, 8, num_categories=2, rank=4)
    assert torch.equal(a, cluster_items(user, item, 8, num_categories=2, rank=4))
    assert a[0] == -1 and a[7] == -1 and a[8] == -1  # padding and unseen items
    assert a[1] == a[2] == a[3] and a[4] == a[5] == a[6] and a[1] != a[4]


def test_global_statistics_use_training_interactions_only(loo_data):
    user, item = loo_data.training_interactions()
    x = training_incidence(user, item, loo_data.num_items).to_dense()
    ptr, seq = loo_data.arrays["seq_ptr"], loo_data.arrays["seq_items"]
    for u in range(loo_data.num_users):
        target = seq[ptr[u + 1] - 1]
        if target not in seq[ptr[u]:ptr[u + 1] - 2]:  # the test target is new to the user
            assert x[u, target] == 0
    # changing every valid/test target changes neither the clustering nor the model
    changed = {k: v.copy() for k, v in loo_data.arrays.items()}
    last = np.concatenate([ptr[1:] - 1, ptr[1:] - 2])
    changed["seq_items"][last] = 1 + (changed["seq_items"][last] % loo_data.num_items)
    other = PreparedDataset(changed, loo_data.meta)
    assert torch.equal(PinText2.from_prepared(loo_data, 20).category_index,
                       PinText2.from_prepared(other, 20).category_index)


def write_movielens(tmp_path, movies=True):
    rng = np.random.default_rng(0)
    rows = [f"{u}::{m}::4::{1000 + 10 * t}" for u in range(1, 41)
            for t, m in enumerate(rng.choice(np.arange(13), 8, replace=False) + 100)]
    path = tmp_path / "ratings.dat"
    path.write_text("\n".join(rows) + "\n")
    if movies:
        lines = [f"{m}::Movie {'Red' if m % 2 else 'Blue'} {m} (199{m % 3})::"
                 f"{'Comedy|Drama' if m % 4 == 0 else ('Action' if m % 4 == 1 else '')}"
                 for m in range(100, 113)]
        with gzip.open(tmp_path / "movies.dat.gz", "wt") as fh:
            fh.write("\n".join(lines) + "\n")
    return path


def test_from_prepared_reads_genres_and_title_words(tmp_path):
    path = write_movielens(tmp_path)
    opts = DataOptions(format="movielens", path=str(path), protocol="loo", min_item_count=1,
                       min_user_len=5, max_len=8, negatives=3)
    prepared = prepare_dataset(opts, cache_dir=None)
    model = PinText2.from_prepared(prepared, 8, dim=D)
    genres, words, names, vocab = movielens_tables(prepared.arrays["item_ids"],
                                                   tmp_path / "movies.dat.gz")
    assert names == ["Action", "Comedy", "Drama"] and model.num_categories == 4
    assert vocab == ["1990", "1991", "1992", "blue", "movie", "red"]  # ids: used once only
    assert model.num_words == 6
    for i in range(1, prepared.num_items + 1):
        raw = int(prepared.arrays["item_ids"][i])
        expected = [1, 2] if raw % 4 == 0 else ([0] if raw % 4 == 1 else [3])
        got = model.category_index[model.category_ptr[i]:model.category_ptr[i + 1]].tolist()
        assert got == expected, raw
        toks = words[1][words[0][i]:words[0][i + 1]].tolist()
        assert [vocab[t] for t in toks] == sorted(
            ["movie", "red" if raw % 2 else "blue", f"199{raw % 3}"])
    assert PinText2.from_prepared(prepared, 8, text=False).word_emb is None
    clustered = PinText2.from_prepared(prepared, 8, categories="cluster", num_categories=2)
    assert clustered.num_categories == 3
    with pytest.raises(ValueError, match="categories"):
        PinText2.from_prepared(prepared, 8, categories="genres")
    (tmp_path / "bare").mkdir()
    bare = write_movielens(tmp_path / "bare", movies=False)
    prepared2 = prepare_dataset(dataclasses.replace(opts, path=str(bare)), cache_dir=None)
    with pytest.raises(ValueError, match="labels"):
        PinText2.from_prepared(prepared2, 8, categories="labels")
    with pytest.warns(UserWarning, match="movies.dat"):
        assert PinText2.from_prepared(prepared2, 8).word_emb is None


@pytest.mark.parametrize("split", ["train", "test"])
def test_from_prepared_shapes_on_paper_and_loo(paper_data, loo_data, split):
    for prepared in (paper_data, loo_data):
        model = PinText2.from_prepared(prepared, 20, dim=D, num_categories=4).eval()
        assert model.num_categories == 5
        batch = next(iter(DataLoader(SequenceDataset(prepared, split), batch_size=8)))
        with torch.no_grad():
            cand = model.score_candidates(batch)
            full = model.score_all(batch)
        assert cand.shape == batch.candidates.shape
        assert full.shape == (8, prepared.num_items + 1)
        assert torch.isfinite(cand).all() and torch.isfinite(full).all()
        assert torch.allclose(full.gather(1, batch.candidates), cand, atol=1e-5)


def test_fit_one_epoch_paper_and_loo(paper_data, loo_data):
    for prepared, metric in ((paper_data, "auc/sampled"), (loo_data, "ndcg@10/full")):
        torch.manual_seed(0)
        model = PinText2.from_prepared(prepared, 20, dim=D)
        config = TrainConfig(epochs=1, patience=9, batch_size=32, lr=5e-3, progress=False)
        result = fit(model, prepared, config, log=None)
        assert result.epochs == 1 and metric in result.best_valid
        metrics = evaluate(model, prepared, "test")
        assert metrics and all(np.isfinite(v) and 0.0 <= v <= 1.0 for v in metrics.values())
