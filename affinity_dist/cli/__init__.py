"""The ``affinity-dist`` command line: :mod:`.args` builds the parser, :mod:`.main` runs
the commands."""

from .main import main

__all__ = ["main"]
