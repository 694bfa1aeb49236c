"""Overlay semantics over the view (lower, the store) and the upper layer, with no FUSE in sight.

The FUSE adapter (``fuse.py``) turns each request into one call here; everything a filesystem must
decide (which layer a name comes from, copy-up, whiteouts, opaque directories, rename, hard links,
inode numbers and lookup counts) is decided here and unit-tested by calling these methods directly.

Errors are ``OverlayError(errno)``; an ``OSError`` from the upper filesystem carries its own errno.
Changes the kernel cannot see coming (a view reload, a copy-up) are queued in ``invalidations`` for
the adapter to pass on, because the adapter tells the kernel to cache store entries "forever".
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from venvfs.chunks import CorruptObject, ObjectChecker, needs_chunks
from venvfs.fsflags import set_immutable
from venvfs.store import SOURCE_EPOCH, Store
from venvfs.upper import DIR, LNK, NAME_MAX, REG, WHITEOUT_PREFIX, Upper, clone_or_copy, rename_exchange
from venvfs.view import INLINE, OBJECT, PYC, SYMLINK, LowerDir, LowerEntry, LowerFile, View

log = logging.getLogger(__name__)

ROOT_INO = 1
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_EPOCH_NS = SOURCE_EPOCH * 1_000_000_000
# File handles this overlay hands out start here. In the kernel's "no open" mode requests carry no
# handle and the (patched) binding passes the inode number instead, which is always below this.
HANDLE_BASE = 1 << 48
# In that mode files are read by inode, so the fds are a cache: at most this many stay open.
INODE_FDS_MAX = 256
# readdir offsets in that mode (see ``Overlay.readdir``): 62 bits of the name's hash, never 0.
_OFFSET_MASK = (1 << 62) - 1


class OverlayError(Exception):
    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(errno_, message or os.strerror(errno_))
        self.errno = errno_


class Attr:
    __slots__ = ("atime_ns", "blocks", "ctime_ns", "gid", "immutable", "ino", "mode", "mtime_ns", "nlink",
                 "rdev", "size", "uid")

    def __init__(self, ino: int, mode: int, size: int, *, nlink: int = 1, uid: int = 0, gid: int = 0,
                 rdev: int = 0, blocks: int | None = None, atime_ns: int = _EPOCH_NS, mtime_ns: int = _EPOCH_NS,
                 ctime_ns: int = _EPOCH_NS, immutable: bool = False) -> None:
        self.ino = ino
        self.mode = mode
        self.size = size
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.rdev = rdev
        self.blocks = blocks if blocks is not None else (size + 511) // 512
        self.atime_ns = atime_ns
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.immutable = immutable  # store content: the kernel may cache it without limit

    @classmethod
    def from_stat(cls, ino: int, st: os.stat_result) -> Attr:
        return cls(ino, st.st_mode, st.st_size, nlink=st.st_nlink, uid=st.st_uid, gid=st.st_gid, rdev=st.st_rdev,
                   blocks=st.st_blocks, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)


@dataclass
class SetAttr:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass
class StatFs:
    bsize: int
    frsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    favail: int
    namemax: int


class Node:
    __slots__ = ("children", "entry", "extra_links", "ino", "kind", "lower", "name", "nlookup", "opaque",
                 "open_fhs", "parent", "upper")

    def __init__(self, ino: int, parent: Node | None, name: str, kind: int, *, upper: bool,
                 lower: LowerEntry | None) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.kind = kind
        self.upper = upper  # the upper layer has this name (a file's bytes then come from there)
        self.lower = lower  # file: its lower source; dir: the lower dir merged into it (None if opaque)
        self.opaque = False
        self.children: dict[str, Node] | None = None  # loaded on first use
        self.nlookup = 0
        self.extra_links: list[tuple[Node, str]] | None = None
        self.open_fhs: set[int] | None = None
        # The adapter's reply for a store entry (immutable, so built once); dropped on every change.
        self.entry: object | None = None

    @property
    def attached(self) -> bool:
        return self.parent is not None or self.ino == ROOT_INO

    def add_link(self, parent: Node, name: str) -> None:
        if self.parent is None:
            self.parent, self.name = parent, name
        else:
            self.extra_links = [*(self.extra_links or []), (parent, name)]

    def remove_link(self, parent: Node, name: str) -> None:
        if self.parent is parent and self.name == name:
            if self.extra_links:
                self.parent, self.name = self.extra_links.pop(0)
            else:
                self.parent, self.name = None, ""
        elif self.extra_links:
            self.extra_links = [(p, n) for p, n in self.extra_links if not (p is parent and n == name)]

    def __repr__(self) -> str:
        return f"Node({self.ino}, {self.name!r}, kind={self.kind:o}, upper={self.upper})"


class Handle:
    __slots__ = ("by_inode", "data", "fd", "node", "store", "writable")

    def __init__(self, node: Node, fd: int, *, store: bool, writable: bool, data: bytes | None = None,
                 by_inode: bool = False) -> None:
        self.node = node
        self.fd = fd
        self.store = store
        self.writable = writable
        self.data = data
        # No-open mode: the one handle of a node, keyed by its inode, living until the kernel forgets
        # the node; its fd is reopened on demand, upgraded to writable on the first write.
        self.by_inode = by_inode

    def switch(self, fd: int, *, store: bool, writable: bool) -> None:
        """Serve this handle from ``fd`` (-1: open on demand) from now on, closing the fd it had."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.store, self.writable, self.data = fd, store, writable, None


def check_name(name: str, *, creating: bool = False) -> str:
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise OverlayError(errno.EINVAL)
    if len(os.fsencode(name)) > NAME_MAX:
        raise OverlayError(errno.ENAMETOOLONG)
    if creating and name.startswith(WHITEOUT_PREFIX):
        # The upper layer's own bookkeeping names: creating one would delete or hide something.
        raise OverlayError(errno.EINVAL)
    return name


class Overlay:
    def __init__(self, view: View, upper: Upper, store: Store, *, uid: int | None = None,
                 gid: int | None = None, no_open: bool = False, pyc_links: bool = False) -> None:
        self.view = view
        # The kernel sends no OPEN/OPENDIR/RELEASE: I/O and listings arrive with an inode number where
        # a handle would be (see HANDLE_BASE), and copy-up waits for the first write or truncate.
        self.no_open = no_open
        # Store bytecode may be shown as symlinks to the store's .pyc files. CPython 3.11's open()
        # calls isatty() on every file, and the kernel forwards that ioctl to a FUSE daemon whatever
        # it answered before: ~50 us a .pyc, about 0.07x of a warm import. Through a symlink the
        # open, the ioctl and the reads land on the store's own filesystem (docs/mount.md,
        # "Bytecode"). But a chmod, utime or write that follows the link reaches the store object,
        # which mode 0444 does not stop for its owner or root: a file is linked only once it carries
        # the immutable flag (``fsflags``), which stops everyone; elsewhere it is a regular file.
        self.pyc_links = pyc_links
        self._sealed: dict[str, bool] = {}  # bytecode digest -> immutable (may be linked)
        self.upper = upper
        self.store = store
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        root = Node(ROOT_INO, None, "", DIR, upper=True, lower=view.root)
        self.nodes: dict[int, Node] = {ROOT_INO: root}
        self.root = root
        self._next_ino = ROOT_INO + 1
        self.handles: dict[int, Handle] = {}
        self.dir_handles: dict[int, list[tuple[str, Node]]] = {}
        self._next_fh = HANDLE_BASE
        self._fd_cache: dict[int, Handle] = {}  # no-open mode: inode handles holding an fd, oldest first
        # Every store object is checked against its digest as it is first read (``chunks.py``): what
        # the mount serves from the store is never silently wrong, however large the file.
        self._checker = ObjectChecker(store.root)
        self._objects_dir = str(store.object_path("00").parent.parent)
        self._bytecode_dir = str(store.bytecode_path(view.cache_tag or "none", "00").parent.parent)
        self._upper_inos: dict[int, Node] = {}
        # ("inode", ino, "") or ("entry", parent_ino, name): for the adapter to tell the kernel.
        self.invalidations: list[tuple[str, int, str]] = []

    # -- the tree ----------------------------------------------------------------------------------

    def _new(self, parent: Node, name: str, kind: int, *, upper: bool, lower: LowerEntry | None) -> Node:
        node = Node(self._next_ino, parent, name, kind, upper=upper, lower=lower)
        self._next_ino += 1
        self.nodes[node.ino] = node
        if kind == DIR and upper and lower is None:
            pass
        return node

    def kind_of(self, entry: LowerEntry) -> int:
        """The file type the mount shows for a lower entry."""
        if isinstance(entry, LowerDir):
            return DIR
        if entry.kind == PYC and self.pyc_links:
            return LNK if self._seal(entry) else REG
        return LNK if entry.kind == SYMLINK else REG

    def _seal(self, entry: LowerFile) -> bool:
        digest = entry.digest
        assert digest is not None
        sealed = self._sealed.get(digest)
        if sealed is None:
            sealed = self._sealed[digest] = set_immutable(self._lower_str(entry))
        return sealed

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise OverlayError(errno.ESTALE) from None

    def parts(self, node: Node) -> list[str]:
        parts: list[str] = []
        n = node
        while n.ino != ROOT_INO:
            if n.parent is None:
                raise OverlayError(errno.ENOENT)
            parts.append(n.name)
            n = n.parent
        parts.reverse()
        return parts

    def relpath(self, node: Node) -> str:
        return "/".join(self.parts(node))

    def load(self, d: Node) -> dict[str, Node]:
        if d.children is not None:
            return d.children
        if d.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        children: dict[str, Node] = {}
        whiteouts: set[str] = set()
        lower = d.lower if isinstance(d.lower, LowerDir) else None
        if d.upper:
            try:
                listing = self.upper.listdir(self.parts(d))
            except (FileNotFoundError, NotADirectoryError):
                log.error("upper directory of /%s vanished: was the upper layer changed while mounted?",
                          self.relpath(d))
                listing = None
            if listing is not None:
                if listing.opaque:
                    d.opaque = True
                    d.lower = lower = None
                whiteouts = listing.whiteouts
                for name, (kind, st_ino) in listing.entries.items():
                    existing = self._upper_inos.get(st_ino) if kind == REG else None
                    if existing is not None and existing.attached:
                        existing.add_link(d, name)  # another name of a hard-linked upper file
                        children[name] = existing
                        continue
                    lchild = lower.children.get(name) if lower is not None else None
                    node = self._new(d, name, kind, upper=True,
                                     lower=lchild if kind == DIR and isinstance(lchild, LowerDir) else None)
                    if kind == REG:
                        self._upper_inos[st_ino] = node
                    children[name] = node
        if lower is not None:
            for name, entry in lower.children.items():
                if name in children or name in whiteouts:
                    continue
                children[name] = self._new(d, name, self.kind_of(entry), upper=False, lower=entry)
        d.children = children
        return children

    def child(self, d: Node, name: str) -> Node | None:
        return self.load(d).get(name)

    def resolve(self, relpath: str) -> Node | None:
        node = self.root
        for part in relpath.split("/") if relpath else []:
            if node.kind != DIR:
                return None
            nxt = self.child(node, part)
            if nxt is None:
                return None
            node = nxt
        return node

    def _lower_has(self, d: Node, name: str) -> bool:
        return isinstance(d.lower, LowerDir) and name in d.lower.children

    def _detach(self, parent: Node, name: str, node: Node) -> None:
        node.remove_link(parent, name)
        if not node.attached:
            for k, v in list(self._upper_inos.items()):
                if v is node:
                    del self._upper_inos[k]
            self._maybe_free(node)

    def _maybe_free(self, node: Node) -> None:
        if not node.attached and node.nlookup <= 0 and not node.open_fhs:
            self.nodes.pop(node.ino, None)

    def _inval_inode(self, node: Node) -> None:
        node.entry = None
        self.invalidations.append(("inode", node.ino, ""))

    def _inval_entry(self, parent: Node, name: str) -> None:
        self.invalidations.append(("entry", parent.ino, name))

    # -- lookup, attributes --------------------------------------------------------------------------

    def lookup(self, parent_ino: int, name: str) -> Node | None:
        parent = self.node(parent_ino)
        if parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        if name == ".":
            node: Node | None = parent
        elif name == "..":
            node = parent.parent or self.root
        else:
            # (A name of at most NAME_MAX / 4 characters fits in NAME_MAX bytes: skip the encoding.)
            if len(name) > NAME_MAX // 4 and len(os.fsencode(name)) > NAME_MAX:
                raise OverlayError(errno.ENAMETOOLONG)
            if name.startswith(WHITEOUT_PREFIX) or "/" in name:
                return None
            node = self.child(parent, name)
        if node is not None:
            node.nlookup += 1
        return node

    def forget(self, ino: int, nlookup: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.nlookup -= nlookup
        if node.nlookup <= 0 and ino in self.handles:
            # The kernel drops an inode only once no open file refers to it.
            self.release(ino)
        self._maybe_free(node)

    def _lower_path(self, entry: LowerFile) -> Path:
        assert entry.digest is not None
        if entry.kind == PYC:
            assert self.view.cache_tag is not None
            return self.store.bytecode_path(self.view.cache_tag, entry.digest)
        return self.store.object_path(entry.digest, entry.executable)

    def getattr(self, ino: int) -> Attr:
        return self.attr(self.node(ino))

    def attr(self, node: Node) -> Attr:
        if node.upper:
            if not node.attached:
                for fh in node.open_fhs or ():
                    h = self.handles[fh]
                    if h.fd >= 0:
                        return Attr.from_stat(node.ino, os.fstat(h.fd))
                raise OverlayError(errno.ENOENT)
            if node.ino == ROOT_INO:
                st = os.stat(".", dir_fd=self.upper.root_fd)
            else:
                parts = self.parts(node)
                st = self.upper.lstat(parts[:-1], parts[-1])
            attr = Attr.from_stat(node.ino, st)
            if node.kind == DIR and isinstance(node.lower, LowerDir):
                attr.nlink = 1  # merged: the upper count misses lower subdirs; 1 means "unknown" to find
            return attr
        entry = node.lower
        if isinstance(entry, LowerDir):
            subdirs = sum(1 for c in entry.children.values() if isinstance(c, LowerDir))
            return Attr(node.ino, stat.S_IFDIR | 0o755, 4096, nlink=2 + subdirs, uid=self.uid, gid=self.gid,
                        blocks=8, immutable=True)
        assert entry is not None
        if node.kind == LNK:
            size = entry.size if entry.kind == SYMLINK else len(os.fsencode(self._lower_str(entry)))
            return Attr(node.ino, stat.S_IFLNK | 0o777, size, uid=self.uid, gid=self.gid, blocks=0,
                        immutable=True)
        if entry.size < 0:
            try:
                entry.size = self._lower_path(entry).stat().st_size
            except OSError as e:
                log.error("/%s: store bytecode missing (%s)", self.relpath(node), e)
                raise OverlayError(errno.EIO) from None
        # Shown writable (0644/0755, unlike the read-only object) so installers may replace or edit
        # them; any write copies up first.
        mode = stat.S_IFREG | (0o755 if entry.executable else 0o644)
        return Attr(node.ino, mode, entry.size, uid=self.uid, gid=self.gid, immutable=True)

    def readlink(self, ino: int) -> str:
        node = self.node(ino)
        if node.kind != LNK:
            raise OverlayError(errno.EINVAL)
        if not node.upper:
            entry = node.lower
            assert isinstance(entry, LowerFile)
            if entry.kind == PYC:
                return self._lower_str(entry)
            assert entry.target is not None
            return entry.target
        parts = self.parts(node)
        with self.upper.dirfd(parts[:-1]) as pfd:
            return os.readlink(parts[-1], dir_fd=pfd)

    # -- directories ---------------------------------------------------------------------------------

    def opendir(self, ino: int) -> int:
        node = self.node(ino)
        if node.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        # A snapshot: entries added or removed while listing must not skip or repeat others.
        self.dir_handles[fh] = list(self.load(node).items())
        return fh

    def readdir(self, fh: int, start: int) -> list[tuple[int, str, Node]]:
        """Entries from offset ``start`` as (next offset, name, node)."""
        if fh < HANDLE_BASE and self.no_open:
            return self._readdir_stateless(fh, start)
        entries = self.dir_handles.get(fh)
        if entries is None:
            raise OverlayError(errno.EBADF)
        return [(i + 1, name, node) for i, (name, node) in enumerate(entries) if i >= start]

    def _readdir_stateless(self, ino: int, start: int) -> list[tuple[int, str, Node]]:
        """A listing with no handle to hold a snapshot: each entry's offset is derived from its name,
        so a listing resumed after names came or went neither skips nor repeats the others (the
        kernel caches the whole listing, so this runs once per directory and change). ``hash`` is
        salted per process, which is fine: the kernel forgets the offsets when the mount ends."""
        d = self.node(ino)
        if d.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        entries = sorted(((hash(name) & _OFFSET_MASK) + 1, name, node) for name, node in self.load(d).items())
        return [e for e in entries if e[0] > start]

    def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh, None)

    # -- copy-up -------------------------------------------------------------------------------------

    def ensure_upper(self, d: Node) -> None:
        """Give directory ``d`` (and its ancestors) a directory in the upper layer."""
        if d.upper:
            return
        if d.parent is None:
            raise OverlayError(errno.ENOENT)
        self.ensure_upper(d.parent)
        self.upper.ensure_dir(self.parts(d.parent), d.name, 0o755)
        d.upper = True
        d.entry = None  # its attributes now come from the upper directory

    def copy_up(self, node: Node, *, content: bool = True) -> None:
        if node.upper:
            return
        if node.kind == DIR:
            self.ensure_upper(node)
            return
        parent = node.parent
        if parent is None:
            raise OverlayError(errno.ENOENT)
        self.ensure_upper(parent)
        entry = node.lower
        assert isinstance(entry, LowerFile)
        parts = self.parts(parent)
        if node.kind == LNK:
            self.upper.copy_up_symlink(parts, node.name, self.readlink(node.ino))
        else:
            src = None if entry.kind == INLINE else self._lower_path(entry)
            size = entry.size
            if src is not None and content:
                try:
                    size = src.stat().st_size
                except OSError as e:
                    log.error("/%s: store object missing, cannot copy up (%s)", self.relpath(node), e)
                    raise OverlayError(errno.EIO) from None
                if entry.kind == OBJECT:
                    # The copy is the venv's own from now on: bad bytes copied now would never be checked.
                    fd = self._open_lower(node, entry)
                    try:
                        self._check_whole(node, entry, fd)
                    finally:
                        os.close(fd)
            self.upper.copy_up_file(parts, node.name, src=src, data=entry.data, size=size,
                                    mode=0o755 if entry.executable else 0o644, mtime_ns=_EPOCH_NS,
                                    content=content)
        node.upper = True
        self._inval_inode(node)

    def _copy_up_tree(self, d: Node) -> bool:
        """Copy every lower entry below ``d`` into the upper layer; True if there were any."""
        self.ensure_upper(d)
        had_lower = isinstance(d.lower, LowerDir)
        for child in list(self.load(d).values()):
            if child.kind == DIR:
                had_lower = self._copy_up_tree(child) or had_lower
            elif not child.upper:
                self.copy_up(child)
                had_lower = True
        return had_lower

    def _forget_lower(self, d: Node) -> None:
        d.lower = None
        for child in (d.children or {}).values():
            if child.kind == DIR and child.parent is d:
                self._forget_lower(child)

    # -- files ---------------------------------------------------------------------------------------

    def _new_fh(self, handle: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = handle
        node = handle.node
        node.open_fhs = (node.open_fhs or set()) | {fh}
        return fh

    def _open_upper(self, node: Node, flags: int) -> int:
        return self._open_upper_parts(self.parts(node), flags)

    def _open_upper_parts(self, parts: list[str], flags: int) -> int:
        # The kernel tracks the file position (O_APPEND included): writes arrive with explicit offsets.
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOCTTY | os.O_DIRECT | os.O_NOATIME)
        with self.upper.dirfd(parts[:-1]) as pfd:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)

    def _open_upper_writing(self, parts: list[str], flags: int) -> int:
        """Open an upper file for a write the kernel has already allowed: it checked the mode when
        the caller opened the file, or before it sent a truncate (default_permissions). In no-open
        mode the daemon opens files itself, later, and a daemon that is not root meets the mode
        again: a file made read-only since must not refuse writes through a file opened before, so
        the owner's write bit is lifted for this open alone (a crash in between leaves it lifted)."""
        try:
            return self._open_upper_parts(parts, flags)
        except PermissionError as e:
            denied = e
        with self.upper.dirfd(parts[:-1]) as pfd:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & stat.S_IWUSR:
                raise denied
            mode = stat.S_IMODE(st.st_mode)
            os.chmod(parts[-1], mode | stat.S_IWUSR, dir_fd=pfd)
            try:
                return self._open_upper_parts(parts, flags)
            finally:
                os.chmod(parts[-1], mode, dir_fd=pfd)

    def _lower_str(self, entry: LowerFile) -> str:
        """``_lower_path`` as a string built without pathlib (this runs for every cold read)."""
        digest = entry.digest
        assert digest is not None
        if entry.kind == PYC:
            return f"{self._bytecode_dir}/{digest[:2]}/{digest}.pyc"
        return f"{self._objects_dir}/{digest[:2]}/{digest}{'.x' if entry.executable else ''}"

    def _open_lower(self, node: Node, entry: LowerFile) -> int:
        path = self._lower_str(entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            log.error("/%s: store file %s unreadable (%s)", self.relpath(node), path, e)
            raise OverlayError(errno.EIO) from None
        try:
            if entry.kind == OBJECT:
                st = os.fstat(fd)
                if st.st_size != entry.size:
                    log.error("/%s: store object %s is %d bytes, its record says %d (corrupt store)",
                              self.relpath(node), path, st.st_size, entry.size)
                    raise OverlayError(errno.EIO)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_whole(self, node: Node, entry: LowerFile, fd: int) -> None:
        assert entry.digest is not None
        try:
            self._checker.check_whole(fd, entry.digest, entry.size)
        except CorruptObject as e:
            log.error("/%s: store object %s %s (corrupt store)", self.relpath(node), entry.digest, e)
            raise OverlayError(errno.EIO) from None

    def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Returns (file handle, whether the kernel may keep cached pages from earlier opens)."""
        node = self.node(ino)
        if node.kind == DIR:
            raise OverlayError(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if not node.upper and (writable or flags & os.O_TRUNC):
            self.copy_up(node, content=not flags & os.O_TRUNC)
        if node.upper:
            fd = self._open_upper(node, flags)
            return self._new_fh(Handle(node, fd, store=False, writable=writable)), False
        entry = node.lower
        assert isinstance(entry, LowerFile)
        if entry.kind == INLINE:
            return self._new_fh(Handle(node, -1, store=True, writable=False, data=entry.data)), True
        if entry.kind == PYC or (entry.digest is not None and self._checker.checked(entry.digest)):
            # Checked before: open the store file only when the kernel reads, which with pages kept
            # across opens (keep_cache: store bytes never change) it mostly does not.
            return self._new_fh(Handle(node, -1, store=True, writable=False)), True
        # A missing or resized object fails the open itself, and so does a damaged small one (Python
        # reads those whole anyway); a large one is checked chunk by chunk as it is read.
        fd = self._open_lower(node, entry)
        try:
            if entry.kind == OBJECT and not needs_chunks(entry.size):
                self._check_whole(node, entry, fd)
        except BaseException:
            os.close(fd)
            raise
        return self._new_fh(Handle(node, fd, store=True, writable=False)), True

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is not None:
            return h
        if fh < HANDLE_BASE and self.no_open:
            node = self.node(fh)
            if node.kind == DIR:
                raise OverlayError(errno.EISDIR)
            h = Handle(node, -1, store=not node.upper, writable=False, by_inode=True,
                       data=node.lower.data if not node.upper and isinstance(node.lower, LowerFile)
                       and node.lower.kind == INLINE else None)
            self.handles[fh] = h
            node.open_fhs = (node.open_fhs or set()) | {fh}
            return h
        raise OverlayError(errno.EBADF)

    def _cache_fd(self, h: Handle) -> None:
        """Count ``h``'s fresh fd against INODE_FDS_MAX, closing the oldest cached ones beyond it."""
        cache = self._fd_cache
        cache.pop(h.node.ino, None)
        cache[h.node.ino] = h
        while len(cache) > INODE_FDS_MAX:
            ino = next(iter(cache))
            old = cache.pop(ino)
            if old.fd >= 0 and (old.store or old.node.attached):
                # An unlinked upper file is reachable through this fd alone: never close that one.
                os.close(old.fd)
                old.fd = -1
                old.writable = False

    def _pin(self, node: Node) -> None:
        """No-open mode: ``node`` (an upper file) loses its last name while the kernel may still
        have it open; hold an fd to it, as an open handle would, until the kernel forgets it."""
        if not self.no_open or node.nlookup <= 0 or node.kind != REG or not node.upper or node.extra_links:
            return
        h = self._handle(node.ino)
        if h.fd >= 0 and not h.store and h.writable:
            self._fd_cache.pop(node.ino, None)
            return
        parts = self.parts(node)
        try:
            fd = self._open_upper_writing(parts, os.O_RDWR)
            writable = True
        except PermissionError:
            fd = self._open_upper_parts(parts, os.O_RDONLY)
            writable = False
        h.switch(fd, store=False, writable=writable)
        self._fd_cache.pop(node.ino, None)

    def _anonymous_copy(self, node: Node) -> int:
        entry = node.lower
        assert isinstance(entry, LowerFile)
        fd = os.open(self.upper.work, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            if entry.kind == INLINE:
                os.pwrite(fd, entry.data or b"", 0)
            else:
                src = self._open_lower(node, entry)
                try:
                    self._check_whole(node, entry, src)
                    clone_or_copy(src, fd, os.fstat(src).st_size)
                finally:
                    os.close(src)
            os.fchmod(fd, 0o755 if entry.executable else 0o644)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _writable(self, h: Handle) -> None:
        """No-open mode: make inode handle ``h`` writable, copying its file up first if needed."""
        node = h.node
        if not node.attached:
            if node.upper:
                raise OverlayError(errno.EBADF)  # unlinked, and its pinned fd is read-only
            # A store file deleted while open, now written: overlayfs would have copied it up at
            # open time; the copy goes where an unlinked file lives, nowhere.
            h.switch(self._anonymous_copy(node), store=False, writable=True)
            node.upper = True
            self._inval_inode(node)
            return
        self.copy_up(node)
        h.switch(self._open_upper_writing(self.parts(node), os.O_RDWR), store=False, writable=True)
        self._cache_fd(h)

    def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.store and h.node.upper and h.node.attached:
            # Copied up since this handle opened: read the copy, which a writer may have changed.
            with contextlib.suppress(OSError):
                h.switch(self._open_upper(h.node, os.O_RDONLY), store=False, writable=False)
                if h.by_inode:
                    self._cache_fd(h)
        if h.data is not None:
            return h.data[off:off + size]
        if h.fd < 0:
            if h.store:
                entry = h.node.lower
                assert isinstance(entry, LowerFile)
                h.fd = self._open_lower(h.node, entry)
            else:
                h.fd = self._open_upper(h.node, os.O_RDONLY)
            if h.by_inode:
                self._cache_fd(h)
        try:
            if h.store:
                entry = h.node.lower
                if isinstance(entry, LowerFile) and entry.kind == OBJECT and entry.digest is not None:
                    return self._checker.read(h.fd, entry.digest, entry.size, off, size)
            return os.pread(h.fd, size, off)
        except CorruptObject as e:
            log.error("/%s: store object %s %s (corrupt store)", self.relpath(h.node) if h.node.attached else "?",
                      h.node.lower.digest if isinstance(h.node.lower, LowerFile) else "?", e)
            raise OverlayError(errno.EIO) from None
        except OSError as e:
            if h.store:
                log.error("/%s: reading the store failed (%s)", self.relpath(h.node) if h.node.attached else "?", e)
                raise OverlayError(errno.EIO) from None
            raise

    def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        if h.by_inode and (not h.writable or h.fd < 0 or h.store):
            self._writable(h)
        if not h.writable or h.store:
            raise OverlayError(errno.EBADF)
        return os.pwrite(h.fd, buf, off)

    def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        if h.by_inode and h.fd < 0 and not h.store:
            # Its fd was closed (cache eviction) after a write: fsync reaches the file through any fd.
            h.fd = self._open_upper(h.node, os.O_RDONLY)
            self._cache_fd(h)
        if h.store or h.fd < 0:
            return
        if datasync:
            os.fdatasync(h.fd)
        else:
            os.fsync(h.fd)

    def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        if h.fd >= 0:
            os.close(h.fd)
        if h.by_inode:
            self._fd_cache.pop(fh, None)
        node = h.node
        if node.open_fhs:
            node.open_fhs.discard(fh)
        self._maybe_free(node)

    def fsyncdir(self, ino: int) -> None:
        node = self.node(ino)
        if not node.upper:
            return
        with self.upper.dirfd(self.parts(node)) as pfd:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- creating --------------------------------------------------------------------------------

    def _prepare_create(self, parent_ino: int, name: str) -> tuple[Node, list[str]]:
        parent = self.node(parent_ino)
        if parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        check_name(name, creating=True)
        if not parent.attached:
            raise OverlayError(errno.ENOENT)
        if self.child(parent, name) is not None:
            raise OverlayError(errno.EEXIST)
        self.ensure_upper(parent)
        return parent, self.parts(parent)

    def _chown_new(self, pfd: int, name: str, uid: int | None, gid: int | None) -> None:
        # A daemon running as root (with --allow-other) gives new files to whoever created them.
        if os.geteuid() == 0 and uid is not None and gid is not None and (uid, gid) != (0, 0):
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)

    def _attach_new(self, parent: Node, name: str, kind: int, *, opaque: bool = False) -> Node:
        node = self._new(parent, name, kind, upper=True, lower=None)
        if kind == DIR:
            node.children = {}
            node.opaque = opaque
        self.load(parent)[name] = node
        node.nlookup += 1
        return node

    def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int | None = None,
               gid: int | None = None) -> tuple[int, Node]:
        parent, parts = self._prepare_create(parent_ino, name)
        open_flags = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOCTTY | os.O_DIRECT | os.O_NOATIME)
                      | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
        if self.no_open:
            # The fd serves every later read and write of this inode, whoever opened it how: read-write.
            # (Whoever creates a file may open it so, whatever mode it is given.)
            open_flags = open_flags & ~os.O_ACCMODE | os.O_RDWR
        with self.upper.dirfd(parts) as pfd:
            fd = os.open(name, open_flags, stat.S_IMODE(mode), dir_fd=pfd)
            try:
                self._chown_new(pfd, name, uid, gid)
            except BaseException:
                os.close(fd)
                raise
        node = self._attach_new(parent, name, REG)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if self.no_open:
            # Once OPEN has been answered ENOSYS the kernel never sends RELEASE for a regular file,
            # not even for one that came from CREATE (fs/fuse/file.c, fuse_file_put: "no_open" skips
            # the release request), so a handle handed out here would never be closed: one leaked fd
            # per created file. Reply with handle 0 instead: the kernel then sends I/O on this file
            # with the inode, like every other file, and its fd joins the bounded inode fd cache.
            h = self._handle(node.ino)
            h.switch(fd, store=False, writable=True)
            self._cache_fd(h)
            return 0, node
        return self._new_fh(Handle(node, fd, store=False, writable=writable)), node

    def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int | None = None,
              gid: int | None = None) -> Node:
        if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise OverlayError(errno.EPERM)
        parent, parts = self._prepare_create(parent_ino, name)
        with self.upper.dirfd(parts) as pfd:
            os.mknod(name, mode, rdev, dir_fd=pfd)
            self._chown_new(pfd, name, uid, gid)
        return self._attach_new(parent, name, stat.S_IFMT(mode))

    def mkdir(self, parent_ino: int, name: str, mode: int, uid: int | None = None, gid: int | None = None) -> Node:
        parent, parts = self._prepare_create(parent_ino, name)
        # The name is free in the merged view, so a lower entry of that name was deleted: the new
        # directory must not show the old one's contents (opaque).
        opaque = self._lower_has(parent, name)
        self.upper.mkdir(parts, name, stat.S_IMODE(mode), opaque=opaque)
        with self.upper.dirfd(parts) as pfd:
            self._chown_new(pfd, name, uid, gid)
        return self._attach_new(parent, name, DIR, opaque=opaque)

    def symlink(self, parent_ino: int, name: str, target: str, uid: int | None = None,
                gid: int | None = None) -> Node:
        parent, parts = self._prepare_create(parent_ino, name)
        with self.upper.dirfd(parts) as pfd:
            os.symlink(target, name, dir_fd=pfd)
            self._chown_new(pfd, name, uid, gid)
        return self._attach_new(parent, name, LNK)

    def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        node = self.node(ino)
        if node.kind == DIR:
            raise OverlayError(errno.EPERM)
        if not node.attached:
            raise OverlayError(errno.ENOENT)
        new_parent, parts = self._prepare_create(new_parent_ino, new_name)
        self.copy_up(node)
        src = self.parts(node)
        with self.upper.dirfd(src[:-1]) as sfd, self.upper.dirfd(parts) as dfd:
            os.link(src[-1], new_name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        node.add_link(new_parent, new_name)
        self.load(new_parent)[new_name] = node
        node.nlookup += 1
        self._inval_inode(node)  # st_nlink changed
        return node

    # -- removing --------------------------------------------------------------------------------

    def _existing(self, parent_ino: int, name: str) -> tuple[Node, Node]:
        parent = self.node(parent_ino)
        if parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        check_name(name)
        node = self.child(parent, name) if not name.startswith(WHITEOUT_PREFIX) else None
        if node is None:
            raise OverlayError(errno.ENOENT)
        return parent, node

    def unlink(self, parent_ino: int, name: str) -> None:
        parent, node = self._existing(parent_ino, name)
        if node.kind == DIR:
            raise OverlayError(errno.EISDIR)
        self._remove(parent, name, node)

    def rmdir(self, parent_ino: int, name: str) -> None:
        parent, node = self._existing(parent_ino, name)
        if node.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        if self.load(node):
            raise OverlayError(errno.ENOTEMPTY)
        self._remove(parent, name, node)

    def _remove(self, parent: Node, name: str, node: Node) -> None:
        self._pin(node)
        parts = self.parts(parent)
        if self._lower_has(parent, name):
            # Whiteout first: a crash in between leaves the upper entry, which wins over it.
            self.ensure_upper(parent)
            self.upper.whiteout(parts, name)
        if node.upper:
            with self.upper.dirfd(parts) as pfd:
                if node.kind == DIR:
                    self.upper.clear_markers([*parts, name])
                    os.rmdir(name, dir_fd=pfd)
                else:
                    os.unlink(name, dir_fd=pfd)
        self.load(parent).pop(name, None)
        self._detach(parent, name, node)
        if node.attached:
            self._inval_inode(node)  # a hard link went: st_nlink changed

    # -- rename ------------------------------------------------------------------------------------

    def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str, flags: int = 0) -> None:
        if flags & RENAME_EXCHANGE:
            self._exchange(old_parent_ino, old_name, new_parent_ino, new_name)
            return
        old_parent, src = self._existing(old_parent_ino, old_name)
        new_parent = self.node(new_parent_ino)
        if new_parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        check_name(new_name, creating=True)
        dst = self.child(new_parent, new_name)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise OverlayError(errno.EEXIST)
            if dst is src:
                return  # two names of one file: POSIX says do nothing
            if src.kind == DIR and dst.kind != DIR:
                raise OverlayError(errno.ENOTDIR)
            if src.kind != DIR and dst.kind == DIR:
                raise OverlayError(errno.EISDIR)
            if dst.kind == DIR and self.load(dst):
                raise OverlayError(errno.ENOTEMPTY)
        self._refuse_below_itself(src, new_parent)
        opaque = False
        if src.kind == DIR:
            # overlayfs answers EXDEV here; instead the directory's lower content is copied up so it
            # can move as a whole, and made opaque so no lower entry at its new path leaks in.
            had_lower = self._copy_up_tree(src)
            opaque = had_lower or self._lower_has(new_parent, new_name)
        else:
            self.copy_up(src)
        self.ensure_upper(new_parent)
        src_parts = self.parts(old_parent)
        dst_parts = self.parts(new_parent)
        if opaque and not src.opaque:
            self.upper.make_opaque([*src_parts, old_name])
        if dst is not None and dst.kind == DIR and dst.upper:
            self.upper.clear_markers([*dst_parts, new_name])
        if dst is not None:
            self._pin(dst)
        with self.upper.dirfd(src_parts) as sfd, self.upper.dirfd(dst_parts) as dfd:
            os.rename(old_name, new_name, src_dir_fd=sfd, dst_dir_fd=dfd)
        if self._lower_has(old_parent, old_name):
            self.upper.whiteout(src_parts, old_name)
        self.load(old_parent).pop(old_name, None)
        if dst is not None:
            self.load(new_parent).pop(new_name, None)
            self._detach(new_parent, new_name, dst)
        src.remove_link(old_parent, old_name)
        src.add_link(new_parent, new_name)
        self.load(new_parent)[new_name] = src
        if opaque:
            src.opaque = True
            self._forget_lower(src)

    @staticmethod
    def _refuse_below_itself(node: Node, dest: Node) -> None:
        """A directory may not move below itself (the kernel checks too, but the tree is ours to keep)."""
        n: Node | None = dest
        while n is not None:
            if n is node:
                raise OverlayError(errno.EINVAL)
            n = n.parent

    def _exchange(self, a_parent_ino: int, a_name: str, b_parent_ino: int, b_name: str) -> None:
        """rename(RENAME_EXCHANGE): both names stay, so no whiteout is needed, only both in the upper layer."""
        a_parent, a = self._existing(a_parent_ino, a_name)
        b_parent, b = self._existing(b_parent_ino, b_name)
        if a is b:
            return
        self._refuse_below_itself(a, b_parent)
        self._refuse_below_itself(b, a_parent)
        for node, parent, name in ((a, a_parent, a_name), (b, b_parent, b_name)):
            if node.kind == DIR:
                # As for rename: its store content comes along, and nothing of the store at its new
                # place may show through.
                self._copy_up_tree(node)
                if not node.opaque:
                    self.upper.make_opaque([*self.parts(parent), name])
            else:
                self.copy_up(node)
        self.ensure_upper(a_parent)
        self.ensure_upper(b_parent)
        with self.upper.dirfd(self.parts(a_parent)) as afd, self.upper.dirfd(self.parts(b_parent)) as bfd:
            rename_exchange(afd, a_name, bfd, b_name)
        a.remove_link(a_parent, a_name)
        b.remove_link(b_parent, b_name)
        a.add_link(b_parent, b_name)
        b.add_link(a_parent, a_name)
        self.load(a_parent)[a_name] = b
        self.load(b_parent)[b_name] = a
        for node in (a, b):
            if node.kind == DIR:
                node.opaque = True
                self._forget_lower(node)
            self._inval_inode(node)  # ctime changed

    # -- attributes --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _at(self, node: Node) -> Iterator[tuple[int, str]]:
        """(directory fd, name) of ``node`` in the upper layer, for the *at system calls."""
        if node.ino == ROOT_INO:
            yield self.upper.root_fd, "."
            return
        parts = self.parts(node)
        with self.upper.dirfd(parts[:-1]) as pfd:
            yield pfd, parts[-1]

    def setattr(self, ino: int, changes: SetAttr, fh: int | None = None) -> Attr:
        node = self.node(ino)
        if not node.upper:
            self.copy_up(node, content=changes.size != 0)
        # In no-open mode ftruncate arrives with a zero handle: the node's inode handle stands in.
        h = self.handles.get(fh) if fh else self.handles.get(ino) if self.no_open else None
        if h is not None and (h.store or h.node is not node or h.fd < 0):
            h = None
        if not node.attached and h is None:
            raise OverlayError(errno.ENOENT)
        if node.attached:
            with self._at(node) as (pfd, name):
                self._apply(node, changes, h, pfd, name)
        else:
            assert h is not None
            self._apply_fd(changes, h.fd)
        return self.attr(node)

    def _apply(self, node: Node, c: SetAttr, h: Handle | None, pfd: int, name: str) -> None:
        if c.size is not None:
            if node.kind != REG:
                raise OverlayError(errno.EINVAL if node.kind != DIR else errno.EISDIR)
            if h is not None and h.writable:
                os.ftruncate(h.fd, c.size)
            else:
                fd = self._open_upper_writing(self.parts(node), os.O_WRONLY)
                try:
                    os.ftruncate(fd, c.size)
                finally:
                    os.close(fd)
        if c.mode is not None and node.kind != LNK:
            os.chmod(name, stat.S_IMODE(c.mode), dir_fd=pfd, follow_symlinks=False)
        if c.uid is not None or c.gid is not None:
            os.chown(name, -1 if c.uid is None else c.uid, -1 if c.gid is None else c.gid, dir_fd=pfd,
                     follow_symlinks=False)
        if c.atime_ns is not None or c.mtime_ns is not None:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns if c.atime_ns is None else c.atime_ns,
                               st.st_mtime_ns if c.mtime_ns is None else c.mtime_ns),
                     dir_fd=pfd, follow_symlinks=False)

    def _apply_fd(self, c: SetAttr, fd: int) -> None:
        if c.size is not None:
            os.ftruncate(fd, c.size)
        if c.mode is not None:
            os.fchmod(fd, stat.S_IMODE(c.mode))
        if c.uid is not None or c.gid is not None:
            os.fchown(fd, -1 if c.uid is None else c.uid, -1 if c.gid is None else c.gid)
        if c.atime_ns is not None or c.mtime_ns is not None:
            st = os.fstat(fd)
            os.utime(fd, ns=(st.st_atime_ns if c.atime_ns is None else c.atime_ns,
                             st.st_mtime_ns if c.mtime_ns is None else c.mtime_ns))

    # -- extended attributes -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _xattr_path(self, node: Node) -> Iterator[str]:
        with self._at(node) as (pfd, name):
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                # The magic link reaches the very inode opened above, never a path looked up again.
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)

    def getxattr(self, ino: int, name: str) -> bytes:
        node = self.node(ino)
        if not node.upper or node.kind == LNK:
            raise OverlayError(errno.ENODATA)
        with self._xattr_path(node) as path:
            return os.getxattr(path, name)

    def listxattr(self, ino: int) -> list[str]:
        node = self.node(ino)
        if not node.upper or node.kind == LNK:
            return []
        with self._xattr_path(node) as path:
            return os.listxattr(path)

    def setxattr(self, ino: int, name: str, value: bytes) -> None:
        node = self.node(ino)
        if node.kind == LNK:
            raise OverlayError(errno.EPERM)
        self.copy_up(node)
        with self._xattr_path(node) as path:
            os.setxattr(path, name, value)

    def removexattr(self, ino: int, name: str) -> None:
        node = self.node(ino)
        if not node.upper or node.kind == LNK:
            raise OverlayError(errno.ENODATA)
        with self._xattr_path(node) as path:
            os.removexattr(path, name)

    def statfs(self) -> StatFs:
        st = os.statvfs(self.upper.root)
        return StatFs(st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree,
                      st.f_favail, NAME_MAX)

    # -- view changes (commit, venvfs add/remove) --------------------------------------------------

    def replace_view(self, view: View) -> None:
        """Switch to a new selection's view, telling the kernel about every name that changed."""
        self.view = view
        self._bytecode_dir = str(self.store.bytecode_path(view.cache_tag or "none", "00").parent.parent)
        self._reconcile(self.root, view.root)

    def _reconcile(self, d: Node, new_lower: LowerDir | None) -> None:
        if d.opaque:
            new_lower = None
        d.lower = new_lower
        d.entry = None  # a lower directory's st_nlink counts its subdirectories
        if d.children is None:
            return
        whiteouts: set[str] = set()
        if d.upper:
            with contextlib.suppress(OSError):
                listing = self.upper.listdir(self.parts(d))
                whiteouts = listing.whiteouts
                for name in list(whiteouts):
                    if new_lower is None or name not in new_lower.children:
                        # Hides nothing any more; dropped so a later selection of that name shows.
                        self.upper.remove_whiteout(self.parts(d), name)
                        whiteouts.discard(name)
        children = d.children
        names_before = set(children)
        for name, node in list(children.items()):
            entry = new_lower.children.get(name) if new_lower is not None and name not in whiteouts else None
            if node.upper:
                if node.kind == DIR and node.parent is d:
                    self._reconcile(node, entry if isinstance(entry, LowerDir) else None)
                continue
            if isinstance(entry, LowerDir) and node.kind == DIR:
                self._reconcile(node, entry)
                continue
            if isinstance(entry, LowerFile) and isinstance(node.lower, LowerFile) and entry.same_as(node.lower):
                node.lower = entry
                continue
            del children[name]
            self._detach(d, name, node)
            self._inval_entry(d, name)
            if entry is not None:
                children[name] = self._new(d, name, self.kind_of(entry), upper=False, lower=entry)
        if new_lower is not None:
            for name, entry in new_lower.children.items():
                if name not in children and name not in whiteouts:
                    children[name] = self._new(d, name, self.kind_of(entry), upper=False, lower=entry)
                    self._inval_entry(d, name)  # the kernel may hold a cached "no such name"
        if set(children) != names_before:
            # The kernel may hold this directory's listing (no-open mode caches listings), and
            # invalidating an entry it never looked up does not drop that. Dropping the directory's
            # pages does, except for an empty listing, which has none: that one is dropped when the
            # directory's mtime differs, which is also the truth (its contents changed now).
            if d.upper:
                with contextlib.suppress(OSError), self._at(d) as (pfd, name):
                    os.utime(name, dir_fd=pfd, follow_symlinks=False)
            self._inval_inode(d)

    def forget_objects(self, digests: Collection[str]) -> int:
        """The store republished these objects after damage (``store verify --repair``, ``store add``):
        serve the new inodes from now on. Returns how many of this mount's files were backed by them.

        Three things hold the old bytes: the kernel's page cache (kept across opens, since store files
        "never change"), fds this daemon holds on the damaged inode (the fd cache, open handles), and
        the checker's record that the object was checked. All three go; the next read opens the
        store's new file and checks it like a first read.
        """
        wanted = set(digests)
        for digest in wanted:
            self._checker.forget(digest)
        count = 0
        for node in list(self.nodes.values()):
            entry = node.lower
            if (node.upper or node.kind != REG or not isinstance(entry, LowerFile) or entry.kind != OBJECT
                    or entry.digest not in wanted):
                continue
            for fh in node.open_fhs or ():
                h = self.handles.get(fh)
                if h is not None and h.store and h.fd >= 0:
                    h.switch(-1, store=True, writable=False)
            self._fd_cache.pop(node.ino, None)
            self._inval_inode(node)
            count += 1
        return count

    def drop_upper(self, relpaths: Sequence[str]) -> int:
        """Remove upper copies identical to what the view now provides (after a commit); returns how many."""
        dropped = 0
        dirs: set[str] = set()
        for rel in relpaths:
            node = self.resolve(rel)
            if node is None or not node.upper or node.kind != REG or node.parent is None or node.extra_links:
                continue
            parent = node.parent
            entry = parent.lower.children.get(node.name) if isinstance(parent.lower, LowerDir) else None
            if not isinstance(entry, LowerFile) or not self._upper_matches(node, entry):
                continue
            parts = self.parts(parent)
            replaced = self.kind_of(entry) != REG
            if replaced:
                self._pin(node)
            with self.upper.dirfd(parts) as pfd:
                os.unlink(node.name, dir_fd=pfd)
            if replaced:
                # A .pyc now shown as a symlink: the kernel keeps an inode's file type, so the name
                # gets a new inode (readers of the old one keep its bytes, as after an unlink).
                name = node.name
                self._detach(parent, name, node)
                self.load(parent)[name] = self._new(parent, name, self.kind_of(entry), upper=False, lower=entry)
                self._inval_entry(parent, name)
            else:
                node.upper = False
                node.lower = entry
                h = self.handles.get(node.ino)
                if h is not None and h.by_inode:
                    # Its fd reaches the unlinked upper copy: read the store's from now on.
                    h.switch(-1, store=True, writable=False)
                    self._fd_cache.pop(node.ino, None)
                self._inval_inode(node)
            dropped += 1
            if parts:
                dirs.add("/".join(parts))
        for rel in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
            while rel:
                node = self.resolve(rel)
                if node is None or not node.upper or node.parent is None or not isinstance(node.lower, LowerDir):
                    break
                if any(c.upper for c in self.load(node).values()):
                    break
                listing = self.upper.listdir(self.parts(node))
                if listing.entries or listing.whiteouts or listing.opaque:
                    break
                parts = self.parts(node)
                with self.upper.dirfd(parts[:-1]) as pfd:
                    os.rmdir(parts[-1], dir_fd=pfd)
                node.upper = False
                self._inval_inode(node)
                rel = rel.rpartition("/")[0]
        return dropped

    def _upper_matches(self, node: Node, entry: LowerFile) -> bool:
        parts = self.parts(node)
        if entry.kind == PYC:
            # Bytecode of a source that now comes from the store: the store's .pyc is the valid one
            # (the upper one was compiled against the upper copy's mtime).
            src_name = node.name.split(".")[0] + ".py"
            assert node.parent is not None and node.parent.parent is not None
            src = self.child(node.parent.parent, src_name)
            return src is not None and not src.upper
        if entry.kind != OBJECT:
            return False
        try:
            with self.upper.dirfd(parts[:-1]) as pfd:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                st = os.fstat(fd)
                if st.st_size != entry.size or bool(st.st_mode & 0o100) != entry.executable:
                    return False
                h = hashlib.sha256()
                off = 0
                while chunk := os.pread(fd, 1 << 20, off):
                    h.update(chunk)
                    off += len(chunk)
                return h.hexdigest() == entry.digest
            finally:
                os.close(fd)
        except OSError:
            return False
