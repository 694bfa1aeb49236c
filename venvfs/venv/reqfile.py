"""Reading a requirements file (``venvfs create -r FILE``) the way pip and uv read one, as far as
venvfs needs it: requirement lines for the store, and the options an installer needs for what the
store lacks.

Handled: comments (`` #`` to the end of the line), blank lines, backslash continuations, ``-r``/
``--requirement`` (relative to the including file), and the index options ``-i``/``--index-url``,
``--extra-index-url``, ``-f``/``--find-links`` and ``--no-index``, which are handed to uv or pip as
they are. Anything else that starts with ``-`` (``-e``, ``-c``, hashes, ``--pre``) is refused with
the line named: selecting from the store could not honour it, and silently dropping it would make
a venv other than the one the file describes.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from venvfs.errors import UsageError

# Options with a value, in both spellings; the value may follow with "=" or a space.
_VALUED = {"-i": "--index-url", "--index-url": "--index-url", "--extra-index-url": "--extra-index-url",
           "-f": "--find-links", "--find-links": "--find-links"}
_COMMENT = re.compile(r"(^|\s+)#.*$")


@dataclass
class Requirements:
    specs: list[str] = field(default_factory=list)
    installer_options: list[str] = field(default_factory=list)  # argv for uv pip install / pip install


def read(path: Path, _seen: frozenset[Path] = frozenset()) -> Requirements:
    """The requirements and installer options of ``path`` (and the files it includes)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such requirements file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read it ({e})") from None
    found = Requirements()
    seen = _seen | {path.resolve()}
    for number, line in _logical_lines(text):
        where = f"{path}:{number}"
        if not line.startswith("-"):
            found.specs.append(line)
            continue
        words = shlex.split(line)
        option, _, value = words[0].partition("=")
        if not value and len(words) > 1:
            value = words[1]
        if option in ("-r", "--requirement"):
            if not value:
                raise UsageError(f"{where}: {option} needs a file")
            included = (path.parent / value) if not Path(value).is_absolute() else Path(value)
            if included.resolve() in seen:
                raise UsageError(f"{where}: {value} includes itself")
            nested = read(included, seen)
            found.specs += nested.specs
            found.installer_options += nested.installer_options
        elif option == "--no-index":
            found.installer_options.append("--no-index")
        elif option in _VALUED:
            if not value:
                raise UsageError(f"{where}: {option} needs a value")
            if _VALUED[option] == "--find-links" and "://" not in value and not Path(value).is_absolute():
                value = str(path.parent / value)  # as pip reads it: relative to the file
            found.installer_options += [_VALUED[option], value]
        else:
            raise UsageError(f"{where}: {line!r}: venvfs create handles requirements, -r, --index-url, "
                             "--extra-index-url, --find-links and --no-index only")
    return found


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, line) with comments stripped and continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            start = number
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        full = _COMMENT.sub("", pending + line).strip()
        pending = ""
        if full:
            out.append((start, full))
    if pending.strip():
        out.append((start, _COMMENT.sub("", pending).strip()))
    return out
