"""The old import path of :mod:`lmforge.models.run_folder` (``save_model``/``load_model``) and
:mod:`lmforge.models.weights`, kept for code written against it."""

from lmforge.models.run_folder import *  # noqa: F401,F403
from lmforge.models.run_folder import __all__  # noqa: F401
