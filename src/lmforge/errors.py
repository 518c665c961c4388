"""User-facing errors.

Library code raises :class:`LMForgeError` (or a subclass) for anything a user can fix: a missing file, a bad
config key, a checkpoint that does not match. The message names the problem *and* the fix. The CLI and the
server turn these into a one-line message and a non-zero exit code (or a 4xx), never a traceback.
"""

from __future__ import annotations

__all__ = ["LMForgeError", "ConfigError", "DataError", "CheckpointError", "TokenizerError"]


class LMForgeError(Exception):
    """An error a user can fix; ``str(err)`` is a complete, one-line explanation."""

    exit_code = 2


class ConfigError(LMForgeError):
    """An invalid configuration: unknown key, wrong type or an invalid choice."""


class DataError(LMForgeError):
    """A corpus that is missing, empty, binary, not UTF-8 or too short."""


class CheckpointError(LMForgeError):
    """A run or model folder that is missing, corrupted or does not match what is asked of it."""


class TokenizerError(LMForgeError):
    """A tokenizer file that is missing, corrupted or of the wrong kind."""
