"""What every benchmark records and how it times: one place for both.

- :func:`environment`: date, machine, CPU count and affinity, load average, memory, threads,
  the command line and the versions of Python, numpy, torch, PyG and the optional
  packages (None when not installed), so a result file says where it came from.
- :func:`measure`: warm-up calls, then the median of timed ones.
"""

from __future__ import annotations

import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: Packages whose versions every result records (None when not installed).
PACKAGES = ("numpy", "torch", "torch_geometric", "torch_scatter", "torch_cluster", "sklearn",
            "faiss", "pyarrow", "mdgr_graph")


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", None)
    except Exception:  # an optional package that is missing or broken
        return None


def _memory_mib() -> dict[str, int | None]:
    """Total and available memory from /proc/meminfo (None where it cannot be read)."""
    found: dict[str, int | None] = {"MemTotal": None, "MemAvailable": None}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in found:
                found[key] = int(value.split()[0]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return {"mem_total_mib": found["MemTotal"], "mem_available_mib": found["MemAvailable"]}


def environment(threads: int | None = None, packages: Iterable[str] = PACKAGES
                ) -> dict[str, Any]:
    """Where and with what a benchmark ran (``threads``: torch threads it used)."""
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **_memory_mib(),
        "threads": threads,
        "python": platform.python_version(),
        **{name: _version(name) for name in packages},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def measure(fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, Any]:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed (wall clock)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times}
