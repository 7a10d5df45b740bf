"""Top N items of the whole catalogue per user of a trained run: ``mdgr-retrieve``.

Example::

    python examples/train_mdgr.py --format movielens \\
        --path ../shared/data/ml-1m-subset/ratings.dat.gz --protocol loo --out runs/loo
    python examples/retrieve.py runs/loo --n 20 --out runs/loo/top20.csv \\
        --titles ../shared/data/ml-1m-subset/movies.dat.gz --backend faiss-exact
    python examples/retrieve.py runs/loo --rerank runs/loo-candidate --rerank-n 100 \\
        --n 10 --evaluate            # two-stage: re-rank with a --query candidate run

The command line lives in :mod:`mdgr_graph.cli.retrieve` (``--help`` lists every option);
an installed package also has it as the console script ``mdgr-retrieve``.
"""

from mdgr_graph.cli.retrieve import main

if __name__ == "__main__":
    raise SystemExit(main())
