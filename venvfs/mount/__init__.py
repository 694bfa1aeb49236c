"""The mount layer: a venv's site-packages served through FUSE as an overlay of the store.

It may import the store and venv layers below it, never the CLI. For now it holds the overlay
(``venvfs.mount.overlay``); the view, the upper layer, the pyfuse3 adapter and the daemon's
lifecycle join it as the package is laid out by layer (issue 14).
"""
