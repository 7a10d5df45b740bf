"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ``../shared/data`` beside the repository: real logs, not part of the project.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module with one torch thread (small models; avoids oversubscription),
    restoring the previous count after it. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


#: The tiny synthetic log shared by model and training tests.
TINY = {"num_users": 120, "num_items": 80, "num_topics": 4, "length": (40, 60)}


@pytest.fixture(scope="session")
def paper_data():
    """Tiny synthetic dataset, paper protocol (windows of 40: 20 history, 20 positives)."""
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset

    opts = DataOptions(format="synthetic", window=40, history=20, negatives=20,
                       min_user_len=40, synthetic=TINY)
    return prepare_dataset(opts, cache_dir=None)


@pytest.fixture(scope="session")
def loo_data():
    """Tiny synthetic dataset, leave-one-out protocol (histories of at most 20)."""
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset

    opts = DataOptions(format="synthetic", protocol="loo", max_len=20, negatives=20,
                       synthetic=TINY)
    return prepare_dataset(opts, cache_dir=None)


@pytest.fixture
def make_log():
    """Factory of small :class:`~mdgr_graph.data.readers.Interactions` logs.

    ``make_log(rows)`` takes ``(user, item, timestamp)`` tuples in file order; ids may be
    ints or strings and are stored as strings, as the readers do.
    """
    import numpy as np

    from mdgr_graph.data.readers import Interactions

    def make(rows, source: str = "test-log") -> Interactions:
        user, item, ts = zip(*rows, strict=True) if rows else ((), (), ())
        return Interactions(
            user=np.array([str(u) for u in user], dtype=str),
            item=np.array([str(i) for i in item], dtype=str),
            timestamp=np.array(ts, dtype=np.float64),
            rating=None,
            source=source,
        )

    return make


@pytest.fixture
def write_csv(tmp_path):
    """Factory writing ``(user, item, timestamp)`` rows to a small CSV log in ``tmp_path``.

    ``write_csv(rows, name="log.csv")`` returns the path; the header is
    ``user,item,timestamp`` (the defaults of ``DataOptions`` for ``format="csv"``).
    """

    def write(rows, name: str = "log.csv", header: str = "user,item,timestamp", sep=","):
        path = tmp_path / name
        lines = [header] + [sep.join(str(v) for v in row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture
def without_extensions(monkeypatch):
    """Run a test as if torch-scatter and torch-cluster were not installed."""
    import torch_geometric.typing as pyg_typing

    from mdgr_graph import typing as mdgr_typing

    monkeypatch.setattr(mdgr_typing, "WITH_TORCH_SCATTER", False)
    monkeypatch.setattr(mdgr_typing, "WITH_TORCH_CLUSTER", False)
    monkeypatch.setattr(pyg_typing, "WITH_TORCH_SCATTER", False)
