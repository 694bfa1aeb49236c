"""The CLI layer: the ``venvfs`` command line (argument parsing and printing) over the library.

It is the only layer that knows all the others: it opens the store, the venv and the mount, and
passes the mount's callbacks (reload a running daemon, mount for a commit) down to the venv layer,
which cannot import them. It may import every layer; nothing imports it but ``venvfs.__main__``.
``main`` is the ``venvfs`` console script's entry point (``venvfs.cli:main``).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself is 2 ms of every command's start; mypy reads this name as True
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: in a warm fork of the user's mount service where one answers (``thin.py``),
    else here. Only a real command line goes there (``argv`` None); a caller's own list runs here."""
    if argv is None:
        from venvfs.cli import thin

        code = thin.run(sys.argv[1:])
        if code is not None:
            thin.exit_now(code)
    from venvfs.cli import app

    return app.main(argv)
