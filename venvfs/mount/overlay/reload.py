"""View changes while mounted (commit, ``venvfs add/remove``, store repair): a new selection's view
reconciled with the loaded tree, store objects republished after damage, and upper copies dropped
once the store provides the same file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Collection, Sequence

from venvfs.mount.overlay.files import Files
from venvfs.mount.overlay.inodes import InodeTable, Node, parts, upper_at
from venvfs.mount.overlay.lower import Lower
from venvfs.mount.overlay.tree import Tree
from venvfs.venv.upper import DIR, OPAQUE, REG, Upper, whiteout_name
from venvfs.venv.view import OBJECT, PYC, LowerDir, LowerFile, View

# A path to drop, or a path with the stat stamp the ingest verified (``ViewReload.drop_upper``).
DropItem = str | list[str | int]


class ViewReload:
    """Changes the lower layer under a live tree. Every name whose node changes is queued for the
    kernel (``InodeTable.invalidations``), since the adapter lets it cache store entries "forever"."""

    def __init__(self, inodes: InodeTable, tree: Tree, files: Files, upper: Upper, lower: Lower) -> None:
        self.inodes = inodes
        self.tree = tree
        self.files = files
        self.upper = upper
        self.lower = lower

    def replace_view(self, view: View) -> None:
        """Switch to a new selection's view, telling the kernel about every name that changed."""
        self.lower.set_view(view)
        root = self._reconcile(self.inodes.root, view.root)
        if root is not None:
            view.root = root

    def _reconcile(self, d: Node, new_lower: LowerDir | None) -> LowerDir | None:
        """Move ``d`` onto ``new_lower``; returns the lower directory it ends up with: the one it had
        when nothing in it or below it changed (the new copy, its names and entries, is then freed at
        once: after a reload under a walked tree it was 110 bytes an entry, and the allocator kept
        the pages), else ``new_lower``."""
        if d.opaque:
            new_lower = None
        old_lower = d.lower
        d.lower = new_lower
        if d.children is None:
            return new_lower
        whiteouts: set[str] = set()
        if d.upper:
            with contextlib.suppress(OSError):
                listing = self.upper.listdir(parts(d))
                whiteouts = listing.whiteouts
                for name in list(whiteouts):
                    if new_lower is None or name not in new_lower.children:
                        # Hides nothing any more; dropped so a later selection of that name shows.
                        self.upper.remove_whiteout(parts(d), name)
                        whiteouts.discard(name)
        children = d.children
        names_before = set(children)
        kind_of = self.lower.kind_of
        for name, node in list(children.items()):
            if node.upper:
                # An upper entry outranks a whiteout of its own name (an installer that deleted the
                # directory and made it again leaves both), as Tree.load reads it: whether the lower
                # directory shows through is the upper directory's opaque marker's to say.
                if node.kind == DIR and node.parent is d:
                    below = new_lower.children.get(name) if new_lower is not None else None
                    below = below if isinstance(below, LowerDir) else None
                    kept = self._reconcile(node, below)
                    if below is not None and kept is not None and kept is not below:
                        assert new_lower is not None
                        new_lower.children[name] = kept
                continue
            entry = new_lower.children.get(name) if new_lower is not None and name not in whiteouts else None
            if isinstance(entry, LowerDir) and node.kind == DIR:
                kept = self._reconcile(node, entry)
                if kept is not None and kept is not entry:
                    assert new_lower is not None
                    new_lower.children[name] = kept
                continue
            if isinstance(entry, LowerFile) and isinstance(node.lower, LowerFile) and entry.same_as(node.lower):
                # The node keeps its entry and the new view takes it too: the new one is freed at once,
                # so a reload does not leave a second copy of the tree's entries with the allocator
                # (which keeps the pages of freed objects), and a .pyc keeps the size it was stat'ed at.
                assert new_lower is not None
                new_lower.children[name] = node.lower
                continue
            del children[name]
            self.inodes.detach(d, name, node)
            self.inodes.inval_entry(d, name)
            if entry is not None:
                children[name] = self.inodes.new(d, name, kind_of(entry), upper=False, lower=entry)
        if new_lower is not None:
            for name, entry in new_lower.children.items():
                if name not in children and name not in whiteouts:
                    children[name] = self.inodes.new(d, name, kind_of(entry), upper=False, lower=entry)
                    self.inodes.inval_entry(d, name)  # the kernel may hold a cached "no such name"
        if set(children) != names_before:
            # The kernel may hold this directory's listing (no-open mode caches listings), and
            # invalidating an entry it never looked up does not drop that. Dropping the directory's
            # pages does, except for an empty listing, which has none: that one is dropped when the
            # directory's mtime differs, which is also the truth (its contents changed now).
            if d.upper:
                with contextlib.suppress(OSError), upper_at(self.upper, d) as (pfd, name):
                    os.utime(name, dir_fd=pfd, follow_symlinks=False)
            self.inodes.inval_inode(d)
        if (isinstance(old_lower, LowerDir) and new_lower is not None and old_lower is not new_lower
                and _same_entries(old_lower, new_lower)):
            d.lower = old_lower
            return old_lower
        return new_lower

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
            self.lower.checker.forget(digest)
        count = 0
        for node in list(self.inodes.nodes.values()):
            entry = node.lower
            if (node.upper or node.kind != REG or not isinstance(entry, LowerFile) or entry.kind != OBJECT
                    or entry.digest not in wanted):
                continue
            self.files.drop_store_fds(node)
            self.inodes.inval_inode(node)
            count += 1
        return count

    def drop_upper(self, items: Sequence[DropItem]) -> int:
        """Remove upper copies identical to what the view now provides (after a commit); returns how many.

        An item is a path below the mount, or ``[path, st_ino, st_size, st_mtime_ns, st_ctime_ns]``:
        the upper file as the ingest found it equal to the store object. Any write or attribute
        change since moves its ctime (which no user can set), so an unchanged stamp spares hashing
        it again here, on the request loop; a changed one is hashed.
        """
        dropped = 0
        dirs: set[str] = set()
        merged: set[str] = set()
        discarded: list[str] = []
        stamps: dict[str, tuple[int, ...]] = {}
        relpaths = []
        for item in items:
            if isinstance(item, str):
                relpaths.append(item)
            elif item and all(isinstance(v, int) for v in item[1:]):
                relpaths.append(str(item[0]))
                stamps[str(item[0])] = tuple(int(v) for v in item[1:])
        for rel in relpaths:
            self._merge_opaque_above(rel, merged)
        for rel in relpaths:
            node = self.tree.resolve(rel)
            if node is None or not node.upper or node.kind != REG or node.parent is None or node.extra_links:
                continue
            parent = node.parent
            entry = parent.lower.children.get(node.name) if isinstance(parent.lower, LowerDir) else None
            if not isinstance(entry, LowerFile) or not self._upper_matches(node, entry, stamps.get(rel)):
                continue
            pparts = parts(parent)
            replaced = self.lower.kind_of(entry) != REG
            if replaced:
                self.files.pin(node)
            # An installer that removed the file before writing it again left its whiteout, which the
            # upper file outranks: once the copy goes, that whiteout would hide the store's.
            with self.upper.dirfd(pparts) as pfd, contextlib.suppress(FileNotFoundError):
                os.unlink(whiteout_name(node.name), dir_fd=pfd)
            discarded.append(self.upper.discard(pparts, node.name))
            if replaced:
                # A .pyc now shown as a symlink: the kernel keeps an inode's file type, so the name
                # gets a new inode (readers of the old one keep its bytes, as after an unlink).
                name = node.name
                self.inodes.detach(parent, name, node)
                self.tree.load(parent)[name] = self.inodes.new(parent, name, self.lower.kind_of(entry), upper=False,
                                                               lower=entry)
                self.inodes.inval_entry(parent, name)
            else:
                node.upper = False
                node.lower = entry
                self.files.serve_from_store(node)
                self.inodes.inval_inode(node)
            dropped += 1
            if pparts:
                dirs.add("/".join(pparts))
        for rel in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
            while rel:
                node = self.tree.resolve(rel)
                if node is None or not node.upper or node.parent is None or not isinstance(node.lower, LowerDir):
                    break
                if any(c.upper for c in self.tree.load(node).values()):
                    break
                listing = self.upper.listdir(parts(node))
                if listing.entries or listing.whiteouts or listing.opaque:
                    break
                dparts = parts(node)
                with self.upper.dirfd(dparts[:-1]) as pfd, contextlib.suppress(FileNotFoundError):
                    os.unlink(whiteout_name(dparts[-1]), dir_fd=pfd)  # as for a file, above
                discarded.append(self.upper.discard(dparts[:-1], dparts[-1]))
                node.upper = False
                self.inodes.inval_inode(node)
                rel = rel.rpartition("/")[0]
        if discarded:
            # The blocks are freed on a thread of its own; the names are gone already.
            threading.Thread(target=self.upper.empty_work, args=(discarded,), name="venvfs-discard",
                             daemon=True).start()
        return dropped

    def _merge_opaque_above(self, rel: str, merged: set[str]) -> None:
        """An installer that upgrades a package deletes its directory and makes it again: an opaque
        directory, through which no lower entry shows, so no upper copy below it could ever be
        dropped. Where the view now has a directory there, the opaque directory is merged with it."""
        node = self.inodes.root
        lower: LowerDir | None = self.lower.view.root
        done: list[str] = []
        for name in rel.split("/")[:-1]:
            done.append(name)
            child = self.tree.child(node, name)
            entry = lower.children.get(name) if lower is not None else None
            lower = entry if isinstance(entry, LowerDir) else None
            if child is None or child.kind != DIR or lower is None:
                return
            if child.upper and child.opaque and "/".join(done) not in merged:
                self._merge(child, lower)
                merged.add("/".join(done))
            node = child

    def _merge(self, d: Node, lower: LowerDir) -> None:
        """Make the opaque upper directory ``d`` a merged one over ``lower`` showing what it showed: a
        whiteout for every lower name it lacks (below too) but bytecode, and the opaque marker removed
        last, deepest first. Until that last unlink the marker hides all of it, so a crash at any
        point leaves the same names visible; nothing visible changes, so the kernel is told nothing."""
        pparts = parts(d)
        listing = self.upper.listdir(pparts)
        for name in lower.children:
            # Except the store's bytecode, which is derived from the sources and checked against
            # them at import (uv compiles none: hiding it would make Python write its own copies).
            if name not in listing.entries and name not in listing.whiteouts and name != "__pycache__":
                self.upper.whiteout(pparts, name)
        for name, child in self.tree.load(d).items():
            entry = lower.children.get(name)
            if (child.upper and child.kind == DIR and child.parent is d and isinstance(entry, LowerDir)
                    and listing.entries.get(name, (0,))[0] == DIR):
                self._merge(child, entry)
        if listing.opaque:
            # A whiteout of the directory's own name, left by the delete before it was made again, is
            # redundant while the marker stands and would read as "hide the lower one" without it.
            with self.upper.dirfd(pparts[:-1]) as pfd, contextlib.suppress(FileNotFoundError):
                os.unlink(whiteout_name(pparts[-1]), dir_fd=pfd)
            with self.upper.dirfd(pparts) as pfd, contextlib.suppress(FileNotFoundError):
                os.unlink(OPAQUE, dir_fd=pfd)
        d.opaque = False
        d.lower = lower

    def _upper_matches(self, node: Node, entry: LowerFile, stamp: tuple[int, ...] | None = None) -> bool:
        if entry.kind == PYC:
            # Bytecode of a source that now comes from the store: the store's .pyc is the valid one
            # (the upper one was compiled against the upper copy's mtime).
            src_name = node.name.split(".")[0] + ".py"
            assert node.parent is not None and node.parent.parent is not None
            src = self.tree.child(node.parent.parent, src_name)
            return src is not None and not src.upper
        if entry.kind != OBJECT:
            return False
        path = parts(node)
        try:
            with self.upper.dirfd(path[:-1]) as pfd:
                fd = os.open(path[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                st = os.fstat(fd)
                if st.st_size != entry.size or bool(st.st_mode & 0o100) != entry.executable:
                    return False
                if stamp == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                    return True
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


def _same_entries(old: LowerDir, new: LowerDir) -> bool:
    """Whether ``new`` holds exactly ``old``'s entries, the very objects (``_reconcile`` put back every
    one that did not change)."""
    old_children, new_children = old.children, new.children
    return len(old_children) == len(new_children) and all(
        old_children.get(name) is entry for name, entry in new_children.items())
