"""mdgr_graph: MDGR multi-interest sequential recommendation on PyTorch Geometric.

The names most programs need, from the floors of the package (each floor imports only
from those below it: ``io`` -> ``data`` -> ``nn`` -> ``models`` -> ``train``,
``retrieval``)::

    from mdgr_graph import DataOptions, MDGR, TrainConfig, build_model, fit, prepare_dataset

    prepared = prepare_dataset(DataOptions(format="synthetic", protocol="loo"))
    model = build_model("mdgr", prepared)
    fit(model, prepared, TrainConfig(epochs=5))

Everything else lives in its module (``mdgr_graph.nn.metric``, ``mdgr_graph.metrics``,
``mdgr_graph.data.readers``, ...). Importing the package imports torch and PyG (as every
use of it does), never the drawing libraries of :mod:`mdgr_graph.viz`.
"""

from mdgr_graph.data import (
    DataFormatError,
    DataOptions,
    PreparedDataset,
    SequenceData,
    SequenceDataset,
    prepare_dataset,
)
from mdgr_graph.models import MDGR, MODELS, SequentialRecommender, build_model
from mdgr_graph.nn import DynamicClusterConv, DynamicClusterGNN
from mdgr_graph.retrieval import export_interests, history_items, rerank, retrieve
from mdgr_graph.train import FitResult, RunDirError, TrainConfig, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "DataFormatError",
    "DataOptions",
    "DynamicClusterConv",
    "DynamicClusterGNN",
    "FitResult",
    "MDGR",
    "MODELS",
    "PreparedDataset",
    "RunDirError",
    "SequenceData",
    "SequenceDataset",
    "SequentialRecommender",
    "TrainConfig",
    "__version__",
    "build_model",
    "evaluate",
    "export_interests",
    "fit",
    "history_items",
    "prepare_dataset",
    "rerank",
    "retrieve",
]
