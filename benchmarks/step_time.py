"""Training time of compare.py runs, estimated from a few timed steps.

For runs too long to make on this machine: every model of ``--models`` is built as
``compare.py`` builds it with the other options given (the same data, configuration,
learning rate and loo training targets, on the first of ``--seeds``), then trains for
``--warmup`` + ``--steps`` batches of its first epoch through the project's training loop
(``mdgr_graph.train._train_epoch``). The estimate of a run is

    epoch seconds = median step seconds x batches per epoch,
    run seconds   = epoch seconds x --epochs,

which leaves out evaluation. Where a finished compare.py run of the model exists, its
measured training seconds per epoch stand beside the estimate, as a check of it.
Closed-form models are skipped (they have no steps). Writes
``<compare.py summary name>-step-time.json`` and ``.md`` (atomically), with the
environment. Example::

    .venv/bin/python benchmarks/step_time.py --dataset ml-1m-subset --protocol loo \\
        --loo-train-targets all --epochs 3 --seeds 0 --models maerec,mdgr --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mdgr_graph.bench import runner
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.io import atomic_write_text
from mdgr_graph.models import CLOSED_FORM
from mdgr_graph.train import _train_epoch, deterministic_algorithms

REPO = Path(__file__).resolve().parents[1]


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    own, rest = runner.split_wrapper_args(p, argv, (), "", REPO)
    if own.steps < 1 or own.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    return own, rest


def time_model(name: str, prepared, args: argparse.Namespace, seed: int, steps: int,
               warmup: int, datasets: dict[tuple[str, int], SequenceDataset]
               ) -> dict[str, Any]:
    """Build ``name`` as compare.py does and time ``warmup + steps`` training steps.

    Under ``--lr-grid`` the model runs at its selected learning rate once its grid has
    finished, else at ``--lr`` (the step time does not depend on it). ``datasets`` keeps
    the training split of each choice of loo training targets, built once."""
    args = runner.resolved_args(name, args) or args
    config = runner.run_config(name, args)
    started = time.perf_counter()
    model, train = runner.neural_setup(name, prepared, seed, config, progress=False)
    build_seconds = time.perf_counter() - started
    targets = (train.loo_train_targets, train.loo_train_positives)
    if targets not in datasets:
        datasets[targets] = SequenceDataset(prepared, "train", loo_train_targets=targets[0],
                                            loo_train_positives=targets[1])
    dataset = datasets[targets]
    batches_per_epoch = math.ceil(len(dataset) / train.batch_size)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=train.lr, weight_decay=train.weight_decay)
    seconds: list[float] = []
    with deterministic_algorithms(train.deterministic):
        _train_epoch(model, optimizer, dataset, train, 0, max_batches=warmup + steps,
                     step_seconds=seconds)
    timed = seconds[warmup:]
    if not timed:
        raise ValueError(f"{name}: the epoch has {batches_per_epoch} batches, fewer than "
                         f"--warmup {warmup} + 1")
    step = statistics.median(timed)
    entry: dict[str, Any] = {
        "model": name, "seed": seed, "config": config, "build_seconds": build_seconds,
        "step_seconds": timed, "median_step_seconds": step,
        "batches_per_epoch": batches_per_epoch, "examples_per_epoch": len(dataset),
        "estimated_epoch_seconds": step * batches_per_epoch,
        "estimated_run_seconds": step * batches_per_epoch * config["epochs"],
    }
    finished = runner.finished_run(name, seed, args)
    if finished is not None and finished.get("epochs"):
        entry["measured_epoch_seconds"] = finished["train_seconds"] / finished["epochs"]
    return entry


def markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    lines = [
        f"# Training time estimated from timed steps: {payload['name']}", "",
        f"Median of {payload['steps']} timed steps (after {payload['warmup']} untimed) of "
        f"each model's first epoch, built and trained as compare.py would (seed "
        f"{payload['seed']}); the estimate multiplies it by the batches per epoch and the "
        "epochs, without evaluation. Measured: training seconds per epoch of a finished "
        f"compare.py run, where one exists. {env['platform']}, {env['cpu_count']} CPUs, "
        f"{env['threads']} thread(s), torch {env['torch']}, load average "
        f"{', '.join(f'{v:.2f}' for v in env['load_average'] or [])} at the start. "
        "Generated by `benchmarks/step_time.py`.", "",
        "| model | median step s | batches per epoch | estimated epoch s | measured epoch s "
        "| estimated run s (h) |",
        "|---|---|---|---|---|---|",
    ]
    for e in payload["models"]:
        measured = e.get("measured_epoch_seconds")
        lines.append(
            f"| {e['model']} | {e['median_step_seconds']:.3f} | {e['batches_per_epoch']:,} | "
            f"{e['estimated_epoch_seconds']:,.0f} | "
            f"{'-' if measured is None else f'{measured:,.0f}'} | "
            f"{e['estimated_run_seconds']:,.0f} ({e['estimated_run_seconds'] / 3600:.1f}) |")
    for name, why in payload["skipped"].items():
        lines.append(f"\n{name}: skipped ({why}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    own, rest = split_args(sys.argv[1:] if argv is None else argv)
    args = runner.parse_args(rest, REPO)
    torch.set_num_threads(args.threads)
    seed = args.seeds[0]
    environment = runner.environment(args)
    prepared = runner.load_data(args, seed)
    models, skipped, datasets = [], {}, {}
    for name in tqdm(args.models, desc="models", disable=args.no_progress):
        if name in CLOSED_FORM:
            skipped[name] = "closed form, no training steps"
            continue
        models.append(time_model(name, prepared, args, seed, own.steps, own.warmup, datasets))
        tqdm.write(f"{name}: {models[-1]['median_step_seconds']:.3f} s per step")
    base = runner.summary_path(args)
    payload = {"name": base.name, "seed": seed, "steps": own.steps, "warmup": own.warmup,
               "environment": environment, "models": models, "skipped": skipped}
    out = base.with_name(base.name + "-step-time")
    text = markdown(payload)
    atomic_write_text(out.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
