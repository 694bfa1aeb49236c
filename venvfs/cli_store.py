"""Commands for the store and for venvs' selections: store add|list|status|verify|gc, adopt, materialize,
add, remove, status.

The modules that do the work are imported by the handler that needs them: every ``venvfs`` command
builds this parser, and importing them all (installer, packaging's parsers, the daemon) cost a
``venvfs mount`` about 0.1-0.2 s of start-up on the development machine.
"""

from __future__ import annotations

import argparse
import stat
import sys
from pathlib import Path
from typing import Any

from venvfs.cli_common import (
    add_venv_argument,
    common_parent,
    json_parent,
    open_store,
    open_store_for,
    print_json,
    venv_path,
)
from venvfs.errors import InvalidWheel, UsageError, VenvfsError
from venvfs.fsutil import describe_oserror
from venvfs.linkmode import Linker, LinkMode
from venvfs.progress import human_bytes
from venvfs.venv import Venv


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    common, as_json = common_parent(), json_parent()
    fmt = argparse.RawDescriptionHelpFormatter

    store = subparsers.add_parser("store", help="manage the shared store", description="Manage the shared store.")
    store_sub = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)
    p = store_sub.add_parser(
        "add", parents=[common, as_json], formatter_class=fmt, help="ingest wheels into the store",
        description="Validate and ingest wheel files (or every *.whl in a directory) into the store.\n\n"
        "A corrupt, inconsistent or malicious wheel (bad zip, RECORD hash or size mismatch, paths that\n"
        "escape, duplicate entries, names too long to place, a zip bomb) is refused with exit code 3 and\n"
        "nothing written. A path that does not exist, is not a regular file, or is a directory without\n"
        "wheels: exit code 2, before any wheel is stored. A full disk: exit code 74, and the objects\n"
        "this run stored are taken back.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="WHEEL_OR_DIR")
    _limit_arguments(p)
    p.set_defaults(handler=cmd_store_add)
    p = store_sub.add_parser("list", parents=[common, as_json], help="list stored distributions")
    p.set_defaults(handler=cmd_store_list)
    p = store_sub.add_parser("status", parents=[common, as_json], help="store size, dedupe ratio, venvs")
    p.set_defaults(handler=cmd_store_status)
    p = store_sub.add_parser(
        "verify", parents=[common, as_json], help="re-hash every object; name the venvs a damaged one affects",
        description="Re-hash every stored object. A modified or missing object (for example one edited\n"
        "through a hardlink) is reported with the venvs that use it; exit code 5 when any is found.\n"
        "Objects no record refers to (a crashed ingest's leftovers) are counted, not failed on:\n"
        "`venvfs store gc` removes them.",
        formatter_class=fmt,
    )
    p.set_defaults(handler=cmd_store_verify)
    p = store_sub.add_parser(
        "gc", parents=[common, as_json], help="remove what no live venv uses",
        description="Remove distributions, objects and bytecode that no registered, existing venv selects.\n"
        "Venvs deleted from disk are forgotten. Wheels added with `store add` and selected by no venv\n"
        "are removed too.", formatter_class=fmt,
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be freed, remove nothing")
    p.set_defaults(handler=cmd_store_gc)

    link_help = "reflink, hardlink or copy; auto tries them in that order (default: auto)"
    p = subparsers.add_parser(
        "adopt", parents=[common, as_json], formatter_class=fmt,
        help="move an existing venv's distributions into the store",
        description="Store every distribution installed in a venv (made by venv, virtualenv, pip or uv),\n"
        "checked against its RECORD, and replace the venv's copies by links to the store.\n"
        "Files no RECORD owns, and files edited since install, stay in the venv untouched.\n"
        "Idempotent: run it again after pip/uv changed the venv. Safe to interrupt and rerun.",
    )
    add_venv_argument(p)
    p.add_argument("--link-mode", choices=[m.value for m in LinkMode], default="auto", help=link_help)
    p.add_argument("--no-compile", action="store_true", help="do not precompile bytecode into the store")
    p.add_argument("--no-hooks", action="store_true", help="do not install the automount activation hooks")
    p.set_defaults(handler=cmd_adopt)

    p = subparsers.add_parser(
        "materialize", parents=[common, as_json], help="write the venv's selection as real linked files",
        description="Write every selected distribution into the venv as real files: reflinks where the\n"
        "filesystem can, else hardlinks, else copies (the mode used and why is reported).",
        formatter_class=fmt,
    )
    add_venv_argument(p)
    p.add_argument("--link-mode", choices=[m.value for m in LinkMode], default="auto", help=link_help)
    p.set_defaults(handler=cmd_materialize)

    p = subparsers.add_parser(
        "add", parents=[common, as_json], formatter_class=fmt, help="select distributions from the store",
        description="Select stored distributions for a venv: wheel files (ingested first) or requirements\n"
        "such as 'numpy==2.1.*', matched to the venv's interpreter and platform tags. What they require\n"
        "(Requires-Dist, markers evaluated for the venv) is selected too, from the store.\n\n"
        "example: venvfs add .venv 'numpy>=2' ./x-1.0-py3-none-any.whl",
    )
    p.add_argument("venv", type=Path)
    p.add_argument("specs", nargs="+", metavar="WHEEL_OR_REQUIREMENT")
    p.add_argument("--no-deps", action="store_true",
                   help="select only what is named, not the stored distributions it requires")
    p.add_argument("--link-mode", choices=[m.value for m in LinkMode], default="auto", help=link_help)
    _limit_arguments(p)
    p.set_defaults(handler=cmd_add)

    p = subparsers.add_parser("remove", parents=[common, as_json], help="deselect distributions")
    p.add_argument("venv", type=Path)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_remove)

    p = subparsers.add_parser(
        "status", parents=[common, as_json], formatter_class=fmt,
        help="what a venv shares and owns alone",
        description="Layout, mount state, link mode, distributions, and the bytes that matter:\n"
        "logical (as plain copies), in the store, shared with other venvs, owned alone, in the venv.",
    )
    add_venv_argument(p)
    p.set_defaults(handler=cmd_status)


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    from venvfs import limits

    p.add_argument("--max-unpacked-size", metavar="SIZE",
                   help=f"refuse a wheel that unpacks to more (default: ${limits.SIZE_ENV}, else "
                   f"{limits.DEFAULT_MAX_UNPACKED >> 30}G)")
    p.add_argument("--max-ratio", metavar="N",
                   help=f"refuse a wheel, or a member of it, that unpacks to more than {limits.RATIO_FLOOR >> 20} MiB "
                   f"at a compression ratio above N:1 (default: ${limits.RATIO_ENV}, else "
                   f"{limits.DEFAULT_MAX_RATIO:g})")


def _limits(args: argparse.Namespace) -> Any:
    from venvfs.limits import IngestLimits

    return IngestLimits.from_env(args.max_unpacked_size, args.max_ratio)


def _wheel_paths(paths: list[Path]) -> list[Path]:
    """The wheels the arguments name, each checked to exist: all before anything is stored, so a
    typo in the last argument stores nothing (and makes no store)."""
    wheels: list[Path] = []
    for path in paths:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file or directory") from None
        except OSError as e:
            raise UsageError(describe_oserror(e)) from None
        if stat.S_ISDIR(st.st_mode):
            found = sorted(p for p in path.glob("*.whl") if p.is_file())
            if not found:
                raise UsageError(f"no wheels (*.whl files) in {path}")
            wheels.extend(found)
        elif stat.S_ISREG(st.st_mode):
            wheels.append(path)
        else:
            # Opening a FIFO for reading blocks until a writer comes; a device is no archive either.
            raise UsageError(f"{path}: not a regular file")
    return wheels


def cmd_store_add(args: argparse.Namespace) -> int:
    from venvfs.wheel import ingest_wheel

    limits = _limits(args)
    wheels = _wheel_paths(args.paths)
    store = open_store(args, create=True)
    results: list[dict[str, Any]] = []
    code = 0
    for path in wheels:
        try:
            record, new = ingest_wheel(store, path, limits=limits)
        except InvalidWheel as e:
            print(f"venvfs: error: {e}", file=sys.stderr)
            results.append({"wheel": str(path), "error": str(e)})
            code = InvalidWheel.exit_code
            continue
        results.append({"wheel": str(path), "key": record.key, "new": new, "files": len(record.files)})
        if not args.json:
            print(f"{'added' if new else 'already stored'}: {record.key} ({len(record.files)} files)")
    if args.json:
        print_json(results)
    return code


def cmd_store_list(args: argparse.Namespace) -> int:
    from venvfs.status import live_selections

    store = open_store(args)
    users: dict[str, int] = {}
    for state in live_selections(store).values():
        for key in state.selection:
            users[key] = users.get(key, 0) + 1
    rows: list[dict[str, Any]] = []
    for record in store.iter_dists():
        rows.append({"key": record.key, "name": record.name, "version": record.version,
                     "tags": list(record.tags), "files": len(record.files), "bytes": record.logical_size,
                     "venvs": users.get(record.key, 0), "source": record.source})
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        print(f"{r['key']:<48} {r['files']:>6} files {human_bytes(r['bytes']):>10}  used by {r['venvs']} venv(s)")
    return 0


def cmd_store_status(args: argparse.Namespace) -> int:
    from venvfs.status import store_status

    status = store_status(open_store(args))
    if args.json:
        print_json(status.to_json())
        return 0
    print(f"store:          {status.store}")
    print(f"distributions:  {status.distributions}")
    print(f"objects:        {status.objects}")
    print(f"on disk:        {human_bytes(status.stored_bytes)} objects, {human_bytes(status.bytecode_bytes)} bytecode")
    print(f"venvs' logical: {human_bytes(status.logical_bytes)} in {len(status.venvs)} venv(s)")
    if status.dedupe_ratio is not None:
        print(f"dedupe ratio:   {status.dedupe_ratio}x")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    from venvfs.status import live_selections

    store = open_store(args, create=False)
    selections = {p: s.selection for p, s in live_selections(store).items()}
    report = store.verify(selections)
    if args.json:
        print_json({"objects_checked": report.objects_checked, "problems": report.problems,
                    "bytecode_checked": report.bytecode_checked, "bad_bytecode": report.bad_bytecode,
                    "affected_venvs": report.affected_venvs, "bad_records": report.bad_records,
                    "orphans": report.orphans, "orphan_bytes": report.orphan_bytes, "ok": report.ok})
    else:
        for digest, problem in sorted(report.problems.items()):
            venvs = ", ".join(report.affected_venvs.get(digest, [])) or "no venv"
            print(f"{problem}: object {digest[:16]}… (used by {venvs})")
        for name, problem in sorted(report.bad_bytecode.items()):
            tag, _, digest = name.partition("/")
            venvs = ", ".join(report.affected_venvs.get(digest, [])) or "no venv"
            print(f"{problem}: bytecode {store.bytecode_path(tag, digest)} (used by {venvs}); "
                  "delete it and Python compiles the source instead")
        for key in report.bad_records:
            print(f"unreadable record: {key}")
        if report.orphans:
            print(f"{report.orphans} object(s) ({human_bytes(report.orphan_bytes)}) that no record refers to "
                  "(left by an interrupted or failed ingest, or one still running): `venvfs store gc` removes them")
        print(f"checked {report.objects_checked} objects and {report.bytecode_checked} .pyc: "
              f"{'ok' if report.ok else 'PROBLEMS FOUND'}")
    return 0 if report.ok else 5


def cmd_store_gc(args: argparse.Namespace) -> int:
    from venvfs.status import live_selections
    from venvfs.view import view_cache_key

    store = open_store(args, create=False)
    with store.collecting():
        live = live_selections(store)
        forgotten = [p for p in store.registered_venvs() if str(p) not in live]
        report = store.gc({p: s.selection for p, s in live.items()}, dry_run=args.dry_run,
                          live_views={view_cache_key(s) for s in live.values()})
        if not args.dry_run:
            for path in forgotten:
                store.unregister_venv(path)
    report.forgotten_venvs = [str(p) for p in forgotten]
    if args.json:
        print_json({"dry_run": args.dry_run, "distributions": report.dists, "objects": report.objects,
                    "bytecode": report.bytecode, "views": report.views, "bytes_freed": report.bytes_freed,
                    "forgotten_venvs": report.forgotten_venvs})
        return 0
    verb = "would free" if args.dry_run else "freed"
    for gone in report.forgotten_venvs:
        print(f"{'would forget' if args.dry_run else 'forgot'} venv {gone} (gone or no longer using this store)")
    print(f"{verb} {human_bytes(report.bytes_freed)}: {len(report.dists)} distribution(s), {report.objects} "
          f"object(s), {report.bytecode} bytecode file(s), {report.views} cached view(s)")
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    from venvfs.adopt import adopt

    venv = Venv.open(venv_path(args))
    store = open_store_for(args, venv, create=True)
    report = adopt(venv, store, link_mode=LinkMode(args.link_mode), compile_bytecode=not args.no_compile,
                   install_hooks=False if args.no_hooks else None)
    if args.json:
        print_json(report.__dict__)
        return 0
    print(f"adopted {venv.root}: {len(report.selection)} distribution(s), {len(report.new_dists)} new to the store")
    print(f"  new in store: {human_bytes(report.new_bytes)} in {report.new_objects} object(s); "
          f"already stored: {human_bytes(report.shared_bytes)}")
    print(f"  files: {report.link_summary}")
    for name, files in report.kept_in_venv.items():
        print(f"  kept in the venv (edited or missing since install): {name}: {', '.join(files[:5])}"
              + (" …" if len(files) > 5 else ""))
    for dist_info, why in report.skipped.items():
        print(f"  not adopted: {dist_info}: {why}")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from venvfs import daemon, layout
    from venvfs.bytecode import ensure_bytecode
    from venvfs.materialize import check_selection, materialize

    venv = Venv.open(venv_path(args))
    store = open_store_for(args, venv)
    linker = Linker(LinkMode(args.link_mode))
    with venv.locked():
        state = venv.read_state()
        if not layout.interrupted(venv):
            check_selection(venv, store, state)  # before the unmount: refused, it stays as it was
        if state.layout == "mounted" or layout.interrupted(venv):
            daemon.unmount(venv)
        layout.resume(venv, store, state)
        if state.layout == "mounted":
            layout.to_materialized(venv, store, state, linker)
        else:
            if state.interpreter is None:
                state.interpreter = venv.probe_interpreter()
            records = [store.get_dist(k) for k in state.selection]
            ensure_bytecode(store, records, state.interpreter, venv.python)
            materialize(venv, store, state, linker, records=records)
            if linker.used:
                state.link_mode = linker.used.value
            venv.write_state(state)
    if args.json:
        counts = {m.value: n for m, n in linker.counts.items()}
        print_json({"venv": str(venv.root), "link_mode": linker.used.value if linker.used else None,
                    "fallback_reason": linker.fallback_reason, "counts": counts})
    else:
        print(f"materialized {venv.root}: {linker.summary()}")
    return 0


def _print_selection(args: argparse.Namespace, venv: Venv, added: list[str], removed: list[str], links: str) -> None:
    if args.json:
        print_json({"venv": str(venv.root), "added": added, "removed": removed, "links": links})
        return
    for key in removed:
        print(f"removed {key}")
    for key in added:
        print(f"added {key}")
    if added:
        print(f"  files: {links}")


def cmd_add(args: argparse.Namespace) -> int:
    from venvfs.select import change_selection

    limits = _limits(args)
    venv = Venv.open(args.venv)
    store = open_store_for(args, venv, create=True)
    report = change_selection(venv, store, add=args.specs, link_mode=LinkMode(args.link_mode),
                              dependencies=not args.no_deps, limits=limits)
    _print_selection(args, venv, report.added, report.removed, report.link_summary)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from venvfs.select import change_selection

    venv = Venv.open(args.venv)
    store = open_store_for(args, venv)
    report = change_selection(venv, store, remove=args.names)
    _print_selection(args, venv, report.added, report.removed, report.link_summary)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from venvfs import daemon
    from venvfs.status import venv_status

    venv = Venv.open(venv_path(args))
    store = open_store_for(args, venv)
    if venv.is_managed and venv.read_state().layout == "mounted" and daemon.mount_state(venv) == "dead":
        # A killed daemon leaves "Transport endpoint is not connected": clear it and mount again.
        result = daemon.mount(venv.root, store)
        print(f"venvfs: the mount's daemon had died; {result.message}", file=sys.stderr)
    status = venv_status(venv, store)
    if args.json:
        print_json(status.to_json())
        return 0
    print(f"venv:        {status.venv}")
    print(f"store:       {status.store}")
    print(f"layout:      {status.layout} (site-packages {status.mount})")
    if status.interrupted:
        print(f"interrupted: {status.interrupted}")
    print(f"link mode:   {status.link_mode or '-'}")
    print(f"python:      {status.python or '?'}")
    print(f"distributions: {len(status.distributions)}")
    for d in status.distributions:
        shared = "shared" if d.shared_with_other_venvs else "alone"
        print(f"  {d.name:<28} {d.version:<14} {d.files:>6} files {human_bytes(d.logical_bytes):>10}  {shared}")
    print(f"logical size:      {human_bytes(status.logical_bytes)} (what plain copies would take)")
    print(f"in the store:      {human_bytes(status.store_bytes)}: {human_bytes(status.shared_bytes)} shared "
          f"with other venvs, {human_bytes(status.owned_alone_bytes)} used by this venv alone")
    print(f"in the venv:       {human_bytes(status.venv_own_bytes)} in {status.venv_own_files} file(s) of its own")
    return 0


__all__ = ["VenvfsError", "register"]
