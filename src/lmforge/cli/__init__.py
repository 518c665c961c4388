"""The ``lmforge`` command line: argument parsing only, over the library's public functions."""
