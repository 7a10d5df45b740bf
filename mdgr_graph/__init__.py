"""mdgr_graph: MDGR multi-interest sequential recommendation on PyTorch Geometric."""

__version__ = "0.1.0"
