"""``Resent``: how requests a dead daemon had carried out, and the keeper then resent to the next
daemon (``venvfs/mount/keeper.py``, FUSE_NOTIFY_RESEND), are answered.

The kernel sends a request that changes a name only when its own cache says the change is still to
be made: CREATE and MKDIR for a name it believes new, UNLINK, RMDIR and RENAME for a name it believes
there. When the overlay finds the change already made, the request is one the dead daemon did and
could not answer, and the answer the caller would have had is success:

- CREATE without ``O_EXCL`` of the caller's own upper file opens it (that is what ``open(O_CREAT)``
  of an existing file does anyway, so this holds at any time);
- MKDIR of the caller's own upper directory, UNLINK and RMDIR of an absent name, RENAME whose source
  is gone and whose destination is there: only within ``WINDOW`` seconds of a restarted daemon's
  start, when resent requests arrive (they are queued before any new one), since outside it the
  same findings would mean the layers were changed behind the mount's back.

What stays an error: ``O_EXCL`` creates, ``mknod``, ``symlink`` and ``link`` (``EEXIST``), and a
resent request arriving after the window.
"""

from __future__ import annotations

import os
import stat
import time

from venvfs.mount.overlay.inodes import InodeTable, Node, OverlayError, upper_at
from venvfs.mount.overlay.tree import Tree
from venvfs.venv.upper import Upper

WINDOW = 5.0


class Resent:
    def __init__(self, inodes: InodeTable, tree: Tree, upper: Upper) -> None:
        self.inodes = inodes
        self.tree = tree
        self.upper = upper
        self._until = 0.0

    def restarted(self) -> None:
        """This daemon took over a connection whose daemon died: resent requests come first."""
        self._until = time.monotonic() + WINDOW

    def _active(self) -> bool:
        return self._until > 0.0 and time.monotonic() < self._until

    def _child(self, parent_ino: int, name: str) -> tuple[bool, Node | None]:
        """(the parent is a live directory, the node at ``name``); the parent may be a number only
        the dead daemon had loaded."""
        try:
            parent = self.inodes.node(parent_ino)
        except OverlayError:
            return False, None
        if parent.kind != stat.S_IFDIR or not parent.attached:
            return False, None
        try:
            return True, self.tree.child(parent, name)
        except (OverlayError, OSError):
            return False, None

    def _own_upper(self, node: Node, kind: int, uid: int | None) -> bool:
        if node.kind != kind or not node.upper:
            return False
        with upper_at(self.upper, node) as (pfd, leaf):
            st = os.stat(leaf, dir_fd=pfd, follow_symlinks=False)
        # Only the caller's own: the kernel checked no permission on an entry it thought absent.
        return stat.S_IFMT(st.st_mode) == kind and (uid is None or st.st_uid == uid)

    def created(self, parent_ino: int, name: str, flags: int, uid: int | None) -> Node | None:
        if flags & os.O_EXCL:
            return None
        _ok, node = self._child(parent_ino, name)
        return node if node is not None and self._own_upper(node, stat.S_IFREG, uid) else None

    def made_dir(self, parent_ino: int, name: str, uid: int | None) -> Node | None:
        if not self._active():
            return None
        _ok, node = self._child(parent_ino, name)
        return node if node is not None and self._own_upper(node, stat.S_IFDIR, uid) else None

    def removed(self, parent_ino: int, name: str) -> bool:
        if not self._active():
            return False
        ok, node = self._child(parent_ino, name)
        if ok and node is None:
            # Killed between the unlink and its journal record: the old number must die with the name.
            self.inodes.forget_inherited(self.inodes.node(parent_ino), name)
            return True
        return False

    def renamed(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str) -> bool:
        if not self._active():
            return False
        ok, source = self._child(old_parent_ino, old_name)
        ok_new, dest = self._child(new_parent_ino, new_name)
        return ok and ok_new and source is None and dest is not None
