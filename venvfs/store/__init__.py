"""The store layer: the read-only, content-addressed store and everything that only needs it.

It owns the objects and their chunk lists (``store``, ``chunks``), the distribution records
(``records``), wheel ingest and its limits (``wheel``, ``limits``), the compiled bytecode
(``bytecode``), the registry's storage (the entries under ``STORE/venvs/``), and verify and gc. It
knows no venv: it may import only the modules at the package's top (``venvfs.errors``,
``venvfs.fsutil``, ``venvfs.fsflags``, ``venvfs.progress``), which everyone may import. What it needs
from above (how to place a file, which interpreter a .pyc is for) it takes as a parameter typed by a
protocol it defines.
"""

# Here rather than in ``store.py``: the CLI names it in every command's --help without loading the store.
STORE_ENV = "VENVFS_STORE"
LOWER_ENV = "VENVFS_STORE_LOWER"
