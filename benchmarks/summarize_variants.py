"""Collect benchmarks/results/ml1m-paper/*.json into one Markdown table (printed and saved).

Usage: python benchmarks/summarize_variants.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["pop", "mdgr", "mdgr-w", "mdgr-dgc", "mdgr-p", "mdgr-t", "mdgr-pt"]


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path(__file__).parent / "results" / "ml1m-paper"
    rows = {}
    for path in folder.glob("*.json"):
        result = json.loads(path.read_text())
        rows[result["model"]] = result
    if not rows:
        print(f"no results in {folder}", file=sys.stderr)
        return 2
    lines = [
        "| model | test AUC (sampled) | test Recall@50 (sampled) | best epoch | epochs "
        "| train s | params | params w/o item table |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in [m for m in ORDER if m in rows] + sorted(set(rows) - set(ORDER)):
        r = rows[name]
        lines.append(
            f"| {name} | {r['auc']:.4f} | {r['recall@50']:.4f} | {r['best_epoch']} | "
            f"{r['epochs']} | {r['train_seconds']:.0f} | {r['params']:,} | "
            f"{r['params_without_item_table']:,} |"
        )
    table = "\n".join(lines) + "\n"
    (folder / "table.md").write_text(table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
