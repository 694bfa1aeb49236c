"""Overlay semantics over the view and the upper layer (being split into parts, see files.py)."""

from venvfs.mount.overlay.files import (
    HANDLE_BASE,
    INODE_FDS_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    Attr,
    Node,
    Overlay,
    OverlayError,
    SetAttr,
    StatFs,
)

__all__ = ["HANDLE_BASE", "INODE_FDS_MAX", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "ROOT_INO", "Attr", "Node",
           "Overlay", "OverlayError", "SetAttr", "StatFs"]
