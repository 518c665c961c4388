"""lmforge.tokenizers."""
