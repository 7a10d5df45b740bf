"""Train and evaluate MDGR (or a variant, or a baseline) on a log: ``mdgr-train``.

With no arguments it trains MDGR on the embedded synthetic data (paper protocol) and
prints the test metrics. Examples::

    python examples/train_mdgr.py
    python examples/train_mdgr.py --format movielens \\
        --path ../shared/data/ml-1m-subset/ratings.dat.gz --protocol paper --epochs 30
    python examples/train_mdgr.py --model mdgr-w --out runs/w --resume
    torchrun --nproc_per_node 2 examples/train_mdgr.py --out runs/ddp   # data-parallel

The command line lives in :mod:`mdgr_graph.cli.train` (``--help`` lists every option);
an installed package also has it as the console script ``mdgr-train``.
"""

from mdgr_graph.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
