"""MDGR with the repeat gate on a log without repeats: is it the same model? (issue 30)

Trains MDGR (m = 1, lr 2e-3, ml-1m-subset paper protocol, stride 25) with and without
``repeat="gate"`` for a few epochs per seed and records the per-epoch losses, validation
AUCs and the test AUC of both. On ml-1m-subset no positive repeats a history item (a movie
is rated once), so the gate's term is 0 for every candidate and the two runs should agree
bit for bit.

    python benchmarks/repeat_identity.py            # seeds 0-2, 3 epochs each
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.data.repeats import repeat_share
from mdgr_graph.io import atomic_write_text
from mdgr_graph.models import build_model
from mdgr_graph.train import TrainConfig, evaluate, fit

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", type=Path,
                   default=REPO / "benchmarks" / "results" / "repeat-identity-ml-1m-subset.json")
    args = p.parse_args(argv)
    path = args.data_dir / "ml-1m-subset" / "ratings.dat.gz"
    if not path.is_file():
        p.error(f"no such file {path}")
    torch.set_num_threads(1)
    out: dict = {"command": "repeat_identity.py " + " ".join(argv or []), "runs": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        prepared = prepare_dataset(DataOptions(format="movielens", path=str(path),
                                               protocol="paper", seed=seed, train_stride=25))
        out["runs"][f"seed{seed}"] = {"test_repeat_share": repeat_share(prepared, "test")}
        for repeat in ("none", "gate"):
            torch.manual_seed(seed)
            model = build_model("mdgr", prepared, m=1, repeat=repeat)
            result = fit(model, prepared, TrainConfig(epochs=args.epochs, patience=5, lr=2e-3,
                                                      seed=seed, progress=False), log=None)
            out["runs"][f"seed{seed}"][repeat] = {
                "losses": [row["loss"] for row in result.history],
                "valid_auc": [row["valid"]["auc/sampled"] for row in result.history],
                "test_auc": evaluate(model, prepared, "test")["auc/sampled"],
            }
        run = out["runs"][f"seed{seed}"]
        run["identical"] = run["none"] == run["gate"]
        print(f"seed {seed}: identical={run['identical']} test AUC {run['gate']['test_auc']:.4f}",
              flush=True)
    atomic_write_text(args.out, json.dumps(out, indent=1) + "\n")
    return 0 if all(run["identical"] for run in out["runs"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
