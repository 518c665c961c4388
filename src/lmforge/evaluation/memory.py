"""Peak memory of a phase of work (training, measuring) and the current resident set size of the process.

On CPU the peak is the kernel's own high-water mark of the process RSS (``VmHWM`` in ``/proc/self/status``),
reset at the start of a phase by writing ``5`` to ``/proc/self/clear_refs``. That is exact (no allocation spike is
missed between samples) and needs no extra dependency. Where the reset is not allowed (non-Linux, restricted
``/proc``) a thread samples ``VmRSS``/``ru_maxrss`` every 2 ms instead, and the result says which method was
used. On CUDA it is ``torch.cuda.max_memory_allocated``. :mod:`lmforge.evaluation.metrics` re-exports both names.
"""

from __future__ import annotations

import platform
import threading
from typing import Any, Optional
import torch

__all__ = ["PeakMemory", "current_rss_bytes"]


def _status_kb(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_bytes() -> Optional[int]:
    """The resident set size of this process in bytes (``VmRSS``), or None where ``/proc`` is unavailable."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def _reset_hwm() -> bool:
    """Resets the kernel's RSS high-water mark (Linux >= 4.0); False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _status_kb("VmHWM") is not None
    except OSError:
        return False


def _max_rss_bytes() -> Optional[int]:
    try:
        import resource

        scale = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except (ImportError, OSError):
        return None


class PeakMemory:
    """Context manager measuring the peak memory of a phase.

    On CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak statistics (tensors only, not the
    CUDA context or the allocator's cache). On CPU: the peak RSS of the whole process (see the module
    docstring for the method). ``increase_bytes`` is the peak minus the value at the start of the phase.

    Example:
        >>> with PeakMemory("cpu") as mem:  # doctest: +SKIP
        ...     train()
        >>> mem.peak_bytes, mem.method  # doctest: +SKIP
    """

    def __init__(self, device: Any = "cpu", interval_s: float = 0.002) -> None:
        self.device = str(device)
        self.interval_s = interval_s
        self.peak_bytes: Optional[int] = None
        self.start_bytes: Optional[int] = None
        self.method = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sampled = 0
        self._mode = ""

    @property
    def increase_bytes(self) -> Optional[int]:
        """Peak minus the value at the start of the phase (None when unmeasured)."""
        if self.peak_bytes is None or self.start_bytes is None:
            return None
        return max(0, self.peak_bytes - self.start_bytes)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sampled = max(self._sampled, current_rss_bytes() or 0)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            self.method, self._mode = "torch.cuda.max_memory_allocated", "cuda"
        elif _reset_hwm():
            self.start_bytes = current_rss_bytes()
            self.method, self._mode = "process RSS high-water mark (VmHWM, reset via /proc/self/clear_refs)", "hwm"
        elif current_rss_bytes() is not None:
            self.start_bytes = self._sampled = current_rss_bytes() or 0
            self.method, self._mode = f"process RSS sampled every {self.interval_s * 1000:g} ms", "sample"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.start_bytes = _max_rss_bytes()
            self.method, self._mode = "process lifetime max RSS (getrusage; cannot be reset per phase here)", "rusage"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._mode == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._mode == "sample":
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._sampled, current_rss_bytes() or 0)
        elif self._mode == "hwm":
            kb = _status_kb("VmHWM")
            self.peak_bytes = None if kb is None else kb * 1024
        else:
            self.peak_bytes = _max_rss_bytes()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict of the measurement."""
        return {"peak_bytes": self.peak_bytes, "start_bytes": self.start_bytes,
                "increase_bytes": self.increase_bytes, "method": self.method, "device": self.device}
