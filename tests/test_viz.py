"""Titles, interest traces and pictures (mdgr_graph.viz), and examples/explain_user.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from mdgr_graph.cli import explain as explain_cli
from mdgr_graph.cli import train as train_cli
from mdgr_graph.data.dataset import make_sequence_graph
from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.titles import item_labels, read_movielens_titles
from mdgr_graph.models import build_model
from mdgr_graph.viz import (
    align_clusters,
    draw_interest_graphs,
    interest_weights_over_time,
    plot_interest_weights,
    trace_interests,
)

REPO = Path(__file__).resolve().parents[1]

MOVIES = "1::Toy Story (1995)::Animation|Children's\n2::Caf\xe9 Society (1995)::Drama\n\n"


# ---------------------------------------------------------------------- titles
@pytest.mark.parametrize("compress", [False, True])
def test_read_movielens_titles_latin1_and_gzip(tmp_path, compress):
    data = MOVIES.encode("latin-1")
    path = tmp_path / ("movies.dat.gz" if compress else "movies.dat")
    path.write_bytes(gzip.compress(data) if compress else data)
    titles = read_movielens_titles(path)
    assert titles["2"].title == "Café Society (1995)"
    assert titles["1"].genres == ("Animation", "Children's")
    labels = item_labels(np.array(["", "2", "7"]), titles)
    assert labels == ["<pad>", "Café Society (1995)", "item 7"]
    assert item_labels(np.array(["", "1"])) == ["<pad>", "item 1"]


def test_read_movielens_titles_splits_lines_at_newlines_only(tmp_path):
    # Latin-1 byte 0x85 (an ellipsis in cp1252) decodes to U+0085, a line break for
    # str.splitlines; U+2028 in UTF-8 likewise
    path = tmp_path / "movies.dat"
    path.write_bytes(b"1::Wait\x85 What (1999)::Drama\r\n2::B::C\r\n")
    titles = read_movielens_titles(path)
    assert titles["1"].title == "Wait\x85 What (1999)" and titles["2"].genres == ("C",)
    path.write_bytes("1::A\u2028B::Drama\n2::B::C".encode())
    assert read_movielens_titles(path)["1"].title == "A\u2028B"


@pytest.mark.parametrize("text, match", [
    ("1::Toy Story\n", ":1: expected 'id::title::genres'"),
    ("x::Toy Story::Comedy\n", ":1: item id 'x' is not an integer"),
    ("1::A::B\n1::C::D\n", ":2: item id 1 appears twice"),
    ("\n\n", "no titles"),
])
def test_read_movielens_titles_errors(tmp_path, text, match):
    path = tmp_path / "movies.dat"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=match):
        read_movielens_titles(path)


# ---------------------------------------------------------------------- traces
@pytest.fixture(scope="module")
def model(paper_data):
    torch.manual_seed(0)
    return build_model("mdgr", paper_data, dim=8, k=3, m=2).eval()


def _sequence(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(1, 60, (n,), generator=g)
    days = torch.cumsum(torch.rand(n, generator=g) * 3, 0)
    return items, days - days[0]


def test_trace_interests_matches_the_model(model):
    items, days = _sequence(15)
    trace = trace_interests(model, items, days)
    assert len(trace.graphs) == model.m
    for edge_index, edge_weight, cluster in trace.graphs:
        assert cluster.shape == (15,) and edge_index.max() < 15
        assert edge_weight.shape == (edge_index.shape[1],)
        assert torch.equal(cluster[edge_index[0]], cluster[edge_index[1]])  # within groups
    z, weight, mask, cluster = model.interests(
        Batch.from_data_list([make_sequence_graph(items, days)]))
    assert torch.allclose(trace.interests, z[0]) and torch.allclose(trace.weights, weight[0])
    assert torch.equal(trace.mask, mask[0]) and torch.equal(trace.cluster, cluster)
    assert not model.training


def test_trace_interests_edge_cases_and_errors(model, paper_data):
    single = trace_interests(model, torch.tensor([5]), torch.tensor([0.0]))  # n < k
    assert single.cluster.tolist() == [0] and int(single.mask.sum()) == 1
    dup = trace_interests(model, torch.tensor([3, 3, 3, 4]), torch.tensor([0., 1., 1., 2.]))
    assert dup.cluster.shape == (4,)
    with pytest.raises(ValueError, match="empty"):
        trace_interests(model, torch.tensor([], dtype=torch.long), torch.tensor([]))
    with pytest.raises(ValueError, match="max_len"):
        trace_interests(model, *_sequence(model.max_len + 1))
    with pytest.raises(ValueError, match="NaN"):
        trace_interests(model, torch.tensor([1, 2]), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="equal length"):
        trace_interests(model, torch.tensor([1, 2]), torch.tensor([0.0]))
    with pytest.raises(TypeError, match="MDGR"):
        trace_interests(build_model("sasrec", paper_data, dim=8), *_sequence(5))


def test_align_clusters_undoes_a_permutation():
    reference = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    permuted = torch.tensor([2, 0, 1])[reference]
    assert torch.equal(align_clusters(reference, permuted, 3), reference)


def test_draw_interest_graphs(model, tmp_path):
    items, days = _sequence(12)
    trace = trace_interests(model, items, days)
    labels = [f"title {i}" for i in range(model.num_items + 1)]
    fig = draw_interest_graphs(trace, labels, title="user x")
    assert sum(ax.get_title().startswith("iteration") for ax in fig.axes) == model.m
    fig.savefig(tmp_path / "g.png")
    plt.close(fig)
    assert (tmp_path / "g.png").stat().st_size > 1000
    trace.graphs = []
    with pytest.raises(ValueError, match="m = 0"):
        draw_interest_graphs(trace)


def test_interest_weights_over_time_tracks_the_models_weights(model):
    items, days = _sequence(30, seed=1)
    end, day, weight = interest_weights_over_time(model, items, days, window=10, step=4)
    assert end.tolist() == [3, 7, 11, 15, 19, 23, 27, 30]
    assert weight.shape == (len(end), model.k) and np.allclose(day, days[end - 1].numpy())
    for s, e in enumerate(end.tolist()):  # each row is that window's weights, reordered
        start = max(0, e - 10)
        window_days = days[start:e] - days[start]
        with torch.no_grad():
            _, w, mask, _ = model.interests(
                Batch.from_data_list([make_sequence_graph(items[start:e], window_days)]))
        expect = np.sort(w[0][mask[0]].numpy())
        got = weight[s][~np.isnan(weight[s])]
        assert np.allclose(np.sort(got), expect, atol=1e-5)
    fig = plot_interest_weights(day, weight, position=end, title="t")
    plt.close(fig)
    with pytest.raises(ValueError, match="window"):
        interest_weights_over_time(model, items, days, window=model.max_len + 1)
    with pytest.raises(ValueError, match="step"):
        interest_weights_over_time(model, items, days, step=0)
    with pytest.raises(ValueError, match="one entry per step"):
        plot_interest_weights(day, weight, position=end[:2])


def test_interest_weights_over_time_checks_its_input(model, paper_data):
    items, days = _sequence(30, seed=1)
    bad = days.clone()
    bad[7] = float("nan")
    with pytest.raises(ValueError, match="days contain NaN"):
        interest_weights_over_time(model, items, bad, window=10)
    with pytest.raises(TypeError, match="needs an MDGR model"):
        interest_weights_over_time(build_model("sasrec", paper_data, dim=8), items, days)
    with pytest.raises(ValueError, match="equal length"):
        interest_weights_over_time(model, items, days[:-1])
    with pytest.raises(ValueError, match="empty"):
        interest_weights_over_time(model, items[:0], days[:0])


# ---------------------------------------------------------------------- the example
def test_explain_user_end_to_end(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["--synthetic-users", "60", "--synthetic-items", "200", "--synthetic-topics", "3",
            "--epochs", "1", "--k", "3", "--m", "2", "--dim", "8", "--no-progress",
            "--no-cache"]
    assert train_cli.main([*base, "--out", str(run)]) == 0
    movies = tmp_path / "movies.dat"
    movies.write_text("".join(f"{i}::Movie {i}::Drama\n" for i in range(1, 201)))
    out = tmp_path / "pics"
    assert explain_cli.main(["--run", str(run), "--titles", str(movies), "--out-dir",
                              str(out), "--step", "10"]) == 0
    names = sorted(p.name for p in out.iterdir())
    user = json.loads(next(out.glob("*-interests.json")).read_text())["user"]
    assert names == [f"user{user}-graphs.png", f"user{user}-interests.json",
                     f"user{user}-weights.png"]
    summary = json.loads((out / f"user{user}-interests.json").read_text())
    assert all(item.startswith("Movie ") for i in summary["interests"] for item in i["items"])
    assert sum(len(i["items"]) for i in summary["interests"]) == summary["items_seen"]

    for option in ("--step", "--dpi"):
        with pytest.raises(SystemExit):
            explain_cli.parse_args(["--run", str(run), option, "0"])
    capsys.readouterr()
    assert explain_cli.main(["--run", str(run), "--user", "no-such-user"]) == 2
    assert "unknown user 'no-such-user'" in capsys.readouterr().err
    assert explain_cli.main(["--run", str(tmp_path / "missing")]) == 2
    assert "args.json not found" in capsys.readouterr().err
    sas = tmp_path / "sas"
    assert train_cli.main([*base, "--model", "sasrec", "--out", str(sas)]) == 0
    assert explain_cli.main(["--run", str(sas)]) == 2
    assert "draws MDGR models" in capsys.readouterr().err


def test_explain_user_on_ml1m_titles(shared_data):
    titles = read_movielens_titles(shared_data / "ml-1m-subset" / "movies.dat.gz")
    assert len(titles) == 3883 and titles["1"].title == "Toy Story (1995)"
