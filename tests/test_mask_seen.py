"""Leave-one-out ranking with and without the user's earlier items (issue 30)."""

from __future__ import annotations

import json

import pytest
import torch
from torch_geometric.loader import DataLoader

from mdgr_graph.bench import runner
from mdgr_graph.cli import train as train_cli
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.metrics import full_ranking_metrics, rank_of_target
from mdgr_graph.models import build_model
from mdgr_graph.train import TrainConfig, evaluate, run_fingerprint

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unmasked_ranking_counts_every_item(loo_data):
    model = build_model("spop", loo_data)
    masked = evaluate(model, loo_data, "test")
    unmasked = evaluate(model, loo_data, "test", mask_seen=False)
    ranks = torch.cat([rank_of_target(model.score_all(b), b.target)
                       for b in DataLoader(SequenceDataset(loo_data, "test"), batch_size=7)])
    for key, value in full_ranking_metrics(ranks, ks=(10, 50)).items():
        assert unmasked[key] == pytest.approx(value)
    # the earlier items outrank a repeated target only when they are not excluded
    assert unmasked["mrr/full"] < masked["mrr/full"]
    assert unmasked["auc/sampled"] == masked["auc/sampled"]  # sampled negatives: unchanged


def test_default_fingerprint_unchanged_and_unmasked_recorded(loo_data):
    model = build_model("pop", loo_data)
    default = run_fingerprint(model, loo_data, TrainConfig())
    assert "mask_seen" not in default["train"]
    assert run_fingerprint(model, loo_data, TrainConfig(mask_seen=False))["train"][
        "mask_seen"] is False


def test_train_cli_option(tmp_path):
    tiny = ["--synthetic-users", "60", "--synthetic-items", "200", "--synthetic-topics", "3",
            "--protocol", "loo", "--model", "spop", "--no-cache", "--no-progress"]
    metrics = {}
    for extra in ([], ["--no-mask-seen"]):
        path = tmp_path / f"m{len(extra)}.json"
        assert train_cli.main([*tiny, *extra, "--metrics-json", str(path)]) == 0
        metrics[len(extra)] = json.loads(path.read_text())["mrr"]
    assert metrics[1] < metrics[0]


def test_compare_option_keeps_earlier_hashes():
    plain = runner.parse_args(["--protocol", "loo"])
    unmasked = runner.parse_args(["--protocol", "loo", "--no-mask-seen"])
    for name in ("spop", "sasrec"):
        assert "mask_seen" not in runner.run_config(name, plain)
        assert runner.run_config(name, unmasked)["mask_seen"] is False
    assert runner.summary_path(unmasked).name == "ml-1m-subset-loo-unmasked"
