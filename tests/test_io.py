"""mdgr_graph.io: atomic writes on the ground floor of the package."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mdgr_graph import io as mdgr_io


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_io_imports_nothing_from_the_package():
    tree = ast.parse(Path(mdgr_io.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
            assert node.level == 0, "relative import in mdgr_graph/io.py"
    assert not {name for name in imported if name.split(".")[0] == "mdgr_graph"}
    # torch only inside atomic_torch_save: the module itself needs the standard library
    top = {alias.name for node in tree.body if isinstance(node, ast.Import)
           for alias in node.names}
    top |= {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert top <= {"__future__", "os", "tempfile", "collections.abc", "pathlib", "typing"}


def test_write_text_replaces_whole_files_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # the folder is created
    mdgr_io.atomic_write_text(target, "first")
    mdgr_io.atomic_write_text(str(target), "sécond")  # str paths too; UTF-8
    assert target.read_bytes() == "sécond".encode()
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    target = tmp_path / "out.bin"
    mdgr_io.atomic_write_bytes(target, lambda fh: fh.write(b"old"))

    def fail(fh):
        fh.write(b"partial")
        raise error("interrupted")

    with pytest.raises(error, match="interrupted"):
        mdgr_io.atomic_write_bytes(target, fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_torch_save_round_trips(tmp_path):
    obj = {"w": torch.arange(6.0).view(2, 3), "epoch": 3}
    mdgr_io.atomic_torch_save(obj, tmp_path / "ckpt.pt")
    back = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert back["epoch"] == 3 and torch.equal(back["w"], obj["w"])


def test_remove_stale_temporaries_only_of_the_given_names(tmp_path):
    stale = [tmp_path / ".last.pt.abc.tmp", tmp_path / ".log.jsonl.x1.tmp"]
    kept = [tmp_path / ".notes.txt.abc.tmp", tmp_path / "last.pt", tmp_path / ".last.pt"]
    for path in stale + kept:
        path.write_bytes(b"")
    removed = mdgr_io.remove_stale_temporaries(tmp_path, ("last.pt", "log.jsonl", "best.pt"))
    assert sorted(removed) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert mdgr_io.remove_stale_temporaries(tmp_path, ["last.pt"]) == []


def test_a_killed_write_leaves_a_temporary_that_is_removed(tmp_path, monkeypatch):
    """What a SIGKILL between write and rename leaves: ``.NAME.*.tmp`` beside the target."""
    target = tmp_path / "best.pt"
    monkeypatch.setattr(mdgr_io.os, "replace", lambda src, dst: None)  # "killed" here
    mdgr_io.atomic_write_bytes(target, lambda fh: fh.write(b"new"))
    monkeypatch.undo()
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(".best.pt.") and left.name.endswith(".tmp")
    assert mdgr_io.remove_stale_temporaries(tmp_path, ["best.pt"]) == [left]
    assert not any(tmp_path.iterdir())


def test_train_and_retrieval_use_these_writers():
    from mdgr_graph import retrieval, train

    for name in ("atomic_write_bytes", "atomic_write_text", "atomic_torch_save",
                 "remove_stale_temporaries"):
        assert getattr(train, name) is getattr(mdgr_io, name)  # still importable from train
    assert retrieval.atomic_torch_save is mdgr_io.atomic_torch_save


def test_cache_entries_are_written_atomically(tmp_path):
    from mdgr_graph.data.prepare import DataOptions, PreparedDataset, prepare_dataset

    opts = DataOptions(format="synthetic", protocol="loo", max_len=10, negatives=5,
                       synthetic={"num_users": 30, "num_items": 40, "num_topics": 4,
                                  "length": (10, 20)})
    prepared = prepare_dataset(opts, cache_dir=tmp_path)
    (entry,) = tmp_path.iterdir()
    assert entry.suffix == ".npz" and entry.stat().st_mode & 0o777 == 0o666 & ~_umask()
    again = PreparedDataset.load(entry)
    assert again.checksum() == prepared.checksum()
    for name, array in prepared.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], array)
