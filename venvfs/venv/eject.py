"""``eject``, the way out of venvfs: a managed venv back to a plain one, with real files only.

Unmount (through the caller's callback: this layer knows no daemon), bring the upper layer back over
real files of the selection, make every store hardlink a copy or reflink, then drop the hooks, the
state and the registration. A killed eject is finished by the next one (``finish_eject``); a
``mount`` or ``hook install`` in between keeps venvfs instead (``abandon_eject``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from venvfs.errors import StoreError, VenvError
from venvfs.fsutil import atomic_write_json, crash_point, read_json
from venvfs.hooks.target import PTH_NAME
from venvfs.store.store import Store
from venvfs.venv import layout
from venvfs.venv.automount import _site_packages_access, uninstall
from venvfs.venv.venv import Venv, VenvState

if TYPE_CHECKING:
    from venvfs.venv.linkmode import Linker, LinkMode

# The linker and the materializer are imported by eject itself: `venvfs mount` imports this module
# for ``abandon_eject`` alone.

log = logging.getLogger("venvfs.hooks")

# Where eject moves VENV/.venvfs before deleting it (see eject).
EJECTED_DIR = ".venvfs-ejected"
# In VENV/.venvfs while an eject has begun and not finished: {"hooks": the venv's choice before}.
EJECTING = "ejecting"


@dataclass
class EjectReport:
    venv: Path
    unmounted: bool = False
    converted: bool = False  # from the mounted layout (upper layer brought back into site-packages)
    unlinked: int = 0  # files that were hardlinks into the store and are now copies or reflinks
    link_summary: str = ""
    # What the venv now owns that the store served or linked: the selection's files (bytecode aside).
    files: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"venv": str(self.venv), "unmounted": self.unmounted, "converted": self.converted,
                "unlinked": self.unlinked, "link_summary": self.link_summary, "files": self.files,
                "bytes": self.bytes}


def _store_inodes(store_root: Path) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of every object and bytecode file: what a venv file may be hardlinked to."""
    found: set[tuple[int, int]] = set()
    dev = store_root.stat().st_dev
    stack = [store_root / "objects", store_root / "bytecode"]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except FileNotFoundError:
            continue
        with it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                else:
                    found.add((dev, entry.inode()))  # d_ino: no stat per store file
    return found


def _store_hardlinks(venv: Venv, store_root: Path, inodes: set[tuple[int, int]] | None = None
                     ) -> tuple[list[tuple[str, str, os.stat_result]], set[tuple[int, int]]]:
    """Files of the venv (its venvfs state excluded) that share an inode with a store file, as
    (directory relative to the venv, name, lstat), and the store's inodes (``inodes``, if given)."""
    candidates: list[tuple[str, str, os.stat_result]] = []
    root = str(venv.root)
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root and ".venvfs" in dirnames:
            dirnames.remove(".venvfs")
        rel_dir = dirpath[len(root) + 1:]
        for name in filenames:
            st = os.lstat(f"{dirpath}/{name}")
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                candidates.append((rel_dir, name, st))
    if not candidates:
        return [], inodes or set()
    if inodes is None:
        inodes = _store_inodes(store_root)
    return [c for c in candidates if (c[2].st_dev, c[2].st_ino) in inodes], inodes


def _still_linked(venv: Venv, hardlinks: list[tuple[str, str, os.stat_result]], inodes: set[tuple[int, int]]
                  ) -> Path | None:
    """The first of ``hardlinks`` that is still a store file's inode, else None: the files ``_unshare``
    replaced, looked at again (the venv is locked, and nothing else makes store hardlinks)."""
    root = str(venv.root)
    for rel_dir, name, _st in hardlinks:
        path = f"{root}/{rel_dir}/{name}" if rel_dir else f"{root}/{name}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_nlink > 1 and (st.st_dev, st.st_ino) in inodes:
            return Path(path)
    return None


def _unshare(venv: Venv, linker: Linker, hardlinks: list[tuple[str, str, os.stat_result]]) -> int:
    """Give each of ``hardlinks`` a copy (or reflink) of its own in place; returns how many.

    The files of one directory are a task for a thread pool: open(2), sendfile(2), rename(2) and
    the rest release the GIL, so both cores copy (cp -a uses one). The first file settles the link
    mode before the threads start, so they never probe it at once. Directories are reached without
    following a symlink (``DirWalker``), each task holding its own duplicate of the directory's fd:
    one swapped in for a directory since the walk must not redirect a new file elsewhere.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from venvfs.venv.linkmode import DirWalker

    by_dir: dict[str, list[tuple[str, int, int]]] = {}
    for rel_dir, name, st in hardlinks:
        by_dir.setdefault(rel_dir, []).append((name, 0o755 if st.st_mode & 0o111 else 0o644, st.st_dev))

    def place(dir_fd: int, rel_dir: str, files: list[tuple[str, int, int]]) -> int:
        where = venv.root / rel_dir
        try:
            for name, mode_bits, dev in files:
                linker.place_at(f"{where}/{name}", dir_fd, name, where, mode_bits=mode_bits, src_dev=dev)
        finally:
            os.close(dir_fd)
        return len(files)

    done = 0
    pending: deque[tuple[Future[int], int]] = deque()
    with DirWalker(venv.root, create=False) as walker, ThreadPoolExecutor(_threads(), "venvfs-eject") as pool:
        try:
            for rel_dir, files in by_dir.items():
                if not done:
                    done = place(os.dup(walker.open(rel_dir)), rel_dir, files[:1])
                    files = files[1:]
                dir_fd = os.dup(walker.open(rel_dir))
                pending.append((pool.submit(place, dir_fd, rel_dir, files), dir_fd))
                while pending and (len(pending) > _MAX_PENDING or pending[0][0].done()):
                    done += pending.popleft()[0].result()
            while pending:
                done += pending.popleft()[0].result()
        finally:
            for future, dir_fd in pending:
                if future.cancel():
                    os.close(dir_fd)  # never ran: its task would have closed it
            for future, _ in pending:
                with contextlib.suppress(Exception):
                    future.result()
    return done


_MAX_PENDING = 32  # directories queued for the threads (each holds an fd until its task ends)


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _upper_leftovers(venv: Venv) -> list[Path]:
    """What is still in the upper layer after the layout conversion, whiteouts aside."""
    upper = venv.upper_dir
    if not upper.is_dir():
        return []
    return sorted(p for p in upper.rglob("*")
                  if not p.name.startswith(".wh.") and not p.is_dir())


def eject(venv: Venv, store_root: Path, *, link_mode: str = "auto",
          unmount: Callable[[Venv], object] | None = None) -> EjectReport:
    """Turn a managed venv back into a plain one: unmount, bring the upper layer back, make every file
    a real file (copy or reflink, never a hardlink into the store), drop hooks, state and registration.

    Refuses, having removed nothing the user wrote, when anything of the upper layer could not be
    brought back. ``unmount`` unmounts a mounted venv (the CLI passes the mount layer's); without
    it a mounted venv is refused.
    """
    from venvfs.venv.linkmode import Linker, LinkMode

    mode = LinkMode(link_mode)
    if mode == LinkMode.HARDLINK:
        raise VenvError("eject makes real files: --link-mode must be reflink, copy or auto")
    report = EjectReport(venv=venv.root)
    if not venv.is_managed:
        if finish_eject(venv, store_root):
            log.warning("finished the interrupted eject of %s", venv.root)
            return report
        raise VenvError(f"{venv.root} is not managed by venvfs: nothing to eject")
    with venv.locked(wait=True):
        # Hooks off first, so that no activation or interpreter start mounts the venv again while
        # it is being ejected (a hook below a live mount reads the state and stands down).
        state = venv.read_state()
        report.files, report.bytes = _check_placeable(venv, store_root, state)
        ejecting = venv.state_dir / EJECTING
        if not ejecting.exists():  # a rerun keeps what the first attempt found
            atomic_write_json(ejecting, {"hooks": state.hooks})
        if state.hooks:
            state.hooks = False
            venv.write_state(state)
        uninstall(venv)
    report.unmounted = _unmount(venv, unmount)
    linker = Linker(mode, allow_hardlink=False)
    with venv.locked(wait=True):
        state = venv.read_state()
        if _site_packages_access(venv.site_packages) in ("mounted", "dead"):
            raise VenvError(f"{venv.site_packages} is still mounted; run `venvfs umount {venv.root}` first")
        _resume(venv, store_root, state)
        if state.layout == "mounted":
            _to_materialized(venv, store_root, state, mode)
            report.converted = True
            state = venv.read_state()
            if state.layout != "materialized":
                raise VenvError(f"{venv.root}: could not leave the mounted layout")
        leftovers = _upper_leftovers(venv)
        if leftovers:
            raise VenvError(f"{venv.root}: {len(leftovers)} file(s) still in the upper layer "
                            f"(first: {leftovers[0]}); nothing removed")
        hardlinks, inodes = _store_hardlinks(venv, store_root)
        report.unlinked = _unshare(venv, linker, hardlinks)
        left = _still_linked(venv, hardlinks, inodes)
        if left is not None:
            raise VenvError(f"{venv.root}: {left} is still a hardlink into the store")
        (venv.site_packages / PTH_NAME).unlink(missing_ok=True)
        # One rename makes the venv unmanaged at once (rmtree deletes state.json at some point of its
        # own choosing); a crash after it leaves only EJECTED_DIR, which the next eject removes. The
        # lock file goes with the directory; the lock itself lives until the block ends.
        shutil.rmtree(venv.root / EJECTED_DIR, ignore_errors=True)
        os.rename(venv.state_dir, venv.root / EJECTED_DIR)
        crash_point("eject:renamed")
    finish_eject(venv, store_root)
    report.link_summary = linker.summary()
    return report


def _check_placeable(venv: Venv, store_root: Path, state: VenvState) -> tuple[int, int]:
    """Refuse an eject whose files could not all be placed (names too long, a file of one distribution
    below another's symlink) before anything changes: found half way, it would leave the venv
    unmounted with its hooks off. Returns the files and bytes of the selection's site-packages files,
    as the store's records say (0, 0 for a store out of reach: they are only a report)."""
    from venvfs.venv.materialize import check_placeable

    try:
        store = Store.open(store_root, create=False)
    except StoreError:
        return 0, 0  # nothing will be placed from a store that is gone; eject says what it needs later
    # Read once for both (records gc removed are skipped): a large selection's take a while to parse.
    records = [store.get_dist(k) for k in state.selection if store.has_dist(k)]
    check_placeable(venv, state.interpreter if state.interpreter is not None else venv.probe_interpreter(), records)
    files = [f for record in records for f in record.site_files()]
    return len(files), sum(f.size for f in files)


def abandon_eject(venv: Venv, state: VenvState) -> str | None:
    """Undo the one change an unfinished eject leaves in a venv that is still managed (its hooks
    off), for a caller that wants to keep using venvfs (``mount``, ``hook install``); caller holds
    the venv lock. Returns what was done, None if no eject was pending."""
    ejecting = venv.state_dir / EJECTING
    try:
        hooks_before = bool(read_json(ejecting).get("hooks", True))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        hooks_before = True
    if hooks_before and not state.hooks:
        state.hooks = True
        venv.write_state(state)
    ejecting.unlink()
    return f"abandoned the unfinished eject of {venv.root}" + ("; its hooks are back on" if hooks_before else "")


def ejected_store(venv: Venv) -> Path | None:
    """The store of a venv whose eject was killed after it stopped being managed, else None."""
    try:
        return Path(read_json(venv.root / EJECTED_DIR / "state.json")["store"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finish_eject(venv: Venv, store_root: Path) -> bool:
    """The last steps of eject, which a rerun after a crash performs again; False if nothing was left."""
    leftover = venv.root / EJECTED_DIR
    if not leftover.exists():
        return False
    # Unregistered before the directory goes: the store keeps the venv's distributions until then.
    Store(store_root).unregister_venv(venv.root)
    shutil.rmtree(leftover)
    return True


def _unmount(venv: Venv, unmount: Callable[[Venv], object] | None) -> bool:
    """Unmount through the caller's ``unmount`` (the mount layer knows the daemon, this layer does
    not); False when nothing was mounted."""
    if _site_packages_access(venv.site_packages) not in ("mounted", "dead"):
        return False
    if unmount is None:
        raise VenvError(f"{venv.site_packages} is mounted; run `venvfs umount {venv.root}` first")
    unmount(venv)
    return True


def _reflink_works(src_dir: Path, dst_dir: Path) -> bool:
    from venvfs.venv.linkmode import reflink

    probe_src = next((p for p in src_dir.rglob("*") if p.is_file()), None)
    if probe_src is None:
        return False
    probe = dst_dir / f".venvfs-reflink-probe-{os.getpid()}"
    try:
        reflink(probe_src, probe)
    except OSError:
        return False
    probe.unlink()
    return True


def _resume(venv: Venv, store_root: Path, state: VenvState) -> None:
    """Finish a layout switch a killed command left half done."""
    layout.resume(venv, Store.open(store_root, create=False), state)


def _to_materialized(venv: Venv, store_root: Path, state: VenvState, mode: LinkMode) -> None:
    """Bring the upper layer back over real files of the selection."""
    from venvfs.venv.linkmode import LinkMode

    # layout materializes with the state's link mode, whose "auto" may hardlink: choose for it.
    if mode == LinkMode.AUTO:
        mode = LinkMode.REFLINK if _reflink_works(store_root / "objects", venv.site_packages) else LinkMode.COPY
    state.link_mode = mode.value
    layout.to_materialized(venv, Store.open(store_root, create=False), state)
