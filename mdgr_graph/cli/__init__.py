"""The command-line floor: what the console scripts, the examples and the benchmarks share.

- :mod:`~mdgr_graph.cli.model_options`: the one map from a model name to the options it
  takes (``mdgr-train`` passes all of them, the benchmark runner those given);
- :mod:`~mdgr_graph.cli.train`: ``mdgr-train`` (``examples/train_mdgr.py``), data
  preparation from its arguments and :func:`~mdgr_graph.cli.train.load_run`, which
  rebuilds a finished run;
- :mod:`~mdgr_graph.cli.retrieve`: ``mdgr-retrieve`` (``examples/retrieve.py``);
- :mod:`~mdgr_graph.cli.explain`: ``mdgr-explain`` (``examples/explain_user.py``; needs
  the ``viz`` extra);
- :mod:`~mdgr_graph.cli.checks`: outputs and devices checked before any work.

``mdgr-data`` is ``python -m mdgr_graph.data`` (:mod:`mdgr_graph.data.__main__`). Every
``main(argv)`` returns the exit status: 0, or 2 after one ``error:`` line.
"""
