"""mdgr_graph.retrieval: interest queries, indexes, the merge, export and the example."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from mdgr_graph import retrieval
from mdgr_graph.cli import retrieve as retrieve_cli
from mdgr_graph.cli import train as train_cli
from mdgr_graph.data.dataset import SequenceDataset, make_sequence_graph
from mdgr_graph.models import MDGR, ComiRecDR, ComiRecSA, PinText2, build_model
from mdgr_graph.retrieval import FaissIndex, TorchIndex, build_index, retrieve, topk_of_scores

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS, DIM, K = 60, 16, 4

needs_faiss = pytest.mark.skipif(not retrieval.WITH_FAISS, reason="faiss is not installed")
EXACT_BACKENDS = ["torch", pytest.param("faiss-exact", marks=needs_faiss)]


pytestmark = pytest.mark.usefixtures("one_thread")


MODELS = {
    "mdgr-paper": lambda: MDGR(NUM_ITEMS, dim=DIM, k=K, m=1, max_len=20, weighting="paper"),
    "mdgr-log": lambda: MDGR(NUM_ITEMS, dim=DIM, k=K, m=1, max_len=20, weighting="log"),
    "comirec-sa": lambda: ComiRecSA(NUM_ITEMS, 20, dim=DIM, interests=K),
    "comirec-dr": lambda: ComiRecDR(NUM_ITEMS, 20, dim=DIM, interests=K),
    # categories: item i in i % 3 and, for even i, also in 3; the last items unlabelled
    "pintext": lambda: PinText2(NUM_ITEMS, 20, dim=DIM, item_categories=pintext_labels()),
}


def pintext_labels() -> tuple[torch.Tensor, torch.Tensor]:
    """CSR labels: item i in category i % 3 and, if even, also in 3; the last 5 unlabelled."""
    lists = [[] if i == 0 or i > NUM_ITEMS - 5 else [i % 3] + ([3] if i % 2 == 0 else [])
             for i in range(NUM_ITEMS + 1)]
    ptr = torch.tensor([0, *torch.tensor([len(x) for x in lists]).cumsum(0).tolist()])
    return ptr, torch.tensor([c for x in lists for c in x])


def make_batch(lengths=(2, 7, 12, 3, 20, 1), seed=0) -> Batch:
    """Sequences as short as 1 item, so MDGR has empty interest groups (k = 4)."""
    gen = torch.Generator().manual_seed(seed)
    graphs = []
    for n in lengths:
        x = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
        graphs.append(make_sequence_graph(x, torch.rand(n, generator=gen).cumsum(0),
                                          user=torch.tensor(len(graphs))))
    return Batch.from_data_list(graphs)


@pytest.fixture(params=list(MODELS))
def model_and_batch(request):
    torch.manual_seed(0)
    model = MODELS[request.param]().eval()
    with torch.no_grad():  # a trained-looking scorer bias, so offsets matter
        if isinstance(model, MDGR):
            model.scorer.lin.bias.fill_(0.3)
    return model, make_batch()


def brute_force(queries, offsets, mask, items, n, exclude=None) -> retrieval.Retrieved:
    """Obviously correct: every score of every item, then the top n."""
    scores = torch.einsum("ukd,id->uki", queries, items) + offsets.unsqueeze(-1)
    scores = scores.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    scores = torch.cat([scores.new_full((len(scores), 1), float("-inf")), scores], dim=1)
    return topk_of_scores(scores, n, exclude)


def random_problem(num_users=7, k=3, d=8, num_items=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randn(num_users, k, d, generator=gen)
    offsets = torch.randn(num_users, k, generator=gen)
    mask = torch.rand(num_users, k, generator=gen) < 0.7
    mask[:, 0] = True
    items = torch.randn(num_items, d, generator=gen)
    return queries, offsets, mask, items


def dense_exclude(ptr, items, num_users, num_items):
    mask = torch.zeros(num_users, num_items + 1, dtype=torch.bool)
    owner = torch.repeat_interleave(torch.arange(num_users), ptr.diff())
    mask[owner, items] = True
    mask[:, 0] = False
    return mask


# ---------------------------------------------------------------------- the hook
def test_interest_queries_reproduce_score_all(model_and_batch):
    model, batch = model_and_batch
    with torch.no_grad():
        out = model.interest_queries(batch)
        full = model.score_all(batch)
    groups = K if not isinstance(model, PinText2) else out.queries.shape[1]
    assert out.queries.shape == (6, groups, DIM) and out.offsets.shape == (6, groups)
    assert out.mask.dtype == torch.bool and out.interests.shape == (6, groups, DIM)
    if isinstance(model, (MDGR, PinText2)):
        assert not bool(out.mask.all())  # the 1- and 2-item sequences leave groups empty
    table = retrieval.item_table(model)
    scores = torch.einsum("bkd,id->bki", out.queries, table) + out.offsets.unsqueeze(-1)
    scores = scores.masked_fill(~out.mask.unsqueeze(-1), float("-inf")).amax(dim=1)
    torch.testing.assert_close(scores, full[:, 1:], rtol=1e-5, atol=1e-6)


def test_interest_score_queries_formula_per_weighting():
    from mdgr_graph.nn.interest import InterestScore

    torch.manual_seed(0)
    z, w = torch.randn(2, 3, 5), torch.rand(2, 3) + 0.1
    mask = torch.tensor([[True, False, True], [True, True, True]])
    for weighting in ("paper", "log"):
        scorer = InterestScore(5, weighting)
        q = scorer.queries(z, w, mask)
        a, b = scorer.lin.weight.view(-1), scorer.lin.bias
        if weighting == "paper":
            torch.testing.assert_close(q.queries, w[..., None] * z * a)
            torch.testing.assert_close(q.offsets, w * b)
        else:
            torch.testing.assert_close(q.queries, z * a)
            torch.testing.assert_close(q.offsets, b + w.log())
        assert q.interests is z and q.weights is w and q.mask is mask


# ---------------------------------------------------------------------- exactness
@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_exact_retrieval_equals_topk_of_score_all(model_and_batch, backend):
    model, batch = model_and_batch
    with torch.no_grad():
        out = model.interest_queries(batch)
        full = model.score_all(batch)
    index = build_index(retrieval.item_table(model), backend)
    for n in (1, 10, NUM_ITEMS):
        got = retrieve(out.queries, out.offsets, out.mask, index, n)
        ref = topk_of_scores(full, n)
        torch.testing.assert_close(got.scores, ref.scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(got.items, ref.items)
    # the user's own items excluded: same as masking them in the full scores
    ptr = batch.ptr
    got = retrieve(out.queries, out.offsets, out.mask, index, 10, exclude=(ptr, batch.x))
    ref = topk_of_scores(full, 10, dense_exclude(ptr, batch.x, 6, NUM_ITEMS))
    assert torch.equal(got.items, ref.items)
    assert not bool(torch.isin(got.items[1], batch.x[ptr[1] : ptr[2]]).any())


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_chunked_exact_search_matches_brute_force(backend):
    queries, offsets, mask, items = random_problem()
    options = {"item_chunk": 37, "query_chunk": 5} if backend == "torch" else {}
    index = build_index(items, backend, **options)
    for n in (1, 20, 300):
        got = retrieve(queries, offsets, mask, index, n, batch_size=3)
        ref = brute_force(queries, offsets, mask, items, n)
        assert torch.equal(got.items, ref.items)
        torch.testing.assert_close(got.scores, ref.scores)


@needs_faiss
def test_faiss_exact_equals_torch_exact():
    queries, offsets, mask, items = random_problem(num_users=20, num_items=2000, d=16, seed=1)
    a = retrieve(queries, offsets, mask, TorchIndex(items, item_chunk=512), 50)
    b = retrieve(queries, offsets, mask, FaissIndex(items, "exact"), 50)
    assert torch.equal(a.items, b.items)
    torch.testing.assert_close(a.scores, b.scores)


def test_merge_keeps_each_item_once_with_its_best_score():
    items = torch.eye(4)  # item i + 1 = e_i
    queries = torch.tensor([[[1.0, 0.5, 0, 0], [1.0, 0.5, 0, 0], [0, 0, 0, 1.0]]])
    offsets = torch.tensor([[0.0, 1.0, 0.0]])
    got = retrieve(queries, offsets, torch.ones(1, 3, dtype=torch.bool), TorchIndex(items), 4)
    # item 1: max(1, 2) = 2; item 2: max(0.5, 1.5) = 1.5; item 4: 1; item 3: max(0, 1, 0) = 1
    assert got.items[0, :2].tolist() == [1, 2]
    assert sorted(got.items[0].tolist()) == [1, 2, 3, 4]
    torch.testing.assert_close(got.scores[0], torch.tensor([2.0, 1.5, 1.0, 1.0]))


def test_exclusion_batches_by_history_length_keep_the_user_order():
    gen = torch.Generator().manual_seed(3)
    queries, offsets, mask, items = random_problem(num_users=23, num_items=60)
    counts = torch.randint(0, 40, (23,), generator=gen)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    hist = torch.randint(1, 61, (int(ptr[-1]),), generator=gen)
    index = TorchIndex(items)
    ref = brute_force(queries, offsets, mask, items, 7, dense_exclude(ptr, hist, 23, 60))
    for batch_size in (1, 4, 23, 100):
        got = retrieve(queries, offsets, mask, index, 7, exclude=(ptr, hist),
                       batch_size=batch_size)
        assert torch.equal(got.items, ref.items)
        torch.testing.assert_close(got.scores, ref.scores)


def test_history_exclusion_dense_and_pairs_agree_and_can_run_out():
    queries, offsets, mask, items = random_problem(num_users=4, num_items=10)
    ptr = torch.tensor([0, 0, 3, 11, 13])
    hist = torch.tensor([1, 2, 2, 1, 2, 3, 4, 5, 6, 7, 8, 10, 0])  # user 2 sees 8 items
    index = TorchIndex(items)
    a = retrieve(queries, offsets, mask, index, 5, exclude=(ptr, hist))
    dense = dense_exclude(ptr, hist, 4, 10)
    b = retrieve(queries, offsets, mask, index, 5, exclude=dense)
    assert torch.equal(a.items, b.items)
    assert torch.equal(a.items, brute_force(queries, offsets, mask, items, 5, dense).items)
    assert set(a.items[2, :2].tolist()) == {9, 10}  # all the user has not seen
    assert a.items[2, 2:].tolist() == [0, 0, 0]
    assert bool(torch.isinf(a.scores[2, 2:]).all())
    for u in range(4):
        assert not set(a.items[u].tolist()) & set(hist[ptr[u] : ptr[u + 1]].tolist()) - {0}


# ---------------------------------------------------------------------- approximate / fallback
@needs_faiss
def test_ivf_recall_on_a_clustered_table():
    gen = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(30, 16, generator=gen)
    items = centres[torch.randint(30, (3000,), generator=gen)] + torch.randn(3000, 16,
                                                                              generator=gen)
    queries = centres[torch.randint(30, (50, 4), generator=gen)]
    offsets, mask = torch.zeros(50, 4), torch.ones(50, 4, dtype=torch.bool)
    exact = retrieve(queries, offsets, mask, TorchIndex(items), 20).items
    approx = retrieve(queries, offsets, mask, FaissIndex(items, "ivf", nprobe=4), 20).items
    hits = (approx.unsqueeze(2) == exact.unsqueeze(1)).any(dim=2).float().mean()
    assert hits >= 0.9
    everything = FaissIndex(items, "ivf", nlist=20, nprobe=20)  # scans every list: exact
    assert torch.equal(retrieve(queries, offsets, mask, everything, 20).items, exact)
    assert repr(everything) == "FaissIndex(num_items=3000, dim=16, kind='ivf', nlist=20, nprobe=20)"


def test_torch_fallback_when_faiss_is_missing(monkeypatch):
    monkeypatch.setattr(retrieval, "WITH_FAISS", False)
    queries, offsets, mask, items = random_problem()
    index = build_index(items)  # auto
    assert isinstance(index, TorchIndex)
    got = retrieve(queries, offsets, mask, index, 10)
    assert torch.equal(got.items, brute_force(queries, offsets, mask, items, 10).items)
    for backend in ("faiss-exact", "faiss-approx"):
        with pytest.raises(ImportError, match=r"pip install faiss-cpu.*'retrieval' extra"):
            build_index(items, backend)
    with pytest.raises(ImportError, match="requires 'faiss'"):
        FaissIndex(items)


def test_package_imports_and_retrieves_without_faiss():
    """The import guard itself, in a fresh process where `import faiss` fails."""
    code = (
        "import sys; sys.modules['faiss'] = None\n"
        "import torch\n"
        "from mdgr_graph import retrieval\n"
        "assert not retrieval.WITH_FAISS and retrieval.faiss is None\n"
        "index = retrieval.build_index(torch.eye(3))\n"
        "assert isinstance(index, retrieval.TorchIndex)\n"
        "got = retrieval.retrieve(torch.eye(3)[None, :2], torch.zeros(1, 2),\n"
        "                         torch.ones(1, 2, dtype=torch.bool), index, 2)\n"
        "print(sorted(got.items[0].tolist()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2]"


def test_reprs():
    items = torch.randn(10, 4)
    assert repr(TorchIndex(items)) == (
        "TorchIndex(num_items=10, dim=4, item_chunk=65536, query_chunk=256)")
    if retrieval.WITH_FAISS:
        assert repr(FaissIndex(items)) == "FaissIndex(num_items=10, dim=4, kind='exact')"


# ---------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    queries, offsets, mask, items = random_problem(num_users=2, num_items=10)
    index = TorchIndex(items)
    with pytest.raises(ValueError, match=r"n must lie in \[1, 10\]"):
        retrieve(queries, offsets, mask, index, 0)
    with pytest.raises(ValueError, match=r"n must lie in \[1, 10\]"):
        retrieve(queries, offsets, mask, index, 11)
    with pytest.raises(TypeError, match="n must be an int"):
        retrieve(queries, offsets, mask, index, 2.0)
    with pytest.raises(ValueError, match=r"queries must be a 3-D tensor \[U, k, d\]"):
        retrieve(queries[0], offsets, mask, index, 2)
    with pytest.raises(ValueError, match="offsets must have shape"):
        retrieve(queries, offsets[:, :1], mask, index, 2)
    with pytest.raises(ValueError, match="mask must have shape"):
        retrieve(queries, offsets, mask.T, index, 2)
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        retrieve(queries, offsets, mask.float(), index, 2)
    with pytest.raises(TypeError, match="must be floating point"):
        retrieve(queries.long(), offsets, mask, index, 2)
    with pytest.raises(ValueError, match="queries have width 8, the index 4"):
        retrieve(queries, offsets, mask, TorchIndex(torch.randn(10, 4)), 2)
    bad = queries.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieve(bad, offsets, mask, index, 2)
    bad[0, 0, 0] = float("inf")  # scores inf * 0 = NaN, which topk would rank first
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieve(bad, offsets, mask, index, 2)
    bad_offsets = offsets.clone()
    bad_offsets[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        retrieve(queries, bad_offsets, mask, index, 2)
    bad_offsets[0, 0] = float("-inf")  # drops that interest only, as in score_all
    got = retrieve(queries, bad_offsets, mask, index, 2)
    ref = brute_force(queries, bad_offsets, mask, items, 2)
    assert torch.equal(got.items, ref.items)
    with pytest.raises(ValueError, match="at least one interest"):
        retrieve(queries, offsets, torch.zeros_like(mask), index, 2)
    with pytest.raises(ValueError, match="dense exclude must be a bool tensor"):
        retrieve(queries, offsets, mask, index, 2, exclude=torch.zeros(2, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="exclude ptr must"):
        retrieve(queries, offsets, mask, index, 2, exclude=(torch.tensor([0, 2, 1]),
                                                            torch.tensor([1])))
    with pytest.raises(ValueError, match=r"exclude items must lie in \[0, 10\]"):
        retrieve(queries, offsets, mask, index, 2, exclude=(torch.tensor([0, 1, 1]),
                                                            torch.tensor([11])))
    with pytest.raises(ValueError, match="catalogue is empty"):
        TorchIndex(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        TorchIndex(torch.full((3, 4), float("nan")))
    with pytest.raises(TypeError, match="floating-point"):
        TorchIndex(torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown backend 'annoy'"):
        build_index(items, "annoy")
    if retrieval.WITH_FAISS:
        with pytest.raises(ValueError, match="unknown kind 'hnsw'"):
            FaissIndex(items, "hnsw")
        with pytest.raises(ValueError, match=r"nlist must lie in \[1, 10\]"):
            FaissIndex(items, "ivf", nlist=11)


# ---------------------------------------------------------------------- export
def test_export_interests_and_history_on_loo(loo_data, tmp_path):
    from mdgr_graph.train import _seen_mask

    torch.manual_seed(0)
    model = build_model("mdgr", loo_data, dim=8, k=3, m=1)
    exported = retrieval.export_interests(model, loo_data, "test", batch_size=50,
                                          progress=False)
    users = loo_data.num_users
    assert exported.queries.shape == (users, 3, 8) and exported.weights.shape == (users, 3)
    assert torch.equal(exported.users, torch.arange(users))
    assert torch.equal(exported.items, model.item_emb.weight[1:].detach())
    exported.save(tmp_path / "export.pt")
    again = retrieval.InterestExport.load(tmp_path / "export.pt")
    assert torch.equal(again.queries, exported.queries) and again.split == "test"

    ptr, hist = retrieval.history_items(loo_data, "test")
    seen = _seen_mask(loo_data.seen_items("test"), torch.arange(users), loo_data.num_items)
    assert torch.equal(dense_exclude(ptr, hist, users, loo_data.num_items), seen)

    # exported + excluded retrieval == score_all with the evaluation's exclusion
    loader = DataLoader(SequenceDataset(loo_data, "test"), batch_size=users)
    with torch.no_grad():
        full = model.eval().score_all(next(iter(loader)))
    got = retrieve(exported.queries, exported.offsets, exported.mask,
                   TorchIndex(exported.items), 10, exclude=(ptr, hist))
    assert torch.equal(got.items, topk_of_scores(full, 10, seen).items)


def test_history_on_paper_is_the_window_history(paper_data):
    ptr, hist = retrieval.history_items(paper_data, "valid")
    dataset = SequenceDataset(paper_data, "valid")
    assert len(ptr) == len(dataset) + 1
    assert torch.equal(hist[ptr[3] : ptr[4]], dataset[3].x)


def test_export_restores_training_mode_and_checks_the_split(loo_data):
    model = build_model("mdgr", loo_data, dim=8, k=2, m=1).train()
    retrieval.export_interests(model, loo_data, "valid", progress=False)
    assert model.training
    with pytest.raises(ValueError, match="unknown split 'tset'"):
        retrieval.history_items(loo_data, "tset")


def test_export_refuses_models_without_interests(loo_data):
    with pytest.raises(TypeError, match="has no interest_queries"):
        retrieval.export_interests(build_model("sasrec", loo_data), loo_data, progress=False)


# ---------------------------------------------------------------------- the example
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    argv = ["--protocol", "loo", "--synthetic-users", "60", "--synthetic-items", "200",
            "--synthetic-topics", "4", "--max-len", "10", "--negatives", "10", "--dim", "8",
            "--k", "3", "--m", "1", "--epochs", "1", "--no-cache", "--out", str(out),
            "--no-progress", "--threads", "1"]
    assert train_cli.main(argv) == 0
    return out


def test_retrieve_example_end_to_end(tiny_run, tmp_path, capsys):
    movies = tmp_path / "movies.dat"
    movies.write_bytes("\n".join(f"{i}::Film {i} (caf\xe9)::Drama" for i in range(300))
                       .encode("latin-1"))
    out_json = tmp_path / "top.json"
    assert retrieve_cli.main([str(tiny_run), "--n", "7", "--out", str(out_json), "--titles",
                         str(movies), "--no-progress", "--threads", "1"]) == 0
    result = json.loads(out_json.read_text())
    assert result["n"] == 7 and result["exclude_history"] and len(result["rows"]) == 60
    row = result["rows"][5]
    assert len(row["items"]) == 7 and row["titles"][0] == f"Film {row['items'][0]} (café)"
    assert row["scores"] == sorted(row["scores"], reverse=True)

    # the same items as the model's own full ranking with the history excluded
    _, prepared, model = train_cli.load_run(tiny_run)
    batch = next(iter(DataLoader(SequenceDataset(prepared, "test"), batch_size=60)))
    with torch.no_grad():
        full = model.eval().score_all(batch)
    ptr, hist = retrieval.history_items(prepared, "test")
    ref = topk_of_scores(full, 7, dense_exclude(ptr, hist, 60, prepared.num_items)).items
    raw = prepared.arrays["item_ids"]
    assert [r["items"] for r in result["rows"]] == raw[ref.numpy()].tolist()

    out_csv = tmp_path / "top.csv"
    for backend in ("faiss-approx", "torch") if retrieval.WITH_FAISS else ("torch",):
        assert retrieve_cli.main([str(tiny_run), "--n", "7", "--out", str(out_csv), "--backend",
                             backend, "--keep-history", "--no-progress"]) == 0
    with out_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 60 * 7 and list(rows[0]) == ["row", "user", "rank", "item", "score"]
    assert [r["rank"] for r in rows[:7]] == [str(i) for i in range(1, 8)]
    capsys.readouterr()


def test_retrieve_example_help_and_errors(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        retrieve_cli.parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "faiss-approx" in text and "--keep-history" in text and "--titles" in text
    with pytest.raises(SystemExit):
        retrieve_cli.parse_args([str(tiny_run), "--out", "top.txt"])
    for option in ("--n", "--batch-size", "--nprobe", "--nlist"):
        with pytest.raises(SystemExit):
            retrieve_cli.parse_args([str(tiny_run), option, "0"])
    assert retrieve_cli.main([str(tiny_run), "--n", "201", "--no-progress"]) == 2
    assert "exceeds the 200 items" in capsys.readouterr().err
    assert retrieve_cli.main([str(tmp_path), "--no-progress"]) == 2
    assert "args.json" in capsys.readouterr().err


# ---------------------------------------------------------------------- docs and benchmark
def test_docs_python_example_runs(loo_data):
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "retrieval.md").read_text()
    source = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    torch.manual_seed(0)
    namespace = {"model": build_model("mdgr", loo_data, dim=8, k=3, m=1),
                 "prepared": loo_data}
    source = source.replace("n=50", "n=5")
    if not retrieval.WITH_FAISS:  # the snippet's IVF index needs faiss; torch needs nothing
        ivf = '"faiss-approx", nprobe=32'
        assert ivf in source
        source = source.replace(ivf, '"torch"')
    exec(compile(source, "docs/retrieval.md", "exec"), namespace)
    assert namespace["found"].items.shape == (loo_data.num_users, 5)


def test_benchmark_runs_small_and_writes_both_files(tmp_path):
    argv = ["--sizes", "300,1000", "--repeats", "1", "--warmup", "0", "--latency-users", "2",
            "--batch", "8", "--nprobe", "2,1000", "--topics", "10", "--out-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "retrieval.py"), *argv],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    payload = json.loads((tmp_path / "retrieval.json").read_text())
    assert payload["environment"]["threads"] == 1 and payload["run"]["seed"] == 0
    assert [r["items"] for r in payload["results"]] == [300, 1000]
    backends = payload["results"][1]["backends"]
    assert backends["torch exact"]["recall@50/exact"] == 1.0
    if retrieval.WITH_FAISS:
        assert backends["faiss exact"]["identical_to_torch_exact"] == 1.0
        assert backends["faiss IVF nprobe=1000"]["recall@50/exact"] == 1.0  # every list
    assert "| 1,000 | torch exact |" in (tmp_path / "retrieval.md").read_text()


# ---------------------------------------------------------------------- two-stage serving
def test_rerank_orders_by_the_second_model_and_keeps_empty_slots_last(loo_data):
    torch.manual_seed(0)
    model = build_model("mdgr", loo_data, dim=8, k=2, m=1, query="candidate").train()
    rows = len(SequenceDataset(loo_data, "test"))
    gen = torch.Generator().manual_seed(1)
    cand = torch.randint(1, loo_data.num_items + 1, (rows, 6), generator=gen)
    cand[0, 2] = 0  # an empty slot of the first stage
    out = retrieval.rerank(model, loo_data, "test", cand, n=4, batch_size=7, progress=False)
    assert model.training  # restored
    assert out.items.shape == (rows, 4)
    batch = next(iter(DataLoader(SequenceDataset(loo_data, "test"), batch_size=rows)))
    batch.candidates = cand
    with torch.no_grad():
        ref = model.eval().score_candidates(batch).masked_fill(cand == 0, float("-inf"))
    top = ref.topk(4, dim=1)
    assert torch.allclose(out.scores, top.values, atol=1e-5)
    assert torch.equal(out.items, cand.gather(1, top.indices))
    assert 0 not in out.items[0].tolist()
    full = retrieval.rerank(model, loo_data, "test", cand, progress=False)
    assert full.items.shape == (rows, 6) and full.items[0, -1] == 0
    with pytest.raises(ValueError, match="candidates must be"):
        retrieval.rerank(model, loo_data, "test", cand[:3], progress=False)
    with pytest.raises(ValueError, match="candidate ids"):
        retrieval.rerank(model, loo_data, "test", cand + 10**6, progress=False)


def test_rank_in_list():
    from mdgr_graph.metrics import full_ranking_metrics, rank_in_list

    items = torch.tensor([[3, 1, 2], [4, 5, 6], [7, 7, 8]])
    rank = rank_in_list(items, torch.tensor([2, 9, 7]))
    assert rank.tolist() == [2, 3, 0]
    metrics = full_ranking_metrics(rank, ks=(2,))
    assert metrics["hr@2/full"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="target"):
        rank_in_list(items, torch.tensor([1, 2]))


def test_retrieve_example_two_stage(tiny_run, tmp_path_factory, capsys):

    second = tmp_path_factory.mktemp("candidate-run")
    argv = ["--protocol", "loo", "--synthetic-users", "60", "--synthetic-items", "200",
            "--synthetic-topics", "4", "--max-len", "10", "--negatives", "10", "--dim", "8",
            "--k", "3", "--m", "1", "--epochs", "1", "--no-cache", "--out", str(second),
            "--no-progress", "--threads", "1", "--query", "candidate"]
    assert train_cli.main(argv) == 0
    out = tmp_path_factory.mktemp("two-stage") / "top.json"
    capsys.readouterr()
    assert retrieve_cli.main([str(tiny_run), "--rerank", str(second), "--rerank-n", "20", "--n",
                         "10", "--evaluate", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "retrieve: hr@10=" in printed and "rerank: hr@10=" in printed
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 60 and all(len(r["items"]) == 10 for r in rows)
    # the re-ranked list is a re-ordering of the first stage's top 20
    first = tmp_path_factory.mktemp("first") / "top.json"
    assert retrieve_cli.main([str(tiny_run), "--n", "20", "--out", str(first),
                         "--no-progress"]) == 0
    first_rows = json.loads(first.read_text())["rows"]
    assert all(set(r["items"]) <= set(f["items"]) for r, f in zip(rows, first_rows,
                                                                   strict=True))
    other = tmp_path_factory.mktemp("other-data")
    argv[argv.index("--synthetic-users") + 1] = "70"
    argv[argv.index("--out") + 1] = str(other)
    assert train_cli.main(argv) == 0
    capsys.readouterr()
    assert retrieve_cli.main([str(tiny_run), "--rerank", str(other), "--no-progress"]) == 2
    assert "other data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        retrieve_cli.main([str(tiny_run), "--rerank", str(second), "--rerank-n", "5", "--n", "10"])
    assert retrieve_cli.main([str(second), "--no-progress"]) == 2  # candidate mode cannot search
    assert "--rerank" in capsys.readouterr().err
