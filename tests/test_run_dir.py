"""The run folder is a contract (issue 31): a fresh run never reads an earlier run's files,
``--resume`` refuses another run's folder before touching a file, damaged checkpoints give a
clear error, interrupted writes leave nothing behind, and ``best.pt`` and early stopping do
what they say."""

import json
from pathlib import Path

import pytest
import torch

from mdgr_graph.cli import train as train_cli
from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.models import build_model
from mdgr_graph.train import RunDirError, TrainConfig, fit, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_MODEL = {"dim": 16, "k": 3, "m": 1, "kmeans_iters": 3}


def tiny_model(prepared, **kw):
    torch.manual_seed(0)
    return build_model("mdgr", prepared, **{**SMALL_MODEL, **kw})


def config(out=None, **kw):
    base = dict(epochs=1, batch_size=32, progress=False, seed=0,
                out_dir=str(out) if out else None)
    base.update(kw)
    return TrainConfig(**base)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------- fit()
def test_fresh_run_refuses_a_folder_holding_an_earlier_run(paper_data, tmp_path):
    fit(tiny_model(paper_data), paper_data, config(tmp_path), log=None)
    before = snapshot(tmp_path)
    for epochs in (0, 1):  # --epochs 0 used to report the earlier run's best.pt
        with pytest.raises(RunDirError, match="already holds a run"):
            fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=epochs), log=None)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("change", ["seed", "lr", "subsample", "valid_frac", "run_options"])
def test_resume_refuses_other_data_or_options_before_touching_a_file(
        paper_data, tmp_path, change):
    fit(tiny_model(paper_data), paper_data, config(tmp_path, run_options={"dropout": 0.1}),
        log=None)
    before = snapshot(tmp_path)
    data, cfg = paper_data, {"run_options": {"dropout": 0.1}}
    if change == "seed":
        cfg["seed"] = 1
    elif change == "lr":
        cfg["lr"] = 5e-3
    elif change == "subsample":
        data = paper_data.subsample_users(60)
    elif change == "valid_frac":  # the same items, other users in each split
        opts = DataOptions(**{**paper_data.meta["options"], "valid_frac": 0.2})
        data = prepare_dataset(opts, cache_dir=None)
        assert data.num_items == paper_data.num_items
    else:
        cfg["run_options"] = {"dropout": 0.3}
    model = tiny_model(data)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RunDirError, match="belongs to another run"):
        fit(model, data, config(tmp_path, epochs=2, resume=True, **cfg), log=None)
    assert snapshot(tmp_path) == before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_a_clear_error(paper_data, tmp_path, name, damage):
    fit(tiny_model(paper_data), paper_data, config(tmp_path), log=None)
    path = tmp_path / name
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"",
                      "garbage": b"\x80\x04not a pickle"}[damage])
    with pytest.raises(RunDirError, match=f"{name}: damaged checkpoint, cannot be read"):
        fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=2, resume=True),
            log=None)
    with pytest.raises(RunDirError, match="damaged checkpoint"):
        load_checkpoint(path)


def test_resume_refuses_a_best_pt_of_another_epoch(paper_data, tmp_path):
    fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=2, patience=9), log=None)
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    state = torch.load(tmp_path / "last.pt", weights_only=False)["state"]
    best["epoch"] = state["best_epoch"] - 1
    torch.save(best, tmp_path / "best.pt")
    with pytest.raises(RunDirError, match=f"records epoch {state['best_epoch']} as the best"):
        fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=3, resume=True),
            log=None)
    (tmp_path / "best.pt").unlink()
    with pytest.raises(RunDirError, match="best.pt is missing"):
        fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=3, resume=True),
            log=None)


def test_stale_temporary_files_are_removed(paper_data, tmp_path):
    fit(tiny_model(paper_data), paper_data, config(tmp_path), log=None)
    stale = [tmp_path / ".last.pt.abc123.tmp", tmp_path / ".best.pt.x.tmp",
             tmp_path / ".log.jsonl.y.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    mine = tmp_path / ".notes.tmp"  # not a file the run writes: left alone
    mine.write_text("keep")
    lines = []
    fit(tiny_model(paper_data), paper_data, config(tmp_path, epochs=2, resume=True),
        log=lines.append)
    assert not any(path.exists() for path in stale) and mine.exists()
    assert sum("left by an interrupted write" in line for line in lines) == 3


# ---------------------------------------------------------------------- best.pt, patience
def scripted_validation(monkeypatch, scores, out=None, on_disk=None):
    """Make ``fit`` see ``scores[e]`` as the validation AUC of epoch ``e``; return the list
    of the model's weights at each validation. With ``out``, ``on_disk`` receives the epoch
    that ``out/best.pt`` holds at each validation (None before the first)."""
    seen = []

    def fake_evaluate(model, prepared, split, *args, **kwargs):
        assert split == "valid"
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        if out is not None:
            best = out / "best.pt"
            on_disk.append(torch.load(best, weights_only=False)["epoch"]
                           if best.is_file() else None)
        return {"auc/sampled": scores[len(seen) - 1]}

    monkeypatch.setattr("mdgr_graph.train.evaluate", fake_evaluate)
    return seen


def test_best_pt_holds_the_best_validation_epoch_not_the_last(paper_data, tmp_path,
                                                               monkeypatch):
    on_disk = []
    seen = scripted_validation(monkeypatch, [0.50, 0.70, 0.60, 0.65, 0.55], tmp_path, on_disk)
    model = tiny_model(paper_data)
    result = fit(model, paper_data, config(tmp_path, epochs=5, patience=9), log=None)
    assert result.best_epoch == 1 and result.epochs == 5 and len(seen) == 5
    assert on_disk == [None, 0, 1, 1, 1]  # during training too, not only at the end
    assert not all(torch.equal(seen[1][k], seen[3][k]) for k in seen[1])  # weights moved
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] == 1
    for name, value in seen[1].items():
        assert torch.equal(best["model"][name], value), name
        assert torch.equal(model.state_dict()[name], value), name  # the model returned
    rows = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["best"] for r in rows] == [True, True, False, False, False]


@pytest.mark.parametrize(("scores", "patience", "epochs"), [
    ([0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], 2, 3),       # 2 bad epochs after the best: stop
    ([0.5, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], 1, 2),
    ([0.5, 0.4, 0.6, 0.4, 0.4, 0.4, 0.4], 2, 5),       # a gain resets the count
    ([0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99], 1, 7),     # never a bad epoch: all epochs
])
def test_patience_stops_exactly_after_patience_bad_epochs(paper_data, monkeypatch, scores,
                                                          patience, epochs):
    seen = scripted_validation(monkeypatch, scores)
    result = fit(tiny_model(paper_data), paper_data,
                 config(epochs=len(scores), patience=patience), log=None)
    assert result.epochs == epochs and len(seen) == epochs


# ---------------------------------------------------------------------- train_mdgr.py
@pytest.fixture
def csv_log(write_csv):
    """40 users x 30 interactions over 60 items: a different --seed only changes the split
    (same items, same model), the case the old code resumed silently."""
    rows = [(u, (u * 7 + t * 3) % 60, 1_000_000 + 86_400 * t) for u in range(40)
            for t in range(30)]
    return write_csv(rows)


def cli(csv_log, out, *extra):
    return ["--format", "csv", "--path", str(csv_log), "--window", "20", "--history", "10",
            "--negatives", "5", "--min-user-len", "20", "--min-item-count", "1",
            "--valid-frac", "0.2", "--test-frac", "0.2", "--m", "1", "--k", "2",
            "--dim", "8", "--no-progress", "--no-cache", "--out", str(out), *extra]


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_cli_refuses_used_folder_and_mismatched_resume_keeping_args_json(csv_log, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    assert train_cli.main(cli(csv_log, out, "--epochs", "1")) == 0
    before = snapshot(out)
    capsys.readouterr()
    assert train_cli.main(cli(csv_log, out, "--epochs", "0")) == 2
    assert "already holds a run" in error_line(capsys)
    for extra, message in [(["--seed", "1"], "data.options.seed: 0 in the checkpoint, 1 now"),
                           (["--dropout", "0.3"], "model.options.dropout"),
                           (["--model", "sasrec"], "was written by MDGR"),
                           (["--dim", "16"], "was written by MDGR")]:
        assert train_cli.main(cli(csv_log, out, "--epochs", "2", "--resume", *extra)) == 2
        assert message in error_line(capsys)
        assert snapshot(out) == before  # args.json included
    assert train_cli.main(cli(csv_log, out, "--epochs", "2", "--resume")) == 0
    (out / "last.pt").write_bytes(b"")
    assert train_cli.main(cli(csv_log, out, "--epochs", "3", "--resume")) == 2
    assert "last.pt: damaged checkpoint" in error_line(capsys)


def test_load_run_refuses_args_json_of_another_run(csv_log, tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(cli(csv_log, out, "--epochs", "1")) == 0
    train_cli.load_run(out)  # consistent: loads
    saved = json.loads((out / "args.json").read_text())
    (out / "args.json").write_text(json.dumps({**saved, "seed": 3}))
    with pytest.raises(RunDirError, match="was not trained with the options of"):
        train_cli.load_run(out)
    (out / "args.json").write_text(json.dumps(saved))
    (out / "best.pt").write_bytes((out / "best.pt").read_bytes()[:100])
    with pytest.raises(RunDirError, match="best.pt: damaged checkpoint"):
        train_cli.load_run(out)
