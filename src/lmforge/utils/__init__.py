"""Small helpers shared across lmforge (atomic file writes, devices)."""
