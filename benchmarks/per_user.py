"""Where does MDGR win or lose? Per-window test metrics of finished compare.py runs, by group.

Loads the models of finished ``benchmarks/compare.py`` runs (neural: their best
checkpoint; closed-form: refitted with the hyper-parameters selected on validation),
scores every test window (paper protocol) and groups the windows by

- **genres**: distinct genres among the history's items (ml-1m-subset's ``movies.dat``),
  a proxy for how many distinct interests the history holds;
- **span**: days between the history's first and last interaction;
- **popularity**: mean training popularity (log count) of the history's items.

Each grouping splits the test windows into tertiles; the table (written beside the
compare.py summary as `<summary>-per-user.md` and `.json`) gives the mean test AUC and
Recall@50 of every model per tertile. Pass the same data and training options as the
compare.py invocation whose runs you want to analyse (they pick the run files)::

    .venv/bin/python benchmarks/per_user.py --train-stride 25 --lr 2e-3 --epochs 40 \\
        --patience 5 --models mdgr,sasrec,itemknn,ease --seeds 0
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import compare  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch_geometric.loader import DataLoader  # noqa: E402

from mdgr_graph.data.dataset import SequenceDataset  # noqa: E402
from mdgr_graph.data.prepare import PreparedDataset  # noqa: E402
from mdgr_graph.metrics import window_metrics_per_row  # noqa: E402
from mdgr_graph.models import CLOSED_FORM, build_model  # noqa: E402
from mdgr_graph.models.baselines import training_item_counts  # noqa: E402
from mdgr_graph.train import atomic_write_text  # noqa: E402


def load_model(name: str, seed: int, prepared: PreparedDataset, args) -> torch.nn.Module:
    run = compare.finished_run(name, seed, args)
    resolved = compare.resolved_args(name, args) or args
    tag = compare.run_tag(name, seed, resolved)
    if run is None:
        raise FileNotFoundError(f"no finished compare.py run {tag} in {compare.runs_dir(args)}")
    if name in CLOSED_FORM:
        return build_model(name, prepared, **run["selected"])
    model = build_model(name, prepared, **run["config"]["model_kwargs"])
    ckpt = torch.load(compare.checkpoint_dir(tag, resolved) / "best.pt", weights_only=False)
    model.load_state_dict(ckpt["model"])
    return model


@torch.no_grad()
def per_window(model, prepared: PreparedDataset) -> dict[str, np.ndarray]:
    model.eval()
    out: dict[str, list] = {"auc": [], "recall@50": []}
    for batch in DataLoader(SequenceDataset(prepared, "test"), batch_size=256):
        m = window_metrics_per_row(model.score_candidates(batch).float(), batch.labels)
        out["auc"].append(m["auc/sampled"].numpy())
        out["recall@50"].append(m["recall@50/sampled"].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def movie_genres(path: Path, prepared: PreparedDataset) -> np.ndarray | None:
    """``[num_items + 1]`` genre bitmask per internal item id, or None without the file."""
    if not path.is_file():
        return None
    bit: dict[str, int] = {}
    by_raw: dict[str, int] = {}
    with gzip.open(path, "rt", encoding="latin-1") as fh:
        for line in fh:
            movie, _, genres = line.rstrip("\n").split("::")
            mask = 0
            for g in genres.split("|"):
                mask |= 1 << bit.setdefault(g, len(bit))
            by_raw[movie] = mask
    ids = prepared.arrays["item_ids"]
    return np.array([by_raw.get(str(raw), 0) for raw in ids], dtype=np.int64)


def groupings(prepared: PreparedDataset, genres: np.ndarray | None) -> dict[str, np.ndarray]:
    a = prepared.arrays
    rows = a["window_split"] == 2
    hist, days = a["hist_items"][rows], a["hist_time"][rows]
    out = {"span (days)": days.max(1) - days.min(1)}
    out["popularity (mean log count)"] = np.log1p(training_item_counts(prepared))[hist].mean(1)
    if genres is not None:
        masks = np.bitwise_or.reduce(genres[hist], axis=1)
        out["distinct genres"] = np.array([bin(int(m)).count("1") for m in masks])
    return out


def pooled_tables(result: dict[str, Any], models: list[str]) -> list[str]:
    """Markdown tables of every grouping pooled over seeds: each tertile's metrics averaged
    over all seeds' windows (weighted by the windows of each seed's tertile)."""
    seeds = sorted(result)
    if len(seeds) < 2:
        return []
    lines = []
    for feature in result[seeds[0]]:
        lines += [f"\n### all seeds ({', '.join(seeds)}) pooled: test windows by {feature} "
                  "(each seed's tertiles)\n",
                  "| group | windows | " + " | ".join(f"{m} AUC / R@50" for m in models) + " |",
                  "|---|---|" + "---|" * len(models)]
        for label in ("low", "mid", "high"):
            entries = [result[s][feature][label] for s in seeds if label in result[s][feature]]
            n = sum(e["windows"] for e in entries)
            cells = []
            for m in models:
                auc = sum(e[m]["auc"] * e["windows"] for e in entries) / n
                rec = sum(e[m]["recall@50"] * e["windows"] for e in entries) / n
                cells.append(f"{auc:.4f} / {rec:.4f}")
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = compare.parse_args(argv)
    if args.protocol != "paper":
        print("error: per_user.py analyses the paper protocol's test windows", file=sys.stderr)
        return 2
    lines, result = [], {}
    for seed in args.seeds:
        prepared = compare.load_data(args, seed)
        scores = {name: per_window(load_model(name, seed, prepared, args), prepared)
                  for name in args.models}
        genres = movie_genres(args.data_dir / "ml-1m-subset" / "movies.dat.gz", prepared)
        for feature, values in groupings(prepared, genres).items():
            edges = np.quantile(values, [1 / 3, 2 / 3])
            group = np.digitize(values, edges, right=True)
            lines += [f"\n### seed {seed}: test windows by {feature} (tertiles)\n",
                      "| group | range | windows | " + " | ".join(
                          f"{m} AUC / R@50" for m in args.models) + " |",
                      "|---|---|---|" + "---|" * len(args.models)]
            for g, label in enumerate(["low", "mid", "high"]):
                sel = group == g
                if not sel.any():
                    continue
                cells = [f"{scores[m]['auc'][sel].mean():.4f} / "
                         f"{scores[m]['recall@50'][sel].mean():.4f}" for m in args.models]
                lines.append(f"| {label} | {values[sel].min():.3g}-{values[sel].max():.3g} | "
                             f"{int(sel.sum())} | " + " | ".join(cells) + " |")
                result.setdefault(str(seed), {}).setdefault(feature, {})[label] = {
                    "windows": int(sel.sum()),
                    "range": [float(values[sel].min()), float(values[sel].max())],
                    **{m: {k: float(v[sel].mean()) for k, v in scores[m].items()}
                       for m in args.models},
                }
    lines = pooled_tables(result, args.models) + lines
    text = "# Per-window test metrics by group\n" + "\n".join(lines) + "\n"
    base = compare.summary_path(args)
    atomic_write_text(base.with_name(base.name + "-per-user.md"), text)
    atomic_write_text(base.with_name(base.name + "-per-user.json"),
                      json.dumps(result, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
