"""lmforge.serving."""
