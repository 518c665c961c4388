"""Tests of lmforge.evaluation.memory: a phase's peak memory sees an allocation freed within it, and resets."""

from __future__ import annotations

import time

import pytest
import torch

from lmforge.evaluation import memory
from lmforge.evaluation.memory import PeakMemory


def _touch(n_bytes: int) -> None:
    buf = torch.ones(n_bytes // 4, dtype=torch.float32)  # filled, so the pages are resident
    assert buf.sum().item() == n_bytes // 4
    del buf


@pytest.mark.parametrize("sampled", [False, True])
def test_peak_memory_sees_a_freed_allocation(monkeypatch: pytest.MonkeyPatch, sampled: bool) -> None:
    if memory.current_rss_bytes() is None:
        pytest.skip("no /proc/self/status on this system")
    if sampled:  # force the fallback sampler, used where clear_refs cannot be written
        monkeypatch.setattr(memory, "_reset_hwm", lambda: False)
    size = 64 * 2**20
    with PeakMemory("cpu") as mem:
        _touch(size)
        if sampled:
            time.sleep(0.02)  # the sampler needs the allocation to live for a few intervals
    assert ("sampled" in mem.method) is sampled
    assert mem.increase_bytes is not None and mem.increase_bytes >= 0.9 * size
    # A second phase without the allocation reports a much smaller increase: the peak was reset.
    with PeakMemory("cpu") as quiet:
        _ = torch.zeros(16).sum()
    assert quiet.increase_bytes is not None and quiet.increase_bytes < 0.5 * size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_peak_memory_on_cuda() -> None:
    with PeakMemory("cuda") as mem:
        x = torch.ones(2**20, device="cuda")  # 4 MiB
        del x
    assert mem.increase_bytes >= 4 * 2**20
