"""Checks the command lines make before any work: outputs that can be written, devices
that exist. Each returns why an option cannot be used (one line for ``error:``) or None."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def writable_problem(path: Path, option: str, directory: bool) -> str | None:
    """Why ``path`` cannot be written (a folder when ``directory``), or None.

    Creates the missing folders and a temporary file in the folder that will hold the
    output (removed again), so an unwritable output is found before any training."""
    folder = path if directory else path.parent
    if not directory and path.is_dir():
        return f"{option} {path} is a directory, not a file"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{option} {path} cannot be written: {existing} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"{option} {path} cannot be written: {exc.strerror or exc} ({folder})"
    if not directory and path.exists() and not os.access(path, os.W_OK):
        return f"{option} {path} cannot be written: permission denied"
    return None


def device_problem(name: str) -> str | None:
    """Why ``--device name`` cannot be used here, or None."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name!r} is not a device (cpu, cuda or cuda:N)"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {name} requested but CUDA is not available"
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        return f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)"
    if device.type not in ("cpu", "cuda"):
        return f"--device must be cpu or cuda, got {name!r}"
    return None
