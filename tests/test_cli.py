"""The command-line floor (mdgr_graph.cli): the one model -> options map, the console
scripts, and a library that imports without the ``viz`` extra."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mdgr_graph.cli import train as train_cli
from mdgr_graph.cli.model_options import (
    BENCHMARK_OPTIONS,
    MODEL_OPTIONS,
    benchmark_model_kwargs,
    model_options,
)
from mdgr_graph.models import CLOSED_FORM, MODELS, model_class

REPO = Path(__file__).resolve().parents[1]


def test_every_model_has_one_row_and_its_keywords_exist():
    assert set(MODEL_OPTIONS) == set(MODELS)
    defaults = train_cli.parse_args([])
    for name, row in MODEL_OPTIONS.items():
        assert all(hasattr(defaults, option) for option in row.values()), name
        cls = model_class(name)
        method = cls.from_prepared if name in CLOSED_FORM else cls.__init__
        params = inspect.signature(method).parameters
        own = set(row) - {"loss", "gbce_t"}  # build_model's own keywords (the loss)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            assert own <= set(params), (name, own - set(params))


def test_repeat_and_loss_are_passed_only_when_given(capsys):
    def options(*argv):
        return model_options(train_cli.parse_args(list(argv)))

    plain = options("--model", "mdgr")
    assert "repeat" not in plain and "loss" not in plain  # earlier runs keep their options
    assert "pool_values" not in plain
    assert options("--model", "mdgr", "--pool-values", "item")["pool_values"] == "item"
    assert options("--model", "mdgr", "--repeat", "gate")["repeat"] == "gate"
    assert options("--model", "sasrec", "--loss", "ce")["loss"] == "ce"
    assert options("--model", "surge", "--loss", "bce")["loss"] == "bce"
    gbce = options("--model", "gru4rec", "--loss", "gbce", "--gbce-t", "0.9")
    assert gbce["loss"] == "gbce" and gbce["gbce_t"] == 0.9
    assert "gbce_t" not in options("--model", "gru4rec", "--loss", "gbce")
    for argv, message in [(["--model", "sasrec", "--repeat", "gate"], "--repeat is for"),
                          (["--model", "ease", "--loss", "ce"], "--loss is for"),
                          (["--model", "maerec", "--loss", "ce"], "--loss is for"),
                          (["--model", "mdgr", "--loss", "ce", "--query", "candidate"],
                           "not with --query candidate"),
                          (["--model", "sasrec", "--gbce-t", "0.5"], "needs --loss gbce"),
                          (["--model", "sasrec", "--loss", "gbce", "--gbce-t", "2"],
                           "must lie in [0, 1]")]:
        with pytest.raises(SystemExit):
            train_cli.parse_args(argv)
        assert message in capsys.readouterr().err


def test_train_passes_every_option_of_the_model():
    def options(*argv):
        return model_options(train_cli.parse_args(list(argv)))

    assert options("--model", "pop") == {}
    assert options("--model", "itemknn", "--neighbours", "0") == {"neighbours": None,
                                                                  "shrink": 10.0}
    assert options("--model", "comirec-dr", "--k", "3") == {"dim": 32, "interests": 3}
    assert options("--model", "gru4rec", "--blocks", "3") == {
        "dim": 32, "dropout": 0.1, "num_layers": 3, "history_targets": False}
    assert options("--model", "din", "--train-all-candidates") == {
        "dim": 32, "dropout": 0.1, "train_positives": None, "train_negatives": None}
    mdgr = options("--model", "mip", "--m", "4")
    assert mdgr["m"] == 4 and mdgr["query"] == "last" and mdgr["train_negatives"] == 4
    assert len(mdgr) == 18


def bench_args(**given) -> argparse.Namespace:
    """Benchmark options: nothing given but the width."""
    defaults = {option: None for option in BENCHMARK_OPTIONS.values()}
    return argparse.Namespace(**{**defaults, "dim": 32, "history_targets": False,
                                 "train_all_candidates": False, **given})


def test_benchmark_passes_only_the_options_given():
    assert benchmark_model_kwargs("mdgr", bench_args()) == {"dim": 32}
    assert benchmark_model_kwargs("sasrec", bench_args()) == {"dim": 32,
                                                              "history_targets": False}
    assert benchmark_model_kwargs("bert4rec", bench_args()) == {"dim": 32}
    # --mdgr-k is MDGR's number of interests; ComiRec keeps its own
    assert benchmark_model_kwargs("comirec-sa", bench_args(mdgr_k=3)) == {"dim": 32}
    assert benchmark_model_kwargs("static-graph", bench_args(mdgr_k=3, mdgr_m=2)) == {
        "dim": 32, "k": 3, "m": 2}
    assert benchmark_model_kwargs("mip", bench_args(mdgr_m=2, mdgr_cluster="ward")) == {
        "dim": 32}
    assert benchmark_model_kwargs("mdgr-dgc", bench_args(mdgr_m=2)) == {"dim": 32, "m": 2}
    with pytest.raises(ValueError, match="closed form"):
        benchmark_model_kwargs("ease", bench_args())


def test_benchmark_query_and_draws_only_where_they_change_the_model():
    candidate = bench_args(query="candidate", train_positives=10, train_negatives=10)
    assert benchmark_model_kwargs("mdgr", candidate) == {
        "dim": 32, "query": "candidate", "train_positives": 10, "train_negatives": 10}
    assert benchmark_model_kwargs("surge", bench_args(query="last", train_positives=2,
                                                      train_negatives=2)) == {
        "dim": 32, "query": "last"}  # the draw only matters for candidate scoring
    assert benchmark_model_kwargs("mip", candidate) == {"dim": 32}
    assert benchmark_model_kwargs("din", bench_args()) == {"dim": 32}
    assert benchmark_model_kwargs("din", bench_args(train_all_candidates=True)) == {
        "dim": 32, "train_positives": None, "train_negatives": None}


def test_console_scripts_point_at_mains():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"mdgr-train", "mdgr-data", "mdgr-retrieve", "mdgr-explain"}
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target


def test_library_imports_without_the_viz_extra():
    code = (
        "import sys; sys.modules['matplotlib'] = None; sys.modules['networkx'] = None\n"
        "import mdgr_graph, mdgr_graph.train, mdgr_graph.retrieval, mdgr_graph.diagnostics\n"
        "import mdgr_graph.cli.train, mdgr_graph.cli.retrieve, mdgr_graph.data.__main__\n"
        "try:\n"
        "    import mdgr_graph.cli.explain\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "pip install 'mdgr_graph[viz]'" in done.stdout


@pytest.mark.parametrize(("script", "option"), [("train_mdgr.py", "--train-stride"),
                                                ("retrieve.py", "--rerank"),
                                                ("explain_user.py", "--titles")])
def test_example_scripts_are_the_command_lines(script, option):
    done = subprocess.run([sys.executable, str(REPO / "examples" / script), "--help"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert option in done.stdout


def test_scripts_are_leaves():
    """Examples and benchmarks call the package: none patches ``sys.path``, none imports
    another script, and no test imports a script."""
    scripts = {p.stem for folder in ("examples", "benchmarks")
               for p in (REPO / folder).glob("*.py")}
    imports_a_script = re.compile(
        rf"^\s*(?:import|from)\s+({'|'.join(sorted(scripts))})\b", flags=re.M)
    patches = re.compile(r"sys\.path\.(?:insert|append|extend)")
    for folder in ("examples", "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text()
            assert not patches.search(text), path
            assert not imports_a_script.search(text), (path, imports_a_script.search(text))
