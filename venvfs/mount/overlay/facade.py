"""``Overlay``: the one object the FUSE adapter talks to, delegating each request to the part that
owns it (see the package docstring for which part owns which state)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection, Sequence

from venvfs.mount.overlay.activity import Activity
from venvfs.mount.overlay.attrs import Attr, Attributes, SetAttr, StatFs
from venvfs.mount.overlay.copyup import CopyUp
from venvfs.mount.overlay.files import Files, Handle
from venvfs.mount.overlay.inodes import HANDLE_BASE, ROOT_INO, InodeTable, Node, parts, relpath
from venvfs.mount.overlay.journal import InodeJournal
from venvfs.mount.overlay.lower import Lower
from venvfs.mount.overlay.namespace import Namespace
from venvfs.mount.overlay.reload import DropItem, ViewReload
from venvfs.mount.overlay.resend import Resent
from venvfs.mount.overlay.tree import Tree
from venvfs.store.store import Store
from venvfs.venv.upper import Upper
from venvfs.venv.view import LowerEntry, View


class Overlay:
    def __init__(self, view: View, upper: Upper, store: Store, *, uid: int | None = None,
                 gid: int | None = None, no_open: bool = False, pyc_links: bool = False,
                 journal: InodeJournal | None = None) -> None:
        self.upper = upper
        self.store = store
        # The kernel sends no OPEN/OPENDIR/RELEASE: I/O and listings arrive with an inode number where
        # a handle would be (see HANDLE_BASE), and copy-up waits for the first write or truncate.
        self.no_open = no_open
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.lower = Lower(view, store, pyc_links=pyc_links)
        self.inodes = InodeTable(view.root, journal)
        # Above every handle an earlier daemon of this mount gave the kernel (journal.py).
        fh_numbers = itertools.count(max(HANDLE_BASE, journal.recovered.next_fh if journal else 0))
        self.tree = Tree(self.inodes, upper, self.lower, fh_numbers, no_open=no_open)
        self.inodes.loader = self.tree.load
        self.copyup = CopyUp(self.inodes, self.tree, upper, self.lower)
        self.files = Files(self.inodes, upper, self.lower, self.copyup, fh_numbers, no_open=no_open)
        self.namespace = Namespace(self.inodes, self.tree, self.copyup, self.files, upper, no_open=no_open)
        self.attrs = Attributes(self.inodes, upper, self.lower, self.copyup, self.files, uid=self.uid,
                                gid=self.gid, no_open=no_open)
        self.reload = ViewReload(self.inodes, self.tree, self.files, upper, self.lower)
        # Requests a dead daemon of this mount carried out, resent to this one (resend.py).
        self.resent = Resent(self.inodes, self.tree, upper)
        self.root = self.inodes.root
        self.nodes = self.inodes.nodes
        self.activity = Activity()

    # -- state the adapter and the tests read ------------------------------------------------------

    @property
    def view(self) -> View:
        return self.lower.view

    @property
    def pyc_links(self) -> bool:
        return self.lower.pyc_links

    @property
    def handles(self) -> dict[int, Handle]:
        return self.files.handles

    @property
    def invalidations(self) -> list[tuple[str, int, str]]:
        return self.inodes.invalidations

    @invalidations.setter
    def invalidations(self, value: list[tuple[str, int, str]]) -> None:
        self.inodes.invalidations = value

    # -- the tree ----------------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        return self.inodes.node(ino)

    def parts(self, node: Node) -> list[str]:
        return parts(node)

    def relpath(self, node: Node) -> str:
        return relpath(node)

    def kind_of(self, entry: LowerEntry) -> int:
        return self.lower.kind_of(entry)

    def load(self, d: Node) -> dict[str, Node]:
        return self.tree.load(d)

    def child(self, d: Node, name: str) -> Node | None:
        return self.tree.child(d, name)

    def resolve(self, relpath: str) -> Node | None:
        return self.tree.resolve(relpath)

    def lookup(self, parent_ino: int, name: str) -> Node | None:
        return self.tree.lookup(parent_ino, name)

    def forget(self, ino: int, nlookup: int) -> None:
        node = self.inodes.forget(ino, nlookup)
        if node is not None:
            # The kernel drops an inode only once no open file refers to it: in no-open mode its
            # inode handle was that open file, and goes now.
            self.files.release(ino)

    # -- attributes --------------------------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        return self.attrs.attr(self.inodes.node(ino))

    def attr(self, node: Node) -> Attr:
        return self.attrs.attr(node)

    def store_stat(self, node: Node) -> tuple[int, int, int, int]:
        """(mode, size, nlink, blocks) of a store entry; the rest is ``store_attr_template``'s."""
        return self.attrs.store_stat(node)

    def store_attr_template(self) -> Attr:
        """What every store entry's attributes share (inode 0, mode 0, size 0 stand for its own)."""
        return Attr(0, 0, 0, uid=self.uid, gid=self.gid, immutable=True)

    def readlink(self, ino: int) -> str:
        return self.attrs.readlink(ino)

    def setattr(self, ino: int, changes: SetAttr, fh: int | None = None) -> Attr:
        self.activity.touch()
        return self.attrs.setattr(ino, changes, fh)

    def getxattr(self, ino: int, name: str) -> bytes:
        return self.attrs.getxattr(ino, name)

    def listxattr(self, ino: int) -> list[str]:
        return self.attrs.listxattr(ino)

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        self.attrs.setxattr(ino, name, value)

    def removexattr(self, ino: int, name: str) -> None:
        self.attrs.removexattr(ino, name)

    def statfs(self) -> StatFs:
        return self.attrs.statfs()

    # -- directories ---------------------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        return self.tree.opendir(ino)

    def readdir(self, fh: int, start: int) -> list[tuple[int, str, Node]]:
        """Entries from offset ``start`` as (next offset, name, node)."""
        return self.tree.readdir(fh, start)

    def releasedir(self, fh: int) -> None:
        self.tree.releasedir(fh)

    def fsyncdir(self, ino: int) -> None:
        self.files.fsyncdir(ino)

    # -- copy-up -------------------------------------------------------------------------------------

    def ensure_upper(self, d: Node) -> None:
        self.copyup.ensure_upper(d)

    def copy_up(self, node: Node, *, content: bool = True) -> None:
        self.copyup.copy_up(node, content=content)

    # -- files ---------------------------------------------------------------------------------------

    def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Returns (file handle, whether the kernel may keep cached pages from earlier opens)."""
        return self.files.open(ino, flags)

    def read(self, fh: int, off: int, size: int) -> bytes:
        return self.files.read(fh, off, size)

    def write(self, fh: int, off: int, buf: bytes) -> int:
        self.activity.touch()
        return self.files.write(fh, off, buf)

    def fsync(self, fh: int, datasync: bool) -> None:
        self.files.fsync(fh, datasync)

    def release(self, fh: int) -> None:
        self.files.release(fh)

    # -- the namespace -------------------------------------------------------------------------------

    def _changed(self, parent_ino: int, name: str) -> None:
        # Before the change, so that a failing request is counted too (harmless: one more check).
        parent = self.inodes.nodes.get(parent_ino)
        below_root = parent is not None and parent.parent is not None and parent.parent.ino == ROOT_INO
        self.activity.names(parent_ino == ROOT_INO, parent.name if parent is not None and below_root else "", name)

    def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int | None = None,
               gid: int | None = None) -> tuple[int, Node]:
        self._changed(parent_ino, name)
        existing = self.resent.created(parent_ino, name, flags, uid)
        if existing is not None:
            return self._open_created(existing, flags)
        return self.namespace.create(parent_ino, name, mode, flags, uid, gid)

    def _open_created(self, node: Node, flags: int) -> tuple[int, Node]:
        if flags & os.O_TRUNC:
            self.attrs.setattr(node.ino, SetAttr(size=0), None)
        node.nlookup += 1  # a CREATE reply counts as a lookup
        if self.no_open:
            return 0, node
        fh, _keep = self.files.open(node.ino, flags & ~(os.O_CREAT | os.O_TRUNC))
        return fh, node

    def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int | None = None,
              gid: int | None = None) -> Node:
        self._changed(parent_ino, name)
        return self.namespace.mknod(parent_ino, name, mode, rdev, uid, gid)

    def mkdir(self, parent_ino: int, name: str, mode: int, uid: int | None = None, gid: int | None = None) -> Node:
        self._changed(parent_ino, name)
        done = self.resent.made_dir(parent_ino, name, uid)
        if done is not None:
            done.nlookup += 1  # a MKDIR reply counts as a lookup
            return done
        return self.namespace.mkdir(parent_ino, name, mode, uid, gid)

    def symlink(self, parent_ino: int, name: str, target: str, uid: int | None = None,
                gid: int | None = None) -> Node:
        self._changed(parent_ino, name)
        return self.namespace.symlink(parent_ino, name, target, uid, gid)

    def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        self._changed(new_parent_ino, new_name)
        return self.namespace.link(ino, new_parent_ino, new_name)

    def unlink(self, parent_ino: int, name: str) -> None:
        self._changed(parent_ino, name)
        if not self.resent.removed(parent_ino, name):
            self.namespace.unlink(parent_ino, name)

    def rmdir(self, parent_ino: int, name: str) -> None:
        self._changed(parent_ino, name)
        if not self.resent.removed(parent_ino, name):
            self.namespace.rmdir(parent_ino, name)

    def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str, flags: int = 0) -> None:
        self._changed(old_parent_ino, old_name)
        self._changed(new_parent_ino, new_name)
        if not self.resent.renamed(old_parent_ino, old_name, new_parent_ino, new_name):
            self.namespace.rename(old_parent_ino, old_name, new_parent_ino, new_name, flags)

    # -- view changes (commit, venvfs add/remove, store repair) --------------------------------------

    def replace_view(self, view: View) -> None:
        """Switch to a new selection's view, telling the kernel about every name that changed."""
        self.reload.replace_view(view)

    def forget_objects(self, digests: Collection[str]) -> int:
        """The store republished these objects after damage: serve the new inodes from now on
        (``ViewReload.forget_objects``). Returns how many of this mount's files were backed by them."""
        return self.reload.forget_objects(digests)

    def drop_upper(self, items: Sequence[DropItem]) -> int:
        """Remove upper copies identical to what the view now provides (after a commit); returns how many
        (``ViewReload.drop_upper``)."""
        return self.reload.drop_upper(items)
