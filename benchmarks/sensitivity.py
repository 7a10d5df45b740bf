"""Figures 3 and 4: MDGR's test metrics against the number of interests k and iterations m.

For every value of ``--ks`` (with m at its default) and of ``--ms`` (with k at its
default) it runs ``benchmarks/compare.py`` for ``--model`` with ``--mdgr-k`` / ``--mdgr-m``
and the other options given (finished runs are skipped, unfinished ones resume), then plots
the mean test metric over seeds with the range as error bars, one PNG per parameter,
beside the compare.py summaries (``<dataset>-<protocol>[-strideS]-sensitivity-k.png`` and
``-m.png``, with the numbers in ``-sensitivity.json``). The default k = 8 and m = 5 runs
are the plain compare.py runs of the model, shared with Table 2.

``--only-finished`` plots the runs that exist without training anything. Example::

    .venv/bin/python benchmarks/sensitivity.py --train-stride 25 --lr 2e-3 --epochs 40 \\
        --patience 5 --ks 1,2,4,8,10 --ms 1,3,5,9,15
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mdgr_graph.bench import runner  # noqa: E402
from mdgr_graph.io import atomic_write_bytes, atomic_write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

DEFAULTS = {"k": 8, "m": 5}


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--ks", default="1,2,4,8,10", help="values of k (comma-separated)")
    p.add_argument("--ms", default="1,3,5,9,15", help="values of m (comma-separated)")
    p.add_argument("--model", default="mdgr", help="an MDGR variant")
    p.add_argument("--only-finished", action="store_true",
                   help="plot the finished runs only; train nothing")
    return runner.split_wrapper_args(
        p, argv, ("--models", "--mdgr-k", "--mdgr-m"),
        "--models, --mdgr-k and --mdgr-m are set by sensitivity.py", REPO)


def sweep_argv(rest: list[str], model: str, param: str, value: int) -> list[str]:
    argv = [*rest, "--models", model]
    if value != DEFAULTS[param]:
        argv += [f"--mdgr-{param}", str(value)]
    return argv


def finished_metrics(argv: list[str], model: str) -> dict[str, list[float]]:
    """Test metrics of the finished runs of ``model`` under ``argv``, by column."""
    args = runner.parse_args(argv, REPO)
    out: dict[str, list[float]] = {"seeds": []}
    for seed in args.seeds:
        run = runner.finished_run(model, seed, args)
        if run is not None:
            out["seeds"].append(seed)
            for col, key in runner.REPORTED[args.protocol]:
                out.setdefault(col, []).append(run["test"][key])
    return out


def plot(results: dict[int, dict[str, list[float]]], param: str, title: str, path: Path
         ) -> None:
    cols = [c for c in next(iter(results.values()), {}) if c != "seeds"]
    fig, axes = plt.subplots(1, max(len(cols), 1), figsize=(4.2 * max(len(cols), 1), 3.6))
    axes = np.atleast_1d(axes)
    for ax, col in zip(axes, cols, strict=False):
        xs = [v for v in sorted(results) if results[v].get(col)]
        means = [float(np.mean(results[v][col])) for v in xs]
        lo = [m - min(results[v][col]) for m, v in zip(means, xs, strict=True)]
        hi = [max(results[v][col]) - m for m, v in zip(means, xs, strict=True)]
        ax.errorbar(xs, means, yerr=[lo, hi], marker="o", capsize=3)
        for x, m, v in zip(xs, means, xs, strict=True):
            ax.annotate(f"n={len(results[v][col])}", (x, m), textcoords="offset points",
                        xytext=(4, 6), fontsize=7)
        ax.set_xlabel(param)
        ax.set_ylabel(f"test {col}")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    own, rest = split_args(list(sys.argv[1:] if argv is None else argv))
    sweeps = {"k": [int(v) for v in own.ks.split(",") if v.strip()],
              "m": [int(v) for v in own.ms.split(",") if v.strip()]}
    summary: dict[str, dict[int, dict[str, list[float]]]] = {}
    for param, values in sweeps.items():
        for value in values:
            argv_v = sweep_argv(rest, own.model, param, value)
            if not own.only_finished:
                status = runner.main(argv_v, REPO)
                if status != 0:
                    return status
            summary.setdefault(param, {})[value] = finished_metrics(argv_v, own.model)
    base = runner.summary_path(runner.parse_args(rest, REPO))
    for param, results in summary.items():
        if not any(r["seeds"] for r in results.values()):
            continue
        title = (f"{own.model}: test metrics vs {param} (others at default), "
                 f"{base.name}; mean, bars = range over seeds")
        plot(results, param, title, base.with_name(f"{base.name}-sensitivity-{param}.png"))
    atomic_write_text(base.with_name(f"{base.name}-sensitivity.json"),
                      json.dumps({"model": own.model, "results": summary}, indent=2) + "\n")
    for param, results in summary.items():
        for value, r in results.items():
            print(param, value, {c: round(float(np.mean(v)), 4) for c, v in r.items()
                                 if c != "seeds" and v}, "seeds", r["seeds"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
