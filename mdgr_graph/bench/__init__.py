"""The benchmark floor, above :mod:`mdgr_graph.cli`: what the scripts under
``benchmarks/`` share.

- :mod:`~mdgr_graph.bench.runner`: runs every ``(model, seed)`` of a configuration once
  (run naming by configuration hash, claiming with a lock file, resuming from
  checkpoints, learning-rate grids) and rebuilds the Table 2 summary from the run files;
  ``benchmarks/compare.py`` is its command line, and ``ablation.py``,
  ``sensitivity.py``, ``convergence.py``, ``per_user.py`` and ``step_time.py`` read and
  extend its runs;
- :mod:`~mdgr_graph.bench.groups`: per-window test metrics of finished runs by group of
  users (``benchmarks/per_user.py``);
- :mod:`~mdgr_graph.bench.record`: where a benchmark ran (machine, versions, command) and
  the median of timed calls.
"""
