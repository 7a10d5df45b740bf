"""Out-of-range options of the example scripts and ``python -m mdgr_graph.data`` are refused
before any work with one ``error:`` line and exit status 2 (issue 31)."""


import pytest

from mdgr_graph.cli import train as train_cli
from mdgr_graph.data import __main__ as data_main

TINY = ["--synthetic-users", "60", "--synthetic-items", "200", "--synthetic-topics", "3",
        "--m", "1", "--k", "2", "--dim", "8", "--no-progress", "--no-cache"]

BAD_OPTIONS = [
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--patience", "0"], "--patience must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--k", "0"], "--k must be >= 1"),
    (["--m", "-1"], "--m must be >= 0"),
    (["--dim", "0"], "--dim must be >= 1"),
    (["--delta", "0"], "--delta must be >= 1"),
    (["--conv-heads", "0"], "--conv-heads must be >= 1"),
    (["--gamma", "1.5"], "--gamma must be in (0, 1]"),
    (["--gamma", "0"], "--gamma must be in (0, 1]"),
    (["--gamma", "nan"], "--gamma must be in (0, 1]"),
    (["--lr", "nan"], "--lr must be > 0 and finite"),
    (["--lr", "0"], "--lr must be > 0 and finite"),
    (["--lr", "inf"], "--lr must be > 0 and finite"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
    (["--dropout", "1"], "--dropout must be in [0, 1)"),
    (["--mask-prob", "0"], "--mask-prob must be in (0, 1]"),
    (["--l2", "nan"], "--l2 must be > 0"),
    (["--shrink", "-1"], "--shrink must be >= 0"),
    (["--threads", "0"], "--threads must be >= 1"),
    (["--max-users", "0"], "--max-users must be >= 1"),
    (["--query", "candidate", "--train-positives", "0", "--train-negatives", "0"],
     "--train-positives + --train-negatives must be > 0"),
    (["--valid-frac", "0"], "--valid-frac must be > 0"),
    (["--valid-frac", "nan"], "--valid-frac must lie in [0, 1)"),
    (["--valid-frac", "0.6", "--test-frac", "0.5"], "--valid-frac + --test-frac must be < 1"),
    (["--negatives", "0"], "--negatives must be >= 1"),
    (["--window", "1"], "--window must be >= 2"),
    (["--history", "100"], "history < window"),
    (["--train-stride", "0"], "--train-stride must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--synthetic-users", "0"], "--synthetic-users must be >= 1"),
    (["--synthetic-topics", "500"], "must be >= --synthetic-topics"),
    (["--synthetic-repeat-prob", "1.5"], "--synthetic-repeat-prob must lie in [0, 1]"),
    (["--synthetic-repeat-prob", "-0.1"], "--synthetic-repeat-prob must lie in [0, 1]"),
    (["--synthetic-repeat-prob", "nan"], "--synthetic-repeat-prob must lie in [0, 1]"),
    (["--synthetic-repeat-window", "0"], "--synthetic-repeat-window must be >= 1"),
    (["--min-item-count", "0"], "--min-item-count must be >= 1"),
    (["--format", "movielens"], "needs a path"),
]


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS,
                         ids=[" ".join(o) for o, _ in BAD_OPTIONS])
def test_train_refuses_out_of_range_options_before_any_work(options, message, tmp_path,
                                                           capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        train_cli.main([*TINY, "--out", str(out), *options])
    assert exit_.value.code == 2
    assert message in error_line(capsys)
    assert not out.exists()  # refused before the run folder was made


@pytest.mark.parametrize(("options", "message"), [
    (["--valid-frac", "1.5"], "--valid-frac must lie in [0, 1)"),
    (["--seed", "-3"], "--seed must be >= 0"),
    (["--negatives", "0"], "--negatives must be >= 1"),
    (["--synthetic-repeat-prob", "2"], "--synthetic-repeat-prob must lie in [0, 1]"),
    (["--synthetic-repeat-window", "0"], "--synthetic-repeat-window must be >= 1"),
])
def test_data_cli_refuses_out_of_range_options(options, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        data_main.main(["--no-cache", *options])
    assert exit_.value.code == 2
    assert message in error_line(capsys)


def test_unwritable_outputs_are_refused_before_training(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["--metrics-json", str(tmp_path)], "is a directory, not a file"),
        (["--metrics-json", str(a_file / "m.json")], "is a file, not a folder"),
        (["--out", str(a_file / "run")], "is a file, not a folder"),
        (["--out", str(a_file)], "is a file, not a folder"),
    ]
    for options, message in cases:
        with pytest.raises(SystemExit) as exit_:
            train_cli.main([*TINY, "--epochs", "1", *options])
        assert exit_.value.code == 2
        assert message in error_line(capsys)


def test_options_the_model_refuses_give_one_error_line(capsys):
    # MDGR's attention needs an even width: refused when the model is built, before training
    assert train_cli.main([*TINY, "--dim", "7", "--epochs", "1"]) == 2
    assert "error: --model mdgr:" in error_line(capsys)
