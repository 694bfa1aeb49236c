"""Changes to the namespace: create, mknod, mkdir, symlink, link, unlink, rmdir, rename and
rename's exchange, with the whiteouts and opaque directories that keep the lower layer hidden."""

from __future__ import annotations

import errno
import os
import stat

from venvfs.mount.overlay.copyup import CopyUp
from venvfs.mount.overlay.files import Files, Handle
from venvfs.mount.overlay.inodes import InodeTable, Node, OverlayError, parts
from venvfs.mount.overlay.tree import Tree
from venvfs.venv.upper import DIR, LNK, NAME_MAX, REG, WHITEOUT_PREFIX, Upper, rename_exchange

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def check_name(name: str, *, creating: bool = False) -> str:
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise OverlayError(errno.EINVAL)
    if len(os.fsencode(name)) > NAME_MAX:
        raise OverlayError(errno.ENAMETOOLONG)
    if creating and name.startswith(WHITEOUT_PREFIX):
        # The upper layer's own bookkeeping names: creating one would delete or hide something.
        raise OverlayError(errno.EINVAL)
    return name


class Namespace:
    """Every change of a name. Changes are made in the upper layer first, then mirrored in the
    loaded tree (``Node.children`` and links), so a failed system call leaves the tree as it was."""

    def __init__(self, inodes: InodeTable, tree: Tree, copyup: CopyUp, files: Files, upper: Upper, *,
                 no_open: bool) -> None:
        self.inodes = inodes
        self.tree = tree
        self.copyup = copyup
        self.files = files
        self.upper = upper
        self.no_open = no_open

    # -- creating --------------------------------------------------------------------------------

    def _prepare_create(self, parent_ino: int, name: str) -> tuple[Node, list[str]]:
        parent = self.inodes.node(parent_ino)
        if parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        check_name(name, creating=True)
        if not parent.attached:
            raise OverlayError(errno.ENOENT)
        if self.tree.child(parent, name) is not None:
            raise OverlayError(errno.EEXIST)
        self.copyup.ensure_upper(parent)
        return parent, parts(parent)

    @staticmethod
    def _chown_new(pfd: int, name: str, uid: int | None, gid: int | None) -> None:
        # A daemon running as root (with --allow-other) gives new files to whoever created them.
        if os.geteuid() == 0 and uid is not None and gid is not None and (uid, gid) != (0, 0):
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)

    def _attach_new(self, parent: Node, name: str, kind: int, *, opaque: bool = False) -> Node:
        node = self.inodes.new(parent, name, kind, upper=True, lower=None)
        if kind == DIR:
            node.children = {}
            node.opaque = opaque
        self.tree.load(parent)[name] = node
        node.nlookup += 1
        return node

    def create(self, parent_ino: int, name: str, mode: int, flags: int, uid: int | None = None,
               gid: int | None = None) -> tuple[int, Node]:
        parent, pparts = self._prepare_create(parent_ino, name)
        open_flags = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOCTTY | os.O_DIRECT | os.O_NOATIME)
                      | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC)
        if self.no_open:
            # The fd serves every later read and write of this inode, whoever opened it how: read-write.
            # (Whoever creates a file may open it so, whatever mode it is given.)
            open_flags = open_flags & ~os.O_ACCMODE | os.O_RDWR
        with self.upper.dirfd(pparts) as pfd:
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
            self.files.created(node, fd)
            return 0, node
        return self.files.new_fh(Handle(node, fd, store=False, writable=writable), flags), node

    def mknod(self, parent_ino: int, name: str, mode: int, rdev: int, uid: int | None = None,
              gid: int | None = None) -> Node:
        if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
            raise OverlayError(errno.EPERM)
        parent, pparts = self._prepare_create(parent_ino, name)
        with self.upper.dirfd(pparts) as pfd:
            os.mknod(name, mode, rdev, dir_fd=pfd)
            self._chown_new(pfd, name, uid, gid)
        return self._attach_new(parent, name, stat.S_IFMT(mode))

    def mkdir(self, parent_ino: int, name: str, mode: int, uid: int | None = None, gid: int | None = None) -> Node:
        parent, pparts = self._prepare_create(parent_ino, name)
        # The name is free in the merged view, so a lower entry of that name was deleted: the new
        # directory must not show the old one's contents (opaque).
        opaque = self.tree.lower_has(parent, name)
        self.upper.mkdir(pparts, name, stat.S_IMODE(mode), opaque=opaque)
        if opaque:
            # The deleted directory's whiteout is redundant once the opaque one stands (removed after,
            # so a crash between the two still hides the old contents).
            self.upper.remove_whiteout(pparts, name)
        with self.upper.dirfd(pparts) as pfd:
            self._chown_new(pfd, name, uid, gid)
        return self._attach_new(parent, name, DIR, opaque=opaque)

    def symlink(self, parent_ino: int, name: str, target: str, uid: int | None = None,
                gid: int | None = None) -> Node:
        parent, pparts = self._prepare_create(parent_ino, name)
        with self.upper.dirfd(pparts) as pfd:
            os.symlink(target, name, dir_fd=pfd)
            self._chown_new(pfd, name, uid, gid)
        return self._attach_new(parent, name, LNK)

    def link(self, ino: int, new_parent_ino: int, new_name: str) -> Node:
        node = self.inodes.node(ino)
        if node.kind == DIR:
            raise OverlayError(errno.EPERM)
        if not node.attached:
            raise OverlayError(errno.ENOENT)
        new_parent, pparts = self._prepare_create(new_parent_ino, new_name)
        self.copyup.copy_up(node)
        src = parts(node)
        with self.upper.dirfd(src[:-1]) as sfd, self.upper.dirfd(pparts) as dfd:
            os.link(src[-1], new_name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        node.add_link(new_parent, new_name)
        self.tree.load(new_parent)[new_name] = node
        node.nlookup += 1
        self.inodes.inval_inode(node)  # st_nlink changed
        return node

    # -- removing --------------------------------------------------------------------------------

    def _existing(self, parent_ino: int, name: str) -> tuple[Node, Node]:
        parent = self.inodes.node(parent_ino)
        if parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        check_name(name)
        node = self.tree.child(parent, name) if not name.startswith(WHITEOUT_PREFIX) else None
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
        if self.tree.load(node):
            raise OverlayError(errno.ENOTEMPTY)
        self._remove(parent, name, node)

    def _remove(self, parent: Node, name: str, node: Node) -> None:
        self.files.pin(node)
        pparts = parts(parent)
        if self.tree.lower_has(parent, name):
            # Whiteout first: a crash in between leaves the upper entry, which wins over it.
            self.copyup.ensure_upper(parent)
            self.upper.whiteout(pparts, name)
        if node.upper:
            with self.upper.dirfd(pparts) as pfd:
                if node.kind == DIR:
                    self.upper.clear_markers([*pparts, name])
                    os.rmdir(name, dir_fd=pfd)
                else:
                    os.unlink(name, dir_fd=pfd)
        self.tree.load(parent).pop(name, None)
        self.inodes.detach(parent, name, node)
        if node.attached:
            self.inodes.inval_inode(node)  # a hard link went: st_nlink changed

    # -- rename ------------------------------------------------------------------------------------

    def rename(self, old_parent_ino: int, old_name: str, new_parent_ino: int, new_name: str, flags: int = 0) -> None:
        if flags & RENAME_EXCHANGE:
            self._exchange(old_parent_ino, old_name, new_parent_ino, new_name)
            return
        old_parent, src = self._existing(old_parent_ino, old_name)
        new_parent = self.inodes.node(new_parent_ino)
        if new_parent.kind != DIR:
            raise OverlayError(errno.ENOTDIR)
        check_name(new_name, creating=True)
        dst = self.tree.child(new_parent, new_name)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise OverlayError(errno.EEXIST)
            if dst is src:
                return  # two names of one file: POSIX says do nothing
            if src.kind == DIR and dst.kind != DIR:
                raise OverlayError(errno.ENOTDIR)
            if src.kind != DIR and dst.kind == DIR:
                raise OverlayError(errno.EISDIR)
            if dst.kind == DIR and self.tree.load(dst):
                raise OverlayError(errno.ENOTEMPTY)
        self._refuse_below_itself(src, new_parent)
        opaque = False
        if src.kind == DIR:
            # overlayfs answers EXDEV here; instead the directory's lower content is copied up so it
            # can move as a whole, and made opaque so no lower entry at its new path leaks in.
            had_lower = self.copyup.copy_up_tree(src)
            opaque = had_lower or self.tree.lower_has(new_parent, new_name)
        else:
            self.copyup.copy_up(src)
        self.copyup.ensure_upper(new_parent)
        src_parts = parts(old_parent)
        dst_parts = parts(new_parent)
        if opaque and not src.opaque:
            self.upper.make_opaque([*src_parts, old_name])
        if dst is not None and dst.kind == DIR and dst.upper:
            self.upper.clear_markers([*dst_parts, new_name])
        if dst is not None:
            self.files.pin(dst)
        # Written ahead: a daemon killed right after the rename must leave the next one knowing it.
        self.inodes.renaming(src, (old_parent, old_name), (new_parent, new_name), dst)
        try:
            with self.upper.dirfd(src_parts) as sfd, self.upper.dirfd(dst_parts) as dfd:
                os.rename(old_name, new_name, src_dir_fd=sfd, dst_dir_fd=dfd)
        except BaseException:
            self.inodes.renaming(src, (new_parent, new_name), (old_parent, old_name), None, undo=dst)
            raise
        if self.tree.lower_has(old_parent, old_name):
            self.upper.whiteout(src_parts, old_name)
        self.tree.load(old_parent).pop(old_name, None)
        if dst is not None:
            self.tree.load(new_parent).pop(new_name, None)
            self.inodes.detach(new_parent, new_name, dst)
        src.remove_link(old_parent, old_name)
        src.add_link(new_parent, new_name)
        self.inodes.relinked(src)
        self.tree.load(new_parent)[new_name] = src
        if opaque:
            src.opaque = True
            self.copyup.forget_lower(src)

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
                self.copyup.copy_up_tree(node)
                if not node.opaque:
                    self.upper.make_opaque([*parts(parent), name])
            else:
                self.copyup.copy_up(node)
        self.copyup.ensure_upper(a_parent)
        self.copyup.ensure_upper(b_parent)
        with self.upper.dirfd(parts(a_parent)) as afd, self.upper.dirfd(parts(b_parent)) as bfd:
            rename_exchange(afd, a_name, bfd, b_name)
        a.remove_link(a_parent, a_name)
        b.remove_link(b_parent, b_name)
        a.add_link(b_parent, b_name)
        b.add_link(a_parent, a_name)
        self.inodes.relinked(a)
        self.inodes.relinked(b)
        self.tree.load(a_parent)[a_name] = b
        self.tree.load(b_parent)[b_name] = a
        for node in (a, b):
            if node.kind == DIR:
                node.opaque = True
                self.copyup.forget_lower(node)
            self.inodes.inval_inode(node)  # ctime changed
