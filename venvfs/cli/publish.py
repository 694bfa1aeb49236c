"""``venvfs store publish``: the CLI over ``venvfs.store.publish``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from venvfs.cli.common import open_store, print_json
from venvfs.errors import UsageError
from venvfs.progress import human_bytes


def register(store_sub: argparse._SubParsersAction[Any], parents: list[argparse.ArgumentParser]) -> None:
    p = store_sub.add_parser(
        "publish", parents=parents, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="copy distributions into a shared store (for other machines' --store-lower)",
        description="Copy distributions, their objects and bytecode from the store into the store at\n"
        "--to (made if missing or empty), which other machines then use read-only below their own\n"
        "(--store-lower). Safe on NFS: no locks, every file written under a temporary name and linked\n"
        "into place, records last; two nodes publishing at once end with one copy. Idempotent: says\n"
        "what it added and what was there. The shared store's gc leaves what is younger than a day.",
    )
    p.add_argument("dists", nargs="*", metavar="DIST", help="a key, a project name, or NAME==VERSION")
    p.add_argument("--all", action="store_true", help="every distribution of the store's own layer")
    p.add_argument("--to", type=Path, required=True, metavar="DIR", help="the shared store")
    p.set_defaults(handler=cmd_store_publish)


def cmd_store_publish(args: argparse.Namespace) -> int:
    from venvfs.store.publish import publish, select_keys

    if bool(args.dists) == bool(args.all):
        raise UsageError("name the distributions to publish, or --all (not both)")
    source = open_store(args)
    report = publish(source, select_keys(source, args.dists, everything=args.all), args.to)
    if args.json:
        print_json(report.to_json())
        return 0
    if not args.quiet:
        for key in report.added:
            print(f"published {key}")
        print(f"{report.target}: added {len(report.added)} distribution(s), {report.objects_added} object(s) "
              f"({human_bytes(report.bytes_added)}), {report.bytecode_added} bytecode file(s); "
              f"{len(report.present)} distribution(s) and {report.objects_present} object(s) were there already")
    return 0
