"""Table 2: every model on one dataset and protocol, over several seeds, side by side.

For each seed the data are prepared with that seed and every model is trained with it by
the one training loop; closed-form baselines pick their hyper-parameters on validation
from a fixed grid, neural models their best epoch (and with ``--lr-grid`` their learning
rate on ``--tune-seed``). Every (model, seed) run is written to its own JSON file under
``<out>/<dataset>-<protocol>/runs/`` as soon as it finishes; a rerun skips finished runs
and resumes unfinished ones from their checkpoints under ``--work-dir``, so the script can
be stopped and started again, or several copies run on different models at once. The
summary ``<out>/<summary name>.json`` and the Markdown table beside it are rebuilt from
the run files at the end of every invocation. The machinery is
:mod:`mdgr_graph.bench.runner`.

Examples::

    .venv/bin/python benchmarks/compare.py --dataset ml-1m-subset --protocol paper
    .venv/bin/python benchmarks/compare.py --dataset ml-1m-subset --protocol paper \\
        --models mdgr --seeds 1 --threads 1          # one run, e.g. in a second terminal
    .venv/bin/python benchmarks/compare.py --quick   # a few minutes, smoke-sized
"""

from pathlib import Path

from mdgr_graph.bench import runner

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    raise SystemExit(runner.main(root=REPO))
