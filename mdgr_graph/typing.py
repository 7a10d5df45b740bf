"""Optional compiled extensions, probed once at import (PyG style).

The library works without them: every feature that can use ``torch_scatter`` or
``torch_cluster`` has a pure-torch fallback. Tests flip these flags off to cover the
fallback path.
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


def require_torch_cluster(feature: str) -> None:
    """Raise a clear ImportError when ``feature`` needs torch-cluster and it is absent."""
    if not WITH_TORCH_CLUSTER:
        raise ImportError(
            f"'{feature}' requires 'torch-cluster' "
            "(pip install --no-build-isolation torch-cluster==1.6.3)"
        )
