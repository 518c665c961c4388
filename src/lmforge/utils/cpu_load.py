"""How busy the CPU is, and what that means for torch's threads (torch-free).

On a CPU where other processes already fill the cores, torch's intra-op threads spend their time waiting for
each other at every parallel region while the scheduler runs someone else: with two threads at a load average of
about 9 on 2 cores, a translation model trained at 107 target tokens/s, with one thread at 380 (BENCHMARKS.md,
"Translation"). So a busy CPU gets one thread; an idle one keeps torch's default.

Example:
    >>> busy((9.0, 2)), busy((0.3, 2)), round(cpu_share((9.0, 2)), 2)
    (True, False, 0.2)
"""

from __future__ import annotations

import os
from typing import Optional

__all__ = ["machine_load", "busy", "cpu_share", "threads_for_load"]

Load = tuple[float, int]  # (1-minute load average, CPU cores)


def machine_load() -> Optional[Load]:
    """``(1-minute load average, CPU cores)``, or ``None`` where the system does not report a load average."""
    if not hasattr(os, "getloadavg"):
        return None
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except OSError:
        return None


def busy(load: Optional[Load]) -> bool:
    """Whether a new process would find every core taken (load average + 1 above the core count)."""
    return load is not None and load[1] > 1 and load[0] + 1 > load[1]


def cpu_share(load: Optional[Load]) -> float:
    """The share of the machine's cores a new process can expect: ``cores / (load + 1)`` when busy, else 1."""
    return load[1] / (load[0] + 1) if busy(load) and load is not None else 1.0


def threads_for_load(load: Optional[Load]) -> Optional[int]:
    """1 on a busy CPU, else ``None`` (torch's default)."""
    return 1 if busy(load) else None
