"""The CLI layer: the ``venvfs`` command line (argument parsing and printing) over the library.

It is the only layer that knows all the others: it opens the store, the venv and the mount, and
passes the mount's callbacks (reload a running daemon, mount for a commit) down to the venv layer,
which cannot import them. It may import every layer; nothing imports it but ``venvfs.__main__``.
``main`` is the ``venvfs`` console script's entry point (``venvfs.cli:main``).
"""

from venvfs.cli.app import main

__all__ = ["main"]
