"""Shared command-line options of mdgr_graph.data.cli."""

from __future__ import annotations

import argparse

from mdgr_graph.data.cli import (
    LOO_TRAIN_TARGET_HELP,
    add_data_arguments,
    add_loo_training_arguments,
    data_option_problem,
    loo_training_problem,
    options_from_args,
)
from mdgr_graph.data.dataset import LOO_TRAIN_TARGETS
from mdgr_graph.data.prepare import cache_key


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


def test_synthetic_repeat_options_enter_the_data_options_only_when_used():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    plain = options_from_args(parser.parse_args([]))
    # the window alone changes nothing, so the cache key of every earlier log is kept
    assert options_from_args(parser.parse_args(["--synthetic-repeat-window", "3"])) == plain
    assert "repeat_prob" not in plain.synthetic
    used = options_from_args(parser.parse_args(
        ["--synthetic-repeat-prob", "0.5", "--synthetic-repeat-window", "3"]))
    assert used.synthetic == {**plain.synthetic, "repeat_prob": 0.5, "repeat_window": 3}
    assert cache_key(used) != cache_key(plain)
    assert data_option_problem(parser.parse_args(["--synthetic-repeat-prob", "1"])) is None
