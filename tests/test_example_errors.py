"""Every user-facing failure of ``examples/retrieve.py`` and ``examples/explain_user.py``
is one ``error:`` line and exit status 2, never a traceback (issue 31): bad options,
a missing or hand-edited run folder, weights of another model, an unknown user, and
outputs that cannot be written (refused before the search or the drawing)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mdgr_graph.cli import explain as explain_cli
from mdgr_graph.cli import retrieve as retrieve_cli
from mdgr_graph.cli import train as train_cli

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = ["--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny finished MDGR run (leave-one-out, 60 users, one epoch)."""
    out = tmp_path_factory.mktemp("errors") / "run"
    argv = ["--protocol", "loo", "--synthetic-users", "60", "--synthetic-items", "200",
            "--synthetic-topics", "3", "--max-len", "10", "--negatives", "10", "--dim", "8",
            "--k", "3", "--m", "1", "--epochs", "1", "--no-cache", "--out", str(out), *QUIET]
    assert train_cli.main(argv) == 0
    return out


def one_error(main, argv: list[str], capsys) -> str:
    """Run ``main(argv)``: exit status 2 and exactly one ``error:`` line; returns it."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2, code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def edited_copy(run: Path, tmp_path: Path, edit) -> Path:
    """A copy of ``run`` changed by ``edit(folder)``."""
    copy = tmp_path / "edited"
    shutil.copytree(run, copy)
    edit(copy)
    return copy


def set_arg(name: str, value):
    def edit(folder: Path) -> None:
        saved = json.loads((folder / "args.json").read_text())
        saved[name] = value
        (folder / "args.json").write_text(json.dumps(saved))
    return edit


def write_args(text: str):
    return lambda folder: (folder / "args.json").write_text(text)


def foreign_weights(folder: Path) -> None:
    torch.save({"model": {"weight": torch.zeros(2)}}, folder / "best.pt")


# ---------------------------------------------------------------------- hand-edited runs
RUN_DAMAGE = [
    (write_args("5"), "do not rebuild a trained model (TypeError"),
    (write_args("{not json"), "args.json: not valid JSON"),
    (set_arg("dim", "abc"), "do not rebuild a trained model (TypeError"),
    (set_arg("k", None), "do not rebuild a trained model (TypeError"),
    (foreign_weights, "do not rebuild a trained model (RuntimeError"),
]
DAMAGE_IDS = ["args-number", "args-not-json", "dim-string", "k-null", "foreign-weights"]


@pytest.mark.parametrize(("edit", "message"), RUN_DAMAGE, ids=DAMAGE_IDS)
def test_retrieve_hand_edited_run(edit, message, run, tmp_path, capsys):
    folder = edited_copy(run, tmp_path, edit)
    line = one_error(retrieve_cli.main, [str(folder), *QUIET], capsys)
    assert message in line and str(folder) in line


@pytest.mark.parametrize(("edit", "message"), RUN_DAMAGE, ids=DAMAGE_IDS)
def test_explain_hand_edited_run(edit, message, run, tmp_path, capsys):
    folder = edited_copy(run, tmp_path, edit)
    out = tmp_path / "pictures"
    line = one_error(explain_cli.main, ["--run", str(folder), "--out-dir", str(out)], capsys)
    assert message in line and str(folder) in line
    assert not out.exists()


# ---------------------------------------------------------------------- retrieve
def test_retrieve_bad_options(run, capsys):
    cases = [
        (["--threads", "0"], "--threads must be >= 1"),
        (["--threads", "-2"], "--threads must be >= 1"),
        (["--device", "foo"], "--device 'foo' is not a device"),
        (["--device", "meta"], "--device must be cpu or cuda"),
        (["--n", "0"], "--n must be >= 1"),
        (["--n", "abc"], "invalid int value"),
        (["--out", "top.txt"], "--out must end in .json or .csv"),
        (["--split", "all"], "invalid choice"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for options, message in cases:
        assert message in one_error(retrieve_cli.main, [str(run), "--no-progress", *options],
                                    capsys), options


def test_retrieve_missing_run_and_checkpoint(run, tmp_path, capsys):
    line = one_error(retrieve_cli.main, [str(tmp_path / "nope"), *QUIET], capsys)
    assert "args.json not found" in line
    assert not (tmp_path / "nope").exists()  # nothing created for a missing run
    line = one_error(retrieve_cli.main, [str(run), "--checkpoint", "nope.pt", *QUIET], capsys)
    assert "nope.pt not found" in line


def test_retrieve_unwritable_outputs_are_refused_before_the_search(run, tmp_path, capsys,
                                                                    monkeypatch):
    def no_search(*args, **kwargs):
        raise AssertionError("searched before checking the outputs")

    monkeypatch.setattr(retrieve_cli.retrieval, "export_interests", no_search)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    (tmp_path / "folder.json").mkdir()
    cases = [
        (["--out", str(a_file / "top.json")], f"{a_file} is a file, not a folder"),
        (["--out", str(tmp_path / "folder.json")], "is a directory, not a file"),
        (["--export", str(a_file / "e.pt")], f"{a_file} is a file, not a folder"),
        (["--export", str(tmp_path / "folder.json")], "is a directory, not a file"),
    ]
    for options, message in cases:
        line = one_error(retrieve_cli.main, [str(run), *QUIET, *options], capsys)
        assert message in line and options[0] in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.json"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs POSIX permissions that bind the user (not root)")
def test_retrieve_read_only_folder(run, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = one_error(retrieve_cli.main, [str(run), *QUIET, "--out", str(locked / "t.json")],
                         capsys)
    finally:
        locked.chmod(0o700)
    assert "cannot be written" in line


# ---------------------------------------------------------------------- explain_user
def test_explain_bad_options(run, tmp_path, capsys):
    cases = [
        (["--dpi", "100000"], "--dpi must be in 1..600"),
        (["--dpi", "0"], "--dpi must be in 1..600"),
        (["--step", "0"], "--step must be >= 1"),
        (["--prefix", "a\0b"], "--prefix must be a file name prefix"),
        (["--prefix", "sub/name"], "--prefix must be a file name prefix"),
        (["--prefix", ""], "--prefix must be a file name prefix"),
        (["--x-axis", "time"], "invalid choice"),
        (["--window", "0"], "--window must be in 1..10"),
        (["--window", "11"], "--window must be in 1..10"),
        (["--user", "no-such-user"], "unknown user 'no-such-user'"),
    ]
    out = tmp_path / "pictures"
    for options, message in cases:
        line = one_error(explain_cli.main, ["--run", str(run), "--out-dir", str(out),
                                             *options], capsys)
        assert message in line, (options, line)
    assert not out.exists()


def test_explain_missing_run(tmp_path, capsys):
    line = one_error(explain_cli.main, ["--run", str(tmp_path / "nope")], capsys)
    assert "args.json not found" in line


def test_explain_unwritable_outputs_are_refused_before_drawing(run, tmp_path, capsys,
                                                               monkeypatch):
    def no_drawing(*args, **kwargs):
        raise AssertionError("drew before checking the outputs")

    monkeypatch.setattr(explain_cli, "trace_interests", no_drawing)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    taken = tmp_path / "taken"
    (taken / "me-weights.png").mkdir(parents=True)
    cases = [
        (["--out-dir", str(a_file)], f"{a_file} is a file, not a folder"),
        (["--out-dir", str(a_file / "sub")], f"{a_file} is a file, not a folder"),
        (["--out-dir", str(taken), "--prefix", "me"], "me-weights.png is a directory"),
    ]
    for options, message in cases:
        line = one_error(explain_cli.main, ["--run", str(run), *options], capsys)
        assert message in line, line
    assert sorted(p.name for p in taken.iterdir()) == ["me-weights.png"]


def test_explain_still_draws(run, tmp_path, capsys):
    out = tmp_path / "pictures"
    assert explain_cli.main(["--run", str(run), "--out-dir", str(out), "--prefix", "me",
                              "--dpi", "40"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "me-graphs.png", "me-interests.json", "me-weights.png"]
    assert "error" not in capsys.readouterr().err
