"""Per-user test metrics of one checkpoint by group, as benchmarks/per_user.py computes them.

Used once (2026-12-06) for a SASRec rerun whose compare.py run had not finished, so that
per_user.py, which needs a finished run, could not load it::

    .venv/bin/python benchmarks/results/loo-explore/sasrec_peruser_from_checkpoint.py \\
        BEST_PT OUT_JSON
"""

import json
import sys
from pathlib import Path

import torch

from mdgr_graph.bench import groups, runner
from mdgr_graph.models import build_model
from mdgr_graph.train import load_checkpoint

REPO = Path(__file__).resolve().parents[3]

if __name__ == "__main__":
    torch.set_num_threads(1)
    argv = ["--dataset", "amazon-beauty", "--protocol", "loo", "--loss", "ce",
            "--loo-train-targets", "all", "--dim", "64", "--lr", "1e-3", "--epochs", "40",
            "--patience", "5", "--models", "sasrec", "--seeds", "0"]
    args = runner.parse_args(argv, REPO)
    prepared = runner.load_data(args, 0)
    model = build_model("sasrec", prepared, dim=64, loss="ce")
    checkpoint = load_checkpoint(Path(sys.argv[1]))
    model.load_state_dict(checkpoint["model"])
    print("epoch", checkpoint.get("epoch"))
    scores = {"sasrec": groups.per_user(model, prepared)}
    print({k: float(v.mean()) for k, v in scores["sasrec"].items()})
    lines, result = groups.tertile_tables(0, scores, groups.groupings(prepared, None))
    print("\n".join(lines))
    Path(sys.argv[2]).write_text(json.dumps(result, indent=2) + "\n")
