"""Serving fixtures; they live in ``serving_fakes`` (a uniquely named module, importable from the tests)."""

from serving_fakes import *  # noqa: F401,F403  (fixtures: serve, artifacts, tiny_run_dirs, tiny_lm, tiny_lstm)
