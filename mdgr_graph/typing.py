"""Optional compiled extensions, probed once at import (PyG style).

The library needs neither and imports neither itself: the scatter operations go through
:func:`torch_geometric.utils.scatter`, which uses ``torch_scatter`` when PyG finds it
(``torch_geometric.typing.WITH_TORCH_SCATTER``) and pure torch otherwise, and the metric
graph of :class:`~mdgr_graph.nn.DynamicClusterConv` is a weighted-cosine top-k, not a kNN
search. ``torch_cluster`` serves only the kNN baseline of ``benchmarks/speed.py``. The
flags record what this environment has; the ``without_extensions`` test fixture turns
them off together with PyG's.
"""

try:
    import torch_scatter  # noqa: F401

    WITH_TORCH_SCATTER = True
except (ImportError, OSError):  # OSError: a wheel built against another torch
    WITH_TORCH_SCATTER = False

try:
    import torch_cluster  # noqa: F401

    WITH_TORCH_CLUSTER = True
except (ImportError, OSError):
    WITH_TORCH_CLUSTER = False
