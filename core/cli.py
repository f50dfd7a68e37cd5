"""The ``snaptree`` command, named after ``virsh snapshot-*``.

Read commands take ``--json``.  Errors are one line on stderr with a distinct
exit status per class (see :mod:`snaptree.errors`); never a traceback unless
``--debug`` asks for one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sqlite3
import sys
from typing import Any, Sequence

from .api import KEEP, Snaptree
from .errors import Busy, InvalidInput, SnaptreeError, StateError
from .progress import ProgressBar
from .render import group_dict, snapshot_dict, tree_lines, when

__all__ = ["main", "build_parser"]

EXIT_DRIFT = 11


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print machine-readable JSON")


def _options(pairs: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise InvalidInput(f"option {pair!r} must look like KEY=VALUE")
        key, value = pair.split("=", 1)
        if not key:
            raise InvalidInput(f"option {pair!r} has an empty key")
        out[key] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="snaptree", description=(
        "Point-in-time snapshots of VM disks and volumes, through pluggable backends."))
    parser.add_argument("--state-dir", help="catalog directory (default: $SNAPTREE_STATE_DIR, "
                        "/var/lib/snaptree as root, else ~/.local/state/snaptree)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--wait", type=_seconds, default=30.0, metavar="SECONDS",
                        help="wait this long for a busy group before failing (default 30)")
    parser.add_argument("--debug", action="store_true", help="log backend commands; tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    group = sub.add_parser("group", help="manage groups of volumes")
    gsub = group.add_subparsers(dest="group_command", metavar="ACTION", required=True)
    p = gsub.add_parser("create", help="create a group from volume specs BACKEND:LOCATOR")
    p.add_argument("name")
    p.add_argument("volumes", nargs="+", metavar="BACKEND:LOCATOR")
    p.add_argument("--qmp", metavar="SOCKET", help="QMP socket of the QEMU owning the disks")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="backend option, e.g. qcow2.mode=external")
    p = gsub.add_parser("add", help="add volumes to a group (older snapshots leave them alone)")
    p.add_argument("name")
    p.add_argument("volumes", nargs="+", metavar="BACKEND:LOCATOR")
    _json_flag(p)
    p = gsub.add_parser("remove", help="take volumes out of a group (their data stays)")
    p.add_argument("name")
    p.add_argument("volumes", nargs="+", metavar="BACKEND:LOCATOR")
    p.add_argument("--forget-members", action="store_true",
                   help="drop the snapshots' members on these volumes from the catalog and leave "
                        "their storage as it is (for a disk that is gone)")
    _json_flag(p)
    p = gsub.add_parser("set", help="change a group's QMP socket or options (snapshots stay)")
    p.add_argument("name")
    socket = p.add_mutually_exclusive_group()
    socket.add_argument("--qmp", metavar="SOCKET",
                        help="QMP socket of the QEMU owning the disks now (a restarted VM's)")
    socket.add_argument("--no-qmp", action="store_true", help="forget the QMP socket")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                   help="set a backend option")
    p.add_argument("--unset", action="append", metavar="KEY", default=[],
                   help="remove an option")
    _json_flag(p)
    p = gsub.add_parser("list", help="list groups")
    _json_flag(p)
    p = gsub.add_parser("show", help="show one group")
    p.add_argument("name")
    _json_flag(p)
    p = gsub.add_parser("delete", help="forget a group")
    p.add_argument("name")
    p.add_argument("--with-snapshots", action="store_true", help="delete its snapshots too")

    p = sub.add_parser("create", help="snapshot every volume of a group")
    p.add_argument("group")
    p.add_argument("name", nargs="?")
    p.add_argument("--description", "-d", default="")
    p.add_argument("--memory", action="store_true", help="save VM memory too (needs --qmp group)")
    p.add_argument("--mode", choices=["internal", "external"], help="qcow2 snapshot kind")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE")
    _json_flag(p)

    p = sub.add_parser("list", help="list a group's snapshots")
    p.add_argument("group")
    p.add_argument("--tree", action="store_true", help="draw the snapshot tree")
    _json_flag(p)
    for name, help_text in (("current", "the current snapshot"),):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("group")
        _json_flag(p)
    for name, help_text in (("parent", "a snapshot's parent"), ("info", "details of a snapshot")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("group")
        p.add_argument("name")
        _json_flag(p)
    p = sub.add_parser("edit", help="rename a snapshot or change its description")
    p.add_argument("group")
    p.add_argument("name")
    p.add_argument("--rename", metavar="NEW_NAME", help="the snapshot's new name")
    p.add_argument("--description", "-d", help="the new description ('' clears it)")
    _json_flag(p)
    p = sub.add_parser("revert", help="revert a group to a snapshot")
    p.add_argument("group")
    p.add_argument("name")
    p.add_argument("--disks-only", action="store_true",
                   help="leave a snapshot's VM memory out: only the disks go back")
    p.add_argument("--option", "-o", action="append", metavar="KEY=VALUE")
    _json_flag(p)
    p = sub.add_parser("delete", help="delete a snapshot (children are re-parented)")
    p.add_argument("group")
    p.add_argument("name")
    p.add_argument("--children", action="store_true", help="delete the whole subtree")
    _json_flag(p)
    p = sub.add_parser("prune", help="delete all but the N newest snapshots (never the current)")
    p.add_argument("group")
    p.add_argument("--keep", type=_whole, required=True, metavar="N",
                   help="how many of the newest snapshots to keep (the current one stays too)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    _json_flag(p)
    p = sub.add_parser("start", help="start a group's VM on its current disks (needs a launch recipe)")
    p.add_argument("group")
    p.add_argument("--paused", action="store_true", help="leave the guest paused")
    _json_flag(p)
    p = sub.add_parser("check", help="report drift between the catalog and storage")
    p.add_argument("group")
    _json_flag(p)
    p = sub.add_parser("recover", help="finish or undo operations a crash interrupted")
    p.add_argument("group", nargs="?")
    _json_flag(p)
    p = sub.add_parser("backends", help="installed backends and their capabilities")
    _json_flag(p)
    p = sub.add_parser("journal", help="recent operations")
    p.add_argument("group", nargs="?")
    p.add_argument("--limit", type=_count, default=20)
    _json_flag(p)
    _add_extension_commands(sub)
    return parser


def _add_extension_commands(sub) -> None:
    """Commands whose work lives in a backend plugin (LVM's map/unmap)."""
    p = sub.add_parser("map", help="expose the partitions inside a snapshot (read-only)")
    p.add_argument("group")
    p.add_argument("name")
    _json_flag(p)
    p = sub.add_parser("unmap", help="remove partition mappings made by 'map'")
    p.add_argument("group")
    p.add_argument("name")
    _json_flag(p)


class Output:
    def __init__(self, as_json: bool):
        self.as_json = as_json

    def emit(self, data: Any, text: str | Sequence[str]) -> None:
        if self.as_json:
            print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        elif isinstance(text, str):
            if text:
                print(text)
        else:
            for line in text:
                print(line)


def _run(args: argparse.Namespace, api: Snaptree, out: Output) -> int:
    cmd = args.command
    if cmd == "group":
        action = args.group_command
        if action == "create":
            g = api.create_group(args.name, args.volumes, qmp_socket=args.qmp,
                                 options=_options(args.option))
            out.emit(group_dict(g), f"group {g.name!r} created with {len(g.volumes)} volume(s)")
        elif action in ("add", "remove"):
            if action == "add":
                g = api.add_volumes(args.name, args.volumes)
            else:
                g = api.remove_volumes(args.name, args.volumes, forget_members=args.forget_members)
            done = "added to" if action == "add" else "removed from"
            out.emit(group_dict(g), [f"{len(args.volumes)} volume(s) {done} group {g.name!r}; "
                                     f"it has {len(g.volumes)}"])
        elif action == "set":
            socket = None if args.no_qmp else (args.qmp if args.qmp is not None else KEEP)
            g = api.set_group(args.name, qmp_socket=socket, options=_options(args.option),
                              unset=args.unset)
            lines = [f"group {g.name!r} updated", f"qmp:      {g.qmp_socket or '-'}"]
            lines += [f"option:   {k}={v}" for k, v in g.options.items()]
            out.emit(group_dict(g), lines)
        elif action == "list":
            groups = api.list_groups()
            rows = [group_dict(g, len(api.list(g.name))) for g in groups]
            out.emit(rows, [f"{r['name']:<24} {len(r['volumes'])} volume(s)  {r['snapshots']} snapshot(s)"
                            f"  current: {r['current'] or '-'}" for r in rows] or ["(no groups)"])
        elif action == "show":
            g = api.group(args.name)
            data = group_dict(g, len(api.list(g.name)))
            lines = [f"group:    {g.name}", f"created:  {when(g.created)}",
                     f"current:  {g.current or '-'}", f"qmp:      {g.qmp_socket or '-'}"]
            lines += [f"volume:   {v.spec}" for v in g.volumes]
            lines += [f"option:   {k}={v}" for k, v in g.options.items()]
            out.emit(data, lines)
        elif action == "delete":
            api.delete_group(args.name, with_snapshots=args.with_snapshots)
            out.emit({"deleted": args.name}, f"group {args.name!r} deleted")
        return 0
    if cmd == "create":
        options = _options(args.option)
        if args.mode:
            options["qcow2.mode"] = args.mode
        snap = api.create(args.group, args.name, description=args.description,
                          memory=args.memory, options=options)
        out.emit(snapshot_dict(snap, snap.name),
                 f"snapshot {snap.name!r} of group {args.group!r} created")
        return 0
    if cmd == "list":
        current = api.group(args.group).current
        if args.tree:
            tree = api.tree(args.group)
            out.emit(tree, tree_lines(tree) or ["(no snapshots)"])
        else:
            snaps = api.list(args.group)
            rows = [snapshot_dict(s, current) for s in snaps]
            lines = [f"{'NAME':<24} {'CREATED':<26} {'PARENT':<24} STATE"]
            lines += [f"{s.name + (' *' if s.name == current else ''):<24} {when(s.created):<26} "
                      f"{s.parent or '-':<24} {s.state.value}" for s in snaps]
            out.emit(rows, lines if snaps else ["(no snapshots)"])
        return 0
    if cmd == "current":
        snap = api.current(args.group)
        out.emit(None if snap is None else snapshot_dict(snap, snap.name),
                 snap.name if snap else "(none)")
        return 0
    if cmd == "parent":
        snap = api.parent(args.group, args.name)
        out.emit(None if snap is None else snapshot_dict(snap, api.group(args.group).current),
                 snap.name if snap else "(none)")
        return 0
    if cmd == "edit":
        snap = api.edit(args.group, args.name, new_name=args.rename, description=args.description)
        said = [f"renamed to {snap.name!r}"] if snap.name != args.name else []
        if args.description is not None:
            said.append("description " + ("cleared" if not snap.description else "set"))
        out.emit(snapshot_dict(snap, api.group(args.group).current),
                 f"snapshot {args.name!r} of group {args.group!r}: {', '.join(said) or 'unchanged'}")
        return 0
    if cmd == "info":
        snap = api.info(args.group, args.name)
        current = api.group(args.group).current
        data = snapshot_dict(snap, current)
        usage = api.space_used(args.group, args.name)
        for member in data["members"]:
            u = usage.get(member["volume"])
            member["space"] = {"exclusive_bytes": u.exclusive_bytes,
                               "referenced_bytes": u.referenced_bytes} if u else None
        lines = [f"name:        {snap.name}", f"id:          {snap.snapshot_id}",
                 f"group:       {snap.group}", f"parent:      {snap.parent or '-'}",
                 f"created:     {when(snap.created)}", f"state:       {snap.state.value}",
                 f"current:     {'yes' if snap.name == current else 'no'}",
                 f"description: {snap.description or '-'}",
                 f"memory:      {snap.memory.kind + ' ' + snap.memory.ref if snap.memory else 'no'}"]
        for member in data["members"]:
            space = member["space"] or {}
            used = space.get("exclusive_bytes") or space.get("referenced_bytes")
            lines.append(f"member:      {member['volume']} -> {member['ref']}"
                         f"{'' if member['valid'] else ' (INVALID)'}"
                         f"{f'  [{used} bytes]' if used is not None else ''}")
        out.emit(data, lines)
        return 0
    if cmd == "revert":
        snap = api.revert(args.group, args.name, disks_only=args.disks_only,
                          options=_options(args.option))
        out.emit(snapshot_dict(snap, snap.name), f"group {args.group!r} reverted to {snap.name!r}")
        return 0
    if cmd == "delete":
        names = api.delete(args.group, args.name, children=args.children)
        out.emit({"deleted": names}, f"deleted {', '.join(repr(n) for n in names)}")
        return 0
    if cmd == "prune":
        names = api.prune(args.group, args.keep, dry_run=args.dry_run)
        said = "would delete" if args.dry_run else "deleted"
        out.emit({"deleted": names, "dry_run": args.dry_run},
                 f"{said} {', '.join(repr(n) for n in names)}" if names else "nothing to delete")
        return 0
    if cmd == "start":
        images = api.start_vm(args.group, paused=args.paused)
        state = "paused" if args.paused else "running"
        out.emit({"group": args.group, "state": state, "images": images},
                 [f"VM of group {args.group!r} started ({state}) on:"]
                 + [f"  {path}" for path in images.values()])
        return 0
    if cmd == "check":
        report = api.check(args.group)
        data = report.as_dict()
        lines = [f"group {args.group!r}: {'clean' if report.clean else 'DRIFT'}"]
        lines += [f"  interrupted: {e['operation']} of {e['snapshot']!r} begun {e['started']} was "
                  f"cut short; the volumes may not match the catalog until '{e['fix']}'"
                  for e in data["interrupted"]]
        for kind in ("unclaimed", "missing", "orphans", "invalid", "unfinished", "empty",
                     "unreadable", "foreign"):
            for item in data[kind]:
                lines.append(f"  {kind}: " + ", ".join(f"{k}={v}" for k, v in item.items()))
        out.emit(data, lines)
        return 0 if report.clean else EXIT_DRIFT
    if cmd == "recover":
        report = api.recover(args.group)
        lines = list(report.actions)
        if not lines and not report.errors and not report.skipped_groups:
            lines = ["nothing to recover"]
        out.emit(report.as_dict(), lines)
        errors = list(report.errors) + [
            f"group {g!r} is busy: another snaptree operation holds its lock, so it was not "
            f"recovered; run 'snaptree recover {shlex.quote(g)}' once that is done"
            for g in report.skipped_groups]
        for error in errors:  # stderr, one line each, as every error
            print(f"snaptree: error: {' '.join(error.split())}", file=sys.stderr)
        # what recover could not finish stays interrupted: the same status
        # as any other command refused for it (StateError); a group left
        # alone because it was busy is Busy, as for any other command
        if report.errors:
            return StateError.exit_code
        return Busy.exit_code if report.skipped_groups else 0
    if cmd == "backends":
        rows = api.backends()
        lines = []
        for r in rows:
            if "broken" in r:
                lines.append(f"{r['name']:<8} BROKEN: {r['broken']}")
                continue
            caps = [k for k, v in r["capabilities"].items() if v]
            missing = f"  missing tools: {', '.join(r['missing_tools'])}" if r["missing_tools"] else ""
            lines.append(f"{r['name']:<8} {r['description']}\n         capabilities: {', '.join(caps)}{missing}")
        out.emit(rows, lines or ["(no backends installed)"])
        return 0
    if cmd == "journal":
        entries = api.journal(args.group, args.limit)
        lines = [f"{e['op_id']:>5} {when(e['started'])} {e['group_name']:<16} {e['operation']:<7} "
                 f"{e['status']}{' - ' + e['error'] if e.get('error') else ''}" for e in entries]
        out.emit(entries, lines or ["(empty journal)"])
        return 0
    if cmd in ("map", "unmap"):
        from .extensions import run_mapping
        data, lines = run_mapping(api, cmd, args.group, args.name)
        out.emit(data, lines)
        return 0
    raise InvalidInput(f"unknown command {cmd!r}")


def _seconds(text: str) -> float:
    """A wait in seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return value


#: the largest count an option takes: far above any group's snapshots or
#: journal, far below what SQLite or a C long would overflow at
MAX_COUNT = 1_000_000


def _number(text: str, least: int) -> int:
    """``text`` as a whole number from ``least`` to :data:`MAX_COUNT`, in ASCII digits."""
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 16 else None
    if value is None or not least <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number from {least} to {MAX_COUNT}")
    return value


def _whole(text: str) -> int:
    """A count of 0 or more."""
    return _number(text, 0)


def _count(text: str) -> int:
    """A count of 1 or more."""
    return _number(text, 1)


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors said in one line like every other error."""

    def error(self, message: str):  # type: ignore[override]
        flat = " ".join(message.split())
        self.exit(2, f"snaptree: error: {flat} (see '{self.prog} --help')\n")


#: what each operation an interrupt cut short left, and what ``recover`` does with it
_UNFINISHED = {
    "revert": ("the revert of group {group!r} to {target} was cut short: its volumes may hold "
               "two snapshots", "finishes the revert"),
    "delete": ("the delete of {target} in group {group!r} was cut short: it stays 'deleting'",
               "finishes the delete"),
    "create": ("the create of {target} in group {group!r} was cut short and not all undone",
               "removes what it made"),
}


def _left_open(api: Snaptree) -> str:
    """What an interrupt left for ``recover``: this process's open journal entries."""
    try:
        mine = [e for e in api.catalog.journal_open() if e.get("pid") == os.getpid()]
        if not mine:
            return "no operation was left unfinished"
        entry = mine[-1]
        snap = api.catalog.get_snapshot_by_id(entry["snapshot_id"] or "")
    except (SnaptreeError, sqlite3.Error, OSError):  # the interrupt is the news: say what is sure
        return "run 'snaptree recover' if an operation was cut short"
    group = entry["group_name"]
    name = snap.name if snap is not None else entry["payload"].get("name")
    target = repr(name) if name else f"snapshot {entry['snapshot_id']}"
    what, does = _UNFINISHED.get(entry["operation"],
                                 (f"{entry['operation']} on group {{group!r}} was cut short",
                                  "finishes it"))
    return (f"{what.format(group=group, target=target)}; 'snaptree recover "
            f"{shlex.quote(group)}' {does} (so does the group's next create, revert or delete)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="snaptree: %(levelname)s: %(message)s")
    out = Output(bool(getattr(args, "json", False)))
    progress = ProgressBar()
    try:
        with Snaptree(args.state_dir, lock_timeout=args.wait, progress=progress) as api:
            try:
                code = _run(args, api, out)
                sys.stdout.flush()  # a closed pipe shows here, not at exit
                return code
            except KeyboardInterrupt:
                progress.close()
                print(f"snaptree: interrupted; {_left_open(api)}", file=sys.stderr)
                return 130
            finally:
                progress.close()
                for warning in api.warnings:
                    print(f"snaptree: warning: {' '.join(warning.split())}", file=sys.stderr)
    except SnaptreeError as err:
        if args.debug:
            logging.exception("failed")
        print(f"snaptree: error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # the reader (| head) went away: nothing more to say, and saying it
        # at exit would fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # opening or closing the catalog: no operation under way
        print("snaptree: interrupted; no operation was under way", file=sys.stderr)
        return 130
    except Exception as err:  # a bug; still one line unless --debug
        if args.debug:
            raise
        print(f"snaptree: internal error: {type(err).__name__}: {' '.join(str(err).split())}",
              file=sys.stderr)
        return 1
