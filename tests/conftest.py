"""Shared fixtures: a fixed seed, a tiny corpus and the path of the shared data sets."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

try:  # Tiny test models run faster on one thread, and CI's two cores are shared with subprocess tests.
    import torch as _torch

    _torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n"
) * 8


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in every test (set above at import too, for module-level work), restored afterwards so
    that a test which changes it (``--threads``) cannot leak its setting into the next."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True, scope="session")
def _prepared_data_cache(tmp_path_factory):
    """Prepared corpora (``lmforge prepare``, ``train --data``) go to a folder of this session, never to ~/.cache."""
    old = os.environ.get("LMFORGE_CACHE_DIR")
    os.environ["LMFORGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("lmforge-prepared"))
    yield
    if old is None:
        os.environ.pop("LMFORGE_CACHE_DIR", None)
    else:
        os.environ["LMFORGE_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def tiny_text() -> str:
    return TINY_TEXT


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
