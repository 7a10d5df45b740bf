"""Sinusoidal time and position encodings (MDGR Eq. 2-3, Vaswani et al. 2017)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_encoding(values: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    r"""Encode each value with :math:`\sin(v / b^{2i/D})` and :math:`\cos(v / b^{2i/D})`.

    Entry ``2i`` holds the sine and ``2i + 1`` the cosine of frequency ``i`` (Eq. 3, with
    the model width :math:`D` = ``dim``; the paper's :math:`d_m = 1` is a typo).

    Args:
        values: ``[*]`` positions or times (days).
        dim: encoding width (even).
        base: the wavelength base :math:`b`.

    Returns:
        ``[*, dim]``
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number, got {dim}")
    freq = torch.exp(
        -math.log(base) * torch.arange(0, dim, 2, device=values.device, dtype=torch.float32) / dim
    )
    angle = values.float().unsqueeze(-1) * freq
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(-2)


class SinusoidalEncoding(nn.Module):
    """Module form of :func:`sinusoidal_encoding` (no parameters).

    Args:
        dim: encoding width (even).
        base: wavelength base. (default: :obj:`10000.0`)

    Shapes:
        - **input:** ``[*]``
        - **output:** ``[*, dim]``
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        self.dim = dim
        self.base = base

    def forward(self, values: Tensor) -> Tensor:
        return sinusoidal_encoding(values, self.dim, self.base)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.dim})"
