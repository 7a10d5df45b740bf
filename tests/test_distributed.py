"""Data-parallel training: helpers in one process, and a real 2-process torchrun launch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.loader import DataLoader

from mdgr_graph import distributed
from mdgr_graph.cli import train as train_cli
from mdgr_graph.cli.model_options import model_options
from mdgr_graph.data.cli import cache_dir_from_args, options_from_args
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.data.prepare import prepare_dataset
from mdgr_graph.metrics import MetricAccumulator
from mdgr_graph.models import build_model
from mdgr_graph.train import evaluate

REPO = Path(__file__).resolve().parents[1]


def test_single_process_helpers(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched_by_torchrun()
    assert distributed.init_from_env("cpu") is False
    assert not distributed.is_distributed()
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.is_main_process()
    assert distributed.local_device("cuda") == "cuda"
    distributed.barrier()  # no-op without a group
    with distributed.main_process_first():
        pass
    acc = MetricAccumulator()
    acc.update("x", torch.tensor([1.0, 3.0]))
    assert distributed.all_merge_metrics(acc).compute() == {"x": 2.0}


def test_init_from_env_names_missing_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.launched_by_torchrun()
    with pytest.raises(RuntimeError, match="RANK is not set"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device("cuda") == "cuda:1"
    assert distributed.local_device("cpu") == "cpu"


def test_loss_module_is_the_models_loss(paper_data):
    torch.manual_seed(0)
    model = build_model("mdgr", paper_data, dim=8, k=2, m=1)
    model.eval()
    batch = next(iter(DataLoader(SequenceDataset(paper_data, "train"), batch_size=8)))
    wrapped = distributed.LossModule(model)
    assert torch.equal(wrapped(batch), model.loss(batch))
    assert {id(p) for p in wrapped.parameters()} == {id(p) for p in model.parameters()}


# ---------------------------------------------------------------------- torchrun, 2 ranks
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(argv: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(REPO / "examples" / "train_mdgr.py"), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _single_process_test_metrics(argv: list[str], checkpoint: Path) -> dict[str, float]:
    """Rebuild the run's data and model in this process and evaluate ``checkpoint``."""
    args = train_cli.parse_args(argv)
    prepared = prepare_dataset(options_from_args(args), cache_dir=cache_dir_from_args(args))
    model = build_model(args.model, prepared, **model_options(args))
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    return evaluate(model, prepared, "test")


@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_two_process_training_matches_single_process_evaluation(tmp_path, protocol):
    out = tmp_path / "run"
    argv = ["--protocol", protocol, "--synthetic-users", "120", "--synthetic-items", "150",
            "--synthetic-topics", "3", "--negatives", "20", "--epochs", "2", "--iterations", "1",
            "--k", "2", "--dim", "8", "--batch-size", "32", "--threads", "1",
            "--no-progress", "--no-cache", "--out", str(out),
            "--metrics-json", str(tmp_path / "test.json")]
    proc = _torchrun(argv)
    assert "distributed: 2 processes, 16 sequences each per batch" in proc.stdout
    assert proc.stdout.count("epoch   0") == 1  # only rank 0 logs
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1]

    reported = json.loads((tmp_path / "test.json").read_text())["metrics"]
    single = _single_process_test_metrics(argv, out / "best.pt")
    assert reported.keys() == single.keys()
    for key, value in single.items():
        assert reported[key] == pytest.approx(value, abs=1e-9), key

    if protocol == "paper":  # resume under torchrun continues the same run
        _torchrun([*argv[: argv.index("--epochs")], "--epochs", "3",
                   *argv[argv.index("--epochs") + 2 :], "--resume"])
        resumed = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert [row["epoch"] for row in resumed] == [0, 1, 2]
        assert resumed[:2] == [{**row, "epoch_seconds": resumed[i]["epoch_seconds"],
                                "train_seconds": resumed[i]["train_seconds"]}
                               for i, row in enumerate(log)]
