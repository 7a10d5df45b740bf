"""Reading logs, preprocessing, protocols and PyG datasets."""

from mdgr_graph.data.dataset import (
    SequenceData,
    SequenceDataset,
    SequenceLoader,
    make_sequence_graph,
)
from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.prepare import DataOptions, PreparedDataset, prepare_dataset
from mdgr_graph.data.preprocess import Sequences, build_sequences
from mdgr_graph.data.readers import Interactions, read_interactions
from mdgr_graph.data.synthetic import SyntheticLog, generate_synthetic

__all__ = [
    "DataFormatError",
    "DataOptions",
    "Interactions",
    "PreparedDataset",
    "SequenceData",
    "SequenceDataset",
    "SequenceLoader",
    "Sequences",
    "SyntheticLog",
    "build_sequences",
    "generate_synthetic",
    "make_sequence_graph",
    "prepare_dataset",
    "read_interactions",
]
