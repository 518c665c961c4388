"""The one device resolver: ``"auto"`` picks CUDA, then Apple's MPS, then the CPU; a named device that is not
there is a :class:`~lmforge.errors.ConfigError` naming the fix."""

from __future__ import annotations

import torch

from lmforge.errors import ConfigError

__all__ = ["resolve_device", "mps_available"]

_KINDS = ("cpu", "cuda", "mps")


def mps_available() -> bool:
    """Whether Apple's Metal (MPS) backend is usable."""
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The device ``name`` means.

    Args:
        name: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``.

    Raises:
        ConfigError: an unknown device, or CUDA/MPS asked for where it is not available.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    kind = str(name).split(":", 1)[0]
    if kind not in _KINDS:
        raise ConfigError(f"unknown device {name!r}; choose one of: auto, cpu, cuda, mps")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA GPU is available; use --device cpu or auto")
    if kind == "mps" and not mps_available():
        raise ConfigError("device 'mps' was asked for but MPS is not available; use --device cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r} ({err}); choose one of: auto, cpu, cuda, mps") from None
