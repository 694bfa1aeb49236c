"""Commands for the automount hooks and for leaving venvfs: hook install|uninstall|status, eject."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from venvfs.cli.common import add_venv_argument, common_parent, json_parent, open_store, print_json, venv_path
from venvfs.fsutil import atomic_write_bytes
from venvfs.hooks import systemd, target
from venvfs.mount import daemon
from venvfs.store.store import STORE_ENV, Store
from venvfs.venv import automount as hooks
from venvfs.venv import eject
from venvfs.venv.venv import Venv


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    common, as_json = common_parent(), json_parent()
    fmt = argparse.RawDescriptionHelpFormatter

    hook = subparsers.add_parser(
        "hook", help="the hooks that mount a venv when it is activated or its Python starts",
        description="Manage the automount hooks of a managed venv.\n\n"
        "Activation scripts (activate, activate.fish, activate.csh, Activate.ps1, activate.nu) get a\n"
        f"marked block that runs `venvfs mount` when the venv is not mounted, and site-packages gets\n"
        f"{target.PTH_NAME}, which does the same when the venv's Python starts (the mount hides it).\n"
        f"Set {target.OPTOUT_ENV}=1 to switch them off for a session.",
        formatter_class=fmt,
    )
    hook_sub = hook.add_subparsers(dest="hook_command", metavar="SUBCOMMAND", required=True)
    p = hook_sub.add_parser(
        "install", parents=[common], help="add the hooks (again); idempotent",
        description="Add or refresh the hooks, and remember that this venv wants them (so `venvfs mount`\n"
        "re-adds them, for example after the venv's tool rewrote its activation scripts).",
        formatter_class=fmt,
    )
    add_venv_argument(p)
    p.set_defaults(handler=cmd_hook_install)
    p = hook_sub.add_parser(
        "uninstall", parents=[common], help="remove the hooks and opt this venv out of them",
        description="Remove the hooks and remember the choice: `venvfs mount` will not add them back\n"
        "until `venvfs hook install`.", formatter_class=fmt,
    )
    add_venv_argument(p)
    p.set_defaults(handler=cmd_hook_uninstall)
    p = hook_sub.add_parser(
        "status", parents=[common, as_json], help="which hooks are in place; exit 1 if any is missing",
        description="Show each activation script's hook and the interpreter-start hook, and whether the\n"
        "venv looks recreated by its tool (activation scripts rewritten, pyvenv.cfg changed).\n"
        "Exit status 1 when something is not as it should be (`venvfs hook install` repairs it).",
        formatter_class=fmt,
    )
    add_venv_argument(p)
    p.set_defaults(handler=cmd_hook_status)

    p = hook_sub.add_parser(
        "unit", parents=[common], help="the systemd user units: the mount service, and mounting every venv at login",
        description="Print (or, with --install, write to ~/.config/systemd/user/) venvfs's two systemd user\n"
        "units, with this venvfs's interpreter and store filled in:\n"
        f"  {systemd.SERVICE_UNIT_NAME}    the mount service, which forks every mount's daemon from one\n"
        "                            warm process; systemd keeps it running and restarts it on failure\n"
        "                            (without the unit, the first `venvfs mount` starts it on demand)\n"
        f"  {systemd.UNIT_NAME}  `venvfs mount --all` at login, `venvfs umount --all` at logout\n"
        "One command writes both: they work together (the mounts at login are forked by the service)\n"
        "and a written unit does nothing until enabled, so you choose with systemctl which run:\n"
        f"  systemctl --user daemon-reload && systemctl --user enable --now {' '.join(systemd.UNIT_NAMES)}\n"
        "--only picks one unit (to print it alone, or to write only it).",
        formatter_class=fmt,
    )
    p.add_argument("--install", action="store_true", help="write the unit files instead of printing them")
    p.add_argument("--only", choices=["service", "mount-all"], help="just this unit")
    p.set_defaults(handler=cmd_hook_unit)

    p = subparsers.add_parser(
        "eject", parents=[common, as_json], formatter_class=fmt,
        help="turn a managed venv back into a plain one with real files",
        description="Unmount the venv, bring its upper layer back into site-packages, replace every\n"
        "file shared with the store by a real file (reflink or copy, never a hardlink), remove the\n"
        "hooks and VENV/.venvfs, and make the store forget the venv. The venv keeps working without\n"
        "venvfs; nothing written into it is lost.",
    )
    add_venv_argument(p)
    p.add_argument("--link-mode", choices=["auto", "reflink", "copy"], default="auto",
                   help="reflink or copy; auto tries reflink first (default: auto)")
    p.set_defaults(handler=cmd_eject)


def _open(args: argparse.Namespace) -> Venv:
    venv = Venv.open(venv_path(args))
    venv.read_state()  # a clear error for an unmanaged venv
    return venv


def cmd_hook_install(args: argparse.Namespace) -> int:
    venv = _open(args)
    with venv.locked(wait=True):
        state = venv.read_state()
        eject.abandon_eject(venv, state)
        if not state.hooks:
            state.hooks = True
            venv.write_state(state)
        hooks.install(venv)
        st = hooks.status(venv)
    shells = ", ".join(f"{s.path.name}" for s in st.scripts if s.state == "installed") or "no activation script"
    print(f"hooks installed in {venv.root}: {shells}; interpreter start: {_pth_words(st)}")
    return 0


def cmd_hook_uninstall(args: argparse.Namespace) -> int:
    venv = _open(args)
    with venv.locked(wait=True):
        state = venv.read_state()
        if state.hooks:
            state.hooks = False
            venv.write_state(state)
        hooks.uninstall(venv)
    print(f"hooks removed from {venv.root}; `venvfs hook install` adds them back")
    return 0


def _pth_words(st: hooks.HookStatus) -> str:
    return {
        "present": "hooked",
        "hidden": "hooked (below the mount)",
        "hidden-outdated": "outdated (below the mount)",
        "hidden-absent": "missing below the mount (umount, then venvfs hook install)",
        "hidden-unknown": "below the mount, not seen yet (checked when unmounted)",
        "absent": "not needed (materialized layout)" if st.layout != "mounted" else "missing",
        "outdated": "outdated",
        "unreachable": "unknown (site-packages unreachable)",
    }.get(st.pth, st.pth)


def cmd_hook_status(args: argparse.Namespace) -> int:
    venv = _open(args)
    st = hooks.status(venv)
    if args.json:
        print_json(st.to_json())
        return 0 if st.ok else 1
    print(f"venv:     {st.venv}")
    print(f"hooks:    {'wanted' if st.enabled else 'off (venvfs hook install to turn on)'}; layout {st.layout}")
    for s in st.scripts:
        print(f"  {s.path.name:<22} {s.shell:<10} {s.state}")
    print(f"  {target.PTH_NAME:<22} {'python':<10} {_pth_words(st)}")
    for problem in st.problems:
        print(f"problem:  {problem}")
    if not st.ok:
        print(f"repair:   venvfs hook install {st.venv}")
    return 0 if st.ok else 1


def cmd_eject(args: argparse.Namespace) -> int:
    venv = Venv.open(venv_path(args))
    if not venv.is_managed and (venv.root / eject.EJECTED_DIR).exists():
        # An eject killed after VENV/.venvfs moved aside: the venv is unmanaged, and eject finishes it.
        store = Path(args.store) if args.store else eject.ejected_store(venv) or open_store(args).root
    else:
        venv.read_state()  # a clear error for an unmanaged venv
        store = Path(args.store) if args.store else Path(venv.read_state().store)
    report = eject.eject(venv, store, link_mode=args.link_mode,
                         unmount=lambda v: daemon.umount(v.root, Store(store)))
    if args.json:
        print_json(report.to_json())
        return 0
    what = "unmounted, " if report.unmounted else ""
    what += "upper layer brought back, " if report.converted else ""
    owned = f"{report.files:,} file(s), {report.bytes / 1e6:,.1f} MB, from the store are now its own"
    if report.unlinked:
        owned += f" ({report.unlinked:,} were hardlinks into it: {report.link_summary})"
    print(f"ejected {venv.root}: {what}{owned}; "
          f"it is a plain venv again and the store forgot it")
    return 0


def cmd_hook_unit(args: argparse.Namespace) -> int:
    store = args.store or (Path(os.environ[STORE_ENV]) if os.environ.get(STORE_ENV) else None)
    store = store.expanduser().absolute() if store else None
    names = {"service": (systemd.SERVICE_UNIT_NAME,), "mount-all": (systemd.UNIT_NAME,)}.get(args.only or "",
                                                                                            systemd.UNIT_NAMES)
    if not args.install:
        for i, name in enumerate(names):
            if len(names) > 1:
                sys.stdout.write(("\n" if i else "") + f"# ---- {systemd.unit_path(name)} ----\n")
            sys.stdout.write(systemd.render_unit(store, name))
        return 0
    for name in names:
        path = systemd.unit_path(name)
        atomic_write_bytes(path, systemd.render_unit(store, name).encode(), durable=False)
        print(f"wrote {path}")
    print(f"now run:\n  systemctl --user daemon-reload && systemctl --user enable --now {' '.join(names)}")
    return 0
