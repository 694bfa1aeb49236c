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

from venvfs.cli.common import (
    add_venv_argument,
    common_parent,
    intermixed,
    json_parent,
    note_dead_mount,
    open_store,
    open_store_for,
    print_json,
    venv_path,
)
from venvfs.errors import InvalidWheel, StateDamaged, UsageError, VenvfsError
from venvfs.fsutil import describe_oserror
from venvfs.progress import human_bytes
from venvfs.venv.linkmode import Linker, LinkMode
from venvfs.venv.venv import Venv


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
        "this run stored are taken back. A wheel that claims a stored name and version with other\n"
        "content is stored with a warning: `venvfs add` then asks which build to use.\n\n"
        "An object the wheel provides that is already stored is hashed again; a damaged one is replaced\n"
        "by the wheel's bytes (a fresh file renamed into place) and running mounts drop their copies.",
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="WHEEL_OR_DIR")
    _limit_arguments(p)
    p.set_defaults(handler=cmd_store_add)
    intermixed(p)
    from venvfs.cli import publish

    publish.register(store_sub, [common, as_json])
    p = store_sub.add_parser("list", parents=[common, as_json], help="list stored distributions")
    p.set_defaults(handler=cmd_store_list)
    p = store_sub.add_parser("status", parents=[common, as_json], help="store size, dedupe ratio, venvs")
    p.set_defaults(handler=cmd_store_status)
    p = store_sub.add_parser(
        "verify", parents=[common, as_json], help="re-hash every object; name the venvs a damaged one affects",
        description="Re-hash every stored object. A modified or missing object (for example one edited\n"
        "through a hardlink) is reported with the venvs that use it; exit code 5 when any is found.\n"
        "Objects no record refers to (a crashed ingest's leftovers) are counted, not failed on:\n"
        "`venvfs store gc` removes them.\n\n"
        "With --repair, each damaged object is replaced (a fresh file, renamed into place) by a copy\n"
        "with its digest from the store or a venv, and running mounts drop what they cached of it;\n"
        "one that no copy can supply is named with the distribution to re-add from its wheel\n"
        "(`venvfs store add` repairs the damaged objects of a wheel it is given).",
        formatter_class=fmt,
    )
    p.add_argument("--repair", action="store_true", help="repair damaged objects from good copies")
    p.set_defaults(handler=cmd_store_verify)
    p = store_sub.add_parser(
        "gc", parents=[common, as_json], help="remove what no live venv uses",
        description="Remove distributions, objects and bytecode that no registered venv selects.\n"
        "A registered venv that is missing (moved, deleted, on an unplugged disk) or whose state is\n"
        "damaged keeps what it selected, from the store's copy of its selection, until\n"
        "--forget-missing (a moved venv re-registers itself on its next venvfs command). Wheels\n"
        "added with `store add` and selected by no venv are removed too.\n\n"
        "A shared store (one `store publish` wrote to) is used by venvs on other nodes that it cannot\n"
        "see: its gc removes only the distributions named by --retire, what no record names, and\n"
        "nothing younger than a day (a publisher on another node may be half way).", formatter_class=fmt,
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be forgotten and freed, remove nothing")
    p.add_argument("--forget-missing", action="store_true",
                   help="forget registered venvs that are no longer where they were (listed first), "
                   "and free what only they selected")
    p.add_argument("--retire", action="append", default=[], metavar="DIST",
                   help="in a shared store (`store publish` made it), the only distributions gc removes: "
                   "a key, a name or NAME==VERSION (repeatable); everything else there stays")
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
    compiling = p.add_mutually_exclusive_group()
    compiling.add_argument("--no-compile", dest="bytecode", action="store_const", const="none", default="background",
                           help="do not compile the store's bytecode for this venv's Python")
    compiling.add_argument("--compile-now", dest="bytecode", action="store_const", const="now",
                           help="compile the store's bytecode before returning (default: in a background "
                           "process at low priority, while the venv's own valid .pyc files serve its imports)")
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
        "A store key (`venvfs store list`) selects that very build. Builds of one name and version that\n"
        "fit equally and differ in content are never chosen between silently: exit code 9 names them.\n\n"
        "example: venvfs add .venv 'numpy>=2' ./x-1.0-py3-none-any.whl",
    )
    p.add_argument("venv", type=Path)
    p.add_argument("specs", nargs="+", metavar="WHEEL_REQUIREMENT_OR_KEY")
    p.add_argument("--no-deps", action="store_true",
                   help="select only what is named, not the stored distributions it requires")
    p.add_argument("--link-mode", choices=[m.value for m in LinkMode], default="auto", help=link_help)
    _limit_arguments(p)
    p.set_defaults(handler=cmd_add)
    intermixed(p)

    p = subparsers.add_parser("remove", parents=[common, as_json], help="deselect distributions")
    p.add_argument("venv", type=Path)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_remove)
    intermixed(p)

    p = subparsers.add_parser(
        "status", parents=[common, as_json], formatter_class=fmt,
        help="what a venv shares and owns alone",
        description="Layout, mount state, link mode, distributions, and the bytes that matter:\n"
        "logical (as plain copies), in the store, shared with other venvs, owned alone, in the venv.",
    )
    add_venv_argument(p)
    p.set_defaults(handler=cmd_status)


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    from venvfs.store import limits

    p.add_argument("--max-unpacked-size", metavar="SIZE",
                   help=f"refuse a wheel that unpacks to more (default: ${limits.SIZE_ENV}, else "
                   f"{limits.DEFAULT_MAX_UNPACKED >> 30}G)")
    p.add_argument("--max-ratio", metavar="N",
                   help=f"refuse a wheel, or a member of it, that unpacks to more than {limits.RATIO_FLOOR >> 20} MiB "
                   f"at a compression ratio above N:1 (default: ${limits.RATIO_ENV}, else "
                   f"{limits.DEFAULT_MAX_RATIO:g})")


def _limits(args: argparse.Namespace) -> Any:
    from venvfs.store.limits import IngestLimits

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
    from venvfs.store.wheel import ingest_wheel
    from venvfs.venv.select import describe_builds, rival_builds

    limits = _limits(args)
    wheels = _wheel_paths(args.paths)
    store = open_store(args, create=True)
    results: list[dict[str, Any]] = []
    code = 0
    for path in wheels:
        repaired_before = len(store.repaired)
        try:
            record, new = ingest_wheel(store, path, limits=limits)
        except InvalidWheel as e:
            print(f"venvfs: error: {e}", file=sys.stderr)
            results.append({"wheel": str(path), "error": str(e)})
            code = InvalidWheel.exit_code
            continue
        repaired = store.repaired[repaired_before:]
        results.append({"wheel": str(path), "key": record.key, "new": new, "files": len(record.files),
                        "repaired": repaired})
        if not args.json:
            print(f"{'added' if new else 'already stored'}: {record.key} ({len(record.files)} files)"
                  + (f"; repaired {len(repaired)} damaged object(s)" if repaired else ""))
        rivals = rival_builds(store, record) if new else []
        if rivals:
            results[-1]["other_content"] = [r.key for r in rivals]
            print(f"venvfs: warning: {path.name} claims {record.name} {record.version}, already stored with other "
                  f"content: {describe_builds(store, rivals)}; `venvfs add NAME` will ask "
                  f"which to use (`venvfs add VENV {record.key}` chooses this one)", file=sys.stderr)
    if store.repaired:
        from venvfs.mount.daemon import invalidate_repaired

        invalidate_repaired(store)
    if args.json:
        print_json(results)
    return code


def cmd_store_list(args: argparse.Namespace) -> int:
    from venvfs.venv.status import live_selections

    store = open_store(args)
    users: dict[str, int] = {}
    for state in live_selections(store).values():
        for key in state.selection:
            users[key] = users.get(key, 0) + 1
    rows: list[dict[str, Any]] = []
    for record in store.iter_dists():
        rows.append({"key": record.key, "name": record.name, "version": record.version,
                     "tags": list(record.tags), "files": len(record.files), "bytes": record.logical_size,
                     "venvs": users.get(record.key, 0), "source": record.source,
                     "layer": str(store.layer_of(store.dist_path(record.key)))})
    if args.json:
        print_json(rows)
        return 0
    for r in rows:
        below = f"  [in {r['layer']}]" if r["layer"] != str(store.root) else ""
        print(f"{r['key']:<48} {r['files']:>6} files {human_bytes(r['bytes']):>10}  used by {r['venvs']} venv(s)"
              f"{below}")
    return 0


def cmd_store_status(args: argparse.Namespace) -> int:
    from venvfs.venv.status import store_status

    status = store_status(open_store(args))
    if args.json:
        print_json(status.to_json())
        return 0
    print(f"store:          {status.store}")
    print(f"distributions:  {status.distributions}")
    if len(status.layers) > 1:
        for layer in status.layers:
            held = (f"{layer['distributions']} distribution(s)" if layer["error"] is None
                    else f"UNREACHABLE: {layer['error']}")
            print(f"  {layer['role']:<6} {layer['root']}: {held}")
        print("(objects and bytes below: the local store's own)")
    print(f"objects:        {status.objects}")
    print(f"on disk:        {human_bytes(status.stored_bytes)} objects, {human_bytes(status.bytecode_bytes)} bytecode")
    print(f"venvs' logical: {human_bytes(status.logical_bytes)} in {len(status.venvs)} venv(s)")
    if status.gone_venvs:
        print(f"gone:           {status.gone_venvs} registered venv(s) no longer there; their distributions "
              "stay until `venvfs store gc --forget-missing`")
    if status.dedupe_ratio is not None:
        print(f"dedupe ratio:   {status.dedupe_ratio}x")
    return 0


def cmd_store_verify(args: argparse.Namespace) -> int:
    from venvfs.store.verify import verify
    from venvfs.venv.status import live_selections

    store = open_store(args, create=False)
    states = live_selections(store)
    selections = {p: s.selection for p, s in states.items()}
    report = verify(store, selections)
    fixed: dict[str, str] = {}
    unrepairable: dict[str, list[str]] = {}
    hardlinked: dict[str, list[str]] = {}
    if args.repair and report.problems:
        from venvfs.mount.daemon import invalidate_repaired
        from venvfs.venv.repair import repair

        with store.writing():
            outcome = repair(store, report, states)
        fixed, unrepairable, hardlinked = outcome.repaired, outcome.unrepairable, outcome.hardlinked
        if store.repaired:
            invalidate_repaired(store)
    ok = not (set(report.problems) - set(fixed)) and not report.bad_records and not report.bad_bytecode
    if args.json:
        print_json({"objects_checked": report.objects_checked, "problems": report.problems,
                    "bytecode_checked": report.bytecode_checked, "bad_bytecode": report.bad_bytecode,
                    "affected_venvs": report.affected_venvs, "bad_records": report.bad_records,
                    "orphans": report.orphans, "orphan_bytes": report.orphan_bytes,
                    "repaired": fixed, "unrepairable": unrepairable, "still_damaged_in_venvs": hardlinked,
                    "ok": ok})
    else:
        for digest, problem in sorted(report.problems.items()):
            venvs = ", ".join(report.affected_venvs.get(digest, [])) or "no venv"
            print(f"{problem}: object {digest[:16]}… (used by {venvs})")
            if digest in fixed:
                print(f"  repaired from {fixed[digest]}")
                for venv in sorted(set(hardlinked.get(digest, []))):
                    # Their names keep the damaged inode; the store's name has a new one.
                    print(f"  {venv} hardlinks the damaged copy: `venvfs materialize {venv}` links the repaired one")
            elif digest in unrepairable:
                dists = ", ".join(unrepairable[digest]) or "no stored distribution"
                print(f"  cannot repair: no good copy known; re-add {dists} from its wheel (`venvfs store add`)")
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
        summary = "ok" if report.ok else ("ok after repair" if ok else "PROBLEMS FOUND")
        if report.problems and not args.repair:
            summary += " (`venvfs store verify --repair` replaces damaged objects from good copies)"
        print(f"checked {report.objects_checked} objects and {report.bytecode_checked} .pyc: {summary}")
        for lower in store.lowers:
            # Its records name only its own objects; a lower is checked where it is, as its own store.
            print(f"not checked from here: the lower store {lower} (`venvfs store verify --store {lower}`)")
    return 0 if ok else 5


def cmd_store_gc(args: argparse.Namespace) -> int:
    from venvfs.venv import registry

    store = open_store(args, create=False)
    would = "would " if args.dry_run else ""
    with store.collecting(wait=True, compiles=True):  # e.g. behind the bytecode adopt compiles in the background
        plan = registry.plan_gc(store, forget_missing=args.forget_missing)
        if not args.json:
            # Named before anything is removed: forgetting a venv frees what only it selected.
            for v in plan.forget:
                print(f"{'would forget' if args.dry_run else 'forgetting'} venv {v.path}: {v.why}")
            for v in plan.kept:
                how = (f"`venvfs mount {v.path}` repairs it" if v.condition == "damaged" else
                       "`venvfs store gc --forget-missing` forgets it")
                count = f"its {len(v.state.selection)} distribution(s)" if v.state else "it"
                print(f"keeping {count} for venv {v.path}: {v.why}; {how}")
        retire: list[str] = []
        if args.retire:
            from venvfs.store.publish import select_keys

            retire = select_keys(store, args.retire, everything=False)
        report = registry.collect(store, plan, dry_run=args.dry_run, retire=retire)
    if args.json:
        print_json({"dry_run": args.dry_run, "distributions": report.dists, "objects": report.objects,
                    "bytecode": report.bytecode, "views": report.views, "bytes_freed": report.bytes_freed,
                    "forgotten_venvs": report.forgotten_venvs, "kept_venvs": [v.to_json() for v in plan.kept]})
        return 0
    for key in report.dists:
        print(f"{would}remove{'' if would else 'd'} {key}")
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {human_bytes(report.bytes_freed)}: {len(report.dists)} distribution(s), {report.objects} "
          f"object(s), {report.bytecode} bytecode file(s), {report.views} cached view(s)")
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    from venvfs.venv.adopt import adopt

    venv = Venv.open(venv_path(args))
    store = open_store_for(args, venv, create=True)
    report = adopt(venv, store, link_mode=LinkMode(args.link_mode), bytecode=args.bytecode,
                   install_hooks=False if args.no_hooks else None)
    if args.json:
        print_json(report.__dict__)
        return 0
    print(f"adopted {venv.root}: {len(report.selection)} distribution(s), {len(report.new_dists)} new to the store")
    print(f"  new in store: {human_bytes(report.new_bytes)} in {report.new_objects} object(s); "
          f"already stored: {human_bytes(report.shared_bytes)}")
    print(f"  files: {report.link_summary}")
    if report.compiling_pid:
        print(f"  bytecode: compiling into the store in the background (pid {report.compiling_pid}); "
              f"{report.restamped} of the venv's own .pyc file(s) kept valid meanwhile")
    if report.shared_inode_files:
        # What leaving other tools' inodes alone cost: hardlinking them would have made uv's cache
        # (or another venv) the store.
        print(f"  shared with files outside this venv (a tool's cache, other venvs): {report.shared_inode_files} "
              f"file(s) stored as reflinks or copies, {human_bytes(report.shared_inode_copied_bytes)} copied; "
              "their inodes were left untouched")
    if report.hardlink_warning:
        print(f"  {report.hardlink_warning}")
    for name, files in report.kept_in_venv.items():
        print(f"  kept in the venv (edited or missing since install): {name}: {', '.join(files[:5])}"
              + (" …" if len(files) > 5 else ""))
    for dist_info, why in report.skipped.items():
        print(f"  not adopted: {dist_info}: {why}")
    return 0


def cmd_materialize(args: argparse.Namespace) -> int:
    from venvfs.mount import daemon
    from venvfs.store.bytecode import ensure_bytecode
    from venvfs.venv import layout
    from venvfs.venv.materialize import check_selection, materialize

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
                    "fallback_reason": linker.fallback_reason, "counts": counts,
                    "hardlink_warning": linker.hardlink_warning()})
    else:
        print(f"materialized {venv.root}: {linker.summary()}")
        if linker.hardlink_warning():
            print(linker.hardlink_warning())
    return 0


def _print_selection(args: argparse.Namespace, venv: Venv, added: list[str], removed: list[str], links: str,
                     warning: str | None = None) -> None:
    if args.json:
        print_json({"venv": str(venv.root), "added": added, "removed": removed, "links": links,
                    "hardlink_warning": warning})
        return
    for key in removed:
        print(f"removed {key}")
    for key in added:
        print(f"added {key}")
    if added:
        print(f"  files: {links}")
    if warning:
        print(f"  {warning}")


def cmd_add(args: argparse.Namespace) -> int:
    from venvfs.venv.select import change_selection

    limits = _limits(args)
    venv = Venv.open(args.venv)
    store = open_store_for(args, venv, create=True)
    report = change_selection(venv, store, add=args.specs, link_mode=LinkMode(args.link_mode),
                              dependencies=not args.no_deps, limits=limits)
    if store.repaired:  # a wheel named here repaired damaged objects: every mount must drop its copies
        from venvfs.mount.daemon import invalidate_repaired

        invalidate_repaired(store)
    note_dead_mount(venv)
    _print_selection(args, venv, report.added, report.removed, report.link_summary, report.hardlink_warning)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    from venvfs.venv.select import change_selection

    venv = Venv.open(args.venv)
    store = open_store_for(args, venv)
    report = change_selection(venv, store, remove=args.names)
    note_dead_mount(venv)
    _print_selection(args, venv, report.added, report.removed, report.link_summary)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from venvfs.venv import registry
    from venvfs.venv.status import venv_status

    venv = Venv.open(venv_path(args))
    store = open_store_for(args, venv, damaged_ok=True)
    checked = registry.check(venv, store)
    if checked.problem is not None:
        # Reported, not repaired: status changes nothing. The rest is what the registry remembers.
        backup = checked.backup_state
        if backup is None:
            raise StateDamaged(checked.message(venv, store))
        status = venv_status(venv, store, backup)
        status.state_problem = checked.message(venv, store)
    else:
        # A dead mount is reported (mount_problem), not repaired: repairing is `venvfs mount`'s job.
        status = venv_status(venv, store)
    if args.json:
        print_json(status.to_json())
        return 0
    print(f"venv:        {status.venv}")
    if status.state_problem:
        print(f"state:       DAMAGED: {status.state_problem}")
        print("             (what follows is the store's registry copy)")
    print(f"store:       {status.store}")
    for lower in status.lowers:
        print(f"  over:      {lower} (read-only)")
    print(f"layout:      {status.layout} (site-packages {status.mount})")
    if status.interrupted:
        print(f"interrupted: {status.interrupted}")
    if status.mount_problem:
        print(f"mount:       {status.mount_problem}")
    if status.layout == "materialized":
        # Only real files are linked; a mounted venv's site-packages is served, not linked.
        print(f"link mode:   {status.link_mode or '-'}")
    print(f"python:      {status.python or '?'}")
    print(f"distributions: {len(status.distributions)}  (size as plain files; store bytes shared with other venvs)")
    for d in status.distributions:
        shared = f"{human_bytes(d.shared_bytes)} of {human_bytes(d.store_bytes)} shared" if d.shared_bytes else "alone"
        below = f"  [in {d.layer}]" if d.layer != status.store else ""
        print(f"  {d.name:<28} {d.version:<14} {d.files:>6} files {human_bytes(d.logical_bytes):>10}  {shared}{below}")
    print(f"logical size:      {human_bytes(status.logical_bytes)} (what plain copies would take)")
    print(f"in the store:      {human_bytes(status.store_bytes)}: {human_bytes(status.shared_bytes)} shared "
          f"with other venvs, {human_bytes(status.owned_alone_bytes)} used by this venv alone")
    if status.lower_bytes:
        print(f"  of which below:  {human_bytes(status.lower_bytes)} in the lower (shared) stores")
    print(f"in the venv:       {human_bytes(status.venv_own_bytes)} in {status.venv_own_files} file(s) of its own")
    if status.hardlink_warning:
        print(status.hardlink_warning)
    for dist_info, why in status.pending_ingest.items():
        # Ingested by the mount's daemon once the install settles (docs/design.md), or by `venvfs commit`.
        print(f"pending ingest: {dist_info}" + (f" ({why}; `venvfs commit` stores the rest)" if why else ""))
    return 0


__all__ = ["VenvfsError", "register"]
