import json

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader

from mdgr_graph.cli import train as train_cli
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.data.synthetic import generate_synthetic
from mdgr_graph.metrics import auc_per_row, window_metrics_per_row
from mdgr_graph.models import Popularity, build_model
from mdgr_graph.models.baselines.pop import training_item_counts
from mdgr_graph.train import TrainConfig, _seen_mask, evaluate, fit

SMALL_MODEL = {"dim": 16, "k": 3, "m": 1, "kmeans_iters": 3}




def tiny_model(prepared):
    torch.manual_seed(0)
    return build_model("mdgr", prepared, **SMALL_MODEL)


def config(tmp_path=None, **kw):
    base = dict(epochs=2, batch_size=32, progress=False, seed=0,
                out_dir=str(tmp_path) if tmp_path else None)
    base.update(kw)
    return TrainConfig(**base)


def test_fit_writes_checkpoints_and_log(paper_data, tmp_path):
    result = fit(tiny_model(paper_data), paper_data, config(tmp_path), log=None)
    assert result.epochs == 2 and 0 <= result.best_epoch <= 1
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"loss", "valid", "epoch_seconds", "best"} <= set(rows[0])
    assert "auc/sampled" in rows[0]["valid"]
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_resume_continues_exactly(paper_data, tmp_path):
    straight = tiny_model(paper_data)
    fit(straight, paper_data, config(tmp_path / "a", epochs=3, patience=99), log=None)
    resumed = tiny_model(paper_data)
    fit(resumed, paper_data, config(tmp_path / "b", epochs=2, patience=99), log=None)
    resumed = tiny_model(paper_data)  # a fresh process: new model, state from disk
    res = fit(resumed, paper_data, config(tmp_path / "b", epochs=3, patience=99, resume=True),
              log=None)
    assert res.epochs == 3
    log_a = (tmp_path / "a" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(r).items() if "seconds" not in k} for r in log_a]
    strip_b = [{k: v for k, v in json.loads(r).items() if "seconds" not in k} for r in log_b]
    assert strip == strip_b
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_resume_refuses_a_checkpoint_of_another_configuration(paper_data, tmp_path):
    fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=1), log=None)
    assert torch.load(tmp_path / "last.pt", weights_only=False)["model_repr"] == repr(
        tiny_model(paper_data))
    torch.manual_seed(0)
    other = build_model("mdgr", paper_data, **{**SMALL_MODEL, "m": 2})
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="last.pt was written by MDGR"):
        fit(other, paper_data, config(tmp_path, epochs=2, resume=True), log=None)
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())
    # a checkpoint of an earlier version, without the record, still resumes
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    del ckpt["model_repr"]
    torch.save(ckpt, tmp_path / "last.pt")
    res = fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=2, resume=True),
              log=None)
    assert res.epochs == 2


@pytest.mark.parametrize("targets", ["random", "all"])
def test_loo_training_targets_resume_exactly(loo_data, tmp_path, targets):
    loo_data = loo_data.subsample_users(8)  # "all": about 45 examples per user and epoch
    cfg = dict(patience=99, loo_train_targets=targets)
    straight = tiny_model(loo_data)
    a = fit(straight, loo_data, config(tmp_path / "a", epochs=2, **cfg), log=None)
    fit(tiny_model(loo_data), loo_data, config(tmp_path / "b", epochs=1, **cfg), log=None)
    resumed = tiny_model(loo_data)
    b = fit(resumed, loo_data, config(tmp_path / "b", epochs=2, resume=True, **cfg), log=None)
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert all(np.isfinite(r["loss"]) for r in a.history)
    for (name, x), y in zip(straight.state_dict().items(), resumed.state_dict().values(),
                            strict=True):
        assert torch.equal(x, y), name
    last = fit(tiny_model(loo_data), loo_data, config(epochs=2, patience=99), log=None)
    assert [r["loss"] for r in last.history] != [r["loss"] for r in a.history]


def test_same_seed_same_metrics(paper_data):
    a = tiny_model(paper_data)
    fit(a, paper_data, config(), log=None)
    b = tiny_model(paper_data)
    fit(b, paper_data, config(), log=None)
    assert evaluate(a, paper_data, "test") == evaluate(b, paper_data, "test")


def test_popularity_counts_and_metrics(paper_data, loo_data):
    counts = training_item_counts(paper_data)
    assert counts[0] == 0 and counts.sum() == (paper_data.arrays["window_split"] == 0).sum() * 40
    pop = Popularity.from_prepared(paper_data)
    assert pop.loss(None) is None
    metrics = evaluate(pop, paper_data, "test")
    assert set(metrics) == {"auc/sampled", "recall@50/sampled"}
    # against a direct computation over the fixed test candidates
    a = paper_data.arrays
    rows = a["window_split"] == 2
    cand = np.concatenate([a["targets"][rows], a["negatives"][rows]], axis=1)
    labels = np.concatenate([np.ones_like(a["targets"][rows]),
                             np.zeros_like(a["negatives"][rows])], axis=1)
    scores = torch.log1p(torch.as_tensor(counts, dtype=torch.float32))[torch.from_numpy(cand)]
    expect = auc_per_row(scores, torch.from_numpy(labels)).mean().item()
    assert metrics["auc/sampled"] == pytest.approx(expect)
    loo_metrics = evaluate(Popularity.from_prepared(loo_data), loo_data, "test")
    assert {"hr@10/full", "ndcg@10/full", "mrr/full", "auc/sampled"} <= set(loo_metrics)


def test_seen_mask_holds_items_before_target(loo_data):
    rows = torch.tensor([0, 3, 7])
    mask = _seen_mask(loo_data.seen_items("valid"), rows, loo_data.num_items)
    ptr, items = loo_data.arrays["seq_ptr"], loo_data.arrays["seq_items"]
    for r, u in enumerate(rows.tolist()):
        expect = set(items[ptr[u] : ptr[u + 1] - 2].tolist())
        assert set(torch.nonzero(mask[r]).flatten().tolist()) == expect


def test_fit_loo_and_example_metrics_json(tmp_path):
    out = tmp_path / "metrics.json"
    argv = ["--protocol", "loo", "--synthetic-users", "80", "--synthetic-items", "200",
            "--negatives", "20",
            "--synthetic-topics", "3", "--epochs", "1", "--m", "1", "--k", "2", "--dim", "8",
            "--no-progress", "--no-cache", "--metrics-json", str(out), "--out",
            str(tmp_path / "run")]
    assert train_cli.main(argv) == 0
    final = json.loads(out.read_text())
    assert {"hr@10", "ndcg@10", "recall@50", "mrr", "best_epoch", "epochs", "train_seconds",
            "params"} <= set(final)
    assert json.loads((tmp_path / "run" / "args.json").read_text())["protocol"] == "loo"


def test_example_paper_protocol_and_errors(tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["--synthetic-users", "60", "--synthetic-items", "200", "--synthetic-topics", "3",
            "--epochs", "1", "--m", "1", "--k", "2", "--dim", "8", "--no-progress",
            "--no-cache", "--metrics-json", str(out), "--model", "mdgr-pt", "--max-users", "30"]
    assert train_cli.main(argv) == 0
    assert {"auc", "recall@50", "params"} <= set(json.loads(out.read_text()))
    assert train_cli.main(["--format", "movielens", "--path", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_cli.main(["--resume"])


@pytest.mark.slow
def test_mdgr_recovers_planted_interests():
    """Short training on synthetic data: far above popularity, interests match topics."""
    torch.set_num_threads(1)
    synth = {"num_users": 600, "num_items": 300, "num_topics": 10, "length": (100, 160)}
    prepared = prepare_dataset(DataOptions(format="synthetic", synthetic=synth), cache_dir=None)
    truth = generate_synthetic(**synth)
    torch.manual_seed(0)
    model = build_model("mdgr", prepared, m=1, k=4)
    fit(model, prepared, TrainConfig(epochs=14, lr=3e-3, batch_size=32, progress=False),
        log=None)
    test = evaluate(model, prepared, "test")
    pop = evaluate(Popularity.from_prepared(prepared), prepared, "test")
    assert test["auc/sampled"] > 0.85
    assert test["auc/sampled"] > pop["auc/sampled"] + 0.08

    # the top items of every learned interest belong to the user's planted topics
    from torch_geometric.loader import DataLoader

    from mdgr_graph.data.dataset import SequenceDataset

    item_topic = np.full(prepared.num_items + 1, -1)
    item_topic[1:] = truth.item_topic[prepared.arrays["item_ids"][1:].astype(int)]
    user_raw = prepared.arrays["user_ids"].astype(int)
    batch = next(iter(DataLoader(SequenceDataset(prepared, "test"), batch_size=64)))
    model.eval()
    with torch.no_grad():
        z, _, mask, _ = model.interests(batch)
        table = model.item_emb.weight[1:]
        raw = torch.einsum("bkd,id->bki", z * model.scorer.lin.weight.view(1, 1, -1), table)
    top = raw.topk(10, dim=-1).indices + 1  # [B, k, 10] item ids
    planted = truth.user_topics[user_raw[batch.user.numpy()]]  # [B, topics]
    hits = np.take_along_axis(planted[:, None, :].repeat(top.shape[1], 1),
                              item_topic[top.numpy()], axis=2)
    aligned = hits[mask.numpy()].mean()
    assert aligned > 0.8, f"only {aligned:.2f} of interest top items are in planted topics"


def test_atomic_write_replaces_whole_files_with_normal_permissions(tmp_path):
    import os

    from mdgr_graph.train import atomic_write_bytes, atomic_write_text

    target = tmp_path / "sub" / "result.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask

    def fail(fh):
        fh.write(b"partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write_bytes(target, fail)
    assert target.read_text() == "second"  # the old file survives, no temporary is left
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_candidate_query_under_loo_selects_and_evaluates_on_the_sampled_candidates(loo_data):
    from mdgr_graph.train import selection_metric

    torch.manual_seed(0)
    model = build_model("mdgr", loo_data, dim=8, k=2, m=1, query="candidate",
                        train_positives=1, train_negatives=3)
    assert not model.ranks_catalogue_in_one_pass
    assert selection_metric(model, loo_data) == "auc/sampled"
    last = build_model("mdgr", loo_data, dim=8, k=2, m=1)
    assert last.ranks_catalogue_in_one_pass and selection_metric(last, loo_data) == "ndcg@10/full"

    def no_full_ranking(batch):
        raise AssertionError("score_all must not run in candidate mode under loo")

    model.score_all = no_full_ranking
    result = fit(model, loo_data, TrainConfig(epochs=2, batch_size=16, progress=False), log=None)
    assert set(result.best_valid) == {"auc/sampled"}
    metrics = evaluate(model, loo_data, "test", batch_size=7)
    # the same AUC as scoring the test rows' candidates directly
    loader = DataLoader(SequenceDataset(loo_data, "test"), batch_size=7)
    aucs = [window_metrics_per_row(model.score_candidates(b).detach(), b.labels)["auc/sampled"]
            for b in loader]
    assert metrics == {"auc/sampled": pytest.approx(torch.cat(aucs).mean().item())}
