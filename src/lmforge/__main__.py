"""``python -m lmforge`` (also what ``torchrun -m lmforge`` runs)."""

from lmforge.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
