"""Overlay semantics over the view (lower, the store) and the upper layer, with no FUSE in sight.

The FUSE adapter (``fuse.py``) turns each request into one call on ``Overlay``; everything a
filesystem must decide (which layer a name comes from, copy-up, whiteouts, opaque directories,
rename, hard links, inode numbers and lookup counts) is decided here and unit-tested by calling
``Overlay``'s methods directly.

``Overlay`` is a facade over parts of one idea each, composed rather than inherited; each holds
references to the parts below it:

- ``inodes.InodeTable``: the nodes by inode number, the kernel's lookup counts, when a node may be
  freed, and the invalidations queued for the kernel; with a ``journal.InodeJournal``, every number
  handed out is recorded, so a daemon that takes over the mount gives each the same meaning.
- ``lower.Lower``: the view and the store: where a lower file's bytes are, the file type shown
  for it, opening it checked against its digest.
- ``tree.Tree``: a directory's merged entries (loaded into the table on first use), lookup, and
  directory listings.
- ``copyup.CopyUp``: moving an entry from the store into the upper layer.
- ``files.Files``: file handles, the no-open fd cache, pinning of unlinked files, read, write, fsync.
- ``namespace.Namespace``: create, link, unlink, rename, exchange.
- ``attrs.Attributes``: getattr, setattr, xattrs, statfs.
- ``reload.ViewReload``: a new view under a live tree, repaired objects, dropping upper copies.
- ``resend.Resent``: answering requests a dead daemon carried out and the keeper resent.

Errors are ``OverlayError(errno)``; an ``OSError`` from the upper filesystem carries its own errno.
Changes the kernel cannot see coming (a view reload, a copy-up) are queued in ``invalidations`` for
the adapter to pass on, because the adapter tells the kernel to cache store entries "forever".
"""

from venvfs.mount.overlay.attrs import Attr, SetAttr, StatFs
from venvfs.mount.overlay.facade import Overlay
from venvfs.mount.overlay.files import INODE_FDS_MAX
from venvfs.mount.overlay.inodes import HANDLE_BASE, ROOT_INO, Node, OverlayError
from venvfs.mount.overlay.journal import InodeJournal
from venvfs.mount.overlay.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, check_name

__all__ = ["HANDLE_BASE", "INODE_FDS_MAX", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "ROOT_INO", "Attr", "InodeJournal",
           "Node", "Overlay", "OverlayError", "SetAttr", "StatFs", "check_name"]
