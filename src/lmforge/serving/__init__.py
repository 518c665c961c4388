"""lmforge.serving: an OpenAI-compatible HTTP API and a web chat page (``lmforge serve``; the ``[serve]`` extra).

``create_app`` lives in :mod:`lmforge.serving.app`; it is not imported here so that ``import lmforge`` never
needs FastAPI.
"""
