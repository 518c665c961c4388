"""lmforge.interop."""
