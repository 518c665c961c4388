"""The server's routes, one module per endpoint family; :data:`ROUTERS` lists them for ``create_app``."""

from __future__ import annotations

from lmforge.serving.routes import chat, completions, embeddings, metrics, models, page, tokenize, translations

__all__ = ["ROUTERS"]

# Matched in this order on every request: the generation routes, the busiest, first.
ROUTERS = [chat.router, completions.router, models.router, page.router, embeddings.router, translations.router,
           tokenize.router, metrics.router]
