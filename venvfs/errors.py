"""The exceptions venvfs raises on purpose, each with the exit code the CLI turns it into.

Scripts rely on these codes (documented in ``venvfs --help``). An ``OSError`` that reaches the command line
is the filesystem's answer, not a bug: one line naming the path, exit 74 (EX_IOERR). A closed stdout
(``venvfs list | head``) exits 141 quietly. Anything else is a bug and exits 70 (EX_SOFTWARE) with a
traceback.
"""

from __future__ import annotations


class VenvfsError(Exception):
    """An error the user can act on. ``str(err)`` is one line that says what and why."""

    exit_code = 1


class UsageError(VenvfsError):
    """An argument that names nothing usable (a missing file, a directory without wheels)."""

    exit_code = 2


class InvalidWheel(VenvfsError):
    """A wheel that is corrupt, inconsistent with its RECORD, or tries to write outside its destination
    (alone, or together with the other distributions of a selection)."""

    exit_code = 3


class VenvError(VenvfsError):
    """A venv that does not exist, is not managed, or is in a state venvfs will not touch."""

    exit_code = 4


class StateDamaged(VenvError):
    """A venv's ``.venvfs/state.json`` was changed, replaced or deleted by something other than venvfs."""


class StoreError(VenvfsError):
    """The store is unreadable, of an unknown format, or an object in it is missing or modified."""

    exit_code = 5


class MountError(VenvfsError):
    """FUSE is unavailable here, or a mount or unmount failed."""

    exit_code = 6


class Busy(VenvfsError):
    """Another venvfs process holds the lock this command needs."""

    exit_code = 7


class NoMatchingDistribution(VenvfsError):
    """No stored distribution satisfies a requirement for this venv's interpreter and platform."""

    exit_code = 8


class AmbiguousBuild(VenvfsError):
    """Stored builds of one name and version with different content fit the venv equally well."""

    exit_code = 9


class IOFailure(VenvfsError):
    """The filesystem refused a read or write: no space left, read-only, permission denied.

    74 is sysexits.h's EX_IOERR, as 70 is its EX_SOFTWARE: the one code scripts need to tell "the disk"
    from "venvfs" (``str(err)`` names the path, and the space needed where it is known).
    """

    exit_code = 74


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "error",
    2: "usage error",
    3: "invalid wheel (nothing was written to the store), or a selection that cannot be placed safely",
    4: "venv missing, unmanaged or in an unexpected state",
    5: "store unreadable, unknown format, or corrupt",
    6: "FUSE unavailable or mount failed",
    7: "busy: another venvfs command holds the lock",
    8: "no stored distribution matches",
    9: "several stored builds with different content fit equally: name one by its key",
    74: "I/O error: no space left, read-only filesystem or permission denied (the path is named)",
    70: "internal error (a bug: please report it)",
    141: "stdout was closed early (`venvfs ... | head`): the status of a process ended by SIGPIPE",
}
