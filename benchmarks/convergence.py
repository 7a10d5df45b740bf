"""Figure 5: validation metric per epoch of each model, from real compare.py runs.

Runs ``benchmarks/compare.py`` with the same options first (finished runs are skipped,
unfinished ones resume from their checkpoints), then reads the validation curve every run
recorded (AUC under the paper protocol, NDCG@10 under leave-one-out) and plots, per model,
the mean over seeds with the range as a band. Closed-form models have no epochs and are
drawn as horizontal lines at their validation score. Writes ``<summary>-convergence.png``
and ``.json`` beside the compare.py summary.

Default models (``--models`` replaces them; ``--help`` shows compare.py's own default):
those of the paper's Figure 5, MDGR, MIP, SURGE, ComiRec-SA and ComiRec-DR, plus the
static-graph control, SASRec and EASE for reference::

    .venv/bin/python benchmarks/convergence.py --train-stride 25 --epochs 40 --patience 5 \\
        --lr-grid 2e-3,5e-3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mdgr_graph.bench import runner  # noqa: E402
from mdgr_graph.io import atomic_write_bytes, atomic_write_text  # noqa: E402
from mdgr_graph.models import CLOSED_FORM  # noqa: E402
from mdgr_graph.train import SELECTION_METRIC  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

DEFAULT = "mdgr,mip,surge,comirec-sa,comirec-dr,static-graph,sasrec,ease"
CLOSED_FORM_STYLE = {
    "pop": {"color": "grey", "ls": ":"},
    "spop": {"color": "grey", "ls": "-."},
    "itemknn": {"color": "black", "ls": "-."},
    "ease": {"color": "black", "ls": "--"},
}


def curves(args) -> dict[str, list[list[float]]]:
    """Validation curve of every finished run of ``args.models``, by model."""
    metric = SELECTION_METRIC[args.protocol]
    out: dict[str, list[list[float]]] = {}
    for name in args.models:
        for seed in args.seeds:
            run = runner.finished_run(name, seed, args)
            if run is None:
                continue
            curve = [run["valid"][metric]] if name in CLOSED_FORM else run["valid_curve"]
            out.setdefault(name, []).append(curve)
    return out


def plot(data: dict[str, list[list[float]]], args, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    longest = max((len(c) for runs in data.values() for c in runs), default=1)
    for name, runs in data.items():
        if name in CLOSED_FORM:
            style = CLOSED_FORM_STYLE.get(name, {"color": "black", "ls": "--"})
            ax.axhline(float(np.mean([r[0] for r in runs])), lw=1.2,
                       label=f"{name} ({len(runs)} seeds)", **style)
            continue
        n = max(len(c) for c in runs)
        padded = np.full((len(runs), n), np.nan)
        for i, c in enumerate(runs):
            padded[i, : len(c)] = c
        epochs = np.arange(1, n + 1)
        mean = np.nanmean(padded, axis=0)
        line, = ax.plot(epochs, mean, lw=1.6, label=f"{name} ({len(runs)} seeds)")
        ax.fill_between(epochs, np.nanmin(padded, 0), np.nanmax(padded, 0), alpha=0.15,
                        color=line.get_color())
    ax.set_xlim(1, longest)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {SELECTION_METRIC[args.protocol]}")
    stride = f", train stride {args.train_stride}" if args.train_stride else ""
    ax.set_title(f"{args.dataset}, {args.protocol} protocol{stride}: mean over seeds, "
                 "band = range", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--models" or a.startswith("--models=") for a in argv):
        argv += ["--models", DEFAULT]
    status = runner.main(argv, REPO)
    if status != 0:
        return status
    args = runner.parse_args(argv, REPO)
    data = curves(args)
    base = runner.summary_path(args)
    png = base.with_name(base.name + "-convergence.png")
    plot(data, args, png)
    atomic_write_text(base.with_name(base.name + "-convergence.json"),
                      json.dumps({"metric": SELECTION_METRIC[args.protocol], "curves": data},
                                 indent=2) + "\n")
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
