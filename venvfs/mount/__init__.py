"""The mount layer: a venv's site-packages served through FUSE as an overlay of the store.

It owns the overlay's semantics (``overlay``), the pyfuse3 adapter (``fuse``), the daemon and the
mount's lifecycle (``daemon``: start, wait, stale mounts, unmount, reload), and ``commit``, which
reads new distributions through a mount. It may import the venv and store layers and the top-level
helpers, never the CLI.
"""
