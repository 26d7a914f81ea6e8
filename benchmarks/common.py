"""Timing and reporting shared by the benchmarks: one process, same threads."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn: Callable[[], object], repeats: int = 7, warmup: int = 2, budget_s: float = 20.0) -> float:
    """Median wall time of ``fn()`` in seconds (``fn`` must block until done)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def settle(seconds: float = 0.5) -> None:
    """Lets the thread pools of the previous library park before the next
    measurement (OpenMP and XLA workers spin for a while after work)."""
    time.sleep(seconds)


def machine() -> dict:
    """What the numbers were measured on."""
    from lumijax import native

    model = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = native.build_info()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel_threads": info["threads"],
        "target_features": info["target_features"],
        "python": platform.python_version(),
    }


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path
