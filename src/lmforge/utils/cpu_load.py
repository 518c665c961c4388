"""How busy the CPU is, and what that means for torch's threads (torch-free).

On a CPU where other processes already fill the cores, torch's intra-op threads spend their time waiting for
each other at every parallel region while the scheduler runs someone else: with two threads at a load average of
about 9 on 2 cores, a translation model trained at 107 target tokens/s, with one thread at 380 (BENCHMARKS.md,
"Translation"). So a busy CPU gets one thread; an idle one keeps torch's default.

How busy is measured: the 1-minute load average lags by minutes (right after a long job ends it still reports the
job, and an idle machine then trains with one thread), so on Linux :func:`machine_load` counts the runnable tasks
now instead, averaged over a short sample of ``/proc/loadavg``'s fourth field, less the caller itself. Elsewhere
it falls back to the load average.

Example:
    >>> busy((9.0, 2)), busy((0.3, 2)), round(cpu_share((9.0, 2)), 2)
    (True, False, 0.2)
"""

from __future__ import annotations

import os
import time
from typing import Optional

__all__ = ["machine_load", "busy", "cpu_share", "threads_for_load"]

Load = tuple[float, int]  # (1-minute load average, CPU cores)


def machine_load(sample_seconds: float = 0.5, samples: int = 10) -> Optional[Load]:
    """``(tasks running besides the caller, CPU cores)``: the runnable tasks counted ``samples`` times over
    ``sample_seconds`` (Linux), else the 1-minute load average; ``None`` where the system reports neither."""
    cores = os.cpu_count() or 1
    running = _sampled_running(sample_seconds, samples)
    if running is not None:
        return running, cores
    if not hasattr(os, "getloadavg"):
        return None
    try:
        return os.getloadavg()[0], cores
    except OSError:
        return None


def _sampled_running(sample_seconds: float, samples: int, path: str = "/proc/loadavg") -> Optional[float]:
    """The mean number of runnable tasks other than the caller over the sample, or ``None`` without ``path``."""
    counts = []
    for i in range(max(1, samples)):
        try:
            with open(path, encoding="ascii") as f:
                fields = f.read().split()
            counts.append(int(fields[3].split("/")[0]) - 1)  # "running/total"; the reader itself is running
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(sample_seconds / max(1, samples - 1))
    return max(0.0, sum(counts) / len(counts))


def busy(load: Optional[Load]) -> bool:
    """Whether a new process would find every core taken (load average + 1 above the core count)."""
    return load is not None and load[1] > 1 and load[0] + 1 > load[1]


def cpu_share(load: Optional[Load]) -> float:
    """The share of the machine's cores a new process can expect: ``cores / (load + 1)`` when busy, else 1."""
    return load[1] / (load[0] + 1) if busy(load) and load is not None else 1.0


def threads_for_load(load: Optional[Load]) -> Optional[int]:
    """1 on a busy CPU, else ``None`` (torch's default)."""
    return 1 if busy(load) else None
