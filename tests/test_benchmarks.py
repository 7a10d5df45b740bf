"""The benchmark runner (mdgr_graph.bench) and the scripts under benchmarks/, end to end
on real data (skipped without ../shared/data); the scripts run as subprocesses."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mdgr_graph.bench import groups, runner
from mdgr_graph.cli.model_options import benchmark_model_kwargs

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def script(name: str, *argv: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<name>`` with ``argv``; its exit status and output."""
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *argv],
                          capture_output=True, text=True, cwd=REPO, timeout=1800)


def ok(done: subprocess.CompletedProcess) -> bool:
    assert done.returncode == 0, done.stderr[-3000:]
    return True


def test_compare_quick_writes_summary_and_resumes(shared_data, tmp_path, capsys):
    argv = ["--quick", "--models", "pop,itemknn,sasrec", "--seeds", "0,1", "--epochs", "1",
            "--data-dir", str(shared_data), "--out", str(tmp_path / "results"),
            "--work-dir", str(tmp_path / "work"), "--no-progress"]
    assert runner.main(argv) == 0
    summary_path = tmp_path / "results" / "quick" / "ml-1m-subset-paper.json"
    summary = json.loads(summary_path.read_text())
    assert [e["model"] for e in summary["models"]] == ["sasrec", "pop", "itemknn"]
    for entry in summary["models"]:
        assert {"model", "per_seed", "mean", "std", "params", "train_seconds"} <= set(entry)
        assert set(entry["per_seed"]) == {"0", "1"}
        assert 0.5 < entry["mean"]["AUC"] <= 1.0 and entry["std"]["AUC"] >= 0.0
    assert summary["environment"]["torch"]
    table = summary_path.with_suffix(".md").read_text()
    assert "| itemknn |" in table and "test AUC" in table
    runs = sorted((tmp_path / "results" / "quick" / "ml-1m-subset-paper" / "runs").glob("*"))
    assert len(runs) == 6
    stamps = [p.stat().st_mtime_ns for p in runs]
    capsys.readouterr()
    assert runner.main(argv) == 0  # everything finished: nothing is rerun
    assert [p.stat().st_mtime_ns for p in runs] == stamps

    # Figure 5 from the same runs: nothing is retrained, the plot and curves are written
    assert ok(script("convergence.py", *argv))
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    base = tmp_path / "results" / "quick" / "ml-1m-subset-paper"
    assert base.with_name(base.name + "-convergence.png").stat().st_size > 1000
    data = json.loads(base.with_name(base.name + "-convergence.json").read_text())
    assert data["metric"] == "auc/sampled"
    assert len(data["curves"]["sasrec"]) == 2 and len(data["curves"]["sasrec"][0]) == 1
    assert len(data["curves"]["itemknn"]) == 2


def test_compare_lr_grid_tunes_each_neural_model_on_one_seed(shared_data, tmp_path):
    argv = ["--quick", "--models", "pop,sasrec", "--seeds", "0,1", "--epochs", "1",
            "--lr-grid", "5e-3,1e-3", "--data-dir", str(shared_data),
            "--out", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work"),
            "--no-progress"]
    assert runner.main(argv) == 0
    base = tmp_path / "results" / "quick" / "ml-1m-subset-paper"
    summary = json.loads(base.with_name(base.name + "-lrgrid-0p001-0p005.json").read_text())
    sasrec = next(e for e in summary["models"] if e["model"] == "sasrec")
    tuning = sasrec["lr_tuning"]
    assert tuning["grid"] == [0.001, 0.005] and tuning["seed"] == 0
    best = max(tuning["valid"], key=tuning["valid"].get)
    assert f"{tuning['selected_lr']:g}" == best
    assert sasrec["config"]["lr"] == tuning["selected_lr"] and sasrec["seeds"] == [0, 1]
    assert next(e for e in summary["models"] if e["model"] == "pop")["lr_tuning"] is None
    runs = sorted(p.name for p in (base / "runs").glob("sasrec-*.json"))
    assert len(runs) == 3  # both rates on seed 0, the selected one on seed 1
    # Figure 5 from the selected runs (nothing retrained)
    assert ok(script("convergence.py", *argv))
    grid_base = base.with_name(base.name + "-lrgrid-0p001-0p005")
    curves = json.loads(grid_base.with_name(grid_base.name + "-convergence.json").read_text())
    selected = runner.finished_run("sasrec", 1, runner.parse_args(argv))
    assert selected["config"]["lr"] == tuning["selected_lr"]
    assert curves["curves"]["sasrec"][1] == selected["valid_curve"]
    # a later run of other models under the same grid keeps sasrec in the table
    assert runner.main([*argv[:2], "pop", *argv[3:]]) == 0
    again = json.loads(base.with_name(base.name + "-lrgrid-0p001-0p005.json").read_text())
    assert [e["model"] for e in again["models"]] == [e["model"] for e in summary["models"]]
    # --only-finished trains nothing, not even a missing seed, and rebuilds the same table
    table = base.with_name(base.name + "-lrgrid-0p001-0p005.md")
    before = table.read_text()
    table.unlink()
    assert runner.main([*argv[:4], "0,1,2", *argv[5:], "--only-finished"]) == 0
    assert sorted(p.name for p in (base / "runs").glob("sasrec-*.json")) == runs
    assert table.read_text().split("| model |")[1] == before.split("| model |")[1]
    with pytest.raises(SystemExit):
        runner.parse_args(["--lr-grid", "fast"])


def test_compare_continues_a_finished_shorter_run_exactly(shared_data, tmp_path):
    def argv(epochs, where):
        return ["--quick", "--models", "gru4rec", "--seeds", "0", "--epochs", str(epochs),
                "--data-dir", str(shared_data), "--out", str(tmp_path / where),
                "--work-dir", str(tmp_path / where / "work"), "--no-progress"]

    def run_of(epochs, where):
        args = runner.parse_args(argv(epochs, where))
        return runner.finished_run("gru4rec", 0, args)

    assert runner.main(argv(1, "a")) == 0
    assert runner.main(argv(2, "a")) == 0  # continues the 1-epoch run
    assert runner.main(argv(2, "b")) == 0  # uninterrupted 2 epochs
    short, extended, fresh = run_of(1, "a"), run_of(2, "a"), run_of(2, "b")
    assert extended["extended_from"] == f"gru4rec-seed0-{short['config_hash']}"
    assert "extended_from" not in fresh and extended["epochs"] == fresh["epochs"] == 2
    assert extended["valid_curve"][0] == short["valid_curve"][0]
    assert extended["valid_curve"] == fresh["valid_curve"]
    assert extended["test"] == fresh["test"]


def test_markdown_table_states_the_neural_budget_and_epochs_run():
    def entry(model, epochs, config):
        return {"model": model, "mean": {"HR@10": 0.2}, "std": {"HR@10": 0.0}, "seeds": [0],
                "params": 10, "params_without_item_table": 5, "epochs": epochs,
                "train_seconds": 1.0, "config": config}

    neural = {"epochs": 3, "patience": 1, "batch_size": 128, "loo_train_targets": "all"}
    summary = {"dataset": "d", "protocol": "loo",
               "environment": {"platform": "p", "cpu_count": 2, "threads": 1, "torch": "t"},
               "models": [entry("sasrec", [3], neural), entry("ease", [0], {"grid": {}})]}
    table = runner.markdown_table(summary, [("HR@10", "hr@10/full")])
    assert "at most 3 epochs (early stopping patience 1), batch 128" in table
    assert "training targets `all`" in table and "epochs run" in table
    assert "| sasrec | 0.2000 ± 0.0000 | 0 | 10 | 5 | 3 | 1.0 |" in table
    assert "| ease | 0.2000 ± 0.0000 | 0 | 10 | 5 | - | 1.0 |" in table
    assert "cut" not in table  # entries without the flag (older summaries) mark nothing


def test_compare_table_marks_runs_cut_by_the_epoch_budget():
    config = {"epochs": 40, "patience": 5, "batch_size": 128}

    def run(epochs, best_epoch, model="mdgr"):
        return {"model": model, "epochs": epochs, "best_epoch": best_epoch, "config": config}

    assert runner.cut_by_budget(run(40, 39))  # still improving at the last epoch
    assert runner.cut_by_budget(run(40, 35))  # 4 epochs without improvement < patience 5
    assert not runner.cut_by_budget(run(40, 34))  # early stopping would have fired now
    assert not runner.cut_by_budget(run(28, 22))  # early-stopped
    assert not runner.cut_by_budget({"model": "ease", "epochs": 0, "best_epoch": 0,
                                     "config": {"grid": {}}})
    entry = {"model": "mdgr", "mean": {"AUC": 0.8}, "std": {"AUC": 0.0}, "seeds": [0, 1],
             "params": 10, "params_without_item_table": 5, "epochs": [40, 28],
             "cut": [True, False], "train_seconds": 1.0, "config": config}
    table = runner.markdown_table(
        {"dataset": "d", "protocol": "paper", "models": [entry],
         "environment": {"platform": "p", "cpu_count": 2, "threads": 1, "torch": "t"}},
        [("AUC", "auc/sampled")])
    assert "| 40*,28 |" in table and "**cut**" in table


def test_compare_refuses_unknown_models(capsys):
    with pytest.raises(SystemExit):
        runner.parse_args(["--models", "mdgr,nope"])
    assert "unknown models" in capsys.readouterr().err


def test_compare_loo_training_targets_in_the_run_hash(capsys):
    base = ["--protocol", "loo", "--models", "sasrec"]
    last = runner.run_tag("sasrec", 0, runner.parse_args(base))
    assert last == runner.run_tag("sasrec", 0, runner.parse_args(
        [*base, "--loo-train-targets", "last"]))
    one = runner.run_tag("sasrec", 0, runner.parse_args(
        [*base, "--loo-train-targets", "random"]))
    ten = runner.run_tag("sasrec", 0, runner.parse_args(
        [*base, "--loo-train-targets", "random", "--loo-train-positives", "10"]))
    assert len({last, one, ten}) == 3
    paper = runner.parse_args(["--models", "sasrec", "--loo-train-targets", "random"])
    assert runner.run_tag("sasrec", 0, paper) == runner.run_tag(
        "sasrec", 0, runner.parse_args(["--models", "sasrec"]))  # paper runs unaffected
    for bad in (["--loo-train-positives", "0"], ["--loo-train-positives", "2"]):
        with pytest.raises(SystemExit):
            runner.parse_args(bad)
    assert "--loo-train-positives" in capsys.readouterr().err


def test_compare_loo_training_targets_keep_their_own_table():
    def name(*extra):
        return runner.summary_path(runner.parse_args(["--protocol", "loo", *extra])).name

    assert name() == name("--loo-train-targets", "last") == "ml-1m-subset-loo"
    assert name("--loo-train-targets", "all") == "ml-1m-subset-loo-targets-all"
    assert name("--loo-train-targets", "random", "--loo-train-positives", "4") == (
        "ml-1m-subset-loo-targets-random-p4")
    assert runner.summary_path(runner.parse_args(
        ["--loo-train-targets", "all"])).name == "ml-1m-subset-paper"


def test_compare_negatives_reach_the_data_the_run_hash_and_the_table(capsys):
    base = ["--protocol", "loo", "--models", "sasrec", "--dataset", "synthetic"]
    default = runner.parse_args(base)
    more = runner.parse_args([*base, "--negatives", "7"])
    assert runner.run_tag("sasrec", 0, default) != runner.run_tag("sasrec", 0, more)
    assert "negatives" not in runner.run_config("sasrec", default)  # old hashes kept
    assert runner.summary_path(more).name == "synthetic-loo-neg7"
    assert runner.load_data(more, 0).meta["options"]["negatives"] == 7
    assert runner.load_data(default, 0).meta["options"]["negatives"] == 50
    with pytest.raises(SystemExit):
        runner.parse_args([*base, "--negatives", "0"])
    assert "--negatives must be >= 1" in capsys.readouterr().err


def test_compare_reports_a_missing_data_file(tmp_path, capsys):
    argv = ["--quick", "--models", "pop", "--seeds", "0", "--data-dir", str(tmp_path),
            "--out", str(tmp_path / "r"), "--no-progress"]
    assert runner.main(argv) == 2
    assert "no such file" in capsys.readouterr().err


def test_compare_records_code_defaults_and_refuses_runs_whose_defaults_changed(
        shared_data, tmp_path, capsys):
    argv = ["--quick", "--models", "pop,itemknn", "--seeds", "0", "--data-dir",
            str(shared_data), "--out", str(tmp_path / "r"), "--work-dir", str(tmp_path / "w"),
            "--no-progress"]
    assert runner.main(argv) == 0
    runs = tmp_path / "r" / "quick" / "ml-1m-subset-paper" / "runs"
    knn_path = next(runs.glob("itemknn-*.json"))
    run = json.loads(knn_path.read_text())
    assert run["code_defaults"] == runner.code_defaults("itemknn")
    assert run["code_defaults"]["from_prepared.shrink"] == "10.0"
    assert "train.weight_decay" in run["code_defaults"]
    assert "train.progress" not in run["code_defaults"]

    # the code's default shrink was 5.0 when this run was made: its result is stale
    run["code_defaults"]["from_prepared.shrink"] = "5.0"
    knn_path.write_text(json.dumps(run))
    summary = tmp_path / "r" / "quick" / "ml-1m-subset-paper.json"
    before = summary.read_text()
    capsys.readouterr()
    assert runner.main(argv) == 2
    err = capsys.readouterr().err
    assert str(knn_path) in err and "from_prepared.shrink 5.0 -> 10.0" in err
    assert "pop-" not in err
    assert summary.read_text() == before and json.loads(knn_path.read_text()) == run

    knn_path.unlink()  # as the message says: delete it to rerun under the current code
    assert runner.main(argv) == 0
    assert json.loads(knn_path.read_text())["code_defaults"] == runner.code_defaults("itemknn")


def test_changed_defaults_ignores_old_run_files_and_added_or_removed_defaults():
    now = runner.code_defaults("comirec-sa")
    assert now["loss"] == "'sampled_softmax'"
    assert runner.changed_defaults({"model": "comirec-sa"}) == {}  # recorded before them
    then = {**now, "loss": "'bce'", "removed_since": "1"}
    del then["dropout"]  # added since
    assert runner.changed_defaults({"model": "comirec-sa", "code_defaults": then}) == {
        "loss": ("'bce'", "'sampled_softmax'")}


def test_claim_skips_live_locks_and_takes_over_stale_ones(tmp_path):
    import os
    import subprocess

    lock = tmp_path / "run.lock"
    assert runner.claim(lock) == lock and lock.read_text() == str(os.getpid())
    assert runner.claim(lock) is None  # held by a live process (this one)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(str(dead.pid))
    assert runner.claim(lock) == lock and lock.read_text() == str(os.getpid())


def test_sensitivity_quick_sweeps_k_and_plots(shared_data, tmp_path):
    argv = ["--quick", "--seeds", "0", "--epochs", "1", "--ks", "2,8", "--ms", "5",
            "--data-dir", str(shared_data), "--out", str(tmp_path / "results"),
            "--work-dir", str(tmp_path / "work"), "--no-progress"]
    assert ok(script("sensitivity.py", *argv))
    base = tmp_path / "results" / "quick" / "ml-1m-subset-paper"
    data = json.loads(base.with_name(base.name + "-sensitivity.json").read_text())
    for value in ("2", "8"):
        assert data["results"]["k"][value]["seeds"] == [0]
        assert 0.0 < data["results"]["k"][value]["AUC"][0] <= 1.0
    # m = 5 is the default: the same run as k = 8, not trained twice
    assert data["results"]["m"]["5"] == data["results"]["k"]["8"]
    assert len(list((base / "runs").glob("mdgr-*.json"))) == 2
    assert base.with_name(base.name + "-sensitivity-k.png").stat().st_size > 1000


def test_ablation_quick_tabulates_variants_against_full_model(shared_data, tmp_path):
    argv = ["--quick", "--seeds", "0", "--epochs", "1", "--variants", "mdgr-w,mdgr-dgc,mdgr-t",
            "--data-dir", str(shared_data), "--out", str(tmp_path / "results"),
            "--work-dir", str(tmp_path / "work"), "--no-progress"]
    assert ok(script("ablation.py", *argv))
    base = tmp_path / "results" / "quick" / "ml-1m-subset-paper"
    data = json.loads(base.with_name(base.name + "-ablation.json").read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert list(rows) == ["mdgr-w", "mdgr-dgc", "mdgr-t", "mdgr"]  # paper's order, full last
    # -DGC is MIP's model: its row is MIP's run, trained once under that name
    runs = base / "runs"
    assert [p.name.split("-seed")[0] for p in sorted(runs.glob("m*.json"))] == [
        "mdgr", "mdgr-t", "mdgr-w", "mip"]
    mip_run = json.loads(next(runs.glob("mip-seed0-*.json")).read_text())
    assert rows["mdgr-dgc"]["runs_of"] == "mip" and rows["mdgr-dgc"]["seeds"] == [0]
    assert rows["mdgr-dgc"]["AUC"]["per_seed"] == [mip_run["test"]["auc/sampled"]]
    assert rows["mdgr"]["AUC"]["minus_full"] == 0.0
    assert rows["mdgr-w"]["AUC"]["minus_full"] == pytest.approx(
        rows["mdgr-w"]["AUC"]["mean"] - rows["mdgr"]["AUC"]["mean"])
    table = base.with_name(base.name + "-ablation.md").read_text()
    assert "| mdgr-t | -T |" in table and "88.49 / 87.61" in table
    assert "| mdgr-dgc (runs of mip) | -DGC |" in table
    # one epoch of a larger patience: every run is cut by the budget, and the table says so
    assert rows["mdgr"]["epochs"] == [1] and rows["mdgr"]["cut"] == [True]
    assert "| 0 | 1* |" in table and runner.CUT_NOTE in table
    stamps = sorted(p.stat().st_mtime_ns for p in (base / "runs").glob("*.json"))
    assert ok(script("ablation.py", *argv, "--only-finished"))  # trains nothing
    assert sorted(p.stat().st_mtime_ns for p in (base / "runs").glob("*.json")) == stamps
    refused = script("ablation.py", "--variants", "mdgr-x")
    assert refused.returncode == 2 and "unknown variants" in refused.stderr


@pytest.mark.slow
def test_large_log_benchmark_on_a_small_generated_log(tmp_path):
    pytest.importorskip("pyarrow")
    argv = ["--rows", "30000", "--small-rows", "20000", "--chunk-rows", "5000",
            "--work-dir", str(tmp_path / "work"), "--out-dir", str(tmp_path / "out")]
    assert ok(script("large_log.py", *argv))
    data = json.loads((tmp_path / "out" / "large_log.json").read_text())
    assert data["identical_small"] is True and data["hardware"]["pyarrow"]
    stages = {(r["method"], r["stage"], r["rows"]) for r in data["results"]}
    assert ("chunked", "prepare", 30000) in stages and ("memory", "prepare", 20000) in stages
    assert all(r["rows_per_s"] > 0 and r["peak_kib"] >= r["baseline_kib"]
               for r in data["results"])
    assert "| chunked |" in (tmp_path / "out" / "large_log.md").read_text()


def test_per_user_pooled_tables_weight_each_seed_by_its_windows():
    def entry(windows, auc):
        return {"windows": windows, "m": {"auc": auc, "recall@50": auc / 2}}

    result = {"0": {"span": {"low": entry(1, 0.9), "mid": entry(2, 0.6), "high": entry(1, 0.3)}},
              "1": {"span": {"low": entry(3, 0.5), "mid": entry(2, 0.8), "high": entry(1, 0.5)}}}
    lines = groups.pooled_tables(result, ["m"])
    assert lines[0].strip() == ("### all seeds (0, 1) pooled: test examples by span "
                                "(each seed's tertiles)")
    assert lines[3] == "| low | 4 | 0.6000 / 0.3000 |"  # (0.9 * 1 + 0.5 * 3) / 4
    assert lines[5] == "| high | 2 | 0.4000 / 0.2000 |"
    assert groups.pooled_tables({"0": result["0"]}, ["m"]) == []
    cross = {seed: {"a x b": {"high x low": entry(2, 0.4), "low x high": entry(1, 0.1)}}
             for seed in ("0", "1")}
    lines = groups.pooled_tables(cross, ["m"])
    assert lines[3:] == ["| low x high | 2 | 0.1000 / 0.0500 |",
                         "| high x low | 4 | 0.4000 / 0.2000 |"]  # tertile order


def test_wrapper_scripts_refuse_options_they_set():
    refused = script("sensitivity.py", "--mdgr-k", "3")
    assert refused.returncode == 2 and "set by sensitivity.py" in refused.stderr
    helped = script("sensitivity.py", "--help")
    assert helped.returncode == 0
    out = helped.stdout
    assert "--ks" in out and "Every other option is passed to compare.py" in out


def test_step_time_estimates_a_run_from_timed_steps(shared_data, tmp_path):
    argv = ["--quick", "--seeds", "0", "--epochs", "1", "--data-dir", str(shared_data),
            "--out", str(tmp_path / "results"), "--work-dir", str(tmp_path / "work"),
            "--no-progress"]
    assert runner.main([*argv, "--models", "sasrec"]) == 0  # a finished run to check against
    assert ok(script("step_time.py", "--steps", "3", "--warmup", "1", *argv,
                     "--models", "pop,sasrec,mdgr"))
    base = tmp_path / "results" / "quick" / "ml-1m-subset-paper-step-time"
    payload = json.loads(base.with_suffix(".json").read_text())
    assert payload["skipped"] == {"pop": "closed form, no training steps"}
    sasrec, mdgr = payload["models"]
    assert (sasrec["model"], mdgr["model"]) == ("sasrec", "mdgr")
    for entry in (sasrec, mdgr):
        assert len(entry["step_seconds"]) == 3 and min(entry["step_seconds"]) > 0
        assert entry["batches_per_epoch"] == -(-entry["examples_per_epoch"] // 128)
        assert entry["estimated_epoch_seconds"] == pytest.approx(
            entry["median_step_seconds"] * entry["batches_per_epoch"])
        assert entry["config"] == runner.run_config(entry["model"], runner.parse_args(argv))
    assert sasrec["measured_epoch_seconds"] > 0 and "measured_epoch_seconds" not in mdgr
    assert "| sasrec |" in base.with_suffix(".md").read_text()
    assert script("step_time.py", "--steps", "0", *argv).returncode == 2
    too_many = script("step_time.py", "--warmup", "100000", *argv, "--models", "sasrec")
    assert too_many.returncode == 1
    assert "ValueError" in too_many.stderr and "fewer than --warmup 100000" in too_many.stderr


def test_compare_runs_on_the_embedded_synthetic_log_without_data(tmp_path):
    argv = ["--dataset", "synthetic", "--quick", "--max-users", "60", "--models", "pop,spop",
            "--seeds", "0", "--data-dir", str(tmp_path / "absent"),
            "--out", str(tmp_path / "r"), "--work-dir", str(tmp_path / "w"), "--no-progress"]
    assert runner.main(argv) == 0
    summary = json.loads((tmp_path / "r" / "quick" / "synthetic-paper.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["pop", "spop"]
    pop, spop = (m["mean"]["AUC"] for m in summary["models"])
    assert 0.0 < pop < spop <= 1.0  # S-POP counts the repeats, Pop cannot
    # the embedded log repeats items within topics: the table says how often a test
    # positive is in its window's history (mdgr_graph/data/repeats.py)
    share = summary["test_repeat_share"]["0"]
    assert 0.3 < share < 1.0
    table = (tmp_path / "r" / "quick" / "synthetic-paper.md").read_text()
    assert f"{100 * share:.1f} % (seeds 0: {100 * share:.1f} %)" in table


def test_compare_keeps_a_table_built_with_another_configuration(tmp_path, capsys):
    """A table's name does not carry --dim or --patience: a command that would rebuild it
    from another configuration is refused before it trains, unless --replace-summary."""
    def argv(*extra: str) -> list[str]:
        return ["--dataset", "synthetic", "--quick", "--max-users", "40", "--models",
                "pop,gru4rec", "--seeds", "0", "--data-dir", str(tmp_path / "absent"),
                "--out", str(tmp_path / "r"), "--work-dir", str(tmp_path / "w"),
                "--no-progress", *extra]

    table = tmp_path / "r" / "quick" / "synthetic-paper.json"
    runs = table.with_suffix("") / "runs"
    assert runner.main(argv("--epochs", "1")) == 0
    before, run_files = table.read_bytes(), sorted(runs.glob("*.json"))
    capsys.readouterr()
    assert runner.main(argv("--epochs", "1", "--dim", "8")) == 2
    err = capsys.readouterr().err
    assert "nothing was run" in err and "gru4rec: model_kwargs" in err and "pop" not in err
    assert table.read_bytes() == before and sorted(runs.glob("*.json")) == run_files
    with pytest.raises(runner.SummaryConflict, match="--replace-summary"):
        runner.summarize(table.with_suffix(""), runner.parse_args(argv("--dim", "8")))
    assert runner.main(argv("--epochs", "1", "--patience", "7")) == 2
    assert table.read_bytes() == before

    assert runner.main(argv("--epochs", "2")) == 0  # a larger budget continues the rows
    assert json.loads(table.read_text())["models"][0]["config"]["epochs"] == 2
    assert runner.main(argv("--epochs", "1")) == 2  # a smaller one would drop them
    assert runner.main(argv("--epochs", "1", "--dim", "8", "--replace-summary")) == 0
    gru = json.loads(table.read_text())["models"][0]
    assert gru["model"] == "gru4rec" and gru["config"]["model_kwargs"]["dim"] == 8


def test_compare_table_states_the_repeat_share_in_one_line():
    summary = {"dataset": "d", "protocol": "paper", "models": [],
               "environment": {"platform": "p", "cpu_count": 2, "threads": 1, "torch": "t"}}
    keys = runner.REPORTED["paper"]
    plain = runner.markdown_table(summary, keys)
    with_share = runner.markdown_table(
        {**summary, "test_repeat_share": {"0": 0.5, "1": 0.25, "2": None}}, keys)
    extra = [line for line in with_share.splitlines() if line not in plain.splitlines()]
    assert len(extra) == 1 and "37.5 % (seeds 0, 1: 50.0, 25.0 %)" in extra[0]
    assert runner.markdown_table({**summary, "test_repeat_share": None}, keys) == plain


def test_compare_mdgr_options_reach_the_model_and_the_table_name():
    args = runner.parse_args(["--models", "mdgr,mip", "--mdgr-m", "1", "--mdgr-cluster",
                               "ward", "--mdgr-cluster-on", "item"])
    assert benchmark_model_kwargs("mdgr", args) == {
        "dim": 32, "m": 1, "cluster": "ward", "cluster_on": "item"}
    assert benchmark_model_kwargs("mip", args) == {"dim": 32}  # MIP: Ward, no iterations
    assert runner.summary_path(args).name == (
        "ml-1m-subset-paper-m1-cluster-ward-cluster-on-item")
    args = runner.parse_args(["--models", "mdgr,mip", "--mdgr-pool-values", "item"])
    assert benchmark_model_kwargs("mdgr", args) == {"dim": 32, "pool_values": "item"}
    assert benchmark_model_kwargs("mip", args) == {"dim": 32, "pool_values": "item"}
    assert runner.summary_path(args).name == "ml-1m-subset-paper-pool-values-item"


def committed_runs() -> list[tuple[Path, dict]]:
    return [(path, json.loads(path.read_text()))
            for path in sorted(RESULTS.glob("*/runs/*.json"))]


def test_committed_runs_keep_their_names_under_the_runner():
    """Every committed run file made by compare.py: its recorded command, parsed by the
    runner, gives the same configuration and hash, so the run is found (and reused)."""
    runs = committed_runs()
    assert len(runs) > 200
    from_compare = 0
    for path, run in runs:
        assert runner.config_hash(run["config"]) == run["config_hash"], path
        assert path.stem == f"{run['model']}-seed{run['seed']}-{run['config_hash']}", path
        command = shlex.split(run["environment"]["command"])
        if command[0] != "compare.py":
            continue  # made through ablation.py / sensitivity.py, which set --models etc.
        args = runner.parse_args(command[1:])
        if run["model"] not in runner.CLOSED_FORM:  # the rate of its grid, if any
            args = runner.with_lr(args, run["config"]["lr"])
        assert runner.run_config(run["model"], args) == run["config"], path
        assert runner.run_tag(run["model"], run["seed"], args) == path.stem, path
        from_compare += 1
    assert from_compare > 200


def test_committed_summaries_are_found_again_from_their_commands():
    """The recorded command of every Table 2 summary names its own files."""
    found = 0
    for path in sorted(RESULTS.glob("*.json")):
        summary = json.loads(path.read_text())
        if not isinstance(summary.get("models"), list):
            continue
        names = {runner.summary_path(runner.parse_args(shlex.split(c)[1:])).name
                 for entry in summary["models"] for c in entry.get("commands", [])
                 if c.startswith("compare.py")}
        if names:
            assert path.stem in names, (path, names)
            found += 1
    assert found > 10


def test_committed_summaries_agree_with_the_command_that_wrote_them():
    """The command that last wrote each Table 2 summary names it and would rebuild it
    without a configuration conflict (``--replace-summary`` is never needed to redo it)."""
    checked = 0
    for path in sorted(RESULTS.glob("*.json")):
        summary = json.loads(path.read_text())
        command = summary.get("environment", {}).get("command", "")
        if not isinstance(summary.get("models"), list) or not command.startswith("compare.py"):
            continue
        args = runner.parse_args(shlex.split(command)[1:])
        assert runner.summary_path(args).name == path.stem, (path, command)
        assert runner.summary_conflicts(path.with_suffix(""), args) == [], (path, command)
        checked += 1
    assert checked > 40


def test_any_log_synthetic_repeats_and_new_model_options(tmp_path, capsys):
    """``--path`` runs the comparison on any log; ``--synthetic-repeat-prob`` names its
    tables; ``--mdgr-repeat`` / ``--loss`` reach the models that take them and the names."""
    args = runner.parse_args(["--dataset", "synthetic", "--synthetic-repeat-prob", "0.8",
                              "--mdgr-repeat", "gate", "--loss", "ce", "--out", str(tmp_path)])
    assert args.dataset == "synthetic-repeat0.8"
    assert runner.summary_path(args).name.startswith(
        "synthetic-repeat0.8-paper-repeat-gate-loss-ce")
    assert runner.run_config("mdgr", args)["model_kwargs"] == {"dim": 32, "repeat": "gate",
                                                               "loss": "ce"}
    assert runner.run_config("sasrec", args)["model_kwargs"] == {"dim": 32,
                                                                 "history_targets": False,
                                                                 "loss": "ce"}
    assert "loss" not in runner.run_config("maerec", args)["model_kwargs"]  # its own loss
    gbce = runner.parse_args(["--dataset", "synthetic", "--loss", "gbce", "--gbce-t", "0.5",
                              "--out", str(tmp_path)])
    assert runner.summary_path(gbce).name.startswith("synthetic-paper-loss-gbce-t0p5")
    assert runner.run_config("sasrec", gbce)["model_kwargs"]["gbce_t"] == 0.5
    with pytest.raises(SystemExit):
        runner.parse_args(["--dataset", "synthetic", "--gbce-t", "0.5"])
    assert "needs --loss gbce" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runner.parse_args(["--dataset", "synthetic", "--loss", "ce", "--query", "candidate"])
    assert "not with --query candidate" in capsys.readouterr().err
    plain = runner.parse_args(["--dataset", "synthetic"])
    assert runner.run_config("mdgr", plain)["model_kwargs"] == {"dim": 32}
    log = tmp_path / "clicks.csv.gz"
    import gzip

    rows = ["uid,iid,ts"] + [f"u{u},i{(u * 7 + j) % 120},{1000 + j}" for u in range(30)
                             for j in range(25)]
    log.write_bytes(gzip.compress("\n".join(rows).encode()))
    args = runner.parse_args(["--path", str(log), "--format", "csv", "--protocol", "loo",
                              "--user-col", "uid", "--item-col", "iid", "--time-col", "ts",
                              "--out", str(tmp_path)])
    assert args.dataset == "clicks"
    prepared = runner.load_data(args, seed=0)
    assert prepared.num_users == 30 and prepared.protocol == "loo"
    for bad, message in [(["--path", str(log)], "needs --format"),
                         (["--format", "csv"], "go with --path"),
                         (["--path", str(tmp_path / "none.csv"), "--format", "csv"],
                          "no such file"),
                         (["--synthetic-repeat-prob", "0.5"], "for --dataset synthetic"),
                         (["--dataset", "synthetic", "--synthetic-repeat-prob", "1.5"],
                          "must lie in"),
                         (["--dataset", "synthetic", "--synthetic-repeat-window", "5"],
                          "goes with")]:
        with pytest.raises(SystemExit):
            runner.parse_args(bad)
        assert message in capsys.readouterr().err


def test_speed_epoch_section_reports_both_mdgr_settings_against_sasrec(shared_data, tmp_path):
    out = tmp_path / "speed.json"
    assert ok(script("speed.py", "--sections", "epoch", "--epoch-batches", "1",
                     "--eval-batches", "1", "--eval-batch-size", "32", "--warmup", "0",
                     "--data-dir", str(shared_data), "--json", str(out)))
    payload = json.loads(out.read_text())
    epoch = payload["results"]["epoch"]
    assert set(epoch["models"]) == {"mdgr", "mdgr_m1", "sasrec"}
    assert epoch["models"]["mdgr_m1"]["kwargs"] == {"m": 1}
    targets = payload["headline"]["targets"]
    for name in ("mdgr", "mdgr_m1"):
        ratio = epoch[f"epoch_ratio_{name}_vs_sasrec"]
        assert ratio == pytest.approx(epoch["models"][name]["epoch"]["median_s"]
                                      / epoch["models"]["sasrec"]["epoch"]["median_s"])
        assert targets[f"epoch_ratio_{name}_vs_sasrec"]["holds"] == (ratio <= 2.0)
        assert targets[f"eval_ratio_{name}_vs_sasrec"]["value"] == pytest.approx(
            epoch["models"][name]["eval_users_per_s"]
            / epoch["models"]["sasrec"]["eval_users_per_s"])
    assert (tmp_path / "speed.md").is_file()


def test_speed_bound_section_replays_every_clustering_call(shared_data, tmp_path):
    out = tmp_path / "speed.json"
    assert ok(script("speed.py", "--sections", "bound", "--epoch-batches", "1",
                     "--warmup", "0", "--data-dir", str(shared_data), "--json", str(out)))
    bound = json.loads(out.read_text())["results"]["bound"]
    models = bound["models"]
    # one batch: 5 iterations + the final pooling at m = 5, 1 + 1 at m = 1
    assert models["mdgr"]["cluster_calls_per_epoch"] == 6
    assert models["mdgr_m1"]["cluster_calls_per_epoch"] == 2
    assert "step_clusters_free" not in models["sasrec"]
    for name in ("mdgr", "mdgr_m1"):
        e = models[name]
        assert e["clustering_share"] == pytest.approx(
            1 - e["step_clusters_free"]["median_s"] / e["step"]["median_s"])
    assert "clustering free" in (tmp_path / "speed.md").read_text()


def test_cluster_replay_returns_the_recorded_labels_in_order():
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("speed", REPO / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    calls = []

    def clustering(x, batch, k):
        calls.append(k)
        return torch.arange(x.size(0)) % k

    replay = speed.ClusterReplay(clustering)
    first = replay(torch.zeros(5, 2), None, 2)
    second = replay(torch.zeros(3, 2), None, 3)
    replay.replaying = True
    assert replay(torch.ones(5, 2), None, 2) is first
    assert replay(torch.ones(3, 2), None, 3) is second
    assert replay(torch.ones(5, 2), None, 2) is first  # cycles
    assert calls == [2, 3]  # nothing clustered while replaying
    with pytest.raises(RuntimeError, match="out of step"):
        replay(torch.ones(4, 2), None, 3)


def test_compare_refuses_candidate_query_under_loo(capsys):
    with pytest.raises(SystemExit) as exc:
        runner.main(["--protocol", "loo", "--models", "mdgr", "--query", "candidate"])
    assert exc.value.code == 2
    assert "--query candidate under loo" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is present")
def test_speed_refuses_cuda_without_a_gpu():
    done = script("speed.py", "--device", "cuda", "--sections", "epoch")
    assert done.returncode == 2
    assert "CUDA is not available" in done.stderr


def test_tie_order_counts_held_out_ties_and_reverses_same_time_runs(tmp_path):
    from mdgr_graph.data.readers import read_amazon

    log = tmp_path / "log.tsv"
    # user a: last two items share a day (test tied with valid); user b: valid tied with
    # the item before it; user c: no ties; user d: too short to have a validation item.
    log.write_text("user_id\titem_id\ttimestamp\n"
                   "a\t1\t100\na\t2\t200\na\t3\t200\n"
                   "b\t1\t100\nb\t2\t300\nb\t3\t300\nb\t4\t400\n"
                   "c\t5\t100\nc\t6\t200\nc\t7\t300\n"
                   "d\t1\t100\nd\t2\t100\n")
    out, reversed_log = tmp_path / "stats.json", tmp_path / "rev.tsv"
    ok(script("tie_order.py", "--path", str(log), "--format", "amazon", "--json", str(out),
              "--write-reversed", str(reversed_log)))
    stats = json.loads(out.read_text())
    assert stats["users"] == 3 and stats["interactions"] == 12
    assert stats["test_shares_time_with_valid"] == pytest.approx(1 / 3)
    assert stats["valid_shares_time_with_previous"] == pytest.approx(1 / 3)
    assert (stats["adjacent_pairs_with_equal_time"], stats["adjacent_pairs"]) == (3, 8)
    rows = [line.split("\t") for line in reversed_log.read_text().splitlines()[1:]]
    assert [(u, i) for u, i, _ in rows] == [
        ("a", "1"), ("a", "3"), ("a", "2"), ("b", "1"), ("b", "3"), ("b", "2"), ("b", "4"),
        ("c", "5"), ("c", "6"), ("c", "7"), ("d", "2"), ("d", "1")]
    again = read_amazon(reversed_log)
    assert sorted(zip(again.user, again.item, again.timestamp, strict=True)) == sorted(
        zip(*(getattr(read_amazon(log), f) for f in ("user", "item", "timestamp")),
            strict=True))
    missing = script("tie_order.py", "--path", str(tmp_path / "none.tsv"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_per_user_leave_one_out_groups_full_ranking_by_history_length(tmp_path):
    argv = ["--dataset", "synthetic", "--protocol", "loo", "--quick", "--max-users", "80",
            "--models", "pop,mdgr", "--seeds", "0", "--epochs", "1",
            "--data-dir", str(tmp_path / "absent"), "--out", str(tmp_path / "r"),
            "--work-dir", str(tmp_path / "w"), "--no-progress"]
    assert runner.main(argv) == 0
    assert ok(script("per_user.py", *argv, "--cross", "span:length"))
    base = tmp_path / "r" / "quick" / "synthetic-loo"
    table = base.with_name(base.name + "-per-user.md").read_text()
    assert table.startswith("# Per-user test metrics by group")
    assert "by history length" in table and "| mdgr HR@10 / NDCG@10 |" in table
    result = json.loads(base.with_name(base.name + "-per-user.json").read_text())["0"]
    summary = json.loads(base.with_name(base.name + ".json").read_text())
    for entry in summary["models"]:  # the tertiles together are the whole test split
        groups_ = result["history length"].values()
        users = sum(g["windows"] for g in groups_)
        hr = sum(g[entry["model"]]["hr@10"] * g["windows"] for g in groups_) / users
        assert hr == pytest.approx(entry["per_seed"]["0"]["HR@10"], abs=1e-9)
    # the cross's cells split each span tertile by history length
    cross = result["span (days) x history length"]
    assert "by span (days) x history length" in table and set(cross) <= {
        f"{a} x {b}" for a in groups.TERTILES for b in groups.TERTILES}
    for label, span_group in result["span (days)"].items():
        cells = [c for name, c in cross.items() if name.startswith(f"{label} x ")]
        assert sum(c["windows"] for c in cells) == span_group["windows"]
        assert sum(c["mdgr"]["hr@10"] * c["windows"] for c in cells) == pytest.approx(
            span_group["mdgr"]["hr@10"] * span_group["windows"], abs=1e-9)
    for bad in ("span:span", "span", "span:colour"):
        refused = script("per_user.py", *argv, "--cross", bad)
        assert refused.returncode == 2 and "--cross" in refused.stderr
    missing = script("per_user.py", *[a if a != "pop,mdgr" else "pop,sasrec" for a in argv])
    assert missing.returncode == 2 and "no finished compare.py run" in missing.stderr
