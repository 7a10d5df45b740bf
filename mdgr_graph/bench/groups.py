"""Where does a model win or lose? Per-window test metrics of finished runs, by group.

Every test window (paper protocol) is scored by each model and the windows are grouped by

- **genres**: distinct genres among the history's items (ml-1m-subset's ``movies.dat``),
  a proxy for how many distinct interests the history holds;
- **span**: days between the history's first and last interaction;
- **popularity**: mean training popularity (log count) of the history's items.

Each grouping splits the test windows into tertiles (:func:`tertile_tables`); with more
than one seed, :func:`pooled_tables` averages each tertile over all seeds' windows.
``benchmarks/per_user.py`` is the command line.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.loader import DataLoader

from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.metrics import window_metrics_per_row
from mdgr_graph.models.baselines import training_item_counts

#: Names of the three groups of a grouping, lowest values first.
TERTILES = ("low", "mid", "high")


@torch.no_grad()
def per_window(model, prepared: PreparedDataset) -> dict[str, np.ndarray]:
    """``{"auc": [W], "recall@50": [W]}``: the model's metrics of every test window."""
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
    """The value of every test window under each grouping, by grouping name."""
    a = prepared.arrays
    rows = a["window_split"] == 2
    hist, days = a["hist_items"][rows], a["hist_time"][rows]
    out = {"span (days)": days.max(1) - days.min(1)}
    out["popularity (mean log count)"] = np.log1p(training_item_counts(prepared))[hist].mean(1)
    if genres is not None:
        masks = np.bitwise_or.reduce(genres[hist], axis=1)
        out["distinct genres"] = np.array([bin(int(m)).count("1") for m in masks])
    return out


def tertile_tables(seed: int, scores: dict[str, dict[str, np.ndarray]],
                   groups: dict[str, np.ndarray]) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines of one seed's tables (one per grouping: each tertile's range,
    windows and every model's mean AUC / Recall@50) and the same numbers by grouping and
    tertile. ``scores``: :func:`per_window` of every model; ``groups``: :func:`groupings`."""
    models = list(scores)
    lines: list[str] = []
    result: dict[str, Any] = {}
    for feature, values in groups.items():
        edges = np.quantile(values, [1 / 3, 2 / 3])
        group = np.digitize(values, edges, right=True)
        lines += [f"\n### seed {seed}: test windows by {feature} (tertiles)\n",
                  "| group | range | windows | " + " | ".join(
                      f"{m} AUC / R@50" for m in models) + " |",
                  "|---|---|---|" + "---|" * len(models)]
        for g, label in enumerate(TERTILES):
            sel = group == g
            if not sel.any():
                continue
            cells = [f"{scores[m]['auc'][sel].mean():.4f} / "
                     f"{scores[m]['recall@50'][sel].mean():.4f}" for m in models]
            lines.append(f"| {label} | {values[sel].min():.3g}-{values[sel].max():.3g} | "
                         f"{int(sel.sum())} | " + " | ".join(cells) + " |")
            result.setdefault(feature, {})[label] = {
                "windows": int(sel.sum()),
                "range": [float(values[sel].min()), float(values[sel].max())],
                **{m: {k: float(v[sel].mean()) for k, v in scores[m].items()} for m in models},
            }
    return lines, result


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
        for label in TERTILES:
            entries = [result[s][feature][label] for s in seeds if label in result[s][feature]]
            n = sum(e["windows"] for e in entries)
            cells = []
            for m in models:
                auc = sum(e[m]["auc"] * e["windows"] for e in entries) / n
                rec = sum(e[m]["recall@50"] * e["windows"] for e in entries) / n
                cells.append(f"{auc:.4f} / {rec:.4f}")
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return lines
