"""Seed-style entry points: the classic model classes (:mod:`lmforge.compat.simple`) and the chatbot workflow
(:mod:`lmforge.compat.chatbot`), built on lmforge's core layers. Nothing below this layer imports it."""
