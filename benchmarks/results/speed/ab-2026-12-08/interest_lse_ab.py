"""Training step of MDGR m = 1, MIP and ComiRec-SA on amazon-sports's every-prefix batches
(catalogue softmax, d = 64, lr 2e-3), as compare.py builds them: 3 untimed and 10 timed
steps with Adam, median step seconds, and the losses. Times the code importable from the
working directory (see README.md)."""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import mdgr_graph
from mdgr_graph.bench import runner
from mdgr_graph.data.dataset import SequenceDataset
from mdgr_graph.train import _train_epoch

torch.set_num_threads(1)
repo = Path(sys.argv[1])
common = ("--dataset amazon-sports --data-dir /work/shared/data --protocol loo --loss ce "
          "--loo-train-targets all --dim 64 --lr 2e-3 --epochs 1 --seeds 1 --threads 1 "
          "--no-progress --out /tmp/ab-unused").split()
out = {"code": mdgr_graph.__file__}
prepared = None
for name, extra in (("mdgr", ["--mdgr-m", "1"]), ("mip", []), ("comirec-sa", [])):
    args = runner.parse_args(common + extra + ["--models", name], repo)
    prepared = prepared or runner.load_data(args, 1)
    model, train = runner.neural_setup(name, prepared, 1, runner.run_config(name, args),
                                       progress=False)
    data = SequenceDataset(prepared, "train", loo_train_targets=train.loo_train_targets,
                           loo_train_positives=train.loo_train_positives)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                 lr=train.lr)
    seconds, started = [], time.perf_counter()
    loss = _train_epoch(model, optimizer, data, train, 0, max_batches=13, step_seconds=seconds)
    out[name] = {"median_step_s": statistics.median(seconds[3:]), "loss": loss,
                 "wall_s": time.perf_counter() - started}
print(json.dumps(out))
