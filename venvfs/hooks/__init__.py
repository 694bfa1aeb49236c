"""The hooks layer: the text of the hooks that mount a venv when it is used, and nothing else.

It owns what a hook says and where it goes in a file: ``target`` (``HookTarget``, the resolved
paths and the ``venvfs mount`` command line; the names and markers all hooks share), ``block`` (the
marked block in an activation script), one module per shell family (``posix``, ``fish``, ``csh``,
``powershell``, ``nushell``) and ``dialects`` (which script each renders into), ``pth`` (the
interpreter-start ``.pth``) and ``systemd`` (the user unit for ``mount --all``). It knows no venv
and no store: it may import only the top-level helpers. Writing the hooks into a venv, and reading
their status back, is the venv layer's (``venvfs.venv.automount``).
"""
