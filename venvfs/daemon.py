"""``python -m venvfs.daemon``: the daemon's entry point before the package was laid out by layer.

A venvfs upgraded while one of its daemons was being started still finds it here. The daemon is
``venvfs.mount.daemon``; nothing imports this module.
"""

import sys

from venvfs.mount.daemon import _main

if __name__ == "__main__":
    sys.exit(_main())
