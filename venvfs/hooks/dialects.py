"""The activation scripts venvfs hooks, one ``Dialect`` per shell family: the script names in ``bin/``,
how to render the block and where to insert it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from venvfs.hooks import csh, fish, nushell, posix, powershell
from venvfs.hooks.block import insert_append
from venvfs.hooks.target import HookTarget


@dataclass(frozen=True)
class Dialect:
    shell: str
    names: tuple[str, ...]  # script file names in bin/
    render: Callable[[HookTarget], str]
    insert: Callable[[str, str], str | None]  # None: the script's layout is not understood


DIALECTS: tuple[Dialect, ...] = (
    Dialect("sh", ("activate",), posix.render, insert_append),
    Dialect("fish", ("activate.fish",), fish.render, insert_append),
    Dialect("csh", ("activate.csh",), csh.render, insert_append),
    Dialect("powershell", ("Activate.ps1", "activate.ps1"), powershell.render, powershell.insert),
    Dialect("nu", ("activate.nu",), nushell.render, nushell.insert),
)
