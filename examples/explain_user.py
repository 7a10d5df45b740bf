"""Draw what a trained MDGR learned for one user: ``mdgr-explain``.

Writes the interest sub-graph of every iteration, the interest weights over the user's
history and each interest's items (needs the ``viz`` extra: matplotlib, networkx).
Example::

    python examples/explain_user.py --run runs/ml1m --user 10 \\
        --titles ../shared/data/ml-1m-subset/movies.dat.gz --out-dir runs/ml1m/explain

The command line lives in :mod:`mdgr_graph.cli.explain` (``--help`` lists every option);
an installed package also has it as the console script ``mdgr-explain``.
"""

from mdgr_graph.cli.explain import main

if __name__ == "__main__":
    raise SystemExit(main())
