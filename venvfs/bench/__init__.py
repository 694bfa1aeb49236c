"""``venvfs bench``: measure the storage strategies for many venvs side by side, on this machine.

One idea per module:

- ``model``: a measured metric (samples, median, min-max, ratio to native) or an explicit failure
- ``wheels``: small synthetic wheels, for ``--quick`` and scale runs (no network, no test imports)
- ``workload``: what gets installed and imported (default scientific set, requirements, wheelhouse)
- ``system``: machine facts, versions, page-cache control, the shared performance lock
- ``scratch``: dedicated filesystems (loop-mounted ext4 and reflink XFS images) and statfs deltas
- ``trees``: populating a venv from a seed venv by copy, hardlink, symlink or reflink
- ``strategies``: one class per way of making one more venv, each able to say why it is unavailable
- ``probes``: the timed measurements (import, walk, read, pip install, daemon RSS)
- ``runner``: the interleaved schedule that ties them together
- ``report``: terminal table, JSON and Markdown; ``plot``: the PNG chart

It drives venvfs as a user does, through its command line in subprocesses, so it imports nothing
of venvfs but the package itself (its path and version); only the CLI (``venvfs.cli.bench``)
imports it.
"""
