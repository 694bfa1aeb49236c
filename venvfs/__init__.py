"""venvfs: one read-only, content-addressed store of Python distributions shared by many venvs.

Each venv's site-packages is a FUSE overlay of the distributions it selected (``venvfs.mount``), or,
where FUSE is unavailable, real files linked from the store (``venvfs.venv.materialize``).
"""

__version__ = "0.1.0"
