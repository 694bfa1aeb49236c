"""The venv layer: a venv on disk and everything that changes it without FUSE.

It owns the venv and its state (``venv``), adopt, materialize and the link modes (``linkmode``), the
two layouts and the switch between them (``layout``, ``view`` for the lower tree of the mounted
layout, ``upper`` for its upper layer), the selection (``select``), status, repair from venvs'
files, the registry's venv-side logic (``registry``), installing the automount hooks into a venv
(``automount``) and eject. It may import the store layer, the hooks' renderers (``venvfs.hooks``)
and the top-level helpers; never the mount or the CLI. What only a mount can do (tell a running
daemon to reload) reaches it as a callback from the caller.
"""
