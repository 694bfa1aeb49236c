"""What landed under the mount point while the venv was unmounted, taken into the venv at the next mount.

In the mounted layout, site-packages is an empty directory (apart from the automount ``.pth``) that
the FUSE mount covers. After ``venvfs umount`` or a reboot, nothing stops an installer from writing
there: ``uv sync`` and ``uv pip install`` run no hook, see an empty site-packages and install into
it. Mounting over that directory would hide what they wrote (``ModuleNotFoundError``, an empty
``uv pip list``), so ``venvfs mount`` first moves it into the upper layer, where it overrides the
store exactly as if it had been written through the mount:

* a file the view serves with the same bytes (an installer put back a stored distribution) is
  deleted: the store serves it; anything else is renamed into the upper layer, over an upper copy
  of the same path (the later write wins, as it would have through the mount);
* a whiteout of that path is removed (the name exists again); a directory where the view had an
  entry the user had deleted (a whiteout) or a non-directory becomes opaque, as ``mkdir`` through
  the mount makes it, so nothing of the old one shows through;
* a distribution written anew whose ``.dist-info`` differs from the selected build of the same name
  (another version) replaces that build: it leaves the selection, and the upper layer's copies of
  the old build's files are dropped, as an installer uninstalling it through the mount would have:
  otherwise two ``.dist-info`` of one name would show.

A directory below the mount point where the upper layer holds a file (or the reverse) cannot be
merged without choosing one of the user's two files: ``venvfs mount`` refuses and names the path.

What an installer removed while unmounted cannot be known (it saw nothing to remove): a ``uv sync``
that would have removed a selected distribution leaves it; ``uv sync`` once mounted removes it.

Crash safety: every step can be run again. The builds to replace are written to
``.venvfs/taking-in.json`` before the first change and the file is removed after the last, so a
rerun knows them even once their new ``.dist-info`` has moved; each file moves with one rename (a
crash leaves it either below the mount point or in the upper layer, never lost); an opaque
directory is made before the whiteout it replaces is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from venvfs.errors import VenvError
from venvfs.fsutil import atomic_write_json, crash_point, fsync_dir, read_json
from venvfs.store.store import Store
from venvfs.venv.layout import AUTOMOUNT_PTH, served_by_view
from venvfs.venv.upper import OPAQUE, WHITEOUT_PREFIX, whiteout_name
from venvfs.venv.venv import Venv, VenvState

if TYPE_CHECKING:
    from venvfs.venv.view import View

log = logging.getLogger(__name__)

MARKER = "taking-in.json"


def hidden_entries(venv: Venv) -> list[str]:
    """The names in the underlying site-packages other than the automount hook: what a mount would
    hide. Meaningful only while nothing is mounted there (a mount shows its own entries)."""
    try:
        names = os.listdir(venv.site_packages)
    except OSError:
        return []
    return sorted(n for n in names if n != AUTOMOUNT_PTH)


def pending(venv: Venv) -> bool:
    return bool(hidden_entries(venv)) or (venv.state_dir / MARKER).exists()


@dataclass
class TakeIn:
    moved: int = 0  # files renamed into the upper layer
    deduplicated: int = 0  # files the store already serves with the same bytes
    replaced: list[str] = field(default_factory=list)  # selected builds another version replaced

    @property
    def message(self) -> str | None:
        if not (self.moved or self.deduplicated or self.replaced):
            return None
        text = (f"took in what was installed while unmounted: {self.moved} file(s) into the upper layer, "
                f"{self.deduplicated} already in the store")
        if self.replaced:
            text += f"; replaced {', '.join(self.replaced)}"
        return text


def _dist_name(dist_info: str) -> str | None:
    stem = dist_info.removesuffix(".dist-info")
    name, sep, _version = stem.partition("-")
    from packaging.utils import canonicalize_name

    return canonicalize_name(name) if sep and name else None


def _replaced_keys(venv: Venv, store: Store, state: VenvState) -> list[str]:
    """Selected builds whose distribution was written anew under the mount point as another build."""
    new: dict[str, str] = {}
    for name in hidden_entries(venv):
        if name.endswith(".dist-info") and (venv.site_packages / name).is_dir():
            dist = _dist_name(name)
            if dist is not None:
                new[dist] = name
    from packaging.utils import canonicalize_name

    keys = []
    for key in state.selection:
        record = store.get_dist(key)
        written = new.get(canonicalize_name(record.name))
        if written is not None and written != record.dist_info:
            keys.append(key)
    return keys


def take_in(venv: Venv, store: Store, state: VenvState) -> TakeIn:
    """Move what was written below the unmounted mount point into the upper layer (the caller holds
    the venv lock, nothing is mounted, the layout is "mounted"). ``state`` is updated in place."""
    result = TakeIn()
    marker = venv.state_dir / MARKER
    if not hidden_entries(venv):
        marker.unlink(missing_ok=True)
        return result
    _check_conflicts(venv)
    try:
        earlier = [str(k) for k in read_json(marker)]
    except FileNotFoundError:
        earlier = []
    replaced = list(dict.fromkeys([*earlier, *_replaced_keys(venv, store, state)]))
    atomic_write_json(marker, replaced)
    for key in replaced:
        if key in state.selection:
            _drop_upper_of(venv, store, key)
            state.selection = [k for k in state.selection if k != key]
            venv.write_state(state)
    result.replaced = replaced
    # Imported here: every `venvfs mount` asks, and almost always nothing is hidden.
    from venvfs.venv.view import view_for

    view = view_for(venv, store, state)
    _merge_dir(venv, store, view, "", lower_visible=True, result=result)
    fsync_dir(venv.site_packages)
    marker.unlink()
    return result


def _drop_upper_of(venv: Venv, store: Store, key: str) -> None:
    """What uninstalling build ``key`` through the mount would have removed from the upper layer: its
    files' upper copies and whiteouts, so that no stray file of the old version stays visible."""
    upper = venv.upper_dir
    record = store.get_dist(key)
    dirs = set()
    for f in record.site_files():
        path = upper / f.path
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if not path.is_dir() or path.is_symlink():
                path.unlink()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (path.parent / whiteout_name(path.name)).unlink()
        dirs.add(f.path.rpartition("/")[0])
    # The old build's own metadata directory goes whole (an installer's extra files in it too).
    shutil.rmtree(upper / record.dist_info, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (upper / whiteout_name(record.dist_info)).unlink()
    for d in sorted(dirs, key=len, reverse=True):
        # Emptied by the above (an opaque marker alone is no content): a directory of the old
        # build's that the new one may not have.
        with contextlib.suppress(OSError):
            if d and set(os.listdir(upper / d)) <= {OPAQUE}:
                (upper / d / OPAQUE).unlink(missing_ok=True)
                (upper / d).rmdir()


def _kind(path: Path) -> int | None:
    try:
        return stat.S_IFMT(path.lstat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _check_conflicts(venv: Venv) -> None:
    """Refuse before the first change where a directory meets a file of the upper layer."""
    sp, upper = venv.site_packages, venv.upper_dir
    for dirpath, dirnames, filenames in os.walk(sp):
        rel_dir = os.path.relpath(dirpath, sp)
        for name in [*dirnames, *filenames]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel == AUTOMOUNT_PTH:
                continue
            mine = _kind(sp / rel)
            theirs = _kind(upper / rel)
            if theirs is None or mine is None:
                continue
            if (mine == stat.S_IFDIR) != (theirs == stat.S_IFDIR):
                what = "a directory" if mine == stat.S_IFDIR else "a file"
                raise VenvError(
                    f"cannot mount {venv.root}: {sp / rel} was written while unmounted as {what}, and the "
                    f"venv already has {upper / rel} there as {'a file' if what == 'a directory' else 'a directory'}; "
                    f"move one of them away (e.g. `mv {sp / rel} /tmp/`) and mount again")


def _merge_dir(venv: Venv, store: Store, view: View, rel_dir: str, *, lower_visible: bool, result: TakeIn) -> None:
    from venvfs.venv.view import LowerDir

    sp_dir = venv.site_packages / rel_dir if rel_dir else venv.site_packages
    up_dir = venv.upper_dir / rel_dir if rel_dir else venv.upper_dir
    for name in sorted(os.listdir(sp_dir)):
        rel = f"{rel_dir}/{name}" if rel_dir else name
        if rel == AUTOMOUNT_PTH:
            continue
        src = sp_dir / name
        kind = _kind(src)
        if kind is None:
            continue
        lower = view.lookup(rel) if lower_visible else None
        whiteout = up_dir / whiteout_name(name) if not name.startswith(WHITEOUT_PREFIX) else None
        if name.startswith(WHITEOUT_PREFIX):
            # Cannot be shown under its name (the overlay's own convention), as when switching layouts.
            _rename(src, up_dir / (".venvfs-renamed" + name))
            result.moved += 1
            continue
        dst = up_dir / name
        if kind == stat.S_IFDIR:
            opaque_now = False
            if _kind(dst) is None:
                # mkdir through the mount makes a directory opaque where the lower layer had the name
                # (its entry deleted by the user, or a file): nothing of it may show through.
                hidden = whiteout is not None and whiteout.exists()
                opaque_now = lower is not None and (hidden or not isinstance(lower, LowerDir))
                up_dir.mkdir(parents=True, exist_ok=True)
                dst.mkdir(mode=stat.S_IMODE(src.lstat().st_mode))
                if opaque_now:
                    (dst / OPAQUE).touch()
            if whiteout is not None:
                whiteout.unlink(missing_ok=True)  # after the opaque mark: a crash never shows the old one
            still_visible = lower_visible and not opaque_now and not (dst / OPAQUE).exists()
            _merge_dir(venv, store, view, rel, lower_visible=still_visible, result=result)
            with contextlib.suppress(OSError):
                src.rmdir()
            continue
        has_upper = _kind(dst) is not None
        had_whiteout = whiteout is not None and whiteout.exists()
        if not has_upper and lower is not None and served_by_view(src, lower, store):
            if whiteout is not None:
                whiteout.unlink(missing_ok=True)
            src.unlink()
            result.deduplicated += 1
            continue
        _rename(src, dst)
        if had_whiteout and whiteout is not None:
            whiteout.unlink(missing_ok=True)
        result.moved += 1
        crash_point("take-in:moving")


def _rename(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        # The upper layer on another filesystem (a bind-mounted .venvfs): copy, then remove.
        if src.is_symlink():
            tmp = dst.with_name(dst.name + ".venvfs-tmp")
            tmp.unlink(missing_ok=True)
            os.symlink(os.readlink(src), tmp)
            os.replace(tmp, dst)
        else:
            tmp = dst.with_name(dst.name + ".venvfs-tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        src.unlink()
