"""Shared command-line options of mdgr_graph.data.cli."""

from __future__ import annotations

import argparse

from mdgr_graph.data.cli import (
    LOO_TRAIN_TARGET_HELP,
    add_loo_training_arguments,
    loo_training_problem,
)
from mdgr_graph.data.dataset import LOO_TRAIN_TARGETS


def test_every_loo_training_target_is_described_once():
    assert tuple(LOO_TRAIN_TARGET_HELP) == LOO_TRAIN_TARGETS
    parser = argparse.ArgumentParser()
    add_loo_training_arguments(parser)
    text = parser.format_help().replace("\n", " ")
    for name in LOO_TRAIN_TARGETS:
        assert f"{name}:" in text


def test_loo_training_problem_names_the_bad_option():
    parser = argparse.ArgumentParser()
    add_loo_training_arguments(parser)
    assert loo_training_problem(parser.parse_args([])) is None
    assert loo_training_problem(parser.parse_args(
        ["--loo-train-targets", "random", "--loo-train-positives", "4"])) is None
    for bad in (["--loo-train-positives", "0"], ["--loo-train-positives", "2"]):
        assert "--loo-train-positives" in loo_training_problem(parser.parse_args(bad))
