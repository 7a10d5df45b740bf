"""mdgr_graph.diagnostics on hand-made tensors with known answers, diagnose() on a tiny
synthetic dataset, and the benchmarks/diagnostics.py command."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from mdgr_graph import diagnostics as D
from mdgr_graph.data.dataset import SequenceDataset, make_sequence_graph
from mdgr_graph.data.synthetic import generate_synthetic
from mdgr_graph.metrics import auc_per_row
from mdgr_graph.models import MDGR, SequentialRecommender, StaticGraphRec, build_model
from mdgr_graph.nn.encoding import sinusoidal_encoding

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


def flat(lengths):
    """``(batch, pos)`` of sequences of the given lengths, nodes in position order."""
    batch = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.cat([torch.arange(n) for n in lengths])
    return batch, pos


def shuffle_within(batch, *node_tensors, seed=0):
    """The same nodes in another order inside each sequence (batch stays sorted)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.argsort(batch * 10_000 + torch.randperm(batch.numel(), generator=gen))
    return (batch[order], *(t[order] for t in node_tensors))


# ---------------------------------------------------------------------- consecutive
def test_contiguous_clusters_share_all_but_the_segment_boundaries():
    batch, pos = flat([10, 6])
    cluster = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2] + [0, 0, 0, 0, 0, 1])
    result = D.consecutive_same_cluster(cluster, batch, pos)
    # 7 of 9 consecutive pairs inside a segment, then 4 of 5
    assert result.share == pytest.approx((7 / 9 + 4 / 5) / 2)
    assert result.chance == pytest.approx(((6 + 12 + 6) / 90 + 20 / 30) / 2)
    assert result.sequences == 2
    # labels are local to a sequence and the node order inside a sequence is free
    b, c, p = shuffle_within(batch, cluster, pos)
    assert D.consecutive_same_cluster(c, b, p) == result


def test_alternating_clusters_never_share_and_one_cluster_always_does():
    batch, pos = flat([10])
    alternating = pos % 2
    result = D.consecutive_same_cluster(alternating, batch, pos)
    assert result.share == 0.0
    assert result.chance == pytest.approx(2 * 5 * 4 / (10 * 9))
    one = D.consecutive_same_cluster(torch.zeros(10, dtype=torch.long), batch, pos)
    assert one.share == one.chance == 1.0


def test_chance_level_equals_a_brute_force_shuffle():
    labels = [0, 0, 1, 1, 1, 2]
    shares = [sum(a == b for a, b in itertools.pairwise(perm)) / 5
              for perm in itertools.permutations(labels)]
    batch, pos = flat([6, 1])  # a one-node sequence has no pair and is left out
    cluster = torch.tensor([*labels, 0])
    result = D.consecutive_same_cluster(cluster, batch, pos)
    assert result.chance == pytest.approx(sum(shares) / len(shares))
    assert result.sequences == 1
    assert math.isnan(D.consecutive_same_cluster(torch.zeros(1, dtype=torch.long),
                                                 torch.zeros(1, dtype=torch.long),
                                                 torch.zeros(1, dtype=torch.long)).share)


# ---------------------------------------------------------------------- edges
def test_edge_gap_and_its_random_level():
    batch, pos = flat([5, 4, 3])
    # sequence 0: edges 0->1, 4->1 (gaps 1, 3); sequence 1: 5->8, 8->5 (gaps 3, 3);
    # sequence 2 has no edge and is left out
    edge_index = torch.tensor([[0, 4, 5, 8], [1, 1, 8, 5]])
    result = D.edge_position_gap(edge_index, pos, batch)
    assert result.gap == pytest.approx((2 + 3) / 2)
    assert result.random == pytest.approx((6 / 3 + 5 / 3) / 2)  # (n + 1) / 3
    assert result.sequences == 2
    # the random level is the mean over all ordered distinct pairs, for any positions
    pos_gappy = torch.tensor([0, 2, 3, 7, 9, 0, 1, 2, 3, 0, 1, 2])
    brute = np.mean([abs(a - b) for a, b in itertools.permutations([0, 2, 3, 7, 9], 2)])
    one = D.edge_position_gap(edge_index[:, :2], pos_gappy, batch)
    assert one.random == pytest.approx(brute) and one.sequences == 1


def test_kept_share_of_same_cluster_pairs():
    batch, pos = flat([4, 3])
    cluster = torch.tensor([0, 0, 0, 1, 0, 0, 0])  # 6 ordered same-cluster pairs in each
    edge_index = torch.tensor([[0, 1, 2, 4, 3], [1, 0, 0, 5, 0]])  # 3->0 crosses clusters
    result = D.kept_share_of_same_cluster_pairs(edge_index, cluster, batch)
    assert result.share == pytest.approx((3 / 6 + 1 / 6) / 2) and result.sequences == 2


# ---------------------------------------------------------------------- encoder
def tiny_batch(lengths=(5, 7), num_items=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for n in lengths:
        items = torch.randint(1, num_items + 1, (n,), generator=gen)
        days = (torch.rand(n, generator=gen) * 30).cumsum(0)
        graphs.append(make_sequence_graph(items, days, candidates=items[:2],
                                          labels=torch.tensor([1.0, 0.0])))
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize("variant", ["mdgr", "mdgr-p", "mdgr-pt"])
@torch.no_grad()
def test_encoder_input_norms_match_a_direct_computation(variant):
    torch.manual_seed(0)
    model = MDGR.from_variant(variant, 40, dim=16, k=3, m=1, max_len=12, time_dim=8,
                              pos_dim=6)
    batch = tiny_batch()
    norms = D.encoder_input_norms(model, batch)
    enc = model.encoder
    item = model.item_emb(batch.x)
    time = sinusoidal_encoding(batch.t, 8)
    position = sinusoidal_encoding(batch.pos, 6)
    w = enc.proj.weight
    assert norms["item"]["input"] == pytest.approx(float(item.norm(dim=1).mean()))
    assert norms["item"]["projected"] == pytest.approx(
        float((item @ w[:, :16].t()).norm(dim=1).mean()))
    if variant == "mdgr":
        assert norms["time"]["input"] == pytest.approx(math.sqrt(4))  # sin^2 + cos^2 = 1
        assert norms["time"]["projected"] == pytest.approx(
            float((time @ w[:, 16:24].t()).norm(dim=1).mean()))
        assert norms["position"]["projected"] == pytest.approx(
            float((position @ w[:, 24:30].t()).norm(dim=1).mean()))
    else:
        assert norms["position"] is None
        assert (norms["time"] is None) == (variant == "mdgr-pt")
    # the parts' projections plus the bias are the projection of the concatenation
    parts = D._encoder_parts(model, batch)
    assert len(parts) == {"mdgr": 3, "mdgr-p": 2, "mdgr-pt": 1}[variant]
    concat = torch.cat([item, time, position][: len(parts)], dim=1)
    blocks, start = [], 0
    for part in [item, time, position][: len(parts)]:
        blocks.append(part @ w[:, start : start + part.size(1)].t())
        start += part.size(1)
    assert torch.allclose(sum(blocks) + enc.proj.bias, enc.proj(concat), atol=1e-6)
    assert norms["bias"] == pytest.approx(float(enc.proj.bias.norm()))


# ---------------------------------------------------------------------- interests
def test_interest_cosine_and_weight_spread():
    z = torch.zeros(3, 3, 2)
    z[0, 0], z[0, 1] = torch.tensor([1.0, 0]), torch.tensor([0, 2.0])
    z[0, 2] = torch.tensor([5.0, 5])
    z[1, 0], z[1, 1] = torch.tensor([1.0, 1]), torch.tensor([3.0, 3])
    z[2, 0] = torch.tensor([1.0, 0])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    result = D.interest_cosine(z, mask)
    user0 = (0 + 2 * math.sqrt(0.5)) / 3  # cos 90 deg, cos 45 deg twice
    assert result.cosine == pytest.approx((user0 + 1.0) / 2)
    assert result.users == 2  # user 2 has one interest
    weight = torch.tensor([[1.0, 2.0, 4.0], [3.0, 3.0, 100.0], [7.0, 1.0, 1.0]])
    spread = D.interest_weight_spread(weight, mask)
    w0 = np.array([1.0, 2.0, 4.0])
    assert spread.max_min == pytest.approx((4.0 + 1.0) / 2)  # masked 100 ignored
    assert spread.std_mean == pytest.approx((w0.std() / w0.mean() + 0.0) / 2)
    assert spread.users == 2


# ---------------------------------------------------------------------- drift
def manual_states(model, batch):
    """Encoder, then each conv with the last-item query, as MDGR.node_states does."""
    x = model.encode(batch)
    states, last = [x], batch.ptr[1:] - 1
    for conv in model.convs:
        x = conv(x, batch.batch, query=x[last])
        states.append(x)
    return states


def test_iteration_drift_follows_the_models_own_iterations():
    torch.manual_seed(0)
    model = MDGR(40, dim=16, k=3, m=2, max_len=12, time_dim=8, pos_dim=8).eval()
    batch = tiny_batch((8, 10, 12))
    drift = D.iteration_drift(model, batch)
    with torch.no_grad():
        states = manual_states(model, batch)
    cos = [float(F.cosine_similarity(s, states[0], dim=1).mean()) for s in states[1:]]
    prev = [float(F.cosine_similarity(states[i], states[i - 1], dim=1).mean()) for i in (1, 2)]
    assert drift.to_encoder == pytest.approx(cos) and drift.to_previous == pytest.approx(prev)
    assert drift.to_encoder[0] == pytest.approx(drift.to_previous[0])
    mip = build_model_free("mip")
    assert D.iteration_drift(mip, batch) == ([], [])


def build_model_free(name):
    torch.manual_seed(0)
    return MDGR.from_variant("mdgr-dgc" if name == "mip" else name, 40, dim=16, k=3, m=2,
                             max_len=12, time_dim=8, pos_dim=8).eval()


# ---------------------------------------------------------------------- genres
GENRES = [frozenset(), {"a"}, {"a", "b"}, {"b"}, {"c"}, {"a", "c"}, set()]


def slow_purity(labels, batch, items, genres):
    """Per-sequence loop: sum over groups of the largest genre count, over n; mean."""
    per_seq = []
    for b in batch.unique().tolist():
        nodes = (batch == b).nonzero().flatten().tolist()
        total = 0
        for lab in {labels[i] for i in nodes}:
            members = [int(items[i]) for i in nodes if labels[i] == lab]
            names = set().union(*(genres[m] for m in members))
            total += max([sum(g in genres[m] for m in members) for g in names], default=0)
        per_seq.append(total / len(nodes))
    return float(np.mean(per_seq))


def test_genre_purity_of_a_hand_built_example():
    batch, pos = flat([6, 4])
    items = torch.tensor([1, 2, 3, 4, 5, 6, 4, 4, 1, 3])
    cluster = torch.tensor([0, 1, 0, 1, 1, 0, 0, 0, 1, 1])
    result = D.genre_purity(cluster, batch, pos, items, GENRES)
    # seq 0: {1, 3, 6}: a in 1 of 3, b in 1, c in 0 -> 1; {2, 4, 5}: a 2 -> 2; 3/6
    # seq 1: {4, 4}: c 2; {1, 3}: a 1, b 1 -> 1; 3/4
    assert result.clusters == pytest.approx((3 / 6 + 3 / 4) / 2) and result.sequences == 2
    assert result.clusters == pytest.approx(slow_purity(cluster.tolist(), batch, items, GENRES))
    # time segments with the same sizes (3, 3 in order of mean position 2.33 vs 2.67;
    # 2, 2): seq 0 [1, 2, 3] a 2, [4, 5, 6] c 2 -> 4/6; seq 1 [4, 4] 2, [1, 3] 1 -> 3/4
    assert result.time_segments == pytest.approx((4 / 6 + 3 / 4) / 2)
    matrix, names = D.genre_matrix(GENRES)
    assert names == ["a", "b", "c"] and matrix.shape == (7, 3)
    assert D.genre_purity(cluster, batch, pos, items, matrix) == result


def test_contiguous_clusters_have_the_purity_of_the_time_segments():
    gen = torch.Generator().manual_seed(1)
    batch, pos = flat([12, 9])
    items = torch.randint(1, 6, (21,), generator=gen)
    # segments labelled out of time order: 2 2 2 0 0 0 0 1 1 1 1 1 | 1 1 1 1 0 0 0 0 0
    cluster = torch.tensor([2, 2, 2, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    b, c, p, i = shuffle_within(batch, cluster, pos, items)
    result = D.genre_purity(c, b, p, i, GENRES, seed=3)
    assert result.clusters == pytest.approx(result.time_segments)
    assert result.clusters == pytest.approx(slow_purity(cluster.tolist(), batch, items, GENRES))
    # one genre for every item: every partition is pure
    same = [frozenset(), *[{"x"}] * 6]
    assert D.genre_purity(c, b, p, i, same) == (1.0, 1.0, 1.0, 2)


def test_random_partitions_keep_the_cluster_sizes_and_follow_the_seed():
    gen = torch.Generator().manual_seed(0)
    batch, pos = flat([30, 25])
    items = torch.randint(1, 6, (55,), generator=gen)
    cluster = torch.randint(0, 4, (55,), generator=gen)
    sizes = D._cluster_sizes(cluster, batch, 2, 4)
    noise = torch.rand(55, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    labels = D._segments(sizes, batch, D._rank_in_sequence(batch, noise, 2)[0])
    assert torch.equal(D._cluster_sizes(labels, batch, 2, 4), sizes)
    first = D.genre_purity(cluster, batch, pos, items, GENRES, seed=7)
    assert D.genre_purity(cluster, batch, pos, items, GENRES, seed=7) == first
    reference = slow_purity(labels.tolist(), batch, items, GENRES)
    _, _, random = D._genre_purity_per_sequence(
        cluster, batch, pos, D.genre_matrix(GENRES)[0][items], 2,
        torch.Generator().manual_seed(5))
    assert float(random.mean()) == pytest.approx(reference)


def test_read_item_genres_maps_raw_ids(tmp_path):
    path = tmp_path / "movies.dat"
    path.write_bytes("10::Caf\xe9 (1999)::Comedy|Drama\n7::X (2000)::Horror\n"
                     .encode("latin-1"))
    genres = D.read_item_genres(path, np.array(["0", "7", "10", "99"]))
    assert genres == [frozenset(), {"Horror"}, {"Comedy", "Drama"}, frozenset()]


@pytest.mark.realdata
def test_read_item_genres_of_ml1m_subset(shared_data, tmp_path):
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset

    folder = shared_data / "ml-1m-subset"
    if not (folder / "movies.dat.gz").is_file():
        pytest.skip(f"{folder / 'movies.dat.gz'} not found")
    prepared = prepare_dataset(DataOptions(format="movielens", protocol="paper",
                                           path=str(folder / "ratings.dat.gz")),
                               cache_dir=tmp_path)
    genres = D.read_item_genres(folder / "movies.dat.gz", prepared.arrays["item_ids"])
    assert len(genres) == prepared.num_items + 1 and genres[0] == frozenset()
    assert all(genres[1:])  # every rated movie has a genre
    raw = prepared.arrays["item_ids"].tolist()
    assert genres[raw.index("1")] == {"Animation", "Children's", "Comedy"}  # Toy Story


# ---------------------------------------------------------------------- diagnose
def topic_genres(prepared):
    """The synthetic log's planted topics as one 'genre' per item."""
    opts = prepared.meta["options"]
    topic = generate_synthetic(**{"seed": opts["seed"], **opts["synthetic"]}).item_topic
    return [frozenset()] + [{f"topic{topic[int(raw)]}"}
                            for raw in prepared.arrays["item_ids"][1:]]


@pytest.mark.parametrize("name", ["mdgr", "mip", "static-graph"])
def test_diagnose_on_tiny_synthetic_data(paper_data, name):
    torch.manual_seed(0)
    model = build_model(name, paper_data, dim=16, k=3, m=2)
    model.train()
    genres = topic_genres(paper_data)
    result = D.diagnose(model, paper_data, "test", max_windows=10, item_genres=genres,
                        batch_size=4)
    assert model.training  # restored
    json.dumps(result)  # serialisable
    m = 0 if name == "mip" else 2
    assert result["m"] == m and len(result["iterations"]) == m
    assert result["sequences"] == 10 and result["k"] == 3
    final = result["final"]
    assert 0 <= final["consecutive_chance"] <= 1 and 0 <= final["consecutive_same_cluster"] <= 1
    assert 1 <= final["clusters"] <= 3 and final["interest_users"] > 0
    assert -1 <= final["interest_cosine"] <= 1 and final["weight_max_min"] >= 1
    assert 0 <= final["auc"] <= 1 and 0 <= final["auc_mean_interest"] <= 1
    assert 1 <= final["positive_interests"] <= 3
    with torch.no_grad():  # the model's own AUC on those windows
        model.eval()
        batch = next(iter(DataLoader(SequenceDataset(paper_data, "test")[:10], batch_size=10)))
        own = auc_per_row(model.score_candidates(batch), batch.labels.view(10, -1) > 0.5)
        model.train()
    assert final["auc"] == pytest.approx(float(own.mean()), abs=1e-6)
    purity = final["genre_purity"]
    assert purity["sequences"] == 10
    assert all(0 < purity[key] <= 1 for key in ("clusters", "time_segments", "random"))
    assert result["encoder"]["time"]["input"] == pytest.approx(math.sqrt(8))
    for entry in result["iterations"]:
        assert entry["edge_gap_random"] == pytest.approx(21 / 3)  # n = 20 history items
        assert 0 < entry["kept_share_of_same_cluster_pairs"] <= 1
        assert -1 <= entry["cos_to_encoder"] <= 1
        if name == "static-graph":
            assert entry["edge_gap"] == 1.0 and entry["edges"] == 38  # i <-> i + 1
        else:
            assert entry["edges"] == 40  # ceil(0.1 * 20^2) per window
            assert entry["edge_gap"] >= 1
    if m:
        first = result["iterations"][0]
        assert first["cos_to_encoder"] == pytest.approx(first["cos_to_previous"])

    # batches pool exactly: one batch of all 10 windows gives the same figures
    whole = D.diagnose(model, paper_data, "test", max_windows=10, item_genres=genres,
                       batch_size=64)
    assert whole["final"]["consecutive_same_cluster"] == pytest.approx(
        final["consecutive_same_cluster"])
    assert whole["final"]["interest_cosine"] == pytest.approx(final["interest_cosine"])

    # and equal the single-batch functions on the model's own final clustering
    batch = next(iter(DataLoader(SequenceDataset(paper_data, "test")[:10], batch_size=10)))
    model.eval()
    with torch.no_grad():
        z, weight, mask, cluster = model.interests(batch)
    direct = D.consecutive_same_cluster(cluster, batch.batch, batch.pos)
    assert final["consecutive_same_cluster"] == pytest.approx(direct.share)
    assert final["interest_cosine"] == pytest.approx(D.interest_cosine(z, mask).cosine)
    assert final["weight_std_mean"] == pytest.approx(
        D.interest_weight_spread(weight, mask).std_mean)


def test_diagnose_refuses_candidate_models_and_other_models(paper_data):
    model = build_model("mdgr", paper_data, dim=16, k=3, m=1, query="candidate")
    with pytest.raises(ValueError, match="query='candidate'"):
        D.diagnose(model, paper_data, max_windows=2)
    sasrec = build_model("sasrec", paper_data, dim=16)
    assert isinstance(sasrec, SequentialRecommender) and not isinstance(sasrec, MDGR)
    with pytest.raises(TypeError, match="MDGR-family"):
        D.diagnose(sasrec, paper_data, max_windows=2)
    static = build_model("static-graph", paper_data, dim=16, k=3, m=1)
    assert isinstance(static, StaticGraphRec)
    with pytest.raises(ValueError, match="item_genres covers"):
        D.diagnose(static, paper_data, max_windows=2, item_genres=[frozenset()] * 3)


# ---------------------------------------------------------------------- candidate query
def test_rand_agreement_ignores_label_names_and_counts_disagreeing_pairs():
    graph = torch.tensor([0, 0, 0, 1, 1, 1, 2])
    a = torch.tensor([0, 0, 1, 0, 0, 1, 0])
    b = torch.tensor([1, 1, 0, 0, 1, 1, 2])
    rand = D._rand_agreement(a, b, graph, 3)
    # graph 0: the same partition renamed; graph 1: b splits the pair (0, 1) and joins
    # (1, 2), so only (0, 2) agrees; graph 2: one node, no pair
    assert rand[:2].tolist() == pytest.approx([1.0, 1 / 3])
    assert math.isnan(rand[2])


def reference_other_candidate(model, batch, chunk):
    """Candidate j scored against the interests built for the next candidate of its chunk,
    one last-item pass per query."""
    num_cand = batch.candidates.size(1)
    columns, clusters = [], []
    for c in range(num_cand):
        start = c - c % chunk
        size = min(chunk, num_cand - start)
        neighbour = start + (c - start + 1) % size
        query = model.item_emb(batch.candidates[:, neighbour])
        x = model.node_states(batch, query=query)
        z, weight, mask, cluster = model.pool_interests(
            x, batch.batch, batch.pos, batch.t, batch.num_graphs,
            cluster=model.item_clusters(batch)[1], values=model.pool_input(batch))
        item = model.item_emb(batch.candidates[:, c]).unsqueeze(1)
        columns.append(model.scorer(z, weight, mask, item)[:, 0])
        clusters.append(cluster)
    return torch.stack(columns, dim=1), clusters


@pytest.mark.parametrize("chunk", [3, 16])
def test_query_dependence_scores_equal_one_pass_per_query(paper_data, chunk):
    torch.manual_seed(0)
    model = build_model("mdgr", paper_data, dim=16, k=3, m=2, query="candidate").eval()
    model.candidate_chunk = chunk
    batch = next(iter(DataLoader(SequenceDataset(paper_data, "test")[:3], batch_size=3)))
    with torch.no_grad():
        scores, per_copy = D._query_scores(model, batch)
        own = model.score_candidates(batch)
        other, clusters = reference_other_candidate(model, batch, chunk)
        last = model.item_emb(batch.x[batch.ptr[1:] - 1])
        x = model.node_states(batch, query=last)
        z, weight, mask, _ = model.pool_interests(x, batch.batch, batch.pos, batch.t, 3)
        fixed = model.scorer(z, weight, mask, model.item_emb(batch.candidates))
    assert torch.allclose(scores["own"], own, atol=1e-5)
    assert torch.allclose(scores["other_candidate"], other, atol=1e-5)
    assert torch.allclose(scores["last_item"], fixed, atol=1e-5)
    assert not torch.allclose(scores["own"], scores["other_candidate"])
    # the Rand agreement of copy j with its neighbour, from the one-pass clusterings
    num_cand = batch.candidates.size(1)
    expected = []
    for start in range(0, num_cand, chunk):
        size = min(chunk, num_cand - start)
        if size == 1:  # a chunk of one candidate has no neighbour and is left out
            continue
        in_chunk = []
        for b in range(3):
            for c in range(start, start + size):
                neighbour = start + (c - start + 1) % size
                nodes = batch.batch == b
                one = D._rand_agreement(clusters[c][nodes], clusters[neighbour][nodes],
                                        torch.zeros(int(nodes.sum()), dtype=torch.long), 1)
                in_chunk.append(one)
        expected.append(torch.cat(in_chunk))
    assert torch.allclose(torch.cat(per_copy["rand"]), torch.cat(expected).double())


def test_query_dependence_own_query_is_the_models_evaluation(paper_data):
    from mdgr_graph.train import evaluate

    torch.manual_seed(0)
    model = build_model("mdgr", paper_data, dim=16, k=3, m=1, query="candidate")
    model.train()
    result = D.query_dependence(model, paper_data, "test", batch_size=8)
    assert model.training  # restored
    json.dumps(result)
    assert result["windows"] == len(SequenceDataset(paper_data, "test"))
    assert set(result["queries"]) == set(D.QUERIES)
    expected = evaluate(model, paper_data, "test")
    for key, value in expected.items():
        assert result["queries"]["own"][key] == pytest.approx(value, abs=1e-6)
    assert result["queries"]["own"]["score_shift"] == 0
    assert result["queries"]["other_candidate"]["score_shift"] > 0
    assert 0 <= result["cluster_rand_agreement"] <= 1
    assert 0 <= result["identical_partitions"] <= 1 and result["copies"] > 0
    tv = result["attention_tv"]
    assert 0 < tv["between_candidates"] <= 1 and 0 < tv["to_uniform"] <= 1


def test_attention_shift_is_zero_for_a_query_blind_beta(paper_data):
    torch.manual_seed(0)
    model = build_model("mdgr", paper_data, dim=16, k=3, m=1, query="candidate").eval()
    batch = next(iter(DataLoader(SequenceDataset(paper_data, "test")[:3], batch_size=3)))

    def shift():
        per_copy = D._query_scores(model, batch)[1]
        return (torch.cat(per_copy["between_candidates"]), torch.cat(per_copy["to_uniform"]))

    with torch.no_grad():
        between, to_uniform = shift()
        assert (between > 1e-4).any() and (between <= 1 + 1e-6).all()
        assert (to_uniform > 1e-4).any()
        # beta = 0: every candidate gets the same attention, and alpha_i, constant over
        # the neighbours j of node i, leaves it uniform
        beta_out = model.convs[0].att_q[-1]
        beta_out.weight.zero_()
        beta_out.bias.zero_()
        between, to_uniform = shift()
    assert torch.allclose(between, torch.zeros_like(between), atol=1e-6)
    assert torch.allclose(to_uniform, torch.zeros_like(to_uniform), atol=1e-6)


def test_query_dependence_refuses_what_it_cannot_swap(paper_data):
    last = build_model("mdgr", paper_data, dim=16, k=3, m=1)
    with pytest.raises(ValueError, match="query='candidate'"):
        D.query_dependence(last, paper_data, max_windows=2)
    no_graph = build_model("mdgr", paper_data, dim=16, k=3, m=0, query="candidate")
    with pytest.raises(ValueError, match="m >= 1"):
        D.query_dependence(no_graph, paper_data, max_windows=2)
    gate = build_model("mdgr", paper_data, dim=16, k=3, m=1, query="candidate",
                       repeat="gate")
    with pytest.raises(ValueError, match="repeat='gate'"):
        D.query_dependence(gate, paper_data, max_windows=2)
    with pytest.raises(TypeError, match="MDGR-family"):
        D.query_dependence(build_model("sasrec", paper_data, dim=16), paper_data)
    cand = build_model("mdgr", paper_data, dim=16, k=3, m=1, query="candidate")
    with pytest.raises(ValueError, match="split"):
        D.query_dependence(cand, paper_data, split="train")
    with pytest.raises(ValueError, match="max_windows"):
        D.query_dependence(cand, paper_data, max_windows=0)


# ---------------------------------------------------------------------- the command
def load_command():
    spec = importlib.util.spec_from_file_location("diagnostics_command",
                                                  REPO / "benchmarks" / "diagnostics.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SYNTHETIC = ["--synthetic-users", "60", "--synthetic-items", "80", "--synthetic-topics", "4",
             "--window", "40", "--history", "20", "--negatives", "20", "--min-user-len", "40",
             "--no-cache"]


def test_command_untrained_writes_json_and_plot(tmp_path, capsys):
    command = load_command()
    out = tmp_path / "d.json"
    argv = ["--untrained", *SYNTHETIC, "--dim", "16", "--k", "3", "--m", "2",
            "--max-windows", "6", "--json", str(out), "--plot", str(tmp_path / "d.png")]
    assert command.main(argv) == 0
    printed = capsys.readouterr().out
    assert "consec. same" in printed and "item embedding" in printed
    payload = json.loads(out.read_text())
    result = payload["diagnostics"]
    assert result["sequences"] == 6 and len(result["iterations"]) == 2
    assert payload["source"]["untrained"] and payload["source"]["model_kwargs"]["k"] == 3
    assert (tmp_path / "d.png").stat().st_size > 0

    # --run reads args.json and best.pt; the same weights give the same figures
    torch.manual_seed(0)
    args = command.parse_args(argv)
    prepared, model, _ = command.load(args)
    for p in model.parameters():
        p.data.add_(0.01)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "epoch": 0}, run / "best.pt")
    saved = {key: (str(v) if isinstance(v, Path) else v) for key, v in vars(args).items()}
    saved.update(model="mdgr", query="last", lr=1e-3)  # train_mdgr's keys this one ignores
    (run / "args.json").write_text(json.dumps(saved))
    assert command.main(["--run", str(run), "--max-windows", "6", "--json",
                         str(tmp_path / "r.json")]) == 0
    trained = json.loads((tmp_path / "r.json").read_text())["diagnostics"]
    expected = D.diagnose(model, prepared, max_windows=6)
    assert trained["final"] == pytest.approx(expected["final"], nan_ok=True)
    assert trained["final"] != result["final"]


def test_command_rebuilds_nodes_per_cluster_repeat_and_conv_options_of_the_run(tmp_path):
    command = load_command()
    argv = ["--untrained", *SYNTHETIC, "--dim", "16", "--k", "3", "--m", "1"]
    prepared, model, source = command.load(command.parse_args(argv))
    assert model.nodes_per_cluster is None and model.repeat_score is None
    assert source["model_kwargs"]["nodes_per_cluster"] is None
    _, model, _ = command.load(command.parse_args([*argv, "--nodes-per-cluster", "2",
                                                   "--repeat", "gate"]))
    assert model.nodes_per_cluster == 2 and model.repeat_score is not None

    run = tmp_path / "run"
    run.mkdir()
    saved = {key: (str(v) if isinstance(v, Path) else v)
             for key, v in vars(command.parse_args(argv)).items() if key != "untrained"}
    saved.update(model="mdgr", nodes_per_cluster=2, repeat="gate", pool_values="item",
                 conv_residual=False, conv_norm=False)
    (run / "args.json").write_text(json.dumps(saved))
    built = build_model("mdgr", prepared, dim=16, k=3, m=1, nodes_per_cluster=2,
                        repeat="gate", pool_values="item", conv_residual=False,
                        conv_norm=False)
    torch.save({"model": built.state_dict()}, run / "best.pt")
    _, model, source = command.load(command.parse_args(["--run", str(run)]))
    assert model.nodes_per_cluster == 2 and model.repeat_score is not None
    assert model.pool_values == "item"
    # a run trained without the residual and the norm is rebuilt without them
    assert not model.convs[0].residual and model.convs[0].norm is None
    assert source["model_kwargs"]["nodes_per_cluster"] == 2


def test_command_query_dependence_of_a_candidate_model(tmp_path, capsys):
    command = load_command()
    argv = ["--untrained", *SYNTHETIC, "--dim", "16", "--k", "3", "--m", "1",
            "--query", "candidate", "--max-windows", "4"]
    assert command.main([*argv, "--query-dependence", "--json", str(tmp_path / "q.json")]) == 0
    out = capsys.readouterr().out
    assert "other_candidate" in out and "Rand agreement" in out
    result = json.loads((tmp_path / "q.json").read_text())["diagnostics"]
    assert result["windows"] == 4 and set(result["queries"]) == {"own", "other_candidate",
                                                                 "last_item"}
    # the cluster diagnostics refuse a candidate model with one error line
    assert command.main(argv) == 2
    assert "query='candidate'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.parse_args([*argv, "--query-dependence", "--plot", str(tmp_path / "p.png")])


def test_command_errors_exit_2_with_one_error_line(tmp_path, capsys):
    command = load_command()
    missing = tmp_path / "nope.dat"
    assert command.main(["--untrained", *SYNTHETIC, "--max-windows", "2",
                         "--genres", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope.dat" in err[0]
    assert command.main(["--run", str(tmp_path)]) == 2
    assert "args.json not found" in capsys.readouterr().err
    for argv in (["--untrained", "--checkpoint", "x.pt"], [], ["--run", str(tmp_path),
                                                                "--dim", "8"]):
        with pytest.raises(SystemExit) as exc:
            command.parse_args(argv)
        assert exc.value.code == 2
        assert ": error: " in capsys.readouterr().err.strip().splitlines()[-1]


# ---------------------------------------------------------------------- interest use
def test_interest_use_two_interests_each_serving_half_the_positives():
    from mdgr_graph.nn.interest import InterestScore

    scorer = InterestScore(2)
    with torch.no_grad():
        scorer.lin.weight.fill_(1.0)
        scorer.lin.bias.zero_()
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])  # third interest empty
    mask = torch.tensor([[True, True, False]])
    weight = torch.ones(1, 3)
    # positives along either interest, negatives against both
    items = torch.tensor([[[2.0, -1.0], [-1.0, 2.0], [-1.0, -1.0], [0.2, 0.2]]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    use = D.interest_use(scorer, z, weight, mask, items, labels)
    assert use.windows == 1 and use.auc == 1.0
    assert use.positive_interests == 2  # each positive has its own winning interest
    # the mean interest (0.5, 0.5) scores both positives 0.5, the last negative 0.2
    assert use.auc_mean_interest == 1.0
    items[0, 3] = torch.tensor([0.6, 0.6])  # 0.6 beats both positives under the mean...
    use = D.interest_use(scorer, z, weight, mask, items, labels)
    assert use.auc == 1.0  # ...but not their own interest's max (2.0)
    assert use.auc_mean_interest == 0.5


# ---------------------------------------------------------------------- readouts
@pytest.mark.parametrize("k,pool_values", [(1, "state"), (3, "state"), (3, "item")])
def test_readout_ranking_eq16_is_the_models_own_evaluation(loo_data, k, pool_values):
    from mdgr_graph.train import evaluate

    torch.manual_seed(0)
    model = build_model("mdgr", loo_data, dim=16, k=k, m=1, pool_values=pool_values)
    model.train()
    result = D.readout_ranking(model, loo_data, "valid", max_users=40, batch_size=16)
    assert model.training  # restored
    json.dumps(result)
    assert result["users"] == 40 and tuple(result["readouts"]) == D.READOUTS
    own = evaluate(model, loo_data, "valid", batch_size=40, max_batches=1)
    model.train()
    for key in ("hr@10/full", "ndcg@10/full", "mrr/full"):
        assert result["readouts"]["eq16"][key] == pytest.approx(own[key], abs=1e-6)
    if k == 1:  # one interest: every interest readout is Eq. 16 itself
        for name in ("top_weight", "last_item_interest", "mean_interest"):
            assert result["readouts"][name] == pytest.approx(result["readouts"]["eq16"])


def test_readout_scores_match_a_per_row_computation(loo_data):
    torch.manual_seed(1)
    model = build_model("mdgr", loo_data, dim=16, k=3, m=1).eval()
    batch = next(iter(DataLoader(SequenceDataset(loo_data, "test")[:6], batch_size=6)))
    items = model.item_emb.weight
    with torch.no_grad():
        scores = D._readout_scores(model, batch, items)
        z, weight, mask, cluster = model.interests(batch)
        x = model.node_states(batch)
    last = batch.ptr[1:] - 1
    lin = model.scorer.lin
    for b in range(6):
        raw = (z[b].unsqueeze(1) * items.unsqueeze(0)) @ lin.weight.view(-1) + lin.bias
        on = mask[b]
        want = {
            "eq16": (weight[b, on].unsqueeze(1) * raw[on]).max(0).values,
            "unweighted": raw[on].max(0).values,
            "top_weight": weight[b][on].max() * raw[on][weight[b][on].argmax()],
            "last_item_interest": weight[b, cluster[last[b]]] * raw[cluster[last[b]]],
            "last_state": (x[last[b]] * items) @ lin.weight.view(-1) + lin.bias,
        }
        mean_z = z[b, on].mean(0)
        want["mean_interest"] = weight[b, on].mean() * ((mean_z * items) @ lin.weight.view(-1)
                                                         + lin.bias)
        for name, expected in want.items():
            assert torch.allclose(scores[name][b], expected, atol=1e-5), name


def test_readout_ranking_refuses_what_it_cannot_read(loo_data, paper_data):
    model = build_model("mdgr", paper_data, dim=16, k=3, m=1)
    with pytest.raises(ValueError, match="leave-one-out"):
        D.readout_ranking(model, paper_data)
    loo_model = build_model("mdgr", loo_data, dim=16, k=3, m=1)
    with pytest.raises(ValueError, match="split must be"):
        D.readout_ranking(loo_model, loo_data, "train")
    with pytest.raises(ValueError, match="max_users"):
        D.readout_ranking(loo_model, loo_data, max_users=0)
    with pytest.raises(ValueError, match="query='candidate'"):
        D.readout_ranking(build_model("mdgr", loo_data, dim=16, k=3, m=1, query="candidate"),
                          loo_data)
    with pytest.raises(ValueError, match="repeat"):
        D.readout_ranking(build_model("mdgr", loo_data, dim=16, k=3, m=1, repeat="gate"),
                          loo_data)
    with pytest.raises(TypeError, match="MDGR-family"):
        D.readout_ranking(build_model("sasrec", loo_data, dim=16), loo_data)


def test_command_readouts_under_leave_one_out(tmp_path, capsys):
    command = load_command()
    loo = ["--synthetic-users", "60", "--synthetic-items", "80", "--synthetic-topics", "4",
           "--protocol", "loo", "--max-len", "20", "--negatives", "10", "--no-cache", "--dim", "16",
           "--k", "3"]
    out = tmp_path / "r.json"
    assert command.main(["--untrained", *loo, "--split", "valid", "--max-windows", "12",
                         "--readouts", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "readouts, full ranking of 12 valid users" in printed and "last_state" in printed
    readouts = json.loads(out.read_text())["diagnostics"]["readouts"]
    assert readouts["users"] == 12 and set(readouts["readouts"]) == set(D.READOUTS)
    # under the paper protocol there is no catalogue ranking: one error line, status 2
    assert command.main(["--untrained", *SYNTHETIC, "--max-windows", "2", "--readouts"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --protocol loo" in err[0]
    # --no-mask-seen reaches the readouts: Eq. 16 then equals evaluate(mask_seen=False)
    assert command.main(["--untrained", *loo, "--split", "valid", "--max-windows", "12",
                         "--readouts", "--no-mask-seen", "--json", str(out)]) == 0
    unmasked = json.loads(out.read_text())["diagnostics"]["readouts"]["readouts"]["eq16"]
    args = command.parse_args(["--untrained", *loo])
    prepared, model, _ = command.load(args)
    expected = D.readout_ranking(model, prepared, "valid", 12, mask_seen=False)
    assert unmasked == pytest.approx(expected["readouts"]["eq16"])
    with pytest.raises(SystemExit):
        command.parse_args(["--untrained", *loo, "--no-mask-seen"])
