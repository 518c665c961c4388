"""The chatbot entry points' documented import path; they live in :mod:`lmforge.compat.chatbot`."""

from lmforge.compat.chatbot import *  # noqa: F401,F403
from lmforge.compat.chatbot import __all__  # noqa: F401
