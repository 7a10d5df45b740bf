"""Where does a model win or lose? Per-example test metrics of finished runs, by group.

Every test example is scored by each model (:func:`per_example`: AUC and Recall@50 of each
window under the paper protocol, HR@10 and NDCG@10 of each user's full ranking under
leave-one-out) and the examples are grouped by

- **genres**: distinct genres among the history's items (ml-1m-subset's ``movies.dat``),
  a proxy for how many distinct interests the history holds;
- **span**: days between the history's first and last interaction;
- **popularity**: mean training popularity (log count) of the history's items;
- **history length** (leave-one-out): items in the history the model reads (at most
  ``max_len``); under the paper protocol every window has the same length.

Each grouping splits the test examples into tertiles (:func:`tertile_tables`); with more
than one seed, :func:`pooled_tables` averages each tertile over all seeds' examples.
``benchmarks/per_user.py`` is the command line.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdgr_graph.data.dataset import SequenceDataset, SequenceLoader
from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.metrics import full_ranking_per_row, window_metrics_per_row
from mdgr_graph.models.baselines import training_item_counts
from mdgr_graph.train import full_ranking_ranks

#: Names of the three groups of a grouping, lowest values first.
TERTILES = ("low", "mid", "high")
#: Column label of each per-example metric.
METRIC_LABELS = {"auc": "AUC", "recall@50": "R@50", "hr@10": "HR@10", "ndcg@10": "NDCG@10"}


@torch.no_grad()
def per_window(model, prepared: PreparedDataset) -> dict[str, np.ndarray]:
    """``{"auc": [W], "recall@50": [W]}``: the model's metrics of every test window."""
    model.eval()
    out: dict[str, list] = {"auc": [], "recall@50": []}
    for batch in SequenceLoader(SequenceDataset(prepared, "test"), batch_size=256):
        m = window_metrics_per_row(model.score_candidates(batch).float(), batch.labels)
        out["auc"].append(m["auc/sampled"].numpy())
        out["recall@50"].append(m["recall@50/sampled"].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


@torch.no_grad()
def per_user(model, prepared: PreparedDataset, mask_seen: bool = True
             ) -> dict[str, np.ndarray]:
    """``{"hr@10": [U], "ndcg@10": [U]}``: leave-one-out full ranking of every test user,
    with ``mask_seen`` the user's earlier items excluded (as
    :func:`mdgr_graph.train.evaluate` ranks). Refuses a model that cannot rank the
    catalogue in one pass (the candidate as the query), which ``evaluate`` does not rank
    either."""
    if not model.ranks_catalogue_in_one_pass:
        raise ValueError(f"{type(model).__name__} with the candidate as the query scores one "
                         "graph pass per item: it has no full-ranking metrics per user")
    model.eval()
    seen = prepared.seen_items("test") if mask_seen else None
    out: dict[str, list] = {"hr@10": [], "ndcg@10": []}
    for batch in SequenceLoader(SequenceDataset(prepared, "test"), batch_size=256):
        _, rank = full_ranking_ranks(model, batch, seen, prepared.num_items)
        m = full_ranking_per_row(rank, ks=(10,))
        out["hr@10"].append(m["hr@10/full"].numpy())
        out["ndcg@10"].append(m["ndcg@10/full"].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def per_example(model, prepared: PreparedDataset, mask_seen: bool = True
                ) -> dict[str, np.ndarray]:
    """:func:`per_window` under the paper protocol, :func:`per_user` under leave-one-out."""
    if prepared.protocol == "loo":
        return per_user(model, prepared, mask_seen)
    return per_window(model, prepared)


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
    """The value of every test example (window, or user under leave-one-out) under each
    grouping, by grouping name."""
    a = prepared.arrays
    if prepared.protocol == "loo":
        test = prepared.loo_example("test")
        length = test["length"]
        real = np.arange(test["items"].shape[1])[None, :] < length[:, None]
        hist, days = test["items"], test["time"]
        out = {"history length": length.astype(np.float64),
               "span (days)": np.where(real, days, 0).max(1).astype(np.float64)}
    else:
        rows = a["window_split"] == 2
        hist, days = a["hist_items"][rows], a["hist_time"][rows]
        real = np.ones(hist.shape, dtype=bool)
        out = {"span (days)": days.max(1) - days.min(1)}
    log_count = np.log1p(training_item_counts(prepared))[hist]
    out["popularity (mean log count)"] = (log_count * real).sum(1) / real.sum(1)
    if genres is not None:
        masks = np.bitwise_or.reduce(np.where(real, genres[hist], 0), axis=1)
        out["distinct genres"] = np.array([bin(int(m)).count("1") for m in masks])
    return out


def _metric_header(models: list[str], metrics: list[str]) -> str:
    label = " / ".join(METRIC_LABELS.get(k, k) for k in metrics)
    return " | ".join(f"{m} {label}" for m in models)


def tertile_of(values: np.ndarray) -> np.ndarray:
    """Each example's tertile (0, 1, 2 for :data:`TERTILES`) by the value quantiles."""
    return np.digitize(values, np.quantile(values, [1 / 3, 2 / 3]), right=True)


#: Short name of each grouping (``per_user.py --cross``) -> its name in :func:`groupings`.
GROUPING_NAMES = {"genres": "distinct genres", "span": "span (days)",
                  "popularity": "popularity (mean log count)", "length": "history length"}

#: Separator of the two groupings of a cross (``"span (days) x history length"``) and of
#: their tertile labels (``"high x low"``).
CROSS = " x "


def tertile_tables(seed: int, scores: dict[str, dict[str, np.ndarray]],
                   groups: dict[str, np.ndarray],
                   crosses: list[tuple[str, str]] = ()) -> tuple[list[str], dict[str, Any]]:
    """Markdown lines of one seed's tables (one per grouping: each tertile's range,
    examples and every model's mean metrics) and the same numbers by grouping and
    tertile. ``scores``: :func:`per_example` of every model (the same two metrics each);
    ``groups``: :func:`groupings`. Tertile edges are value quantiles, so where many
    examples share a value (history lengths) a tertile can hold more or fewer than a
    third, or none. Each ``(a, b)`` of ``crosses`` adds a table of the nine cells of
    ``a``'s tertiles by ``b``'s (the same tertiles as their own tables), named
    ``"a x b"``, its cells ``"high x low"`` and so on."""
    models = list(scores)
    metrics = list(scores[models[0]])
    lines: list[str] = []
    result: dict[str, Any] = {}
    tertile = {feature: tertile_of(values) for feature, values in groups.items()}
    tables = [(feature, [(label, tertile[feature] == g, values)
                         for g, label in enumerate(TERTILES)])
              for feature, values in groups.items()]
    for a, b in crosses:
        cells = [(f"{la}{CROSS}{lb}", (tertile[a] == ga) & (tertile[b] == gb), None)
                 for ga, la in enumerate(TERTILES) for gb, lb in enumerate(TERTILES)]
        tables.append((f"{a}{CROSS}{b}", cells))
    for feature, cells in tables:
        lines += [f"\n### seed {seed}: test examples by {feature} (tertiles)\n",
                  "| group | range | examples | " + _metric_header(models, metrics) + " |",
                  "|---|---|---|" + "---|" * len(models)]
        for label, sel, values in cells:
            if not sel.any():
                continue
            cells_text = [" / ".join(f"{scores[m][k][sel].mean():.4f}" for k in metrics)
                          for m in models]
            span = "-" if values is None else f"{values[sel].min():.3g}-{values[sel].max():.3g}"
            lines.append(f"| {label} | {span} | {int(sel.sum())} | "
                         + " | ".join(cells_text) + " |")
            entry: dict[str, Any] = {"windows": int(sel.sum())}
            if values is not None:
                entry["range"] = [float(values[sel].min()), float(values[sel].max())]
            result.setdefault(feature, {})[label] = {
                **entry,
                **{m: {k: float(v[sel].mean()) for k, v in scores[m].items()} for m in models},
            }
    return lines, result


def pooled_tables(result: dict[str, Any], models: list[str]) -> list[str]:
    """Markdown tables of every grouping pooled over seeds: each tertile's metrics averaged
    over all seeds' examples (weighted by the examples of each seed's tertile, stored
    under the key ``"windows"``, users under leave-one-out)."""
    seeds = sorted(result)
    if len(seeds) < 2:
        return []
    lines = []
    for feature in result[seeds[0]]:
        first = next(iter(result[seeds[0]][feature].values()))
        metrics = list(first[models[0]])
        lines += [f"\n### all seeds ({', '.join(seeds)}) pooled: test examples by {feature} "
                  "(each seed's tertiles)\n",
                  "| group | examples | " + _metric_header(models, metrics) + " |",
                  "|---|---|" + "---|" * len(models)]
        order = [*TERTILES, *(f"{a}{CROSS}{b}" for a in TERTILES for b in TERTILES)]
        for label in (label for label in order if any(label in result[s][feature]
                                                      for s in seeds)):
            entries = [result[s][feature][label] for s in seeds if label in result[s][feature]]
            n = sum(e["windows"] for e in entries)
            if n == 0:
                continue
            cells = [" / ".join(f"{sum(e[m][k] * e['windows'] for e in entries) / n:.4f}"
                                for k in metrics) for m in models]
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return lines
